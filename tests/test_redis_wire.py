"""The pieces of a lone Redis decision: the hand-packed command, the one-timer storage timeout
(`bounded`), and `Bucket.outcome`, which turns the script's one integer into a decision."""

from __future__ import annotations

import asyncio
import math
import sys

import pytest
import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st
from redis.asyncio.connection import Connection

from admission.bucket import Bucket
from admission.stores.redis import GCRA
from admission.stores.redis_wire import bounded, pack_script_call

# --- packing ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("keys", "args"),
    [
        ([b"admission:{ip:10.0.0.1}"], [b"1.0", b"1000", b"1"]),
        ([b"a:{x}", b"a:{y}", b"a:{\xff\r\n}"], [b"0.5", b"3", b"1", b"0", b"2"]),
        ([], []),
    ],
)
@pytest.mark.parametrize("cached", [True, False])
def test_packed_call_is_what_redis_py_would_send(
    keys: list[bytes], args: list[bytes], cached: bool
) -> None:
    command = ("EVALSHA", GCRA.sha) if cached else ("EVAL", GCRA.text)
    expected = b"".join(Connection().pack_command(*command, len(keys), *keys, *args))
    assert pack_script_call(GCRA, keys, args, cached=cached) == expected


async def test_script_sha_is_the_one_redis_computes(redis_url: str) -> None:
    client = aioredis.Redis.from_url(redis_url)
    try:
        assert (await client.script_load(GCRA.text)).encode() == GCRA.sha
    finally:
        await client.aclose()


# --- bounded: the storage timeout with one timer ------------------------------------------


async def test_bounded_returns_what_it_awaited() -> None:
    async def answer() -> int:
        await asyncio.sleep(0)
        return 42

    assert await bounded(answer(), 1.0) == 42


async def test_bounded_raises_timeout_error_and_leaves_the_task_uncancelled() -> None:
    never = asyncio.Event()
    with pytest.raises(asyncio.TimeoutError):
        await bounded(never.wait(), 0.01)
    task = asyncio.current_task()
    assert task is not None
    if sys.version_info >= (3, 11):
        assert task.cancelling() == 0
    # The task goes on: nothing cancels its next await.
    await asyncio.sleep(0.02)


async def test_bounded_leaves_a_cancellation_from_elsewhere_a_cancellation() -> None:
    started = asyncio.Event()
    never = asyncio.Event()

    async def waiter() -> None:
        started.set()
        await bounded(never.wait(), 10.0)

    task = asyncio.create_task(waiter())
    await started.wait()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="before 3.11 a task can't tell two cancellations apart (no Task.uncancel)",
)
async def test_bounded_that_times_out_while_also_cancelled_stays_cancelled() -> None:
    started = asyncio.Event()

    async def stuck() -> None:
        started.set()
        # Swallows the alarm's cancellation once, so the outer cancel lands on top of it.
        try:
            await asyncio.Event().wait()
        finally:
            await asyncio.sleep(0.05)

    async def waiter() -> None:
        await bounded(stuck(), 0.01)

    task = asyncio.create_task(waiter())
    await started.wait()
    await asyncio.sleep(0.03)  # the alarm has rung; `stuck` is in its finally
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


async def test_bounded_does_not_cancel_after_it_returned() -> None:
    async def quick() -> str:
        return "done"

    assert await bounded(quick(), 0.01) == "done"
    # Past the deadline the timer must be gone, or this sleep would be cancelled.
    await asyncio.sleep(0.03)


# --- Bucket.outcome: the decision from how far ahead the TAT stood ------------------------


@given(
    interval_s=st.floats(min_value=1e-6, max_value=3600.0),
    capacity=st.integers(min_value=1, max_value=10_000),
    tat=st.one_of(st.none(), st.floats(min_value=-1e6, max_value=1e6)),
    cost=st.integers(min_value=0, max_value=10_002),
)
def test_outcome_is_decide_at_now_zero(
    interval_s: float, capacity: int, tat: float | None, cost: int
) -> None:
    bucket = Bucket(interval_s, capacity)
    _, decided = bucket.decide(tat, 0.0, cost)
    ahead = 0.0 if tat is None else max(tat, 0.0)
    assert bucket.outcome(decided.allowed, ahead, cost) == decided


def test_outcome_of_a_cost_above_the_capacity_is_an_infinite_retry() -> None:
    bucket = Bucket(1.0, 3)
    decision = bucket.outcome(False, 0.0, 4)
    assert decision.retry_after_s == math.inf
    assert decision.remaining == 3

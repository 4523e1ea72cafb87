"""Tests of the demo's `/backend`: a simulated downstream of `capacity` slots held `ms` each."""

from __future__ import annotations

import asyncio

import httpx
import pytest

from admission import demo
from admission.demo import Downstream

LONG_S = 60.0


async def settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


async def test_calls_beyond_the_capacity_wait_their_turn_in_order() -> None:
    downstream = Downstream()
    calls = [asyncio.create_task(downstream.call(LONG_S, 2)) for _ in range(3)]
    await settle()
    pool = downstream.pool
    assert pool is not None
    assert pool.used == 2 and pool.waiting == 1
    calls[0].cancel()
    await settle()
    assert pool.used == 2 and pool.waiting == 0  # the waiter got the freed slot
    for call in calls[1:]:
        call.cancel()
    await asyncio.gather(*calls, return_exceptions=True)
    assert pool.used == 0


async def test_a_call_with_a_larger_capacity_lets_waiters_in_and_a_smaller_one_holds_them() -> None:
    downstream = Downstream()
    held = [asyncio.create_task(downstream.call(LONG_S, 2)) for _ in range(4)]
    await settle()
    pool = downstream.pool
    assert pool is not None and pool.used == 2 and pool.waiting == 2
    more = asyncio.create_task(downstream.call(LONG_S, 4))
    await settle()
    assert pool.used == 4 and pool.waiting == 1  # the two waiters are in; the newcomer waits
    fewer = asyncio.create_task(downstream.call(LONG_S, 1))
    await settle()
    held[0].cancel()
    await settle()
    assert pool.used == 3 and pool.waiting == 2  # capacity 1 now: nobody else gets in
    for task in (*held, more, fewer):
        task.cancel()
    await asyncio.gather(*held, more, fewer, return_exceptions=True)
    assert pool.used == 0


async def test_short_calls_complete_and_give_their_slot_back() -> None:
    downstream = Downstream()
    assert all(await asyncio.gather(*(downstream.call(0.0, 1) for _ in range(5))))
    assert downstream.pool is not None and downstream.pool.used == 0


@pytest.mark.parametrize(
    ("query", "expected"),
    [
        ("ms=0&capacity=3", "held a slot of 3 for 0 ms"),
        ("ms=0", "held a slot of 16 for 0 ms"),
        ("ms=0&capacity=0", "held a slot of 1 for 0 ms"),
        ("ms=0&capacity=-5", "held a slot of 1 for 0 ms"),
        ("ms=0&capacity=abc", "held a slot of 16 for 0 ms"),
        ("ms=0&capacity=99999999999999999999", "held a slot of 10000 for 0 ms"),
        ("ms=-1&capacity=2", "held a slot of 2 for 0 ms"),
        ("ms=1", "held a slot of 16 for 1 ms"),
    ],
)
async def test_backend_parameters_are_clamped(
    query: str, expected: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(demo, "downstream", Downstream())
    transport = httpx.ASGITransport(app=demo.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        response = await client.get(f"/backend?{query}")
    assert response.status_code == 200
    assert response.text.strip() == expected


async def test_a_full_downstream_queue_answers_503(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(demo, "MAX_BACKEND_WAITERS", 0)
    downstream = Downstream()
    monkeypatch.setattr(demo, "downstream", downstream)
    holder = asyncio.create_task(downstream.call(LONG_S, 1))
    await settle()
    transport = httpx.ASGITransport(app=demo.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://demo") as client:
        response = await client.get("/backend?ms=0&capacity=1")
    assert response.status_code == 503
    holder.cancel()
    await asyncio.gather(holder, return_exceptions=True)

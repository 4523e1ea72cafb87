"""The Redis store against real redis-servers of the test's own.

The storage timeout holds on the store's own connections: the redis-server is paused
(SIGSTOP: it accepts nothing and answers nothing, its sockets stay open, as a stalled or
partitioned Redis looks), every kind of call must give up within the timeout, and once it
resumes the next decision must read its own reply, not the one a cut-short call left on the
wire. Also: keys live exactly as long as their buckets are not full, Cluster batches that span
nodes, and a Sentinel failover.

Latency bounds use the real clock, as bounds only.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import time
from collections.abc import AsyncIterator, Iterator

import pytest

from admission.bucket import Bucket
from admission.errors import StorageTimeout
from admission.stores.guard import GuardedStore
from admission.stores.redis import RedisStore
from tests.support import RedisServer, own_redis_sentinel, redis_call, wait_until

pytestmark = pytest.mark.redis

SLOW = Bucket(interval_s=36.0, capacity=100)
TIMEOUT_S = 0.1
# Slack on top of the timeout for a loaded machine; the timeout itself is what is tested.
SLACK_S = 0.05


@contextlib.contextmanager
def paused(server: RedisServer) -> Iterator[None]:
    """paused stops the redis-server process for the block and resumes it after."""
    assert server.process is not None
    server.process.send_signal(signal.SIGSTOP)
    try:
        yield
    finally:
        server.process.send_signal(signal.SIGCONT)


@pytest.fixture
async def store(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    """store is a Redis store on the test's own redis-server, warmed up (script cached, both
    of its connections open)."""
    store = RedisStore.from_uri(redis_server.url, SLOW, timeout_s=TIMEOUT_S, prefix="paused")
    await asyncio.gather(*(store.decide(f"warm-{i}") for i in range(8)))
    yield store
    await store.close()


async def timed(awaitable: object) -> tuple[object, float]:
    started = time.perf_counter()
    try:
        result: object = await awaitable  # type: ignore[misc]
    except Exception as exc:
        result = exc
    return result, time.perf_counter() - started


async def test_a_lone_decision_on_a_paused_redis_times_out_within_the_timeout(
    redis_server: RedisServer, store: RedisStore
) -> None:
    assert (await store.decide("client")).remaining == SLOW.capacity - 1
    with paused(redis_server):
        result, took = await timed(store.decide("other"))
        assert isinstance(result, StorageTimeout)
        assert took <= TIMEOUT_S + SLACK_S
        # And again, on the fresh connection the first timeout left behind.
        result, took = await timed(store.decide("other"))
        assert isinstance(result, StorageTimeout)
        assert took <= TIMEOUT_S + SLACK_S
    # Redis may still run the calls for "other" that were on the wire when it resumes, but
    # this decision reads its own reply, not theirs (which would say 100 - 5 = 95).
    decision = await store.decide("client", cost=5)
    assert decision.allowed
    assert decision.remaining == SLOW.capacity - 1 - 5


async def test_concurrent_decisions_on_a_paused_redis_all_time_out_within_the_timeout(
    redis_server: RedisServer, store: RedisStore
) -> None:
    with paused(redis_server):
        results = await asyncio.gather(*(timed(store.decide(f"c{i}")) for i in range(32)))
    assert all(isinstance(result, StorageTimeout) for result, _ in results)
    assert max(took for _, took in results) <= TIMEOUT_S + SLACK_S
    decisions = await asyncio.gather(*(store.decide(f"after-{i}") for i in range(32)))
    assert all(d.allowed and d.remaining == SLOW.capacity - 1 for d in decisions)


async def test_check_on_a_paused_redis_times_out_within_the_timeout(
    redis_server: RedisServer, store: RedisStore
) -> None:
    with paused(redis_server):
        result, took = await timed(store.check())
    assert isinstance(result, StorageTimeout)
    assert took <= TIMEOUT_S + SLACK_S


async def test_guard_answers_locally_within_the_timeout_while_redis_is_paused(
    redis_server: RedisServer,
) -> None:
    bucket = Bucket(interval_s=36.0, capacity=3)
    redis_store = RedisStore.from_uri(redis_server.url, bucket, timeout_s=TIMEOUT_S, prefix="g")
    guard = GuardedStore(redis_store, bucket, "local")
    try:
        assert (await guard.decide("warm-up")).allowed
        with paused(redis_server):
            answers = []
            for _ in range(4):
                result, took = await timed(guard.decide("client"))
                assert took <= TIMEOUT_S + SLACK_S
                answers.append(result.allowed)  # type: ignore[attr-defined]
            assert guard.degraded
        assert answers == [True, True, True, False]
    finally:
        await guard.close()


# --- key lifetimes -------------------------------------------------------------------------


async def test_a_key_lives_until_its_bucket_is_full_again(
    redis_server: RedisServer, store: RedisStore
) -> None:
    for _ in range(3):
        decision = await store.decide("client")
    pttl = await store.client.pttl(store.redis_key("client"))
    # Whole milliseconds, rounded up: never shorter than the bucket takes to fill.
    assert decision.reset_after_s * 1000 - 100 <= pttl <= decision.reset_after_s * 1000 + 1


async def test_a_key_of_a_fast_bucket_lives_a_millisecond_and_is_gone(
    redis_server: RedisServer,
) -> None:
    # 0.2 ms per token: the bucket is full again well under a millisecond after a decision.
    store = RedisStore.from_uri(redis_server.url, Bucket(0.0002, 1), timeout_s=2.0, prefix="f")
    try:
        assert (await store.decide("client")).allowed
        key = store.redis_key("client")
        assert await store.client.pttl(key) in (0, 1, -2)
        deadline = time.monotonic() + 2.0
        while await store.client.exists(key):
            assert time.monotonic() < deadline, "the key outlived its bucket"
            await asyncio.sleep(0.001)
        assert (await store.decide("client")).allowed
    finally:
        await store.close()


# --- Redis Cluster: one batch spans several nodes -------------------------------------------


async def test_cluster_batch_over_many_slots_decides_each_key_once(redis_cluster_url: str) -> None:
    # Each round on a fresh client, whose first calls race its start (seen to misroute).
    for round_ in range(5):
        store = RedisStore.from_uri(redis_cluster_url, SLOW, timeout_s=5.0, prefix=f"s{round_}")
        try:
            keys = [f"client-{i}" for i in range(100)]
            first = await asyncio.gather(*(store.decide(k) for k in keys))
            second = await asyncio.gather(*(store.decide(k, cost=2) for k in keys))
            assert [d.remaining for d in first] == [SLOW.capacity - 1] * 100
            assert [d.remaining for d in second] == [SLOW.capacity - 3] * 100
            nodes = {store.client.get_node_from_key(store.redis_key(k)).port for k in keys}
            assert len(nodes) == 3  # the keys really were spread over every master
        finally:
            await store.close()


# --- Sentinel: the master fails over ------------------------------------------------------


async def test_sentinel_failover_moves_decisions_to_the_new_master() -> None:
    with own_redis_sentinel(replica=True) as setup:
        assert setup.replica is not None
        store = RedisStore.from_uri(setup.url, SLOW, timeout_s=0.5, prefix="failover")
        guard = GuardedStore(store, SLOW, "local", retry_interval_s=0.05)
        try:
            assert (await guard.decide("client")).remaining == SLOW.capacity - 1
            # Replication is asynchronous: wait until the replica has the write.
            key = store.redis_key("client").decode()
            replica_port = setup.replica.port
            wait_until(
                lambda: redis_call(replica_port, "EXISTS", key) == b":1\r\n",
                10,
                "the replica to have the key",
            )
            setup.master.kill()
            deadline = time.monotonic() + 30
            while setup.master_port() != setup.replica.port:
                assert time.monotonic() < deadline, "the sentinel did not fail over"
                await guard.decide("client")  # answered locally meanwhile
                await asyncio.sleep(0.05)
            while True:
                assert time.monotonic() < deadline, "decisions never reached the new master"
                decision = await guard.decide("after")
                if not guard.degraded:
                    break
                await asyncio.sleep(0.05)
            # Decided by the promoted replica, which holds what the old master wrote.
            assert decision.remaining == SLOW.capacity - 1
            assert (await store.decide("client")).remaining <= SLOW.capacity - 2
        finally:
            await guard.close()

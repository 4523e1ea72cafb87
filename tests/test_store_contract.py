"""The store contract: one suite, run unchanged against every store.

Each test gets `make_store(interval_s, capacity)` from the parametrized `make_store` fixture:
the memory store, the Redis store on fakeredis, and the Redis store on a real Redis (with a
key prefix of its own per test, so runs sharing that Redis never collide), on a three-master
Redis Cluster and behind a Sentinel (both started by the session on free ports). Slow rates such as
100/hour make refill negligible for the duration of a test, so counts are exact.
"""

from __future__ import annotations

import asyncio
import math
import time
import uuid
from collections.abc import AsyncIterator, Callable

import fakeredis.aioredis
import pytest
import redis.asyncio as aioredis

from admission.bucket import Bucket
from admission.stores.base import ReopenableStore, Store
from admission.stores.memory import MemoryStore
from admission.stores.redis import RedisStore

MakeStore = Callable[[float, int], Store]

# 100 per hour: a token every 36 s, far longer than any test here runs.
SLOW_INTERVAL_S = 36.0
# Generous: these tests check arithmetic and atomicity, not latency, on a shared machine.
TIMEOUT_S = 5.0


URL_FIXTURES = {
    "redis": "redis_url",
    "cluster": "redis_cluster_url",
    "sentinel": "redis_sentinel_url",
}


@pytest.fixture(params=["memory", "fakeredis", "redis", "cluster", "sentinel"])
async def make_store(request: pytest.FixtureRequest) -> AsyncIterator[MakeStore]:
    """make_store builds stores of the kind the parameter names; all are closed afterwards."""
    kind: str = request.param
    prefix = f"admission-test-{uuid.uuid4().hex}"
    made: list[Store] = []
    redis_url = request.getfixturevalue(URL_FIXTURES[kind]) if kind in URL_FIXTURES else None

    def make(interval_s: float, capacity: int) -> Store:
        bucket = Bucket(interval_s, capacity)
        store: Store
        if kind == "memory":
            store = MemoryStore(bucket)
        elif kind == "fakeredis":
            store = RedisStore(
                fakeredis.aioredis.FakeRedis(), bucket, timeout_s=TIMEOUT_S, prefix=prefix
            )
        else:
            assert redis_url is not None
            store = RedisStore.from_uri(redis_url, bucket, timeout_s=TIMEOUT_S, prefix=prefix)
        made.append(store)
        return store

    yield make
    for store in made:
        await store.close()
    # Slow buckets would otherwise sit in the shared Redis for up to their fill time; the
    # cluster and the sentinel's master are the session's own and go with it.
    if kind == "redis" and redis_url is not None:
        client = aioredis.Redis.from_url(redis_url)
        keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()


async def test_full_bucket_admits_its_capacity_then_refuses(make_store: MakeStore) -> None:
    store = make_store(SLOW_INTERVAL_S, 5)
    decisions = [await store.decide("client") for _ in range(6)]
    assert [d.allowed for d in decisions] == [True] * 5 + [False]
    assert [d.remaining for d in decisions] == [4, 3, 2, 1, 0, 0]
    assert all(d.retry_after_s == 0 for d in decisions[:5])


async def test_concurrent_decisions_on_one_bucket_admit_exactly_its_capacity(
    make_store: MakeStore,
) -> None:
    store = make_store(SLOW_INTERVAL_S, 100)
    decisions = await asyncio.gather(*(store.decide("shared") for _ in range(200)))
    admitted = [d for d in decisions if d.allowed]
    assert len(admitted) == 100
    # Every admitted decision took a different token: none was counted twice.
    assert sorted(d.remaining for d in admitted) == list(range(100))
    assert all(d.remaining == 0 for d in decisions if not d.allowed)


async def test_exhausting_one_client_leaves_another_untouched(make_store: MakeStore) -> None:
    store = make_store(SLOW_INTERVAL_S, 10)
    first = await asyncio.gather(*(store.decide("first") for _ in range(30)))
    assert sum(d.allowed for d in first) == 10
    second = [await store.decide("second") for _ in range(11)]
    assert [d.allowed for d in second] == [True] * 10 + [False]
    assert second[0].remaining == 9


async def test_retry_and_reset_agree_with_the_bucket_arithmetic(make_store: MakeStore) -> None:
    capacity = 4
    store = make_store(SLOW_INTERVAL_S, capacity)
    bucket = Bucket(SLOW_INTERVAL_S, capacity)
    started = time.monotonic()
    got = [await store.decide("client") for _ in range(capacity + 1)]
    elapsed = time.monotonic() - started
    # The reference: the same decisions at one instant.
    tat = None
    expected = []
    for _ in range(capacity + 1):
        tat, decision = bucket.decide(tat, 0.0)
        expected.append(decision)
    for g, e in zip(got, expected, strict=True):
        assert g.allowed == e.allowed
        assert g.remaining == e.remaining
        # Within rounding: the store's clock moved on by at most `elapsed` while deciding,
        # and Redis counts whole microseconds.
        assert e.reset_after_s - elapsed - 1e-6 <= g.reset_after_s <= e.reset_after_s + 1e-6
        assert e.retry_after_s - elapsed - 1e-6 <= g.retry_after_s <= e.retry_after_s + 1e-6
    assert got[-1].retry_after_s > SLOW_INTERVAL_S - 1


async def test_refused_request_succeeds_once_its_retry_after_has_passed(
    make_store: MakeStore,
) -> None:
    store = make_store(0.1, 2)
    assert (await store.decide("client")).allowed
    assert (await store.decide("client")).allowed
    refused = await store.decide("client")
    assert not refused.allowed
    assert 0 < refused.retry_after_s <= 0.1 + 1e-6
    # Sleeping the advertised delay is the contract under test: the token is back by then.
    await asyncio.sleep(refused.retry_after_s + 0.002)
    assert (await store.decide("client")).allowed


async def test_costly_request_takes_that_many_tokens(make_store: MakeStore) -> None:
    store = make_store(SLOW_INTERVAL_S, 10)
    taken = await store.decide("client", cost=4)
    assert taken.allowed
    assert taken.remaining == 6
    assert (await store.decide("client", cost=6)).allowed
    assert not (await store.decide("client", cost=1)).allowed


async def test_refused_request_takes_no_tokens(make_store: MakeStore) -> None:
    store = make_store(SLOW_INTERVAL_S, 3)
    assert (await store.decide("client", cost=2)).allowed
    refused = await store.decide("client", cost=2)
    assert not refused.allowed
    assert refused.remaining == 1
    assert refused.retry_after_s == pytest.approx(SLOW_INTERVAL_S, abs=1.0)
    assert (await store.decide("client", cost=1)).allowed


async def test_cost_above_capacity_is_refused_with_infinite_retry(make_store: MakeStore) -> None:
    store = make_store(SLOW_INTERVAL_S, 3)
    refused = await store.decide("client", cost=4)
    assert not refused.allowed
    assert refused.retry_after_s == math.inf
    assert refused.remaining == 3
    # It took nothing: the whole bucket is still there.
    assert (await store.decide("client", cost=3)).allowed


async def test_cost_zero_reports_without_taking(make_store: MakeStore) -> None:
    store = make_store(SLOW_INTERVAL_S, 3)
    await store.decide("client")
    report = await store.decide("client", cost=0)
    assert report.allowed
    assert report.remaining == 2
    assert (await store.decide("client", cost=2)).allowed
    assert not (await store.decide("client")).allowed


async def test_unusual_and_long_keys_each_get_their_own_bucket(make_store: MakeStore) -> None:
    store = make_store(SLOW_INTERVAL_S, 1)
    long_a = "x" * 5000 + "a"
    long_b = "x" * 5000 + "b"
    keys = ["ip:10.0.0.1", "h:{braces}", "h:with space", "h:ключ", "h:a:b:c", long_a, long_b, ""]
    firsts = [await store.decide(key) for key in keys]
    seconds = [await store.decide(key) for key in keys]
    assert all(d.allowed for d in firsts)
    assert not any(d.allowed for d in seconds)


async def test_check_passes_and_close_is_safe_twice(make_store: MakeStore) -> None:
    store = make_store(SLOW_INTERVAL_S, 1)
    await store.check()
    await store.decide("client")
    await store.close()
    await store.close()


async def test_a_closed_store_decides_again_once_reopened(make_store: MakeStore) -> None:
    # The next lifespan of one app (a second TestClient block) reopens the store it closed.
    store = make_store(SLOW_INTERVAL_S, 2)
    assert isinstance(store, ReopenableStore)
    assert (await store.decide("client")).allowed
    await store.close()
    store.reopen()
    decisions = [(await store.decide("client")).allowed for _ in range(3)]
    # The memory store forgot its buckets at close; Redis kept them.
    expected = [True, True, False] if isinstance(store, MemoryStore) else [True, False, False]
    assert decisions == expected
    await store.close()

"""The Redis store against a real Redis that restarts, forgets its scripts, dies or hangs, and
the `ADMISSION_ON_STORAGE_ERROR` policies that answer meanwhile (`GuardedStore`).

Round trips are counted with `INFO commandstats` on a redis-server of the test's own, so no
other client moves the counters. Latency bounds use the real clock, as bounds only.
"""

from __future__ import annotations

import asyncio
import logging
import math
import time
import uuid
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from admission.bench.process import free_port
from admission.bucket import Bucket, Decision
from admission.errors import StorageError, StorageTimeout
from admission.stores.guard import GuardedStore
from admission.stores.redis import RedisStore
from tests.support import RedisServer

pytestmark = pytest.mark.redis

# Commands the GCRA script itself runs inside Redis; commandstats counts them too.
SCRIPT_COMMANDS = {"time", "get", "set"}
SLOW = Bucket(interval_s=36.0, capacity=100)
# Storage timeout for the outage tests, and the slack allowed on top of it.
TIMEOUT_S = 0.1
SLACK_S = 0.05


class ManualClock:
    """ManualClock drives the guard's retry breaker and its local buckets."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


async def command_calls(client: aioredis.Redis) -> dict[str, int]:
    """command_calls is `INFO commandstats` as {command: calls}."""
    info = await client.info("commandstats")
    return {name.removeprefix("cmdstat_"): int(stat["calls"]) for name, stat in info.items()}


def moved(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    """moved is how much each command's call count rose, for those that rose."""
    names = set(before) | set(after)
    return {n: after.get(n, 0) - before.get(n, 0) for n in names if after.get(n) != before.get(n)}


@pytest.fixture
async def admin(redis_server: RedisServer) -> AsyncIterator[aioredis.Redis]:
    """admin is a client of its own for reading the counters; its one connection stays open
    so that connecting (HELLO) doesn't show up between two readings."""
    client = aioredis.Redis.from_url(redis_server.url, single_connection_client=True)
    yield client
    await client.aclose()


@pytest.fixture
async def store_on_own_redis(redis_server: RedisServer) -> AsyncIterator[RedisStore]:
    """store_on_own_redis is a Redis store on this test's own redis-server, warmed up: the
    script is cached and a pooled connection is open."""
    store = RedisStore.from_uri(redis_server.url, SLOW, timeout_s=2.0, prefix="t")
    assert (await store.decide("warm-up")).allowed
    yield store
    await store.close()


# --- round trips --------------------------------------------------------------------------


async def test_a_decision_is_exactly_one_evalsha(
    admin: aioredis.Redis, store_on_own_redis: RedisStore
) -> None:
    before = await command_calls(admin)
    for i in range(10):
        assert (await store_on_own_redis.decide(f"client-{i % 3}")).allowed
    after = await command_calls(admin)
    rose = moved(before, after)
    assert rose.pop("evalsha") == 10
    assert rose.pop("info") == 1  # the second INFO counts the first
    # One script run per decision (one TIME each), and nothing else from the client.
    assert rose.pop("time") == 10
    assert set(rose) <= SCRIPT_COMMANDS - {"time"}


async def test_concurrent_decisions_are_batched_into_fewer_evalsha_calls(
    admin: aioredis.Redis, store_on_own_redis: RedisStore
) -> None:
    before = await command_calls(admin)
    decisions = await asyncio.gather(*(store_on_own_redis.decide(f"c{i}") for i in range(64)))
    after = await command_calls(admin)
    assert all(d.allowed for d in decisions)
    rose = moved(before, after)
    assert 1 <= rose["evalsha"] < 64
    assert rose["time"] == rose["evalsha"]
    assert "eval" not in rose


async def test_unbatched_store_sends_one_evalsha_per_decision(
    redis_server: RedisServer, admin: aioredis.Redis
) -> None:
    store = RedisStore.from_uri(redis_server.url, SLOW, timeout_s=2.0, prefix="u")
    store.batching = False
    try:
        await store.decide("warm-up")
        before = await command_calls(admin)
        await asyncio.gather(*(store.decide(f"c{i}") for i in range(16)))
        after = await command_calls(admin)
    finally:
        await store.close()
    assert moved(before, after)["evalsha"] == 16


# --- restarts and script flushes ----------------------------------------------------------


async def test_store_survives_a_redis_restart_and_reloads_its_script_once(
    redis_server: RedisServer, store_on_own_redis: RedisStore
) -> None:
    redis_server.kill()
    redis_server.start()  # empty: no keys, no cached script
    first = await store_on_own_redis.decide("client")
    assert first.allowed
    assert first.remaining == SLOW.capacity - 1
    second = await store_on_own_redis.decide("client")
    assert second.remaining == SLOW.capacity - 2
    fresh = aioredis.Redis.from_url(redis_server.url)
    try:
        calls = await command_calls(fresh)
    finally:
        await fresh.aclose()
    assert calls["eval"] == 1  # NOSCRIPT once, then the cached script again
    assert calls["evalsha"] == 2


async def test_store_survives_script_flush_with_one_eval(
    admin: aioredis.Redis, store_on_own_redis: RedisStore
) -> None:
    await admin.script_flush()
    before = await command_calls(admin)
    assert (await store_on_own_redis.decide("client")).allowed
    assert (await store_on_own_redis.decide("client")).allowed
    rose = moved(before, await command_calls(admin))
    assert rose["eval"] == 1
    assert rose["evalsha"] == 2  # the refused one, then the cached one


# --- outages under the three policies -----------------------------------------------------


def guarded(url: str, policy: str, clock: ManualClock, capacity: int = 5) -> GuardedStore:
    bucket = Bucket(interval_s=36.0, capacity=capacity)
    store = RedisStore.from_uri(
        url, bucket, timeout_s=TIMEOUT_S, prefix=f"g-{uuid.uuid4().hex[:8]}"
    )
    return GuardedStore(store, bucket, policy, clock=clock)  # type: ignore[arg-type]


async def timed_decide(store: GuardedStore, key: str) -> tuple[Decision, float]:
    started = time.perf_counter()
    decision = await store.decide(key)
    return decision, time.perf_counter() - started


def outage_records(caplog: pytest.LogCaptureFixture) -> tuple[int, int]:
    failed = sum("storage failed" in r.getMessage() for r in caplog.records)
    recovered = sum("answers again after" in r.getMessage() for r in caplog.records)
    return failed, recovered


async def test_killed_redis_falls_back_to_local_buckets_and_logs_the_outage_once(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="admission.store")
    clock = ManualClock()
    store = guarded(redis_server.url, "local", clock, capacity=5)
    try:
        assert (await store.decide("warm-up")).allowed
        redis_server.kill()
        answers = []
        for _ in range(3):
            # Each round is past the retry interval, so its first decision asks Redis again.
            clock.advance(store.retry_interval_s + 0.1)
            for _ in range(5):
                decision, took = await timed_decide(store, "client")
                assert took <= TIMEOUT_S + SLACK_S
                answers.append(decision.allowed)
            assert store.degraded
        # The local bucket has the same rate: 5 tokens, no refill in 3.3 s at 36 s a token.
        assert answers == [True] * 5 + [False] * 10
        assert outage_records(caplog) == (1, 0)
        redis_server.start()
        clock.advance(store.retry_interval_s + 0.1)
        back = await store.decide("client")
        assert back.allowed  # decided by the (empty) Redis again
        assert not store.degraded
        assert (await store.decide("client")).allowed
        assert outage_records(caplog) == (1, 1)
    finally:
        await store.close()


@pytest.mark.parametrize(("policy", "allowed"), [("allow", True), ("deny", False)])
async def test_killed_redis_is_answered_by_the_named_policy(
    redis_server: RedisServer, caplog: pytest.LogCaptureFixture, policy: str, allowed: bool
) -> None:
    caplog.set_level(logging.WARNING, logger="admission.store")
    clock = ManualClock()
    store = guarded(redis_server.url, policy, clock, capacity=2)
    try:
        await store.decide("warm-up")
        redis_server.kill()
        for _ in range(10):
            decision, took = await timed_decide(store, "client")
            assert took <= TIMEOUT_S + SLACK_S
            assert decision.allowed is allowed
            if not allowed:
                assert decision.retry_after_s == pytest.approx(36.0)
        assert outage_records(caplog) == (1, 0)
    finally:
        await store.close()


async def test_check_reports_a_dead_redis_as_storage_error(redis_server: RedisServer) -> None:
    store = RedisStore.from_uri(redis_server.url, SLOW, timeout_s=TIMEOUT_S, prefix="c")
    try:
        await store.check()
        redis_server.kill()
        with pytest.raises(StorageError):
            await store.check()
        with pytest.raises(StorageError):
            await store.decide("client")
    finally:
        await store.close()


# --- a partitioned Redis: connections accepted, never answered ----------------------------


@pytest.fixture
async def silent_port() -> AsyncIterator[int]:
    """silent_port is a TCP port whose listener accepts connections and never answers, as a
    Redis behind a network partition looks to its clients."""
    stop = asyncio.Event()
    writers: list[asyncio.StreamWriter] = []

    async def hold(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writers.append(writer)
        await stop.wait()

    port = free_port()
    server = await asyncio.start_server(hold, "127.0.0.1", port)
    yield port
    stop.set()
    for writer in writers:
        writer.close()
    server.close()
    await server.wait_closed()


async def test_partitioned_redis_times_out_within_the_storage_timeout(silent_port: int) -> None:
    store = RedisStore.from_uri(
        f"redis://127.0.0.1:{silent_port}/0", SLOW, timeout_s=TIMEOUT_S, prefix="p"
    )
    try:
        started = time.perf_counter()
        with pytest.raises(StorageTimeout):
            await store.decide("client")
        assert time.perf_counter() - started <= TIMEOUT_S + SLACK_S
        with pytest.raises(StorageTimeout):
            await store.check()
    finally:
        await store.close()


async def test_guard_falls_back_when_redis_is_partitioned(
    silent_port: int, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="admission.store")
    clock = ManualClock()
    store = guarded(f"redis://127.0.0.1:{silent_port}/0", "local", clock, capacity=3)
    try:
        answers = []
        for _ in range(5):
            decision, took = await timed_decide(store, "client")
            assert took <= TIMEOUT_S + SLACK_S
            answers.append(decision.allowed)
        assert answers == [True, True, True, False, False]
        assert store.degraded
        assert outage_records(caplog) == (1, 0)
    finally:
        await store.close()


# --- the guard's breaker, with a store that always fails ----------------------------------


class BrokenStore:
    """BrokenStore fails every call and counts them."""

    def __init__(self) -> None:
        self.calls = 0

    async def decide(self, key: str, cost: int = 1) -> Decision:
        self.calls += 1
        raise StorageError("down")

    async def check(self) -> None:
        raise StorageError("down")

    async def close(self) -> None:
        pass


async def test_failing_store_is_retried_once_per_retry_interval() -> None:
    clock = ManualClock()
    broken = BrokenStore()
    store = GuardedStore(broken, Bucket(1.0, 1000), "allow", clock=clock, retry_interval_s=1.0)
    for _ in range(100):
        assert (await store.decide("client")).allowed
    assert broken.calls == 1
    clock.advance(0.99)
    await store.decide("client")
    assert broken.calls == 1
    clock.advance(0.02)
    await store.decide("client")
    assert broken.calls == 2


async def test_deny_policy_retry_after_scales_with_cost() -> None:
    store = GuardedStore(BrokenStore(), Bucket(0.5, 10), "deny", clock=ManualClock())
    decision = await store.decide("client", cost=3)
    assert not decision.allowed
    assert decision.retry_after_s == pytest.approx(1.5)
    assert math.isfinite(decision.reset_after_s)


async def test_a_failing_store_given_to_the_middleware_is_guarded_and_its_errors_counted() -> None:
    from admission import AdmissionMiddleware, Settings
    from admission.observe.endpoints import Endpoints

    broken = BrokenStore()
    statuses: list[int] = []

    async def app(scope: object, receive: object, send: object) -> None:
        raise AssertionError("never reached: a metrics scrape")

    mw = AdmissionMiddleware(
        app,
        settings=Settings(rate="10/second", on_storage_error="deny"),
        store=broken,  # type: ignore[arg-type]
        handle_signals=False,
    )
    assert isinstance(mw.store, GuardedStore) and mw.store.store is broken
    sent: list[dict[str, object]] = []

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def receive() -> dict[str, object]:
        return {"type": "http.request", "body": b"", "more_body": False}

    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "client": ("10.0.0.1", 1)}
    await mw(dict(scope), receive, send)  # type: ignore[arg-type]
    statuses.append(int(sent[0]["status"]))  # type: ignore[call-overload]
    # Denied by the policy, the store having failed: a storage refusal, not a rate one.
    assert statuses == [503]
    body = bytes(sent[1]["body"]).decode()  # type: ignore[call-overload]
    assert '"reason":"storage"' in body.replace(" ", "")
    assert "rate-limit store is unavailable" in body
    headers = dict(sent[0]["headers"])  # type: ignore[call-overload]
    assert b"retry-after" in headers and b"ratelimit" not in headers
    assert isinstance(mw.endpoints, Endpoints)
    sent.clear()
    await mw(dict(scope, path="/metrics"), receive, send)  # type: ignore[arg-type]
    metrics = bytes(sent[1]["body"]).decode()  # type: ignore[call-overload]
    assert "admission_storage_errors_total 1.0" in metrics
    assert 'admission_rejected_total{policy="",reason="storage"} 1.0' in metrics
    assert 'admission_rejected_total{policy="default",reason="rate"} 0.0' in metrics

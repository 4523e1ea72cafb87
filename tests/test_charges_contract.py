"""The multi-limit contract: one suite over every store that decides charges.

Per client key, limits 10/second and 15/minute: 40 concurrent requests admit exactly 10, one
second later exactly 5 more; a refused request leaves every bucket as it was. The memory store
runs on a manual clock. Redis uses its own `TIME`, so the "one second later" there is a real
wait, bounded on both sides: after 1 s, and before the minute bucket's next token (4 s).
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import fakeredis.aioredis
import pytest
import redis.asyncio as aioredis

from admission.bucket import Bucket
from admission.charges import Charge, Verdict
from admission.stores.memory import MemoryStore
from admission.stores.redis import RedisStore
from tests.support import own_redis_server

PER_SECOND = Bucket(0.1, 10)
PER_MINUTE = Bucket(4.0, 15)
TIMEOUT_S = 5.0


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


@dataclass
class Kind:
    """Kind is one store under test, with how to let time pass and how to read its buckets."""

    store: MemoryStore | RedisStore
    advance: Callable[[float], Awaitable[None]]
    snapshot: Callable[[], Awaitable[dict[str, object]]]


@pytest.fixture(params=["memory", "fakeredis", "redis"])
async def kind(request: pytest.FixtureRequest) -> AsyncIterator[Kind]:
    name: str = request.param
    if name == "memory":
        clock = ManualClock()
        store = MemoryStore(Bucket(60.0, 1), clock=clock)

        async def advance(seconds: float) -> None:
            clock.now += seconds

        async def memory_snapshot() -> dict[str, object]:
            return {store._digests[e]: store._tats[e] for e in range(1, len(store) + 1)}

        yield Kind(store, advance, memory_snapshot)
        return
    prefix = f"admission-test-{uuid.uuid4().hex}"
    if name == "fakeredis":
        client = fakeredis.aioredis.FakeRedis()
        redis_store = RedisStore(client, Bucket(60.0, 1), timeout_s=TIMEOUT_S, prefix=prefix)
    else:
        url = request.getfixturevalue("redis_url")
        redis_store = RedisStore.from_uri(url, Bucket(60.0, 1), timeout_s=TIMEOUT_S, prefix=prefix)
        client = aioredis.Redis.from_url(url)

    async def wait(seconds: float) -> None:
        await asyncio.sleep(seconds)

    async def redis_snapshot() -> dict[str, object]:
        keys = sorted([k async for k in client.scan_iter(match=f"{prefix}:*")])
        values = await client.mget(keys) if keys else []
        return dict(zip(keys, values, strict=True))

    yield Kind(redis_store, wait, redis_snapshot)
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await redis_store.close()
    if name == "redis":
        await client.aclose()


def charges(client: str = "ip:10.0.0.1") -> list[Charge]:
    return [
        Charge(client, "api::0", PER_SECOND, 1),
        Charge(client, "api::1", PER_MINUTE, 1),
    ]


async def burst(
    store: MemoryStore | RedisStore, n: int, client: str = "ip:10.0.0.1"
) -> list[Verdict]:
    return list(await asyncio.gather(*(store.decide_charges(charges(client)) for _ in range(n))))


async def test_forty_concurrent_requests_admit_ten_then_five_a_second_later(kind: Kind) -> None:
    started = time.monotonic()
    first = await burst(kind.store, 40)
    assert sum(v.admitted for v in first) == 10
    # What the buckets hold now: every refusal after this must leave it exactly so.
    held = await kind.snapshot()
    assert len(held) == 2
    more = await burst(kind.store, 10)
    assert not any(v.admitted for v in more)
    assert await kind.snapshot() == held
    await kind.advance(
        max(0.0, started + 1.05 - time.monotonic()) if isinstance(kind.store, RedisStore) else 1.0
    )
    second = await burst(kind.store, 40)
    elapsed = time.monotonic() - started
    # The minute bucket gives its next token 4 s after the first burst: past that, 6 is right.
    assert elapsed < 3.9, f"too slow to check ({elapsed:.1f}s): rerun on a quieter machine"
    assert sum(v.admitted for v in second) == 5
    refused = [v for v in second if not v.admitted]
    # Refused by the minute limit; the per-second one would have admitted but gave nothing.
    assert all(not v.decisions[1].allowed for v in refused)
    held = await kind.snapshot()
    assert not any(v.admitted for v in await burst(kind.store, 10))
    assert await kind.snapshot() == held


async def test_clients_never_share_buckets(kind: Kind) -> None:
    assert sum(v.admitted for v in await burst(kind.store, 20, "ip:a")) == 10
    assert sum(v.admitted for v in await burst(kind.store, 20, "ip:b")) == 10


async def test_refused_request_reports_every_bucket_and_retry(kind: Kind) -> None:
    await burst(kind.store, 10)
    verdict = await kind.store.decide_charges(charges())
    assert not verdict.admitted and verdict.refused_groups == frozenset({0})
    per_second, per_minute = verdict.decisions
    assert not per_second.allowed and 0 < per_second.retry_after_s <= 0.1 + 1e-3
    assert per_minute.allowed and per_minute.remaining == 5


async def test_shadow_group_refuses_nothing_and_takes_only_with_the_request(kind: Kind) -> None:
    shadow = Bucket(60.0, 2)
    mixed = [Charge("ip:s", "a::0", Bucket(60.0, 3), 1), Charge("ip:s", "t::0", shadow, 1, 1)]
    verdicts = [await kind.store.decide_charges(mixed) for _ in range(4)]
    assert [v.admitted for v in verdicts] == [True, True, True, False]
    assert [1 in v.refused_groups for v in verdicts] == [False, False, True, True]
    # The shadow bucket was charged twice (it holds 0), never for its own or the 4th refusal.
    assert verdicts[3].decisions[1].remaining == 0


async def test_cost_above_a_capacity_refuses_with_infinite_retry(kind: Kind) -> None:
    verdict = await kind.store.decide_charges([Charge("ip:c", "x::0", Bucket(1.0, 2), 3)])
    assert not verdict.admitted
    assert verdict.decisions[0].retry_after_s == float("inf")
    assert await kind.snapshot() == {}


# --- one round trip per request, counted by a Redis of this test's own ---------------------


def _stats(raw: dict[str, dict[str, int]]) -> dict[str, int]:
    return {name: int(v["calls"]) for name, v in raw.items()}


@pytest.mark.parametrize("limits", [1, 2, 5])
async def test_one_round_trip_per_request_however_many_limits(limits: int) -> None:
    with own_redis_server() as server:
        client = aioredis.Redis.from_url(server.url)
        store = RedisStore.from_uri(server.url, Bucket(60.0, 1), timeout_s=TIMEOUT_S)
        many = [
            Charge("ip:rt", f"p{i}::0", Bucket(0.001 * (i + 1), 1000), 1) for i in range(limits)
        ]
        await store.decide_charges(many)  # loads the script
        await client.config_resetstat()
        requests = 30
        for _ in range(requests // 2):
            await store.decide_charges(many)
        await asyncio.gather(*(store.decide_charges(many) for _ in range(requests // 2)))
        info = await client.info("commandstats")
        stats = _stats({k.removeprefix("cmdstat_"): v for k, v in info.items()})
        await store.close()
        await client.aclose()
    assert stats.get("evalsha") == requests
    assert "eval" not in stats
    # Besides it, only the script's own TIME/GET/SET ran, and the handshake of connections
    # the pool opened for the concurrent half: nothing else went over the wire.
    handshake = {"hello", "client|setinfo", "config|resetstat", "info"}
    assert set(stats) - handshake == {"evalsha", "time", "get", "set"}
    assert stats["time"] == requests and stats["get"] == requests * limits


async def test_shadow_bucket_gives_nothing_to_a_request_the_enforced_limits_refuse(
    kind: Kind,
) -> None:
    mixed = [
        Charge("ip:r", "a::0", Bucket(60.0, 1), 1),
        Charge("ip:r", "t::0", Bucket(60.0, 5), 1, 1),
    ]
    assert (await kind.store.decide_charges(mixed)).admitted
    held = await kind.snapshot()
    for _ in range(3):
        verdict = await kind.store.decide_charges(mixed)
        assert not verdict.admitted and verdict.refused_groups == frozenset({0})
        assert verdict.decisions[1].remaining == 4
    assert await kind.snapshot() == held


async def test_cluster_mode_sends_each_clients_buckets_to_its_own_slot_and_merges_in_order() -> (
    None
):
    """In Cluster, a request whose policies key it two ways (address, API key) is one call per
    client key, each all or nothing; the verdict puts the decisions back in charge order."""
    client = fakeredis.aioredis.FakeRedis()
    store = RedisStore(client, Bucket(60.0, 1), timeout_s=TIMEOUT_S, prefix="c", cluster=True)
    calls: list[list[bytes]] = []
    original = store._eval_many

    async def counted(keys: list[bytes], args: list[object]) -> object:
        calls.append(keys)
        return await original(keys, args)

    store._eval_many = counted  # type: ignore[method-assign]
    mixed = [
        Charge("ip:1", "a::0", Bucket(60.0, 2), 1),
        Charge("h:key", "b::0", Bucket(60.0, 1), 1),
        Charge("ip:1", "a::1", Bucket(60.0, 5), 1),
    ]
    first = await store.decide_charges(mixed)
    assert first.admitted and [d.remaining for d in first.decisions] == [1, 0, 4]
    assert sorted(len(keys) for keys in calls) == [1, 2]
    assert all(len({k.split(b"}")[0] for k in keys}) == 1 for keys in calls)
    second = await store.decide_charges(mixed)
    assert not second.admitted and [d.allowed for d in second.decisions] == [True, False, True]
    await store.close()

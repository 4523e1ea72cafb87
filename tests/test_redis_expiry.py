"""A Redis bucket's key lives exactly as long as the bucket takes to fill again.

Too short and a client gets its full bucket back early (a key expiring ten times too early
lets through ten times the rate to a client that pauses); too long and idle keys pile up in
Redis. Checked on fakeredis and on a real Redis through the store's public `decide` and the
keys it leaves under its own prefix, whatever their layout.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import AsyncIterator

import fakeredis.aioredis
import pytest
import redis.asyncio as aioredis

from admission.bucket import Bucket
from admission.stores.redis import RedisStore

INTERVAL_S = 36.0
CAPACITY = 10


@pytest.fixture(params=["fakeredis", "redis"])
async def client(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    if request.param == "fakeredis":
        redis_client = fakeredis.aioredis.FakeRedis()
    else:
        redis_client = aioredis.Redis.from_url(request.getfixturevalue("redis_url"))
    yield redis_client
    await redis_client.aclose()


async def only_key(client: aioredis.Redis, prefix: str) -> bytes:
    keys = [key async for key in client.scan_iter(match=f"{prefix}:*")]
    assert len(keys) == 1, keys
    return bytes(keys[0])


@pytest.mark.parametrize("tokens", [1, 3, CAPACITY])
async def test_a_key_expires_when_its_bucket_is_full_again(
    client: aioredis.Redis, tokens: int
) -> None:
    prefix = f"admission-expiry-{uuid.uuid4().hex}"
    store = RedisStore(client, Bucket(INTERVAL_S, CAPACITY), timeout_s=5.0, prefix=prefix)
    try:
        started = time.monotonic()
        for _ in range(tokens):
            decision = await store.decide("client")
            assert decision.allowed
        key = await only_key(client, prefix)
        pttl = await client.pttl(key)
        elapsed_ms = (time.monotonic() - started) * 1000
        refill_ms = tokens * INTERVAL_S * 1000
        # Taken over `elapsed_ms`, the first tokens have refilled by at most that much.
        assert refill_ms - elapsed_ms - 5 <= pttl <= refill_ms + 1, (pttl, refill_ms)
        assert abs(pttl - decision.reset_after_s * 1000) <= elapsed_ms + 5
        # A refusal changes nothing, the expiry included.
        if tokens == CAPACITY:
            assert not (await store.decide("client")).allowed
            again = await client.pttl(key)
            assert pttl - (time.monotonic() - started) * 1000 - 5 <= again <= pttl
    finally:
        await client.delete(*[k async for k in client.scan_iter(match=f"{prefix}:*")] or [b"-"])
        await store.close()

"""Client keys never appear in Redis key names, and `admission reset` empties a client's
buckets: on fakeredis and a real Redis in process, and with real server and CLI processes."""

from __future__ import annotations

import subprocess
import sys
import uuid
from collections.abc import AsyncIterator

import fakeredis.aioredis
import httpx
import pytest
import redis
import redis.asyncio as aioredis

from admission import AdmissionMiddleware, Settings
from admission.bucket import Bucket
from admission.config.policies import Policy
from admission.ratelimit.keys import client_key_of
from admission.stores import RedisStore
from admission.stores.naming import bucket_key, naming_secret
from admission.stores.reset import reset_client
from admission.types import Receive, Scope, Send
from tests.support import REPO, admission_serve, run_server
from tests.test_cli import clean_env

# Unique per run: the Redis at 127.0.0.1:6379 is shared, and a scan of all its keys must find
# nothing of this run's keys whatever else is there.
API_KEY = f"sk-live-{uuid.uuid4().hex}"
OTHER_KEY = f"sk-live-{uuid.uuid4().hex}"


async def ok(scope: Scope, receive: Receive, send: Send) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.fixture(params=["fakeredis", "redis"])
async def redis_client(request: pytest.FixtureRequest) -> AsyncIterator[aioredis.Redis]:
    """redis_client is a fakeredis or the real Redis, for a test that uses keys of its own."""
    if request.param == "fakeredis":
        client: aioredis.Redis = fakeredis.aioredis.FakeRedis()
    else:
        client = aioredis.Redis.from_url(request.getfixturevalue("redis_url"))
    yield client
    await client.aclose()


def service(
    client: aioredis.Redis, prefix: str, **settings: object
) -> tuple[AdmissionMiddleware, RedisStore]:
    values = Settings(key="header:X-API-Key", key_prefix=prefix, **settings)  # type: ignore[arg-type]
    secret = naming_secret(prefix, values.key_secret)
    store = RedisStore(client, Bucket(60.0, 1), timeout_s=1.0, prefix=prefix, secret=secret)
    return AdmissionMiddleware(ok, settings=values, store=store, handle_signals=False), store


async def statuses(app: AdmissionMiddleware, key: str, path: str, n: int) -> list[int]:
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        return [(await client.get(path, headers={"X-API-Key": key})).status_code for _ in range(n)]


async def all_names(client: aioredis.Redis) -> list[bytes]:
    return [name async for name in client.scan_iter(count=1000)]


async def test_no_key_name_holds_the_client_key_and_reset_admits_again(
    redis_client: aioredis.Redis,
) -> None:
    prefix = f"admission-reset-{uuid.uuid4().hex}"
    app, store = service(redis_client, prefix, rate="1/minute")
    assert await statuses(app, API_KEY, "/", 2) == [200, 429]
    assert await statuses(app, OTHER_KEY, "/", 1) == [200]
    names = await all_names(redis_client)
    ours = [n for n in names if n.startswith(prefix.encode())]
    assert len(ours) == 2
    assert not [n for n in names if API_KEY.encode() in n or OTHER_KEY.encode() in n], names
    assert await reset_client(store, client_key_of(API_KEY), None) == 1
    assert await statuses(app, API_KEY, "/", 2) == [200, 429]
    # The other client's bucket was left alone.
    assert await statuses(app, OTHER_KEY, "/", 1) == [429]


async def test_reset_of_one_policy_leaves_the_clients_other_buckets(
    redis_client: aioredis.Redis,
) -> None:
    prefix = f"admission-reset-{uuid.uuid4().hex}"
    login = Policy(name="login", match="GET /login", limits="1/minute", key="header:X-API-Key")
    items = Policy(name="items", match="GET /items", limits="1/minute", key="header:X-API-Key")
    app, store = service(redis_client, prefix, policies=[login, items])
    assert await statuses(app, API_KEY, "/login", 2) == [200, 429]
    assert await statuses(app, API_KEY, "/items", 2) == [200, 429]
    assert not [n for n in await all_names(redis_client) if API_KEY.encode() in n]
    assert await reset_client(store, client_key_of(API_KEY), "login") == 1
    assert await statuses(app, API_KEY, "/login", 1) == [200]
    assert await statuses(app, API_KEY, "/items", 1) == [429]
    # Without a policy, every bucket of the client goes.
    assert await reset_client(store, client_key_of(API_KEY), None) == 2
    assert await statuses(app, API_KEY, "/items", 1) == [200]


def test_names_agree_across_processes_and_change_with_the_secret() -> None:
    one = bucket_key("svc", naming_secret("svc", None), "h:" + API_KEY)
    assert one == bucket_key("svc", naming_secret("svc", None), "h:" + API_KEY)
    assert API_KEY.encode() not in one and one.startswith(b"svc:{")
    own = naming_secret("svc", "0123456789abcdef")
    assert bucket_key("svc", own, "h:" + API_KEY) != one
    # A secret longer than BLAKE2b's 64-byte key still keys the digest.
    assert bucket_key("svc", b"k" * 100, "x") != bucket_key("svc", b"k" * 101, "x")
    assert bucket_key("svc", own, "x", "login:0:0").endswith(b"}:login:0:0")


@pytest.mark.parametrize(
    ("value", "key"),
    [
        (API_KEY, "h:" + API_KEY),
        ("203.0.113.7", "ip:203.0.113.7"),
        ("2001:db8:0::1", "ip:2001:db8::1"),
        ("ip:10.0.0.1", "ip:10.0.0.1"),
        ("c:tenant-7", "c:tenant-7"),
        ("global", "global"),
    ],
)
def test_an_operator_names_a_client_as_its_requests_are_keyed(value: str, key: str) -> None:
    assert client_key_of(value) == key


def run_admission(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "admission", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_admission_reset_unblocks_a_client_of_a_serving_process(redis_url: str) -> None:
    prefix = f"admission-reset-{uuid.uuid4().hex}"
    env = {
        "ADMISSION_STORAGE": redis_url,
        "ADMISSION_KEY": "header:X-API-Key",
        "ADMISSION_RATE": "1/minute",
        "ADMISSION_KEY_PREFIX": prefix,
        "ADMISSION_KEY_SECRET": uuid.uuid4().hex,
    }
    with run_server(admission_serve(), env) as server, httpx.Client(timeout=5) as client:

        def get() -> int:
            return client.get(server.url + "/", headers={"X-API-Key": API_KEY}).status_code

        assert [get(), get()] == [200, 429]
        names = list(redis.Redis.from_url(redis_url).scan_iter(count=1000))
        assert [n for n in names if n.startswith(prefix.encode())]
        assert not [n for n in names if API_KEY.encode() in n]
        done = run_admission("reset", API_KEY, env=clean_env(**env))
        assert done.returncode == 0, done.stderr
        assert "emptied 1 bucket" in done.stdout and API_KEY not in done.stdout
        assert get() == 200
        again = run_admission("reset", API_KEY, "--policy", "login", env=clean_env(**env))
        assert again.returncode == 2 and "usage: admission reset" in again.stderr


def test_admission_reset_with_the_memory_store_says_there_is_nothing_to_reset() -> None:
    done = run_admission("reset", API_KEY, env=clean_env(ADMISSION_RATE="1/minute"))
    assert done.returncode == 1
    assert "memory://" in done.stderr and "nothing to reset" in done.stderr


def test_admission_reset_with_redis_unreachable_fails_with_one_line() -> None:
    env = clean_env(ADMISSION_STORAGE="redis://127.0.0.1:1/0", ADMISSION_RATE="1/minute")
    done = run_admission("reset", API_KEY, env=env)
    assert done.returncode == 1
    assert done.stderr.count("\n") == 1 and "cannot reset" in done.stderr

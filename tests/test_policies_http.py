"""Route policies as an HTTP client sees them, through the middleware in process, with a memory
store on a manual clock."""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

import admission
from admission import AdmissionMiddleware, Settings
from admission.config.policies import Policy, generation_bucket
from admission.ratelimit.gate import resolved_policies
from admission.refusal import REFUSAL_STATE_KEY
from admission.stores.memory import MemoryStore
from tests.asgi import CountingApp, ManualClock
from tests.structured_fields import parse_sf_list
from tests.support import REPO

EXAMPLE = str(REPO / "tests" / "apps" / "policies.toml")


class Service:
    """Service is the middleware with route policies around a counting app."""

    def __init__(self, **settings: Any) -> None:
        self.clock = ManualClock(500.0)
        self.app = CountingApp()
        self.settings = Settings(**settings)
        store = MemoryStore(generation_bucket(resolved_policies(self.settings)), clock=self.clock)
        self.middleware = AdmissionMiddleware(
            self.app, settings=self.settings, store=store, handle_signals=False
        )

    def client(self, peer: str = "192.0.2.10") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.middleware, client=(peer, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def statuses(
    client: httpx.AsyncClient, method: str, path: str, n: int, **kw: Any
) -> list[int]:
    return [(await client.request(method, path, **kw)).status_code for _ in range(n)]


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def test_the_example_file_limits_login_posts_only() -> None:
    service = Service(policies=EXAMPLE)
    async with service.client() as client:
        assert (await statuses(client, "POST", "/login", 8)).count(200) == 5
        assert await statuses(client, "GET", "/login", 8) == [200] * 8
        # One policy, one set of buckets: resetting a password counts against logging in.
        assert await statuses(client, "POST", "/password-reset", 3) == [429] * 3
    async with service.client(peer="192.0.2.11") as client:
        assert (await statuses(client, "POST", "/password-reset", 8)).count(200) == 5


async def test_a_refusal_is_problem_json_naming_the_policy_with_valid_fields() -> None:
    service = Service(policies=EXAMPLE)
    async with service.client() as client:
        await statuses(client, "POST", "/login", 5)
        refused = await client.post("/login")
    assert refused.status_code == 429
    assert refused.headers["content-type"] == "application/problem+json"
    body = json.loads(refused.content)
    assert body["reason"] == "rate" and body["policy"] == "login" and body["status"] == 429
    # burst = 5 holds for both limits: the hourly bucket is empty too, for 180 s a token.
    assert refused.headers["retry-after"] == "180"
    policy = parse_sf_list(refused.headers["ratelimit-policy"])
    assert [(name, params) for name, params in policy] == [
        ("login#1", {"q": 5, "w": 60}),
        # The hourly bucket as it is: 5 tokens (the burst) filling in 900 s, 20 an hour.
        ("login#2", {"q": 5, "w": 900}),
    ]
    limit = parse_sf_list(refused.headers["ratelimit"])
    assert limit == [("login#2", {"r": 0, "t": 900})]
    assert service.app.calls == 5


async def test_admitted_responses_carry_every_applied_limit_and_the_closest_one() -> None:
    service = Service(policies=EXAMPLE, rate="100/minute")
    async with service.client() as client:
        response = await client.post("/login")
    assert response.status_code == 200
    names = [name for name, _ in parse_sf_list(response.headers["ratelimit-policy"])]
    assert names == ["login#1", "login#2", "default"]
    # Both login limits have 4 left; the hourly one takes longer to fill again.
    assert parse_sf_list(response.headers["ratelimit"]) == [("login#2", {"r": 4, "t": 180})]


async def test_classes_come_from_the_class_header_and_the_key_from_the_api_key() -> None:
    service = Service(policies=EXAMPLE)
    async with service.client() as client:
        free = {"X-API-Key": "a", "X-Plan": "free"}
        pro = {"X-API-Key": "b", "X-Plan": "pro"}
        assert (await statuses(client, "GET", "/api/x", 15, headers=free)).count(200) == 10
        assert (await statuses(client, "GET", "/api/x", 210, headers=pro)).count(200) == 200
        # Another key on the free plan has buckets of its own.
        other = {"X-API-Key": "c", "X-Plan": "free"}
        assert (await statuses(client, "GET", "/api/y", 15, headers=other)).count(200) == 10
        service.clock.advance(1.0)
        assert (await statuses(client, "GET", "/api/x", 15, headers=free)).count(200) == 10


async def test_shadow_policy_never_refuses_and_its_would_be_refusals_show_in_metrics() -> None:
    service = Service(policies=EXAMPLE)
    async with service.client() as client:
        assert await statuses(client, "GET", "/export", 6) == [200] * 6
        await statuses(client, "POST", "/login", 7)
        text = (await client.get("/metrics")).text
    got = samples(text)
    assert got[("admission_shadow_refusals_total", (("policy", "export-trial"),))] == 5
    assert got[("admission_rejected_total", (("policy", "login"), ("reason", "rate")))] == 2
    assert got[("admission_rejected_total", (("policy", "api"), ("reason", "rate")))] == 0
    assert got[("admission_rejected_total", (("policy", ""), ("reason", "window")))] == 0


async def test_on_refuse_answers_with_the_services_own_body() -> None:
    seen: list[Any] = []

    async def on_refuse(scope: dict[str, Any], receive: Any, send: Any) -> None:
        refusal = admission.refusal(scope)
        assert refusal is scope["state"][REFUSAL_STATE_KEY]
        seen.append(refusal)
        await send(
            {"type": "http.response.start", "status": refusal.status, "headers": refusal.headers}
        )
        await send({"type": "http.response.body", "body": f"slow down ({refusal.policy})".encode()})

    service = Service(policies=EXAMPLE, on_refuse=on_refuse)
    async with service.client() as client:
        await statuses(client, "POST", "/login", 5)
        refused = await client.post("/login")
    assert refused.status_code == 429 and refused.text == "slow down (login)"
    assert refused.headers["retry-after"] == "180"
    assert seen[0].reason == "rate" and not seen[0].decision.allowed


async def test_on_refuse_answers_refusals_of_the_plain_rate_too() -> None:
    async def on_refuse(scope: dict[str, Any], receive: Any, send: Any) -> None:
        refusal = scope["state"][REFUSAL_STATE_KEY]
        await send({"type": "http.response.start", "status": 429, "headers": []})
        await send({"type": "http.response.body", "body": refusal.policy.encode()})

    from admission.bucket import Bucket

    settings = Settings(rate="1/minute", on_refuse=on_refuse)
    middleware = AdmissionMiddleware(
        CountingApp(), settings=settings, store=MemoryStore(Bucket(60, 1)), handle_signals=False
    )
    transport = httpx.ASGITransport(app=middleware, client=("192.0.2.1", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/")).status_code == 200
        refused = await client.get("/")
    assert refused.status_code == 429 and refused.text == "default"


async def test_python_policies_with_callables_for_key_and_cost() -> None:
    heavy = Policy(
        name="upload",
        match="POST /upload",
        limits="10/minute",
        key=lambda scope: dict(scope["headers"]).get(b"x-user", b"").decode() or None,
        cost=lambda scope: 4,
    )
    service = Service(policies=[heavy])
    async with service.client() as client:
        user = {"X-User": "ann"}
        assert await statuses(client, "POST", "/upload", 3, headers=user) == [200, 200, 429]
        # No user: the key callable returned None, so the policy does not apply.
        assert await statuses(client, "POST", "/upload", 5) == [200] * 5


@pytest.mark.parametrize("policies", [EXAMPLE, None])
async def test_exempt_paths_and_own_endpoints_are_never_limited(policies: str | None) -> None:
    every = Policy(name="all", match="*", limits="1/minute")
    service = Service(policies=policies or [every], exempt="/static")
    async with service.client() as client:
        assert await statuses(client, "GET", "/healthz", 5) == [200] * 5
        assert await statuses(client, "GET", "/static/app.js", 5) == [200] * 5


async def test_websocket_handshakes_are_matched_like_get_requests() -> None:
    async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
        await receive()
        await send({"type": "websocket.accept"})
        await send({"type": "websocket.close", "code": 1000})

    ws = Policy(name="ws", match="GET /ws", limits="2/minute")
    settings = Settings(policies=[ws])
    store = MemoryStore(generation_bucket(resolved_policies(settings)))
    middleware = AdmissionMiddleware(app, settings=settings, store=store, handle_signals=False)

    async def handshake(extensions: dict[str, Any]) -> list[dict[str, Any]]:
        sent: list[dict[str, Any]] = []

        async def receive() -> dict[str, Any]:
            return {"type": "websocket.connect"}

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        scope = {
            "type": "websocket",
            "path": "/ws",
            "headers": [],
            "client": ("192.0.2.5", 1),
            "extensions": extensions,
        }
        await middleware(scope, receive, send)
        return sent

    assert (await handshake({}))[0]["type"] == "websocket.accept"
    assert (await handshake({}))[0]["type"] == "websocket.accept"
    closed = await handshake({})
    assert closed == [{"type": "websocket.close", "code": 1013, "reason": "rate"}]
    answered = await handshake({"websocket.http.response": {}})
    assert answered[0]["type"] == "websocket.http.response.start"
    assert answered[0]["status"] == 429
    assert json.loads(answered[1]["body"])["policy"] == "ws"


# --- through Redis, and when Redis fails ----------------------------------------------------


async def test_the_example_file_on_real_redis_in_one_round_trip_each(redis_url: str) -> None:
    import uuid

    prefix = f"admission-test-{uuid.uuid4().hex}"
    settings = Settings(policies=EXAMPLE, storage=redis_url, key_prefix=prefix, rate="1000/hour")
    middleware = AdmissionMiddleware(CountingApp(), settings=settings, handle_signals=False)
    calls: list[int] = []
    redis_store = middleware.store.store  # type: ignore[union-attr]
    original = redis_store._eval_many

    async def counted(keys: list[bytes], args: list[Any]) -> Any:
        calls.append(len(keys))
        return await original(keys, args)

    redis_store._eval_many = counted
    transport = httpx.ASGITransport(app=middleware, client=("192.0.2.77", 1))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            assert (await statuses(client, "POST", "/login", 8)).count(200) == 5
            refused = await client.post("/login")
            assert refused.json()["policy"] == "login"
            assert await statuses(client, "GET", "/login", 3) == [200] * 3
    finally:
        await middleware.store.close()  # type: ignore[union-attr]
        import redis.asyncio as aioredis

        client = aioredis.Redis.from_url(redis_url)
        keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
        if keys:
            await client.delete(*keys)
        await client.aclose()
    # One script call per request: login's two limits and the default's one in the same call.
    assert calls == [3] * 9 + [1] * 3


class DownStore:
    """DownStore is a store whose every call fails, as an unreachable Redis does."""

    async def decide(self, key: str, cost: int = 1) -> Any:
        from admission.errors import StorageError

        raise StorageError("down")

    async def decide_charges(self, charges: Any) -> Any:
        from admission.errors import StorageError

        raise StorageError("down")

    async def check(self) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest.mark.parametrize(("on_error", "expected"), [("local", 5), ("allow", 8), ("deny", 0)])
async def test_a_failing_store_answers_by_on_storage_error(on_error: str, expected: int) -> None:
    settings = Settings(policies=EXAMPLE, storage_timeout=0.01, on_storage_error=on_error)
    middleware = AdmissionMiddleware(
        CountingApp(),
        settings=settings,
        store=DownStore(),
        handle_signals=False,  # type: ignore[arg-type]
    )
    transport = httpx.ASGITransport(app=middleware, client=("192.0.2.78", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        answers = await statuses(client, "POST", "/login", 8)
        assert answers.count(200) == expected
        if on_error == "deny":
            # Nothing is known of the buckets: 503 "storage", not a policy's 429.
            assert set(answers) == {503}
            denied = await client.post("/login")
            assert denied.json()["reason"] == "storage" and "ratelimit" not in denied.headers
        # A path only a shadow policy matches is never refused, whatever the store does.
        assert await statuses(client, "GET", "/export", 3) == [200] * 3
        text = (await client.get("/metrics")).text
    assert samples(text)[("admission_storage_errors_total", ())] >= 1


async def test_the_docs_on_refuse_example_answers_with_its_own_json() -> None:
    from starlette.responses import JSONResponse

    async def too_many(scope: Any, receive: Any, send: Any) -> None:
        refused = admission.refusal(scope)
        assert refused is not None
        response = JSONResponse(
            {"error": "slow down", "policy": refused.policy},
            status_code=refused.status,
            headers={k.decode(): v.decode() for k, v in refused.headers},
        )
        await response(scope, receive, send)

    service = Service(policies=EXAMPLE, on_refuse=too_many)
    async with service.client() as client:
        await statuses(client, "POST", "/login", 5)
        refused = await client.post("/login")
    assert refused.status_code == 429
    assert refused.json() == {"error": "slow down", "policy": "login"}
    assert refused.headers["retry-after"] == "180"
    assert parse_sf_list(refused.headers["ratelimit"])[0][0] == "login#2"


@pytest.mark.parametrize(
    ("headers", "on_admitted", "on_refused"),
    [("all", True, True), ("refused", False, True), ("off", False, False)],
)
async def test_admission_headers_decides_where_the_policy_fields_go(
    headers: str, on_admitted: bool, on_refused: bool
) -> None:
    service = Service(policies=EXAMPLE, headers=headers)
    async with service.client() as client:
        admitted = await client.post("/login")
        await statuses(client, "POST", "/login", 4)
        refused = await client.post("/login")
    assert ("ratelimit" in admitted.headers) is on_admitted
    assert ("ratelimit-policy" in refused.headers) is on_refused
    assert refused.status_code == 429 and refused.headers["retry-after"] == "180"

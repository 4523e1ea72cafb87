"""tests.test_ws_message_limits: a route policy's `message_limits` limit the messages each
client sends on the websockets the policy matches, across all its sockets, through the store
(memory, fakeredis, real Redis): the message over the limit never reaches the application,
the socket is closed with 1008 and a reason, and the metrics count it by policy."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import fakeredis.aioredis
import pytest
import redis
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route, WebSocketRoute
from starlette.testclient import TestClient, WebSocketDenialResponse
from starlette.websockets import WebSocket, WebSocketDisconnect

from admission import AdmissionMiddleware, Policy, Settings, limit
from admission.bucket import Bucket
from admission.config.policies import generation_bucket, load_policies, message_buckets
from admission.errors import PolicyError, StorageError
from admission.stores import MemoryStore, RedisStore, Store
from tests.asgi import ECHOED, ManualClock, echo_text


async def page(request: Any) -> PlainTextResponse:
    return PlainTextResponse("page")


def chat(**fields: Any) -> Policy:
    fields.setdefault("message_limits", ["3/minute"])
    fields.setdefault("key", "header:X-Client")
    return Policy(name="chat", match=["/chat"], **fields)


def _app(
    *policies: Policy, store: Store | None = None, **settings: Any
) -> tuple[Starlette, AdmissionMiddleware]:
    inner = Starlette(
        routes=[
            Route("/chat", page),
            WebSocketRoute("/chat", echo_text),
            WebSocketRoute("/other", echo_text),
        ]
    )
    settings.setdefault("policies", list(policies))
    middleware = AdmissionMiddleware(
        inner, settings=Settings(**settings), store=store, handle_signals=False
    )
    return inner, middleware


def exchange(socket: Any, n: int, tag: str = "m") -> None:
    """exchange sends `n` messages on `socket` and reads each echo."""
    for i in range(n):
        socket.send_text(f"{tag}{i}")
        assert socket.receive_text() == f"{tag}{i}"


def closed_by_next(socket: Any) -> WebSocketDisconnect:
    """closed_by_next sends one more message and returns how the socket was closed."""
    socket.send_text("one too many")
    with pytest.raises(WebSocketDisconnect) as closed:
        socket.receive_text()
    return closed.value


def rejected(text: str) -> dict[tuple[str, str], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        if family.name == "admission_rejected":
            for sample in family.samples:
                if sample.name.endswith("_total"):
                    out[(sample.labels["reason"], sample.labels["policy"])] = sample.value
    return out


@pytest.fixture(params=["memory", "fakeredis", "redis"])
def store_settings(request: pytest.FixtureRequest) -> Iterator[dict[str, Any]]:
    """store_settings is what puts the middleware on each store: memory, fakeredis, or a real
    Redis (under a prefix of the test's own, failing loudly rather than by a fallback)."""
    if request.param == "memory":
        yield {}
        return
    prefix = f"admission-test-{uuid.uuid4().hex}"
    if request.param == "fakeredis":
        store = RedisStore(
            fakeredis.aioredis.FakeRedis(), Bucket(60.0, 1), timeout_s=1.0, prefix=prefix
        )
        yield {"store": store, "on_storage_error": "deny"}
        return
    url = request.getfixturevalue("redis_url")
    yield {"storage": url, "key_prefix": prefix, "on_storage_error": "deny"}
    _delete_keys(url, prefix)


def _delete_keys(url: str, prefix: str) -> list[bytes]:
    """_delete_keys deletes the keys under `prefix` from the Redis at `url`; it answers them."""
    client = redis.Redis.from_url(url)
    try:
        keys = sorted(client.scan_iter(match=f"{prefix}:*"))
        if keys:
            client.delete(*keys)
        return keys
    finally:
        client.close()


def _on(store_settings: dict[str, Any], *policies: Policy) -> AdmissionMiddleware:
    return _app(*policies, **store_settings)[1]


def test_two_sockets_of_one_client_share_the_policys_budget(
    store_settings: dict[str, Any],
) -> None:
    ECHOED.clear()
    app = _on(store_settings, chat())
    headers = {"X-Client": "alice"}
    with TestClient(app) as client:
        with (
            client.websocket_connect("/chat", headers=headers) as one,
            client.websocket_connect("/chat", headers=headers) as two,
        ):
            exchange(one, 2, "a")
            exchange(two, 1, "b")
            closed = closed_by_next(two)
            # The other socket's budget is the same one: spent too.
            closed_one = closed_by_next(one)
        assert (closed.code, closed.reason) == (1008, "ws_message_limit")
        assert (closed_one.code, closed_one.reason) == (1008, "ws_message_limit")
        assert ECHOED == ["a0", "a1", "b0"]
        counts = rejected(client.get("/metrics").text)
    assert counts[("ws_message_limit", "chat")] == 2
    assert counts[("ws_message_rate", "")] == 0


def test_two_clients_do_not_share_a_budget(store_settings: dict[str, Any]) -> None:
    app = _on(store_settings, chat())
    with TestClient(app) as client:
        with client.websocket_connect("/chat", headers={"X-Client": "alice"}) as alice:
            exchange(alice, 3)
            assert closed_by_next(alice).code == 1008
        with client.websocket_connect("/chat", headers={"X-Client": "bob"}) as bob:
            exchange(bob, 3)
            assert closed_by_next(bob).code == 1008


def test_handshakes_and_messages_are_separate_buckets(store_settings: dict[str, Any]) -> None:
    # `limits` count the handshakes, `message_limits` the messages: neither spends the other.
    app = _on(store_settings, chat(limits=["2/minute"], message_limits=["3/minute"]))
    headers = {"X-Client": "alice"}
    with TestClient(app) as client:
        with client.websocket_connect("/chat", headers=headers) as one:
            exchange(one, 3)
            assert closed_by_next(one).code == 1008
        # The messages took nothing from the handshakes' bucket: a second socket is admitted,
        # and its messages are refused, the client's message budget being spent.
        with client.websocket_connect("/chat", headers=headers) as two:
            assert closed_by_next(two).reason == "ws_message_limit"
        # The third handshake is over the policy's `limits`: refused before it is accepted.
        with (
            pytest.raises(WebSocketDenialResponse) as refused,
            client.websocket_connect("/chat", headers=headers),
        ):
            pass
        assert refused.value.status_code == 429
        counts = rejected(client.get("/metrics").text)
    assert counts[("rate", "chat")] == 1
    assert counts[("ws_message_limit", "chat")] == 2


def test_http_requests_do_not_spend_the_message_budget(store_settings: dict[str, Any]) -> None:
    app = _on(store_settings, chat(limits=["100/minute"], message_limits=["3/minute"]))
    headers = {"X-Client": "alice"}
    with TestClient(app) as client:
        for _ in range(10):
            assert client.get("/chat", headers=headers).status_code == 200
        with client.websocket_connect("/chat", headers=headers) as socket:
            exchange(socket, 3)
            assert closed_by_next(socket).code == 1008


def test_a_policy_of_messages_alone_limits_no_request_and_no_other_route() -> None:
    _, app = _app(chat())
    headers = {"X-Client": "alice"}
    with TestClient(app) as client:
        for _ in range(20):
            response = client.get("/chat", headers=headers)
            assert response.status_code == 200 and "ratelimit" not in response.headers
        # Every handshake is admitted: the policy has no `limits`.
        for _ in range(5):
            with client.websocket_connect("/chat", headers=headers):
                pass
        # A route the policy doesn't match is not counted.
        with client.websocket_connect("/other", headers=headers) as other:
            exchange(other, 20)


def test_the_budget_refills_at_the_rate_on_the_stores_clock() -> None:
    clock = ManualClock(1000.0)
    store = MemoryStore(Bucket(60.0, 1), clock=clock)
    _, app = _app(chat(message_limits=["3/minute"]), store=store)
    headers = {"X-Client": "alice"}
    with TestClient(app) as client:
        with client.websocket_connect("/chat", headers=headers) as socket:
            exchange(socket, 3)
            # One token comes back every 20 s: at 19.9 s not yet, at 20 s one message more.
            clock.now += 19.9
            assert closed_by_next(socket).code == 1008
        with client.websocket_connect("/chat", headers=headers) as socket:
            clock.now += 0.1
            exchange(socket, 1)
            assert closed_by_next(socket).code == 1008
        with client.websocket_connect("/chat", headers=headers) as socket:
            clock.now += 60.0
            exchange(socket, 3)
            assert closed_by_next(socket).code == 1008


def test_every_message_limit_must_admit() -> None:
    clock = ManualClock(0.0)
    store = MemoryStore(Bucket(3600.0, 1), clock=clock)
    _, app = _app(chat(message_limits=["5/minute", "6/hour"]), store=store)
    headers = {"X-Client": "alice"}
    with TestClient(app) as client:
        with client.websocket_connect("/chat", headers=headers) as socket:
            exchange(socket, 5)
            assert closed_by_next(socket).code == 1008
        clock.now += 60.0
        # The minute's bucket is full again; the hour's holds one message more.
        with client.websocket_connect("/chat", headers=headers) as socket:
            exchange(socket, 1)
            assert closed_by_next(socket).code == 1008


def test_the_connection_rate_and_the_policy_both_apply() -> None:
    _, app = _app(chat(message_limits=["5/minute"]), ws_message_rate="2/minute")
    headers = {"X-Client": "alice"}
    with TestClient(app) as client:
        for _ in range(2):
            with client.websocket_connect("/chat", headers=headers) as socket:
                exchange(socket, 2)
                assert closed_by_next(socket).reason == "ws_message_rate"
        # Four messages taken from the client's five (the refused ones took nothing).
        with client.websocket_connect("/chat", headers=headers) as socket:
            exchange(socket, 1)
            assert closed_by_next(socket).reason == "ws_message_limit"
        counts = rejected(client.get("/metrics").text)
    assert counts[("ws_message_rate", "")] == 2
    assert counts[("ws_message_limit", "chat")] == 1


def test_a_shadow_policy_counts_its_would_be_refusals_and_closes_nothing() -> None:
    _, app = _app(chat(message_limits=["2/minute"], enforce=False))
    with TestClient(app) as client:
        with client.websocket_connect("/chat", headers={"X-Client": "alice"}) as socket:
            exchange(socket, 5)
        text = client.get("/metrics").text
    assert 'admission_shadow_refusals_total{policy="chat"} 3.0' in text
    # Enforced policies alone refuse: a shadow one has no refusal series.
    assert ("ws_message_limit", "chat") not in rejected(text)


class DownStore:
    """DownStore is a store whose every call fails, as an unreachable Redis does."""

    async def decide(self, key: str, cost: int = 1) -> Any:
        raise StorageError("down")

    async def decide_charges(self, charges: Any) -> Any:
        raise StorageError("down")

    async def check(self) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("on_error", ["local", "allow", "deny"])
def test_a_failing_store_answers_messages_by_on_storage_error(on_error: str) -> None:
    store: Any = DownStore()
    _, app = _app(chat(), store=store, storage_timeout=0.01, on_storage_error=on_error)
    with TestClient(app) as client:
        with client.websocket_connect("/chat", headers={"X-Client": "alice"}) as socket:
            if on_error == "deny":
                # Nothing is known of the client's budget: closed as the store's failure,
                # "try again later", not as the client's violation.
                closed = closed_by_next(socket)
                assert (closed.code, closed.reason) == (1013, "storage")
            elif on_error == "local":
                # A bucket of this process's own, at the same rate.
                exchange(socket, 3)
                assert closed_by_next(socket).code == 1008
            else:
                exchange(socket, 10)
        counts = rejected(client.get("/metrics").text)
    assert counts[("storage", "")] == (1 if on_error == "deny" else 0)


def test_route_limits_declare_message_limits() -> None:
    @limit(message_limits="2/minute", key="header:X-Client", name="room")
    async def room(websocket: WebSocket) -> None:
        await echo_text(websocket)

    app = Starlette(routes=[WebSocketRoute("/room", room), WebSocketRoute("/free", echo_text)])
    app.add_middleware(AdmissionMiddleware, handle_signals=False)
    headers = {"X-Client": "alice"}
    with TestClient(app) as client:
        with client.websocket_connect("/room", headers=headers) as one:
            exchange(one, 1)
            with client.websocket_connect("/room", headers=headers) as two:
                exchange(two, 1)
                assert closed_by_next(two).reason == "ws_message_limit"
        with client.websocket_connect("/free", headers=headers) as free:
            exchange(free, 10)
        counts = rejected(client.get("/metrics").text)
    assert counts[("ws_message_limit", "room")] == 1


def test_the_policy_file_takes_message_limits(tmp_path: Any) -> None:
    path = tmp_path / "policies.toml"
    path.write_text(
        '[[policy]]\nname = "chat"\nmatch = ["/chat"]\nmessage_limits = ["10/second"]\n'
        '[[policy]]\nname = "both"\nmatch = ["/ws/*"]\nlimits = "5/minute"\n'
        'message_limits = "100/minute"\n'
    )
    chat_policy, both = load_policies(path)
    assert chat_policy.limits == () and chat_policy.message_limits == ("10/second",)
    assert both.limits == ("5/minute",) and both.message_limits == ("100/minute",)
    assert "message_limits=100/minute" in both.describe()
    path.write_text('[[policy]]\nname = "chat"\nmatch = ["/chat"]\n')
    with pytest.raises(PolicyError, match="limits: missing: every policy needs limits"):
        load_policies(path)
    path.write_text('[[policy]]\nname = "c"\nmatch = "/c"\nmessage_limits = ["often"]\n')
    with pytest.raises(PolicyError, match="message_limits: 'often' is not a rate"):
        load_policies(path)


def test_message_buckets_are_named_apart_from_every_request_bucket() -> None:
    # A class may be called "msg": its bucket `chat:msg:0` is not the messages' `chat:@msg:0`.
    policy = Policy(
        name="chat",
        match="/chat",
        limits="1/second",
        class_header="X-Plan",
        classes={"msg": ["2/second"]},
        message_limits=["3/second", "100/hour"],
    )
    assert [name for name, _ in message_buckets(policy)] == ["chat:@msg:0", "chat:@msg:1"]
    # A memory store keeps keys as long as the slowest message limit needs.
    assert generation_bucket([policy]).fill_time_s == 3600.0


def test_each_message_is_one_store_call_for_every_limit_it_meets(redis_url: str) -> None:
    prefix = f"admission-test-{uuid.uuid4().hex}"
    room = Policy(name="room", match="/chat*", key="header:X-Client", message_limits="50/minute")
    _, app = _app(
        chat(message_limits=["3/minute", "100/hour"]),
        room,
        storage=redis_url,
        key_prefix=prefix,
        on_storage_error="deny",
    )
    calls: list[int] = []
    redis_store: Any = app.store.store  # type: ignore[union-attr]
    original = redis_store._eval_many

    async def counted(keys: list[bytes], args: list[Any]) -> Any:
        calls.append(len(keys))
        return await original(keys, args)

    redis_store._eval_many = counted
    with (
        TestClient(app) as client,
        client.websocket_connect("/chat", headers={"X-Client": "alice"}) as socket,
    ):
        exchange(socket, 3)
        assert closed_by_next(socket).code == 1008
    # One script call per message, its three buckets in it: chat's two and room's one.
    assert calls == [3] * 4
    names = [key.rsplit(b"}:", 1)[1] for key in _delete_keys(redis_url, prefix)]
    assert sorted(names) == [b"chat:@msg:0", b"chat:@msg:1", b"room:@msg:0"]


def test_the_memory_store_decides_each_message_without_a_coroutine() -> None:
    _, app = _app(chat())
    limiter: Any = app.shared.messages
    assert limiter is not None and limiter.synchronous
    calls: list[str] = []
    take, decide = limiter._take, limiter._sync

    def taken(runs: Any, now: float) -> Any:
        calls.append("take_all_at")
        return take(runs, now)

    def decided(charges: Any, now: float) -> Any:
        calls.append("decide_charges_at")
        return decide(charges, now)

    limiter._take, limiter._sync = taken, decided

    async def no_coroutine(charges: Any) -> Any:
        raise AssertionError("the memory store's decisions are not awaited")

    limiter.take = no_coroutine
    with (
        TestClient(app) as client,
        client.websocket_connect("/chat", headers={"X-Client": "alice"}) as socket,
    ):
        exchange(socket, 3)
        assert closed_by_next(socket).code == 1008
    # Each admitted message in the one pass; the refused one is told in the general path.
    assert calls == ["take_all_at"] * 4 + ["decide_charges_at"]


def test_message_refusals_reach_opentelemetry_under_the_refusals_twin() -> None:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import InMemoryMetricReader

    reader = InMemoryMetricReader()
    inner, _ = _app()
    app = AdmissionMiddleware(
        inner,
        settings=Settings(policies=[chat()], ws_message_rate="5/minute", metrics="otel"),
        handle_signals=False,
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    with TestClient(app) as client:
        for who in ("alice", "bob"):
            with client.websocket_connect("/chat", headers={"X-Client": who}) as socket:
                exchange(socket, 3)
                assert closed_by_next(socket).reason == "ws_message_limit"
        with client.websocket_connect("/other") as socket:
            exchange(socket, 5)
            assert closed_by_next(socket).reason == "ws_message_rate"
    data = reader.get_metrics_data()
    assert data is not None
    refused = {}
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "admission.requests.refused":
                    for point in metric.data.data_points:
                        refused[tuple(sorted(point.attributes.items()))] = point.value
    by_policy = (("admission.policy", "chat"), ("admission.reason", "ws_message_limit"))
    assert refused[by_policy] == 2
    assert refused[(("admission.reason", "ws_message_rate"),)] == 1


async def test_admission_reset_of_a_policy_clears_its_message_buckets_too() -> None:
    from admission.charges import Charge
    from admission.stores.reset import reset_client

    policy = chat(limits="5/minute", message_limits="3/minute")
    store = RedisStore(
        fakeredis.aioredis.FakeRedis(), Bucket(60.0, 1), timeout_s=1.0, prefix="reset-test"
    )
    ((name, limit),) = message_buckets(policy)
    handshake = Charge("h:alice", "chat::0", policy.resolve(policy.limits)[0].bucket, 1)
    for _ in range(3):
        assert (await store.decide_charges([Charge("h:alice", name, limit.bucket, 1)])).admitted
    assert (await store.decide_charges([handshake])).admitted
    assert not (await store.decide_charges([Charge("h:alice", name, limit.bucket, 1)])).admitted
    # The handshakes' bucket and the messages' one, both the policy's.
    assert await reset_client(store, "h:alice", "chat") == 2
    assert (await store.decide_charges([Charge("h:alice", name, limit.bucket, 1)])).admitted
    await store.close()


def test_a_policy_needs_limits_or_message_limits() -> None:
    with pytest.raises(PolicyError, match="limits: expected one or more rates"):
        Policy(name="chat", match="/chat")
    with pytest.raises(PolicyError, match="message_limits: 'often' is not a rate"):
        Policy(name="chat", match="/chat", message_limits=["often"])
    # What applies to requests alone needs request limits.
    with pytest.raises(PolicyError, match="charge_when: needs limits"):
        Policy(name="chat", match="/chat", message_limits="1/second", charge_when="4xx")
    with pytest.raises(PolicyError, match="classes: needs limits"):
        Policy(
            name="chat",
            match="/chat",
            message_limits="1/second",
            class_header="X-Plan",
            classes={"pro": "5/second"},
        )

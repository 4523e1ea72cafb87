"""Priority shedding and the adaptive window as an HTTP client sees them, through the
middleware in process (httpx's ASGI transport): held requests wait on an event, never on time.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from admission import AdmissionMiddleware, Settings
from admission.bucket import Bucket
from admission.concurrency.window import CRITICAL, DEFAULT, SHEDDABLE
from admission.stores.memory import MemoryStore

SETTLE_S = 5.0


class HoldingApp:
    """HoldingApp answers 200; requests to /hold wait until `release` is set, /slow sleeps
    for `slow_s` (to meet a deadline), and every call is counted."""

    def __init__(self) -> None:
        self.calls = 0
        self.held = 0
        self.release = asyncio.Event()
        self.slow_s = 10.0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.calls += 1
        if scope["path"] == "/hold":
            self.held += 1
            try:
                await self.release.wait()
            finally:
                self.held -= 1
        elif scope["path"] == "/slow":
            await asyncio.sleep(self.slow_s)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"app"})


class Service:
    """Service is the middleware around a holding app, with a memory store when rated."""

    def __init__(self, **settings: Any) -> None:
        self.app = HoldingApp()
        self.settings = Settings(**settings)
        store = None
        if self.settings.rate is not None:
            bucket = Bucket(self.settings.emission_interval_s, self.settings.capacity)
            store = MemoryStore(bucket, clock=lambda: 100.0)
        self.middleware = AdmissionMiddleware(
            self.app, settings=self.settings, store=store, handle_signals=False
        )

    def client(self) -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.middleware, client=("192.0.2.10", 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def until(predicate: Any, what: str) -> None:
    deadline = asyncio.get_running_loop().time() + SETTLE_S
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.001)


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def cls(name: str) -> dict[str, str]:
    return {"X-Priority": name}


async def hold(service: Service, client: httpx.AsyncClient, name: str) -> asyncio.Task[Any]:
    """hold starts a /hold request of class `name` and waits until the app has it."""
    before = service.app.held
    task = asyncio.create_task(client.get("/hold", headers=cls(name)))
    await until(lambda: service.app.held == before + 1, f"a held {name} request")
    return task


async def test_window_of_ten_sheds_sheddable_at_eight_default_at_nine_critical_at_ten() -> None:
    service = Service(window=10, priority="header:X-Priority")
    async with service.client() as client:
        held = [await hold(service, client, "sheddable") for _ in range(8)]
        shed = await client.get("/hold", headers=cls("sheddable"))
        held.append(await hold(service, client, "default"))
        shed_default = await client.get("/hold", headers=cls("default"))
        held.append(await hold(service, client, "critical"))
        full = await client.get("/hold", headers=cls("critical"))
        assert service.app.held == 10
        metrics = samples((await client.get("/metrics")).text)
        ready = (await client.get("/readyz")).json()
        service.app.release.set()
        assert [(await task).status_code for task in held] == [200] * 10
    for response, reason in ((shed, "shed"), (shed_default, "shed"), (full, "window")):
        assert response.status_code == 429
        assert int(response.headers["retry-after"]) >= 1
        assert response.headers["content-type"] == "application/problem+json"
        assert json.loads(response.content)["reason"] == reason
    assert service.app.calls == 10  # the refused never reached the application
    assert metrics[("admission_shed_total", (("priority", "sheddable"),))] == 1
    assert metrics[("admission_shed_total", (("priority", "default"),))] == 1
    assert metrics[("admission_shed_total", (("priority", "critical"),))] == 0
    assert metrics[("admission_rejected_total", (("policy", ""), ("reason", "shed")))] == 2
    assert metrics[("admission_rejected_total", (("policy", ""), ("reason", "window")))] == 1
    assert metrics[("admission_window_limit", ())] == 10
    assert ready["window"] == 10


async def test_a_shed_request_gets_the_window_status_and_takes_no_token() -> None:
    service = Service(
        window=10,
        priority="header:X-Priority",
        window_status=503,
        rate="20/minute",
        burst=9,
    )
    async with service.client() as client:
        held = [await hold(service, client, "default") for _ in range(8)]
        shed = [await client.get("/hold", headers=cls("sheddable")) for _ in range(5)]
        service.app.release.set()
        for task in held:
            assert (await task).status_code == 200
        # 8 tokens of 9 went to the admitted requests: one is left, whatever was shed.
        last = await client.get("/", headers=cls("sheddable"))
        over = await client.get("/", headers=cls("critical"))
    assert {r.status_code for r in shed} == {503}
    assert all(json.loads(r.content)["reason"] == "shed" for r in shed)
    assert all(int(r.headers["retry-after"]) >= 1 for r in shed)
    assert last.status_code == 200
    assert over.status_code == 429 and json.loads(over.content)["reason"] == "rate"


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, DEFAULT),
        ({"X-Priority": "critical"}, CRITICAL),
        ({"X-Priority": "  Critical "}, CRITICAL),
        ({"X-Priority": "SHEDDABLE"}, SHEDDABLE),
        ({"X-Priority": "default"}, DEFAULT),
        ({"X-Priority": "urgent"}, DEFAULT),
        ({"X-Priority": ""}, DEFAULT),
        ({"X-Priority": "critical" * 1000}, DEFAULT),
        ({"X-Priority": "crit\u00edcal"}, DEFAULT),
    ],
)
def test_the_class_comes_from_the_header_and_anything_else_is_default(
    headers: dict[str, str], expected: int
) -> None:
    from admission.concurrency.priority import priority_from

    read = priority_from("header:X-Priority")
    assert read is not None
    raw = [(k.lower().encode(), v.encode("utf-8")) for k, v in headers.items()]
    assert read({"headers": raw}) == expected


def test_a_repeated_priority_header_is_default() -> None:
    from admission.concurrency.priority import priority_from

    read = priority_from("header:X-Priority")
    assert read is not None
    twice = [(b"x-priority", b"critical"), (b"x-priority", b"critical")]
    assert read({"headers": twice}) == DEFAULT
    assert priority_from(None) is None


async def test_without_a_priority_source_every_request_has_the_whole_window() -> None:
    service = Service(window=10)
    async with service.client() as client:
        held = [await hold(service, client, "sheddable") for _ in range(10)]
        full = await client.get("/hold", headers=cls("critical"))
        service.app.release.set()
        for task in held:
            assert (await task).status_code == 200
    assert json.loads(full.content)["reason"] == "window"


async def test_a_freed_slot_goes_to_the_critical_waiter_before_earlier_default_ones() -> None:
    service = Service(window=2, priority="header:X-Priority", queue_timeout=5, max_waiters=4)
    window = service.middleware.window
    assert window is not None
    async with service.client() as client:
        held = [await hold(service, client, "critical") for _ in range(2)]
        order: list[str] = []

        async def wait(name: str) -> None:
            response = await client.get("/", headers=cls(name))
            assert response.status_code == 200
            order.append(name)

        waiters = [asyncio.create_task(wait("default"))]
        await until(lambda: window.waiting == 1, "the default waiter")
        waiters.append(asyncio.create_task(wait("critical")))
        await until(lambda: window.waiting == 2, "the critical waiter")
        service.app.release.set()
        await asyncio.gather(*held, *waiters)
    assert order == ["critical", "default"]


# --- the adaptive window -------------------------------------------------------------------


async def test_auto_window_starts_at_four_and_shows_its_size_in_readyz_and_metrics() -> None:
    service = Service(window="auto", window_min=2, window_max=50)
    async with service.client() as client:
        ready = (await client.get("/readyz")).json()
        metrics = samples((await client.get("/metrics")).text)
    assert ready["window"] == 4
    assert metrics[("admission_window_limit", ())] == 4
    assert metrics[("admission_window_size", (("kind", "http"),))] == 4
    # Websockets keep a fixed window: the adaptive one's maximum.
    assert service.middleware.websocket_window is not None
    assert service.middleware.websocket_window.size == 50


async def test_completed_requests_feed_latency_deadlines_feed_drops_hang_ups_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    service = Service(window="auto", request_timeout=0.05)
    adaptive = service.middleware.adaptive
    assert adaptive is not None
    seen: list[tuple[str, float]] = []
    monkeypatch.setattr(
        adaptive, "record", lambda service_s, now, key, at: seen.append(("ok", service_s))
    )
    monkeypatch.setattr(adaptive, "drop", lambda now: seen.append(("drop", 0.0)))
    async with service.client() as client:
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/slow")).status_code == 504
        assert (await client.get("/missing-app-error", headers={"x": "y"})).status_code == 200
    assert [kind for kind, _ in seen] == ["ok", "drop", "ok"]
    assert all(0 <= latency < 5 for _, latency in seen)


async def test_a_client_that_hangs_up_feeds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    service = Service(window="auto")
    adaptive = service.middleware.adaptive
    assert adaptive is not None
    seen: list[str] = []
    monkeypatch.setattr(adaptive, "record", lambda service_s, now, key, at: seen.append("ok"))
    monkeypatch.setattr(adaptive, "drop", lambda now: seen.append("drop"))
    disconnected = asyncio.Event()

    async def receive() -> dict[str, Any]:
        await disconnected.wait()
        return {"type": "http.disconnect"}

    async def app(scope: dict[str, Any], receive_: Any, send: Any) -> None:
        message = await receive_()  # the body...
        message = await receive_()  # ...then the hang-up
        assert message["type"] == "http.disconnect"

    service.middleware.app = app
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/upload",
        "headers": [],
        "client": ("192.0.2.10", 1),
        "query_string": b"",
    }
    first = True

    async def receive_once() -> dict[str, Any]:
        nonlocal first
        if first:
            first = False
            return {"type": "http.request", "body": b"x", "more_body": False}
        return await receive()

    task = asyncio.create_task(service.middleware(scope, receive_once, send))
    await asyncio.sleep(0)
    disconnected.set()
    await asyncio.wait_for(task, SETTLE_S)
    assert seen == []


async def test_a_failing_application_feeds_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    service = Service(window="auto")
    adaptive = service.middleware.adaptive
    assert adaptive is not None
    seen: list[str] = []
    monkeypatch.setattr(adaptive, "record", lambda service_s, now, key, at: seen.append("ok"))

    async def boom(scope: dict[str, Any], receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    service.middleware.app = boom
    transport = httpx.ASGITransport(app=service.middleware, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        assert (await client.get("/")).status_code == 500
    assert seen == []
    assert service.middleware.window is not None and service.middleware.window.used == 0


async def test_the_auto_window_shrinks_when_latency_climbs() -> None:
    from admission.concurrency.adaptive import AdaptiveLimit, LimitParams

    service = Service(window="auto", window_min=10, window_max=100)
    adaptive = service.middleware.adaptive
    window = service.middleware.window
    assert adaptive is not None and window is not None
    # Every request ends an interval: the arithmetic's timing is tested on a manual clock in
    # test_adaptive.py; here the wiring from the request path to the window's size is.
    params = LimitParams(minimum=1, maximum=100, initial=10, interval_s=0.0, min_samples=1)
    service.middleware.adaptive = adaptive = AdaptiveLimit(params, window.resize)
    service.middleware.concurrency.adaptive = adaptive
    adaptive.estimate = dataclasses.replace(adaptive.estimate, slow_start=False)
    app = service.app
    async with service.client() as client:
        app.slow_s = 0.002
        for _ in range(3):
            assert (await client.get("/slow")).status_code == 200
        app.slow_s = 0.2  # 100 times slower: queueing, twice in a row
        for _ in range(2):
            assert (await client.get("/slow")).status_code == 200
        ready = (await client.get("/readyz")).json()
    assert window.size < 10
    assert ready["window"] == window.size == adaptive.limit

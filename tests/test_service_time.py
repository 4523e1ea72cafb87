"""Tests of what the adaptive window measures of a request: its service time, from admission
(or the end of its body, when that comes later) to the response's start, on a manual clock; and
its class, the route the application served it on and its status."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from admission.config.settings import Settings
from admission.middleware import AdmissionMiddleware
from admission.request.exchange import Exchange, Shared, TimedExchange, Timeouts
from tests.asgi import ManualClock, http_scope

Message = dict[str, Any]


def exchange(clock: ManualClock, body: list[tuple[float, bytes, bool]], kind: type = Exchange):
    """exchange is an exchange that times its service on `clock`, whose client sends `body`:
    (seconds before the chunk arrives, the chunk, more_body)."""
    chunks = list(body)
    sent: list[Message] = []

    async def receive() -> Message:
        if not chunks:
            return {"type": "http.disconnect"}
        wait, data, more = chunks.pop(0)
        clock.advance(wait)
        return {"type": "http.request", "body": data, "more_body": more}

    async def send(message: Message) -> None:
        sent.append(message)

    shared = Shared(Timeouts(), SimpleNamespace(begun=False), clock=clock.time, times_service=True)
    return kind(shared, http_scope(method="POST"), receive, send)


def reader(clock: ManualClock, work_s: float, status: int = 201) -> Any:
    async def app(scope: Any, receive: Any, send: Any) -> None:
        while (await receive()).get("more_body"):
            pass
        clock.advance(work_s)
        await send({"type": "http.response.start", "status": status, "headers": []})
        clock.advance(0.5)  # sending the body: the client's pace, not the service's
        await send({"type": "http.response.body", "body": b"done"})

    return app


@pytest.mark.parametrize("kind", [Exchange, TimedExchange])
async def test_a_slow_upload_is_not_service_time(kind: type) -> None:
    clock = ManualClock(100.0)
    # The body trickles in over 3 s; the handler then works 20 ms.
    ex = exchange(clock, [(1.0, b"a", True), (1.0, b"b", True), (1.0, b"c", False)], kind)
    await ex.run(reader(clock, 0.020))
    assert ex.service_s() == pytest.approx(0.020)
    assert ex.latency_s == pytest.approx(3.52)  # the slot was held for all of it
    assert ex.status == 201


async def test_a_response_before_the_body_is_timed_from_admission() -> None:
    clock = ManualClock(100.0)
    ex = exchange(clock, [(0.0, b"a", True), (5.0, b"b", False)])

    async def early(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        clock.advance(0.010)
        await send({"type": "http.response.start", "status": 413, "headers": []})
        await send({"type": "http.response.body", "body": b""})
        await receive()  # the rest of the body, read after answering

    await ex.run(early)
    assert ex.service_s() == pytest.approx(0.010)
    assert ex.status == 413


async def test_without_the_adaptive_window_nothing_is_timed() -> None:
    clock = ManualClock(100.0)
    ex = exchange(clock, [(1.0, b"a", False)])
    ex.shared.times_service = False
    await ex.run(reader(clock, 0.020))
    assert ex.body_at == 0.0 and ex.served_at == 0.0 and ex.status == 0
    assert ex.service_s() == ex.latency_s  # (what it would read, never read)


async def test_classes_are_the_route_served_and_the_status_not_the_path() -> None:
    async def item(request: Request) -> Response:
        return PlainTextResponse("item", status_code=200 if request.path_params["n"] else 404)

    async def other(request: Request) -> Response:
        return PlainTextResponse("other")

    app = Starlette(routes=[Route("/items/{n:int}", item), Route("/other", other)])
    mw = AdmissionMiddleware(app, settings=Settings(window="auto"), handle_signals=False)
    assert mw.adaptive is not None
    seen: list[object] = []
    mw.adaptive.record = lambda service_s, now, key, at: seen.append(key)  # type: ignore[method-assign]
    transport = httpx.ASGITransport(app=mw)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        for path in ("/items/1", "/items/2", "/items/0", "/other", "/nope-a", "/nope-b"):
            await client.get(path)
    one, two, missing, other_, nope_a, nope_b = seen
    # Two items are one class; a 404 of the route another; random paths one more, whatever
    # the path.
    assert one == two and missing != one and other_ not in (one, missing)
    assert nope_a == nope_b and nope_a not in (one, missing, other_)

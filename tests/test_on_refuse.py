"""tests.test_on_refuse: one refusal hook for every refusal. `Settings(on_refuse=app)` answers
rate and storage refusals, a full window, a shed, the drain, a body that doesn't fit and a
timeout before the response began, each with its `Refusal` (reason, status, policy, decision,
headers and the `Reason` itself) in the scope, so a service gives its clients one error shape."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from admission import AdmissionMiddleware, Settings, reasons, refusal
from admission.refusal import Refusal
from tests.asgi import Client, finish, http_scope, no_body, until

Message = dict[str, Any]
SEEN: list[Refusal] = []


async def own_shape(scope: Message, receive: Any, send: Any) -> None:
    found = refusal(scope)
    assert found is not None
    SEEN.append(found)
    body = json.dumps({"error": found.reason, "code": found.status}).encode()
    await send({"type": "http.response.start", "status": found.status, "headers": found.headers})
    await send({"type": "http.response.body", "body": body})


class Held:
    """Held holds /hold requests until `release`; /slow sleeps past any deadline."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.holding = 0

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["path"] == "/slow":
            await asyncio.sleep(60)
        if scope["path"] == "/hold":
            self.holding += 1
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _middleware(**settings: Any) -> tuple[AdmissionMiddleware, Held]:
    app = Held()
    mw = AdmissionMiddleware(
        app, settings=Settings(on_refuse=own_shape, **settings), handle_signals=False
    )
    mw._start()
    return mw, app


async def _request(mw: AdmissionMiddleware, path: str = "/", **kw: Any) -> Client:
    client = Client(kw.pop("messages", no_body()))
    scope = http_scope(path, kw.pop("method", "GET"), kw.pop("headers", ()))
    await finish(mw(scope, client.receive, client.send))
    return client


def _own(client: Client, reason: str, status: int) -> Refusal:
    assert client.status == status
    assert json.loads(client.body) == {"error": reason, "code": status}
    found = SEEN[-1]
    assert found.reason == reason and found.cause.label == reason
    return found


async def test_a_full_window_is_answered_by_the_app_hook() -> None:
    mw, app = _middleware(window=1)
    first = Client(no_body())
    held = asyncio.ensure_future(mw(http_scope("/hold"), first.receive, first.send))
    await until(lambda: app.holding == 1)
    found = _own(await _request(mw), "window", 429)
    assert found.policy == "" and found.decision is None
    assert (b"retry-after", b"1") in found.headers
    app.release.set()
    await finish(held)


async def test_a_shed_is_answered_by_the_app_hook() -> None:
    mw, app = _middleware(window=2, priority="header:X-Priority", shed_at="sheddable:0.5,default:1")
    first = Client(no_body())
    held = asyncio.ensure_future(mw(http_scope("/hold"), first.receive, first.send))
    await until(lambda: app.holding == 1)
    _own(await _request(mw, headers=[(b"x-priority", b"sheddable")]), "shed", 429)
    app.release.set()
    await finish(held)


async def test_a_rate_refusal_is_answered_by_the_app_hook_with_its_decision() -> None:
    mw, _ = _middleware(rate="1/minute")
    assert (await _request(mw)).status == 200
    found = _own(await _request(mw), "rate", 429)
    assert found.policy == "default" and found.decision is not None
    assert found.cause is reasons.RATE


async def test_the_drain_is_answered_by_the_app_hook() -> None:
    mw, _ = _middleware(drain_delay=0)
    drained = asyncio.ensure_future(mw.drain())
    await until(lambda: not mw.drain_state.accepting)
    _own(await _request(mw), "draining", 503)
    await finish(drained)


async def test_a_body_that_does_not_fit_is_answered_by_the_app_hook() -> None:
    mw, _ = _middleware(buffer_body=10, buffer_body_total=10)
    body = [{"type": "http.request", "body": b"x" * 20, "more_body": False}]
    headers = [(b"content-length", b"20")]
    _own(await _request(mw, method="POST", headers=headers, messages=body), "buffers_full", 503)


async def test_a_deadline_before_the_response_is_answered_by_the_app_hook() -> None:
    mw, _ = _middleware(request_timeout=0.05)
    _own(await _request(mw, "/slow"), "deadline", 504)


@pytest.mark.parametrize("hook", [False, True], ids=["default", "hook"])
async def test_without_the_hook_the_answer_is_problem_json(hook: bool) -> None:
    app = Held()
    settings = Settings(window=1, on_refuse=own_shape if hook else None)
    mw = AdmissionMiddleware(app, settings=settings, handle_signals=False)
    mw._start()
    first = Client(no_body())
    held = asyncio.ensure_future(mw(http_scope("/hold"), first.receive, first.send))
    await until(lambda: app.holding == 1)
    refused = await _request(mw)
    assert refused.status == 429
    document = json.loads(refused.body)
    assert ("error" in document) is hook and ("reason" in document) is not hook
    assert mw.stats.rejected["window"] == 1
    app.release.set()
    await finish(held)

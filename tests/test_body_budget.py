"""Bodies read ahead share one budget (`ADMISSION_BUFFER_BODY_TOTAL`): a body that doesn't fit
is refused at once with 503 `buffers_full`, holding nothing, and every byte taken is given
back on every path a request can take, whatever the client does."""

from __future__ import annotations

import asyncio
import gc
import json
from typing import Any

import pytest

from admission import AdmissionMiddleware, Settings
from admission.reasons import BUFFERS_FULL, DISCONNECT, READ_TIMEOUT
from admission.request.body import Budget, buffer_body
from tests.asgi import Client, finish, until
from tests.test_body import Feed, chunk, http_scope

Message = dict[str, Any]


async def test_a_body_that_does_not_fit_is_refused_holding_nothing() -> None:
    budget = Budget(100)
    first = await buffer_body(
        http_scope(60), Feed(chunk(b"x" * 60, False)), 60, timeout_s=None, budget=budget
    )
    assert budget.available == 40
    feed = Feed(chunk(b"y" * 30), chunk(b"y" * 30, False))
    assert (
        await buffer_body(http_scope(60), feed, 60, timeout_s=None, budget=budget) is BUFFERS_FULL
    )
    # Its first 30 bytes fitted, then were given back with the refusal.
    assert budget.available == 40
    assert not isinstance(first, type(BUFFERS_FULL))
    assert [await first() for _ in range(1)] == [chunk(b"x" * 60, False)]
    assert budget.available == 100


@pytest.mark.parametrize("end", ["disconnect", "timeout"])
async def test_a_body_cut_short_while_read_gives_its_bytes_back(end: str) -> None:
    budget = Budget(100)
    feed = Feed(chunk(b"x" * 30))
    if end == "disconnect":
        feed.put({"type": "http.disconnect"})
    read = await buffer_body(http_scope(60), feed, 60, timeout_s=0.05, budget=budget)
    assert read is (DISCONNECT if end == "disconnect" else READ_TIMEOUT)
    assert budget.available == 100


async def test_a_body_never_read_by_the_app_is_given_back_when_the_request_ends() -> None:
    budget = Budget(100)
    read = await buffer_body(
        http_scope(60), Feed(chunk(b"x" * 60, False)), 60, timeout_s=None, budget=budget
    )
    assert budget.available == 40
    del read
    gc.collect()
    assert budget.available == 100


class HoldingApp:
    """HoldingApp reads the whole body unless the path is /ignore, then holds the request
    until `release` is set."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.holding = 0

    async def __call__(self, scope: Message, receive: Any, send: Any) -> None:
        if scope["path"] != "/ignore":
            while (await receive()).get("more_body"):
                pass
        self.holding += 1
        await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def _post(path: str, body: bytes, more: bool = False) -> tuple[dict[str, Any], Client]:
    from tests.asgi import http_scope as scope_of

    scope = scope_of(
        path, "POST", [(b"content-length", str(len(body) + (10 if more else 0)).encode())]
    )
    return scope, Client([chunk(body, more)])


async def _settle(app: AdmissionMiddleware) -> None:
    gc.collect()
    assert app.body_budget is not None
    await until(lambda: app.body_budget.available == app.body_budget.total, what="budget back")


@pytest.mark.parametrize("path", ["/read", "/ignore"])
async def test_the_budget_is_whole_again_after_every_kind_of_request(path: str) -> None:
    app = HoldingApp()
    settings = Settings(buffer_body=60, buffer_body_total=100, window=1, rate="2/minute")
    mw = AdmissionMiddleware(app, settings=settings, handle_signals=False)
    mw._start()
    assert mw.body_budget is not None
    # 1: admitted, holding its body (or not reading it) while the app holds it.
    scope, first = _post(path, b"a" * 60)
    task = asyncio.ensure_future(mw(scope, first.receive, first.send))
    await until(lambda: app.holding == 1, what="first request held")
    # 2: its body fits what is left? 60 > 40 (when the first is unread): refused, 503.
    scope, second = _post(path, b"b" * 60)
    await finish(mw(scope, second.receive, second.send))
    if path == "/ignore":
        assert second.status == 503
        assert json.loads(second.body)["reason"] == "buffers_full"
        assert second.headers[b"retry-after"] == b"1"
    else:
        # The first one's body was read by its app: the budget had room; the window had not.
        assert second.status == 429
    # 3: a small body fits, then is refused by the full window: its bytes come back.
    scope, third = _post(path, b"c" * 10)
    await finish(mw(scope, third.receive, third.send))
    assert third.status == 429
    app.release.set()
    await finish(task)
    assert first.status == 200
    # 4: refused by the rate limit (2/minute, both used) after its body was read ahead.
    scope, fourth = _post(path, b"d" * 20)
    await finish(mw(scope, fourth.receive, fourth.send))
    scope, fifth = _post(path, b"e" * 20)
    await finish(mw(scope, fifth.receive, fifth.send))
    assert fifth.status == 429 and json.loads(fifth.body)["reason"] == "rate"
    await _settle(mw)


async def test_many_stalled_bodies_hold_no_more_than_the_budget() -> None:
    # 200 clients each send half of a 1 KiB body, then stall: the first 10 fit a 5 KiB
    # budget, the rest are refused at once instead of each holding its half.
    settings = Settings(buffer_body=1024, buffer_body_total=5 * 1024, read_timeout=30)
    mw = AdmissionMiddleware(HoldingApp(), settings=settings, handle_signals=False)
    mw._start()
    assert mw.body_budget is not None
    clients = [_post("/read", b"z" * 512, more=True) for _ in range(200)]
    tasks = [asyncio.ensure_future(mw(scope, c.receive, c.send)) for scope, c in clients]
    await until(lambda: sum(c.status == 503 for _, c in clients) == 190, what="190 refused")
    assert mw.body_budget.available == 0
    assert mw.stats.rejected["buffers_full"] == 190
    for _, c in clients:
        c.hang_up()
    for task in tasks:
        await finish(task)
    await _settle(mw)

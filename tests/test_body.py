"""Bodies read before admission (`ADMISSION_BUFFER_BODY`): the application gets the very same
messages, a slow body holds no slot and no token while it trickles, and the read timeout still
bounds it."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from admission import AdmissionMiddleware, Settings
from admission.bucket import Bucket, Decision
from admission.reasons import DISCONNECT, DRAINING, IDLE_TIMEOUT, READ_TIMEOUT
from admission.request.body import buffer_body
from admission.stores.memory import MemoryStore
from tests.asgi import until

Message = dict[str, Any]


def http_scope(content_length: int | None = 10, path: str = "/") -> dict[str, Any]:
    headers = [] if content_length is None else [(b"content-length", str(content_length).encode())]
    return {
        "type": "http",
        "method": "POST",
        "path": path,
        "headers": headers,
        "client": ("192.0.2.1", 4000),
    }


class Feed:
    """Feed is a server's `receive`: it hands out what the test puts in, in order, waiting
    (as a server does) while there is nothing yet."""

    def __init__(self, *messages: Message) -> None:
        self.queue: asyncio.Queue[Message] = asyncio.Queue()
        self.calls = 0
        for message in messages:
            self.queue.put_nowait(message)

    def put(self, message: Message) -> None:
        self.queue.put_nowait(message)

    async def __call__(self) -> Message:
        self.calls += 1
        return await self.queue.get()


def chunk(body: bytes, more: bool = True) -> Message:
    return {"type": "http.request", "body": body, "more_body": more}


async def drain_receive(receive: Any, n: int) -> list[Message]:
    return [await receive() for _ in range(n)]


# --- buffer_body --------------------------------------------------------------------------


async def test_the_application_gets_the_very_messages_the_server_sent() -> None:
    sent = [chunk(b"ab"), chunk(b""), chunk(b"cdef"), chunk(b"gh", more=False)]
    feed = Feed(*sent)
    receive = await buffer_body(http_scope(8), feed, 1000, timeout_s=5)
    assert not isinstance(receive, type(READ_TIMEOUT))
    assert feed.calls == 4  # all read before admission
    got = await drain_receive(receive, 4)
    assert all(a is b for a, b in zip(got, sent, strict=True))


async def test_a_body_over_the_limit_streams_the_rest_after_the_buffered_part() -> None:
    sent = [chunk(b"x" * 40) for _ in range(5)] + [chunk(b"y", more=False)]
    feed = Feed(*sent)
    receive = await buffer_body(http_scope(201), feed, 100, timeout_s=5)
    assert callable(receive)
    assert feed.calls == 3  # 120 bytes in: the limit of 100 is reached
    got = await drain_receive(receive, 6)
    assert all(a is b for a, b in zip(got, sent, strict=True))
    assert feed.calls == 6


@pytest.mark.parametrize(
    "scope",
    [
        http_scope(None),
        http_scope(0),
        {"type": "websocket", "path": "/", "headers": [(b"content-length", b"5")]},
    ],
)
async def test_a_request_without_a_body_is_not_waited_for(scope: dict[str, Any]) -> None:
    feed = Feed()
    assert await buffer_body(scope, feed, 1000, timeout_s=5) is feed
    assert feed.calls == 0


async def test_a_chunked_body_is_read_ahead_too() -> None:
    scope = http_scope(None)
    scope["headers"] = [(b"transfer-encoding", b"chunked")]
    feed = Feed(chunk(b"abc", more=False))
    receive = await buffer_body(scope, feed, 1000, timeout_s=5)
    assert feed.calls == 1
    assert (await receive())["body"] == b"abc"


async def test_a_body_that_does_not_arrive_in_the_read_timeout_is_refused() -> None:
    feed = Feed(chunk(b"a"))
    assert await buffer_body(http_scope(), feed, 1000, timeout_s=0.05) is READ_TIMEOUT


async def test_a_body_that_stalls_past_the_idle_timeout_is_refused() -> None:
    feed = Feed(chunk(b"a"))
    assert await buffer_body(http_scope(), feed, 1000, timeout_s=30, idle_s=0.05) is IDLE_TIMEOUT


async def test_a_client_gone_while_its_body_was_read_is_not_admitted() -> None:
    feed = Feed(chunk(b"a"), {"type": "http.disconnect"})
    assert await buffer_body(http_scope(), feed, 1000, timeout_s=5) is DISCONNECT


async def test_reading_ahead_stops_once_the_drain_refuses_new_requests() -> None:
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    feed = Feed(chunk(b"a"))
    reading = asyncio.create_task(
        buffer_body(http_scope(), feed, 1000, timeout_s=None, stop=lambda: stop)
    )
    await until(lambda: feed.calls == 2)  # the first chunk is in; it waits for the next
    assert not reading.done()
    stop.set_result(None)
    assert await asyncio.wait_for(reading, 5) is DRAINING


async def test_a_body_complete_before_the_drain_is_read_whole_and_the_watch_let_go() -> None:
    stop: asyncio.Future[None] = asyncio.get_running_loop().create_future()
    feed = Feed(chunk(b"ab", more=False))
    receive = await buffer_body(http_scope(2), feed, 1000, timeout_s=None, stop=lambda: stop)
    assert callable(receive) and receive is not DRAINING
    assert (await receive())["body"] == b"ab"
    assert stop.cancelled()


# --- through the middleware ---------------------------------------------------------------


class RecordingStore(MemoryStore):
    def __init__(self) -> None:
        super().__init__(Bucket(interval_s=60.0, capacity=100))
        self.asked = 0

    async def decide(self, key: str, cost: int = 1) -> Decision:
        self.asked += 1
        return await super().decide(key, cost)


class Echo:
    """Echo reads the whole body and answers with it; `bodies` lists what it read."""

    def __init__(self) -> None:
        self.bodies: list[bytes] = []

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body", False):
                break
        self.bodies.append(body)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})


def gated(buffer: int | None, **settings: Any) -> tuple[AdmissionMiddleware, Echo, RecordingStore]:
    app = Echo()
    store = RecordingStore()
    options = {"window": 1, "rate": "100/minute", "read_timeout": 5, **settings}
    middleware = AdmissionMiddleware(
        app, settings=Settings(buffer_body=buffer, **options), store=store, handle_signals=False
    )
    return middleware, app, store


async def call(middleware: AdmissionMiddleware, scope: dict[str, Any], feed: Feed) -> list[Message]:
    sent: list[Message] = []

    async def send(message: Message) -> None:
        sent.append(message)

    await middleware(scope, feed, send)
    return sent


def status(sent: list[Message]) -> int:
    return int(sent[0]["status"])


@pytest.mark.parametrize("buffer", [65536, None])
async def test_a_trickling_body_holds_no_slot_while_it_is_read(buffer: int | None) -> None:
    middleware, app, store = gated(buffer)
    slow = Feed(chunk(b"first "))
    trickling = asyncio.create_task(call(middleware, http_scope(16), slow))
    # The slow request has taken its first chunk and waits for the next.
    await until(lambda: slow.calls == 2)
    honest = await call(middleware, http_scope(5), Feed(chunk(b"hello", more=False)))
    if buffer is None:
        # Without buffering the slow body holds the only slot.
        assert status(honest) == 429
        slow.put(chunk(b"and last", more=False))
        assert status(await trickling) == 200
        return
    assert status(honest) == 200
    assert store.asked == 1  # only the honest request took a token so far
    slow.put(chunk(b"and"))
    slow.put(chunk(b" last", more=False))
    assert status(await trickling) == 200
    assert app.bodies == [b"hello", b"first and last"]
    assert store.asked == 2
    assert middleware.window is not None and middleware.window.size == 1


async def test_a_body_too_slow_to_buffer_gets_408_and_takes_neither_slot_nor_token() -> None:
    middleware, app, store = gated(65536, read_timeout=0.05)
    sent = await call(middleware, http_scope(16), Feed(chunk(b"first ")))
    assert status(sent) == 408
    assert (b"connection", b"close") in sent[0]["headers"]
    assert store.asked == 0
    assert app.bodies == []
    # The slot is free.
    assert status(await call(middleware, http_scope(2), Feed(chunk(b"ok", more=False)))) == 200
    assert middleware.stats.rejected["read_timeout"] == 1


async def test_a_client_that_hangs_up_while_its_body_is_read_costs_nothing() -> None:
    middleware, app, store = gated(65536)
    sent = await call(middleware, http_scope(16), Feed(chunk(b"a"), {"type": "http.disconnect"}))
    assert sent == []
    assert store.asked == 0
    assert app.bodies == []
    assert middleware.ledger.in_flight == 0
    assert middleware.stats.rejected["disconnect"] == 1


async def test_a_body_still_read_ahead_when_the_drain_begins_gets_503_and_lets_it_finish() -> None:
    # Not admitted yet, so nothing counts it in flight: without the drain's signal it would
    # keep reading (no read timeout here) after the drain was over, and hold up the shutdown.
    middleware, app, store = gated(65536, read_timeout=None)
    slow = Feed(chunk(b"first "))
    trickling = asyncio.create_task(call(middleware, http_scope(16), slow))
    await until(lambda: slow.calls == 2)
    assert middleware.ledger.in_flight == 0
    await asyncio.wait_for(middleware.drain_state.until_drained(delay_s=0), 5)
    sent = await asyncio.wait_for(trickling, 5)
    assert status(sent) == 503
    assert (b"connection", b"close") in sent[0]["headers"]
    assert store.asked == 0
    assert app.bodies == []
    assert middleware.stats.rejected["draining"] == 1
    assert not middleware.drain_state._refusal_watchers


async def test_a_body_read_ahead_after_the_drain_began_is_refused_at_once() -> None:
    middleware, app, _ = gated(65536, read_timeout=None)
    await asyncio.wait_for(middleware.drain_state.until_drained(delay_s=0), 5)
    sent = await asyncio.wait_for(call(middleware, http_scope(16), Feed(chunk(b"a"))), 5)
    assert status(sent) == 503
    assert app.bodies == []

"""Tests of the exchange inside the middleware: the four timeouts, client disconnects, the
deadline seen by handlers and the request's lifetime, all in process with a scripted client.

Timeouts are tens of milliseconds and the disconnect watch is shortened to 10 ms, so every
test finishes in well under a second; nothing asserts how fast anything happened.
"""

from __future__ import annotations

import asyncio
import json
import sys
import threading
import time
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse, Response
from starlette.routing import Route

import admission
from admission.config.settings import Settings
from admission.lifecycle.context import STATE_KEY
from admission.middleware import AdmissionMiddleware
from admission.reasons import DEADLINE
from admission.request.exchange import Exchange, Shared, TimedExchange, Timeouts
from tests.asgi import FINISH_S, Client, ManualClock, finish, http_scope, no_body, until, ws_scope

Message = dict[str, Any]
ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]

# Far beyond any timeout used here: a handler "that would run forever".
FOREVER_S = 60.0
# The disconnect watch's delay here, shortened from 0.2 s.
WATCH_DELAY_S = 0.01


def middleware(app: ASGIApp, **settings: Any) -> AdmissionMiddleware:
    mw = AdmissionMiddleware(app, settings=Settings(**settings), handle_signals=False)
    mw.shared.ticker.watch_delay_s = WATCH_DELAY_S
    return mw


def problem(client: Client) -> dict[str, Any]:
    assert client.headers[b"content-type"] == b"application/problem+json"
    doc: dict[str, Any] = json.loads(client.body)
    return doc


async def forever(scope: Any, receive: Any, send: Any) -> None:
    """forever is a handler that never answers on its own."""
    await asyncio.sleep(FOREVER_S)


async def ok(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def read_body_then_answer(scope: Any, receive: Any, send: Any) -> None:
    """read_body_then_answer echoes the request body once it has all of it."""
    body = b""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return
        body += message.get("body", b"")
        if not message.get("more_body", False):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


async def stream_then_stall(scope: Any, receive: Any, send: Any) -> None:
    """stream_then_stall starts a streaming response, sends one chunk, then goes quiet."""
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"first", "more_body": True})
    await asyncio.sleep(FOREVER_S)


def assert_nothing_held(mw: AdmissionMiddleware) -> None:
    assert mw.ledger.in_flight == 0
    assert mw.window is None or mw.window.used == 0
    assert mw.websocket_window is None or mw.websocket_window.used == 0


# --- the deadline and the handler helpers -------------------------------------------------


async def test_time_left_is_the_deadline_minus_the_loop_clock_and_never_negative() -> None:
    client = Client()
    clock = ManualClock(1000.0)
    shared = Shared(Timeouts(request_s=5.0), SimpleNamespace(begun=False), clock=clock.time)
    exchange = TimedExchange(shared, http_scope(), client.receive, client.send)
    assert exchange.deadline == 1005.0
    assert exchange.time_left() == 5.0
    clock.now = exchange.deadline - 1.25
    assert exchange.time_left() == 1.25
    clock.now = exchange.deadline + 3.0
    assert exchange.time_left() == 0.0


@pytest.mark.parametrize("field", ["read_s", "idle_s", "write_s", "request_s"])
def test_any_one_timeout_enables_the_timer_work(field: str) -> None:
    # With none set, the middleware skips `begin()`: a websocket with only an idle timeout
    # would then never be timed out for idleness.
    assert Timeouts(**{field: 1.0}).enabled
    assert not Timeouts().enabled


async def test_no_request_timeout_means_no_deadline() -> None:
    client = Client()
    exchange = Exchange(
        Shared(Timeouts(), SimpleNamespace(begun=False)), http_scope(), client.receive, client.send
    )
    assert exchange.deadline is None
    assert exchange.time_left() is None


async def test_handler_sees_its_deadline_through_time_left() -> None:
    seen: dict[str, Any] = {}

    async def handler(request: Request) -> Response:
        seen["time_left"] = admission.time_left(request)
        seen["deadline"] = admission.deadline(request)
        seen["now"] = asyncio.get_running_loop().time()
        return PlainTextResponse("ok")

    app = Starlette(routes=[Route("/", handler)])
    mw = middleware(app, request_timeout=30)
    client = Client(no_body())
    await mw(http_scope(), client.receive, client.send)
    assert client.status == 200
    assert 0 < seen["time_left"] <= 30
    # time_left is counted down to the same loop-time deadline admission cancels at.
    assert seen["deadline"] - seen["now"] == pytest.approx(seen["time_left"], abs=0.5)


async def test_handler_without_a_request_timeout_sees_no_deadline() -> None:
    seen: dict[str, Any] = {}

    async def handler(request: Request) -> Response:
        seen["time_left"] = admission.time_left(request)
        seen["deadline"] = admission.deadline(request)
        return PlainTextResponse("ok")

    mw = middleware(Starlette(routes=[Route("/", handler)]))
    client = Client(no_body())
    await mw(http_scope(), client.receive, client.send)
    assert client.status == 200
    assert seen == {"time_left": None, "deadline": None}


def test_helpers_outside_admission_answer_as_if_nothing_were_set() -> None:
    scope = http_scope()
    assert admission.time_left(scope) is None
    assert admission.deadline(scope) is None
    assert admission.draining(scope) is False
    with pytest.raises(RuntimeError, match="AdmissionMiddleware"):
        admission.request_lifetime(scope)


async def test_handler_past_its_deadline_is_cancelled_with_504() -> None:
    mw = middleware(forever, request_timeout=0.05, window=2)
    client = Client(no_body())
    await mw(http_scope(), client.receive, client.send)
    assert client.status == 504
    assert problem(client)["reason"] == "deadline"
    # 504 keeps the connection: the request itself was read whole.
    assert b"connection" not in client.headers
    assert mw.stats.rejected["deadline"] == 1
    assert_nothing_held(mw)


async def test_deadline_after_the_response_started_closes_without_a_second_response() -> None:
    mw = middleware(stream_then_stall, request_timeout=0.05)
    client = Client(no_body())
    await mw(http_scope(), client.receive, client.send)
    assert client.status == 200
    assert sum(m["type"] == "http.response.start" for m in client.sent) == 1
    assert not client.complete
    assert mw.stats.rejected["deadline"] == 1
    assert_nothing_held(mw)


# --- request lifetime ----------------------------------------------------------------------


def lifetime_app(spawned: list[asyncio.Task[None]], then: ASGIApp) -> ASGIApp:
    """lifetime_app ties a never-ending task to the request's lifetime, then runs `then`."""

    async def app(scope: Any, receive: Any, send: Any) -> None:
        spawned.append(admission.request_lifetime(scope).spawn(asyncio.sleep(FOREVER_S)))
        await then(scope, receive, send)

    return app


async def test_request_lifetime_task_is_cancelled_when_the_request_ends() -> None:
    spawned: list[asyncio.Task[None]] = []
    mw = middleware(lifetime_app(spawned, ok))
    client = Client(no_body())
    await mw(http_scope(), client.receive, client.send)
    assert client.status == 200
    assert spawned[0].cancelled()


async def test_request_lifetime_task_is_cancelled_at_the_deadline() -> None:
    spawned: list[asyncio.Task[None]] = []
    mw = middleware(lifetime_app(spawned, forever), request_timeout=0.05)
    client = Client(no_body())
    await mw(http_scope(), client.receive, client.send)
    assert client.status == 504
    assert spawned[0].cancelled()


async def test_request_lifetime_is_closed_before_the_slot_is_given_back() -> None:
    seen: list[tuple[int, int]] = []
    mw = middleware(ok, window=1)
    assert mw.window is not None
    window = mw.window

    async def app(scope: Any, receive: Any, send: Any) -> None:
        lifetime = admission.request_lifetime(scope)
        lifetime.on_close(lambda: seen.append((window.used, mw.ledger.in_flight)))
        await ok(scope, receive, send)

    mw.app = app
    client = Client(no_body())
    await mw(http_scope(), client.receive, client.send)
    # The cleanup ran while the request still held its slot and was still in flight.
    assert seen == [(1, 1)]
    assert_nothing_held(mw)


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX process groups")
async def test_request_lifetime_child_process_is_stopped_when_the_client_hangs_up() -> None:
    processes: list[asyncio.subprocess.Process] = []
    started = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        lifetime = admission.request_lifetime(scope)
        processes.append(await lifetime.start_process("sleep", "60"))
        started.set()
        await asyncio.sleep(FOREVER_S)

    mw = middleware(app, window=1)
    client = Client(no_body())
    call = asyncio.create_task(mw(http_scope(), client.receive, client.send))
    await started.wait()
    client.hang_up()
    await finish(call)
    assert processes[0].returncode is not None
    assert mw.stats.rejected["disconnect"] == 1
    assert_nothing_held(mw)


# --- disconnects ---------------------------------------------------------------------------


async def test_slot_is_released_when_client_disconnects() -> None:
    running = asyncio.Event()
    cancelled = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        running.set()
        try:
            await asyncio.sleep(FOREVER_S)
        except asyncio.CancelledError:
            cancelled.set()
            raise

    mw = middleware(app, window=1)
    client = Client(no_body())
    call = asyncio.create_task(mw(http_scope(), client.receive, client.send))
    await running.wait()
    assert mw.window is not None and mw.window.used == 1
    client.hang_up()
    await finish(call)  # returns normally: a hang-up is not the server's error
    assert cancelled.is_set()
    assert client.sent == []  # nobody left to answer
    assert mw.stats.rejected["disconnect"] == 1
    assert_nothing_held(mw)


async def test_disconnect_watch_is_one_timer_that_disarms_once_nothing_is_in_flight() -> None:
    # No task per request: a service answering one short request at a time would otherwise
    # start (and finish) a watcher task for each.
    async def ok(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = middleware(ok)
    tasks_before = len(asyncio.all_tasks())
    for _ in range(3):
        client = Client(no_body())
        await mw(http_scope(), client.receive, client.send)
        assert client.status == 200
    assert isinstance(mw.shared.ticker.timers[asyncio.get_running_loop()], asyncio.TimerHandle)
    assert len(asyncio.all_tasks()) == tasks_before
    await until(lambda: not mw.shared.ticker.timers)


def test_a_middleware_moved_to_a_new_event_loop_times_out_and_watches_on_that_loop() -> None:
    # Admission keeps the event loop between requests. Each test client (or restarted server)
    # brings a new one: the deadline must be armed on it, the request's own task cancelled,
    # and the disconnect watch, whose timer died with the old loop, armed again.
    mw = middleware(forever, request_timeout=0.3)

    async def one_loop() -> None:
        timed_out = Client(no_body())
        await finish(mw(http_scope(), timed_out.receive, timed_out.send))
        assert timed_out.status == 504
        gone = Client(no_body())
        call = asyncio.create_task(mw(http_scope(), gone.receive, gone.send))
        await until(lambda: mw.ledger.in_flight == 1)
        gone.hang_up()
        await finish(call)
        assert gone.sent == []
        assert_nothing_held(mw)

    for rounds in (1, 2):
        asyncio.run(one_loop())
        assert mw.stats.rejected["deadline"] == rounds
        assert mw.stats.rejected["disconnect"] == rounds


def test_a_request_never_takes_the_task_another_threads_loop_is_running() -> None:
    # Two loops in two threads, one middleware (two test clients open at once, say). While
    # thread A's loop is inside a task step, a request on thread B must get its own task and
    # loop: its deadline must fire on B and cancel B's handler, never A's task.
    mw = middleware(forever, request_timeout=0.1)
    a_admitted = threading.Event()
    b_done = threading.Event()
    outcome: dict[str, str] = {}

    async def thread_a_main() -> None:
        first = Client(no_body())
        await finish(mw(http_scope(), first.receive, first.send))  # the middleware keeps loop A

        async def busy_until_b_is_done() -> None:
            a_admitted.set()
            # Blocks loop A inside this task's step, on purpose, for longer than B may take.
            b_done.wait(FINISH_S * 2)
            try:
                await asyncio.sleep(0)
                outcome["a"] = "finished"
            except asyncio.CancelledError:
                outcome["a"] = "cancelled"

        await asyncio.create_task(busy_until_b_is_done())

    thread_a = threading.Thread(target=asyncio.run, args=(thread_a_main(),))
    thread_a.start()
    try:
        assert a_admitted.wait(FINISH_S)
        b = Client(no_body())
        asyncio.run(finish(mw(http_scope(), b.receive, b.send)))
        assert b.status == 504
    finally:
        b_done.set()
        thread_a.join(FINISH_S)
    assert outcome == {"a": "finished"}


async def test_disconnect_watch_does_not_take_a_body_the_handler_has_not_read() -> None:
    # The handler reads its body only after the watch delay: the watch must wait for it
    # rather than consume the body message itself.
    async def late_reader(scope: Any, receive: Any, send: Any) -> None:
        await asyncio.sleep(WATCH_DELAY_S * 5)
        await read_body_then_answer(scope, receive, send)

    mw = middleware(late_reader)
    client = Client([{"type": "http.request", "body": b"payload", "more_body": False}])
    scope = http_scope("/", "POST", [(b"content-length", b"7")])
    await mw(scope, client.receive, client.send)
    assert client.status == 200
    assert client.body == b"payload"


async def test_empty_body_seen_by_the_watch_is_still_delivered_to_the_handler() -> None:
    # A GET has an empty body message the handler may never ask for; the watch reads past it
    # to see the hang-up, and a handler that asks for it later still gets it.
    async def late_body(request: Request) -> Response:
        await asyncio.sleep(WATCH_DELAY_S * 5)
        return PlainTextResponse(f"body={(await request.body())!r}")

    mw = middleware(Starlette(routes=[Route("/", late_body)]))
    client = Client(no_body())
    await finish(mw(http_scope(), client.receive, client.send))
    assert client.status == 200
    assert client.body == b"body=b''"


async def test_disconnect_after_the_body_was_read_cancels_the_handler() -> None:
    body_read = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        body_read.set()
        await asyncio.sleep(FOREVER_S)

    mw = middleware(app, window=1)
    client = Client([{"type": "http.request", "body": b"x", "more_body": False}])
    scope = http_scope("/", "POST", [(b"content-length", b"1")])
    call = asyncio.create_task(mw(scope, client.receive, client.send))
    await body_read.wait()
    client.hang_up()
    await finish(call)
    assert mw.stats.rejected["disconnect"] == 1
    assert_nothing_held(mw)


# --- request body: read and idle timeouts -------------------------------------------------


async def test_body_that_never_completes_gets_408_with_connection_close() -> None:
    mw = middleware(read_body_then_answer, read_timeout=0.05, window=1)
    client = Client([{"type": "http.request", "body": b"0123456789", "more_body": True}])
    scope = http_scope("/echo", "POST", [(b"content-length", b"100")])
    await mw(scope, client.receive, client.send)
    assert client.status == 408
    assert client.headers[b"connection"] == b"close"
    assert problem(client)["reason"] == "read_timeout"
    assert mw.stats.rejected["read_timeout"] == 1
    assert_nothing_held(mw)


async def test_body_trickling_within_the_idle_timeout_still_hits_the_read_timeout() -> None:
    async def trickle(client: Client) -> None:
        while True:
            await asyncio.sleep(0.01)
            client.inbox.put_nowait({"type": "http.request", "body": b".", "more_body": True})

    mw = middleware(read_body_then_answer, read_timeout=0.1, idle_timeout=1.0)
    client = Client()
    feeder = asyncio.create_task(trickle(client))
    try:
        await mw(
            http_scope("/", "POST", [(b"transfer-encoding", b"chunked")]),
            client.receive,
            client.send,
        )
    finally:
        feeder.cancel()
    assert client.status == 408
    assert problem(client)["reason"] == "read_timeout"


async def test_body_that_stalls_between_chunks_gets_408_at_the_idle_timeout() -> None:
    mw = middleware(read_body_then_answer, read_timeout=FOREVER_S, idle_timeout=0.05)
    client = Client([{"type": "http.request", "body": b"first", "more_body": True}])
    await mw(
        http_scope("/", "POST", [(b"transfer-encoding", b"chunked")]), client.receive, client.send
    )
    assert client.status == 408
    assert client.headers[b"connection"] == b"close"
    assert problem(client)["reason"] == "idle_timeout"
    assert mw.stats.rejected["idle_timeout"] == 1
    assert_nothing_held(mw)


async def test_complete_body_is_not_limited_by_the_read_timeout_afterwards() -> None:
    # Once the body is in, a long handler is the deadline's business, not the read timeout's.
    async def read_then_work(scope: Any, receive: Any, send: Any) -> None:
        await receive()
        await asyncio.sleep(0.1)
        await ok(scope, receive, send)

    mw = middleware(read_then_work, read_timeout=0.02)
    client = Client([{"type": "http.request", "body": b"x", "more_body": False}])
    await mw(http_scope("/", "POST", [(b"content-length", b"1")]), client.receive, client.send)
    assert client.status == 200


# --- response: write and idle timeouts ------------------------------------------------------


async def test_client_that_stops_reading_is_cut_off_at_the_write_timeout() -> None:
    async def big_stream(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            await send({"type": "http.response.body", "body": b"x" * 1024, "more_body": True})

    mw = middleware(big_stream, write_timeout=0.05, window=1)
    client = Client(no_body())
    client.stalled = True
    await mw(http_scope(), client.receive, client.send)
    assert client.status == 200
    assert not client.complete  # nothing more is sent: the server closes the connection
    assert mw.stats.rejected["write_timeout"] == 1
    assert_nothing_held(mw)


async def test_streaming_response_that_goes_quiet_is_cut_off_at_the_idle_timeout() -> None:
    mw = middleware(stream_then_stall, idle_timeout=0.05, window=1)
    client = Client(no_body())
    await mw(http_scope(), client.receive, client.send)
    assert client.status == 200
    assert client.body == b"first"
    assert not client.complete
    assert mw.stats.rejected["idle_timeout"] == 1
    assert_nothing_held(mw)


async def test_steady_stream_is_not_cut_by_the_idle_timeout() -> None:
    async def steady(scope: Any, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        for _ in range(5):
            await send({"type": "http.response.body", "body": b".", "more_body": True})
            await asyncio.sleep(0.01)
        await send({"type": "http.response.body", "body": b"", "more_body": False})

    mw = middleware(steady, idle_timeout=0.5)
    client = Client(no_body())
    await mw(http_scope(), client.receive, client.send)
    assert client.complete
    assert client.body == b"....."


# --- errors and outside cancellation --------------------------------------------------------


async def test_handler_exception_propagates_and_gives_the_slot_back() -> None:
    async def boom(scope: Any, receive: Any, send: Any) -> None:
        raise RuntimeError("boom")

    mw = middleware(boom, window=1, request_timeout=5)
    client = Client(no_body())
    with pytest.raises(RuntimeError, match="boom"):
        await mw(http_scope(), client.receive, client.send)
    assert_nothing_held(mw)


async def test_cancellation_from_outside_propagates_and_gives_the_slot_back() -> None:
    running = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        running.set()
        await asyncio.sleep(FOREVER_S)

    mw = middleware(app, window=1)
    client = Client(no_body())
    call = asyncio.create_task(mw(http_scope(), client.receive, client.send))
    await running.wait()
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await finish(call)
    assert client.sent == []
    assert_nothing_held(mw)


@pytest.mark.skipif(
    sys.version_info < (3, 11),
    reason="Python 3.10 has no Task.uncancel: a cancellation landing in the same instant as "
    "admission's own abort can't be told apart from it (docs/timeouts.md)",
)
async def test_outside_cancellation_racing_a_timeout_still_propagates() -> None:
    # Admission's own abort and a cancellation by the server land together: admission must
    # not swallow the server's cancellation by answering 504 and returning.
    running = asyncio.Event()

    async def app(scope: Any, receive: Any, send: Any) -> None:
        running.set()
        await asyncio.sleep(FOREVER_S)

    mw = middleware(app, window=1, request_timeout=FOREVER_S)
    client = Client(no_body())
    call = asyncio.create_task(mw(http_scope(), client.receive, client.send))
    await running.wait()
    exchange = mw.ledger.live()[0]
    exchange.abort(DEADLINE)
    call.cancel()
    with pytest.raises(asyncio.CancelledError):
        await finish(call)
    assert_nothing_held(mw)


# --- websockets -----------------------------------------------------------------------------


async def ws_echo(scope: Any, receive: Any, send: Any) -> None:
    """ws_echo accepts, then echoes text until the client goes away."""
    message = await receive()
    assert message["type"] == "websocket.connect"
    await send({"type": "websocket.accept"})
    while True:
        message = await receive()
        if message["type"] == "websocket.disconnect":
            return
        await send({"type": "websocket.send", "text": message.get("text")})


def ws_client() -> Client:
    client = Client([{"type": "websocket.connect"}])
    client.websocket = True
    return client


async def test_websockets_take_the_websocket_window_not_the_http_one() -> None:
    mw = middleware(ws_echo, window=1, websocket_window=2)
    assert mw.window is not None and mw.websocket_window is not None
    clients = [ws_client() for _ in range(3)]
    calls = [asyncio.create_task(mw(ws_scope(), c.receive, c.send)) for c in clients]
    # The refused socket is the only one that ends on its own.
    done, _ = await asyncio.wait(calls, return_when=asyncio.FIRST_COMPLETED)
    assert len(done) == 1
    await until(lambda: sum(c.sent[:1] == [{"type": "websocket.accept"}] for c in clients) == 2)
    assert mw.websocket_window.used == 2
    assert mw.window.used == 0
    # The third socket is refused with "try again later"; HTTP still has its slot.
    refused = [c for c in clients if c.sent and c.sent[0]["type"] == "websocket.close"]
    assert len(refused) == 1 and refused[0].sent[0]["code"] == 1013
    http = Client(no_body())
    mw.app = ok
    await mw(http_scope(), http.receive, http.send)
    assert http.status == 200
    for client in clients:
        client.hang_up()
    await asyncio.gather(*calls)
    assert_nothing_held(mw)


async def test_websocket_that_goes_quiet_is_closed_at_the_idle_timeout() -> None:
    mw = middleware(ws_echo, idle_timeout=0.05, window=1)
    client = ws_client()
    await mw(ws_scope(), client.receive, client.send)
    assert [m["type"] for m in client.sent] == ["websocket.accept", "websocket.close"]
    assert client.sent[-1]["code"] == 1000
    assert mw.stats.rejected["idle_timeout"] == 1
    assert_nothing_held(mw)


async def test_websocket_has_no_handler_deadline() -> None:
    # A socket lives as long as its messages keep coming; ADMISSION_REQUEST_TIMEOUT is for
    # requests, and the idle timeout is what bounds a socket.
    mw = middleware(ws_echo, request_timeout=0.02)
    client = ws_client()
    call = asyncio.create_task(mw(ws_scope(), client.receive, client.send))
    for i in range(3):
        client.inbox.put_nowait({"type": "websocket.receive", "text": str(i)})
        await asyncio.sleep(0.02)
    client.hang_up()
    await finish(call)
    assert [m.get("text") for m in client.sent if m["type"] == "websocket.send"] == ["0", "1", "2"]
    assert mw.stats.rejected["deadline"] == 0


async def test_disconnect_watch_waits_for_the_body_of_a_starlette_handler() -> None:
    async def echo(request: Request) -> Response:
        await asyncio.sleep(WATCH_DELAY_S * 5)
        return JSONResponse({"body": (await request.body()).decode()})

    mw = middleware(Starlette(routes=[Route("/echo", echo, methods=["POST"])]))
    client = Client([{"type": "http.request", "body": b"hello", "more_body": False}])
    scope = http_scope("/echo", "POST", [(b"content-length", b"5")])
    await mw(scope, client.receive, client.send)
    assert client.status == 200
    assert json.loads(client.body) == {"body": "hello"}


async def test_the_exchange_leaves_the_scope_when_the_request_ends() -> None:
    # scope -> state -> exchange -> scope would be a reference cycle, keeping every request's
    # objects alive until the cyclic garbage collector runs; and a helper called on a finished
    # request's scope must answer as outside admission.
    seen: list[object] = []

    async def app(scope: Any, receive: Any, send: Any) -> None:
        seen.append(scope["state"].get("admission"))
        await ok(scope, receive, send)

    mw = middleware(app, request_timeout=30)
    scope = http_scope()
    client = Client(no_body())
    await mw(scope, client.receive, client.send)
    assert seen and seen[0] is not None
    assert "admission" not in scope["state"]
    assert admission.time_left(scope) is None


def test_latency_is_measured_finer_than_uvloops_clock() -> None:
    # uvloop's clock is the time its iteration began, in whole milliseconds: a request that
    # runs within one iteration would read a latency of 0 on it.
    uvloop = pytest.importorskip("uvloop")
    exchanges: list[Exchange] = []

    async def busy(scope: Any, receive: Any, send: Any) -> None:
        exchanges.append(scope["state"][STATE_KEY])
        until_s = time.perf_counter() + 0.0002
        while time.perf_counter() < until_s:
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    mw = AdmissionMiddleware(busy, settings=Settings(), handle_signals=False)

    async def requests() -> None:
        for _ in range(5):
            client = Client()
            await mw(http_scope(), client.receive, client.send)

    loop = uvloop.new_event_loop()
    try:
        loop.run_until_complete(requests())
    finally:
        loop.close()
    latencies = [exchange.latency_s for exchange in exchanges]
    assert len(latencies) == 5
    assert all(0.0002 <= latency < 1.0 for latency in latencies), latencies
    assert mw.stats._latency_sum == pytest.approx(sum(latencies))


# --- the application's own messages ---------------------------------------------------------

_START: Message = {"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"1")]}


async def same_start_every_time(scope: Any, receive: Any, send: Any) -> None:
    """same_start_every_time answers with one start message, the same dict every request."""
    await send(_START)
    await send({"type": "http.response.body", "body": b"ok"})


@pytest.mark.parametrize("timed", [False, True])
def test_the_applications_start_message_is_never_changed(timed: bool) -> None:
    # admission adds its fields to a copy: an application that sends the same start message
    # every time would otherwise collect every earlier response's fields.
    from starlette.testclient import TestClient

    before = {**_START, "headers": list(_START["headers"])}
    settings: dict[str, Any] = {"rate": "100/minute"}
    if timed:
        settings["write_timeout"] = 5.0
    # No lifespan (the application has none): admission starts at the first request.
    client = TestClient(middleware(same_start_every_time, headers="all", **settings))
    for left in (99, 98, 97):
        response = client.get("/")
        assert response.headers.get_list("x-app") == ["1"]
        (field,) = response.headers.get_list("ratelimit")
        assert field.startswith(f'"default";r={left};')
    assert before == _START

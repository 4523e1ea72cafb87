"""Tests of the drain in one process: the `Drain` state machine, `Lifetime`, and the drain as the
middleware runs it (`drain()`, lifespan, refusals, websockets, request lifetimes).

Nothing here sends a signal or starts a server: tests/test_drain_process.py does that. Timeouts
that must expire are a few milliseconds and delays that must not are an hour, so no outcome
depends on how fast the machine is; waits for an expected event are bounded only as a guard.
"""

from __future__ import annotations

import asyncio
import json
import logging
import signal
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import pytest

from admission import AdmissionMiddleware, Lifetime, Settings, draining, request_lifetime
from admission.bucket import Decision
from admission.ledger import Ledger
from admission.lifecycle.drain import Drain, Phase
from admission.reasons import Reason
from admission.types import Message
from tests.support import pid_alive, wait_until

# A guard against a hang, far above anything these tests take.
GUARD_S = 10.0

Scope = dict[str, Any]


# --- helpers -----------------------------------------------------------------------------------


@dataclass(eq=False)
class Item:
    """Item stands in for one in-flight request; aborting it makes it leave the ledger, as a
    cancelled request does, unless `stubborn`."""

    ledger: Ledger
    websocket: bool = False
    stubborn: bool = False
    reasons: list[str] = field(default_factory=list)
    aborted: asyncio.Event = field(default_factory=asyncio.Event)

    def __post_init__(self) -> None:
        self.ledger.enter(self)

    def abort(self, reason: Reason) -> None:
        self.reasons.append(reason.label)
        self.aborted.set()
        if not self.stubborn:
            self.finish()

    def finish(self) -> None:
        if self in self.ledger.live():
            self.ledger.leave(self)


def phase(drain: Drain) -> Phase:
    """phase reads the drain's phase afresh (it changes while a test awaits)."""
    return drain.phase


async def settle() -> None:
    """settle lets every ready task run until all of them are blocked again."""
    for _ in range(10):
        await asyncio.sleep(0)


class CountingStore:
    """CountingStore is a store that admits everything and counts how often it was closed."""

    def __init__(self, events: list[str] | None = None) -> None:
        self.closes = 0
        self.events = events if events is not None else []

    async def decide(self, key: str, cost: int = 1) -> Decision:
        return Decision(True, 10, 0.0, 0.0)

    async def check(self) -> None:
        return None

    async def close(self) -> None:
        # Yield inside close, so that a second, concurrent close would overlap this one.
        await asyncio.sleep(0)
        self.closes += 1
        self.events.append("store closed")


@dataclass
class Call:
    """Call is one request driven straight through an ASGI app: what it sent back."""

    messages: list[Message] = field(default_factory=list)
    disconnect: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def status(self) -> int:
        return int(next(m["status"] for m in self.messages if m["type"] == "http.response.start"))

    @property
    def headers(self) -> dict[str, str]:
        start = next(m for m in self.messages if m["type"] == "http.response.start")
        return {k.decode().lower(): v.decode() for k, v in start["headers"]}

    @property
    def body(self) -> bytes:
        parts = [m.get("body", b"") for m in self.messages if m["type"] == "http.response.body"]
        return b"".join(parts)


def http_scope(path: str) -> Scope:
    return {
        "type": "http",
        "asgi": {"version": "3.0"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test")],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


async def call(app: Callable[..., Awaitable[None]], path: str, call: Call | None = None) -> Call:
    """call sends one GET with no body through `app`; the client stays connected until
    `call.disconnect` is set."""
    result = call if call is not None else Call()
    sent_body = False

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": b"", "more_body": False}
        await result.disconnect.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        result.messages.append(message)

    await app(http_scope(path), receive, send)
    return result


def new_middleware(app: Callable[..., Awaitable[None]], **settings: Any) -> AdmissionMiddleware:
    """new_middleware wraps `app` without touching the process's signal handlers."""
    return AdmissionMiddleware(app, settings=Settings(**settings), handle_signals=False)


class Gate:
    """Gate is a handler that counts its starts and answers only once it is opened."""

    def __init__(self) -> None:
        self.starts = 0
        self.entered = asyncio.Event()
        self.open = asyncio.Event()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            raise RuntimeError("no lifespan here")
        self.starts += 1
        self.entered.set()
        await self.open.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"done"})


# --- the Drain state machine --------------------------------------------------------------------


async def test_drain_without_delay_refuses_at_once_and_waits_for_in_flight_to_finish() -> None:
    ledger = Ledger()
    drain = Drain(ledger, Lifetime("test"), delay_s=0, timeout_s=3600)
    item = Item(ledger)
    assert drain.ready and drain.accepting and not drain.draining()

    drained = asyncio.ensure_future(drain.until_drained())
    await settle()

    assert phase(drain) is Phase.DRAINING
    assert not drain.ready and not drain.accepting and drain.draining()
    assert not drained.done()
    item.finish()
    await asyncio.wait_for(drained, GUARD_S)
    assert phase(drain) is Phase.DRAINED
    assert drain.cancelled == 0
    assert item.reasons == []
    assert not drain.lifetime.closed


@pytest.mark.parametrize(
    ("to", "accepting", "begun"),
    [
        (Phase.SERVING, True, False),
        (Phase.PRE_DRAIN, True, True),
        (Phase.DRAINING, False, True),
        (Phase.DRAINED, False, True),
        (Phase.CLOSED, False, True),
    ],
)
def test_the_flags_every_request_reads_follow_the_phase(
    to: Phase, accepting: bool, begun: bool
) -> None:
    drain = Drain(Ledger(), Lifetime("test"), delay_s=0, timeout_s=1)
    drain.phase = to
    assert (drain.accepting, drain.begun, drain.draining(), drain.ready) == (
        accepting,
        begun,
        begun,
        not begun,
    )


async def test_pre_drain_fails_readiness_but_still_accepts_until_the_delay_ends() -> None:
    ledger = Ledger()
    drain = Drain(ledger, Lifetime("test"), delay_s=3600, timeout_s=3600)
    drain.begin()
    await settle()

    assert phase(drain) is Phase.PRE_DRAIN
    assert not drain.ready
    assert drain.accepting
    assert drain.draining()


async def test_pre_drain_ends_after_the_delay_then_new_requests_are_refused() -> None:
    ledger = Ledger()
    drain = Drain(ledger, Lifetime("test"), delay_s=0.01, timeout_s=3600)
    # A websocket is told the moment draining begins: that is the moment to look.
    socket = Item(ledger, websocket=True, stubborn=True)
    drain.begin()
    await settle()
    assert phase(drain) is Phase.PRE_DRAIN

    await asyncio.wait_for(socket.aborted.wait(), GUARD_S)
    assert phase(drain) is Phase.DRAINING
    assert not drain.accepting
    socket.finish()
    await asyncio.wait_for(drain.until_drained(), GUARD_S)
    assert phase(drain) is Phase.DRAINED


async def test_stragglers_are_cancelled_at_the_drain_timeout_and_counted_in_the_log(
    caplog: pytest.LogCaptureFixture,
) -> None:
    ledger = Ledger()
    drain = Drain(ledger, Lifetime("test"), delay_s=0, timeout_s=0.01)
    items = [Item(ledger), Item(ledger)]

    with caplog.at_level(logging.INFO, logger="admission.drain"):
        await asyncio.wait_for(drain.run(), GUARD_S)

    assert drain.cancelled == 2
    assert [i.reasons for i in items] == [["drain_deadline"], ["drain_deadline"]]
    assert ledger.in_flight == 0
    assert phase(drain) is Phase.CLOSED
    assert "cancelled 2 request(s)" in caplog.text
    assert "(2 cancelled)" in caplog.text


async def test_a_straggler_that_ignores_cancellation_does_not_hold_the_drain_forever() -> None:
    ledger = Ledger()
    drain = Drain(ledger, Lifetime("test"), delay_s=0, timeout_s=0.01, unwind_s=0.01)
    item = Item(ledger, stubborn=True)

    await asyncio.wait_for(drain.run(), GUARD_S)

    assert item.reasons == ["drain_deadline"]
    assert phase(drain) is Phase.CLOSED
    item.finish()


async def test_hurry_ends_the_delay_and_cancels_in_flight_without_waiting_for_timeout() -> None:
    ledger = Ledger()
    drain = Drain(ledger, Lifetime("test"), delay_s=3600, timeout_s=3600)
    items = [Item(ledger), Item(ledger, websocket=True)]
    drained = asyncio.ensure_future(drain.until_drained())
    await settle()
    assert phase(drain) is Phase.PRE_DRAIN

    drain.hurry()
    await asyncio.wait_for(drained, GUARD_S)

    assert phase(drain) is Phase.DRAINED
    assert drain.cancelled == 1
    assert items[0].reasons == ["drain_deadline"]
    # The websocket went at the start of draining, as always, before the stragglers.
    assert items[1].reasons == ["draining"]


async def test_websockets_are_aborted_when_draining_begins_and_not_during_pre_drain() -> None:
    ledger = Ledger()
    drain = Drain(ledger, Lifetime("test"), delay_s=0.01, timeout_s=3600)
    socket = Item(ledger, websocket=True)
    request = Item(ledger)
    drain.begin()
    await settle()
    assert phase(drain) is Phase.PRE_DRAIN
    assert socket.reasons == []

    await asyncio.wait_for(socket.aborted.wait(), GUARD_S)

    assert phase(drain) is Phase.DRAINING
    assert socket.reasons == ["draining"]
    assert request.reasons == []
    request.finish()
    await asyncio.wait_for(drain.until_drained(), GUARD_S)


async def test_concurrent_and_repeated_runs_close_the_lifetime_once() -> None:
    lifetime = Lifetime("test")
    closes: list[str] = []

    @lifetime.on_close
    async def count() -> None:
        await asyncio.sleep(0)
        closes.append("closed")

    drain = Drain(Ledger(), lifetime, delay_s=0, timeout_s=1)
    await asyncio.wait_for(asyncio.gather(drain.run(), drain.run(), drain.run()), GUARD_S)
    await drain.run()

    assert closes == ["closed"]
    assert phase(drain) is Phase.CLOSED


# --- Lifetime ----------------------------------------------------------------------------------


async def test_child_process_does_not_outlive_close() -> None:
    lifetime = Lifetime("test", grace_s=5)
    child = await lifetime.start_process("sleep", "60")
    assert pid_alive(child.pid)

    await asyncio.wait_for(lifetime.close(), GUARD_S)

    assert child.returncode == -signal.SIGTERM
    assert not pid_alive(child.pid)


async def test_child_ignoring_sigterm_is_killed_after_the_grace_with_its_own_children() -> None:
    lifetime = Lifetime("test", grace_s=0.2)
    # The shell and the `sleep` it starts both ignore SIGTERM (an ignored signal is inherited).
    child = await lifetime.start_process(
        "sh",
        "-c",
        'trap "" TERM; sleep 60 & echo $!; wait',
        stdout=asyncio.subprocess.PIPE,
    )
    assert child.stdout is not None
    grandchild = int((await asyncio.wait_for(child.stdout.readline(), GUARD_S)).strip())
    assert pid_alive(grandchild)

    await asyncio.wait_for(lifetime.close(), GUARD_S)

    assert child.returncode == -signal.SIGKILL
    assert not pid_alive(child.pid)
    # The grandchild is not ours to reap: its end is seen by polling.
    await asyncio.to_thread(wait_until, lambda: not pid_alive(grandchild), GUARD_S, "grandchild")


async def test_background_task_is_cancelled_and_awaited_before_close_returns() -> None:
    lifetime = Lifetime("test")
    unwound: list[str] = []

    async def worker() -> None:
        try:
            await asyncio.sleep(3600)
        finally:
            # Unwinding takes a few turns of the loop: close must wait for all of them.
            await settle()
            unwound.append("unwound")

    task = lifetime.spawn(worker(), name="worker")
    await settle()

    await asyncio.wait_for(lifetime.close(), GUARD_S)

    assert task.cancelled()
    assert unwound == ["unwound"]


async def test_cleanups_run_last_first_and_a_failing_or_hanging_one_does_not_stop_the_rest(
    caplog: pytest.LogCaptureFixture,
) -> None:
    lifetime = Lifetime("test", cleanup_timeout_s=3600)
    ran: list[str] = []

    lifetime.on_close(lambda: ran.append("first registered"))

    def raises() -> None:
        ran.append("raises")
        raise RuntimeError("cleanup failed")

    lifetime.on_close(raises)

    async def hangs() -> None:
        ran.append("hangs")
        await asyncio.sleep(3600)

    lifetime.on_close(hangs, timeout_s=0.01)

    @lifetime.on_close
    async def last() -> None:
        ran.append("last registered")

    with caplog.at_level(logging.ERROR, logger="admission.lifetime"):
        await asyncio.wait_for(lifetime.close(), GUARD_S)

    assert ran == ["last registered", "hangs", "raises", "first registered"]
    assert "did not finish within" in caplog.text
    assert "failed" in caplog.text


async def test_close_runs_once_when_called_concurrently_and_again_later() -> None:
    lifetime = Lifetime("test")
    ran: list[str] = []

    @lifetime.on_close
    async def slow_cleanup() -> None:
        await settle()
        ran.append("cleanup")

    first = asyncio.ensure_future(lifetime.close())
    await asyncio.sleep(0)
    second = asyncio.ensure_future(lifetime.close())
    await asyncio.wait_for(asyncio.gather(first, second), GUARD_S)
    await lifetime.close()

    assert ran == ["cleanup"]


async def test_closed_lifetime_refuses_new_work() -> None:
    lifetime = Lifetime("test")
    await lifetime.close()

    async def never() -> None:
        raise AssertionError("must not run")

    with pytest.raises(RuntimeError, match="closed"):
        lifetime.spawn(never())
    with pytest.raises(RuntimeError, match="closed"):
        lifetime.on_close(lambda: None)
    with pytest.raises(RuntimeError, match="closed"):
        await lifetime.start_process("true")


# --- the drain inside the middleware -----------------------------------------------------------


async def test_store_is_closed_exactly_once_when_drain_is_called_twice_concurrently() -> None:
    store = CountingStore()
    middleware = AdmissionMiddleware(
        Gate(), settings=Settings(rate="100/second"), store=store, handle_signals=False
    )

    await asyncio.wait_for(asyncio.gather(middleware.drain(), middleware.drain()), GUARD_S)
    await middleware.drain()

    assert store.closes == 1


async def test_store_is_closed_once_when_drain_and_lifespan_shutdown_race() -> None:
    store = CountingStore()
    middleware = AdmissionMiddleware(
        Gate(), settings=Settings(rate="100/second"), store=store, handle_signals=False
    )
    inbox: asyncio.Queue[Message] = asyncio.Queue()
    outbox: asyncio.Queue[Message] = asyncio.Queue()
    lifespan = asyncio.ensure_future(
        middleware({"type": "lifespan", "asgi": {"version": "3.0"}}, inbox.get, outbox.put)
    )
    await inbox.put({"type": "lifespan.startup"})
    assert (await asyncio.wait_for(outbox.get(), GUARD_S))["type"] == "lifespan.startup.complete"

    await inbox.put({"type": "lifespan.shutdown"})
    await asyncio.wait_for(middleware.drain(), GUARD_S)
    done = await asyncio.wait_for(outbox.get(), GUARD_S)
    await asyncio.wait_for(lifespan, GUARD_S)

    assert done["type"] == "lifespan.shutdown.complete"
    assert store.closes == 1


async def test_store_closes_after_the_cleanups_registered_by_the_application() -> None:
    events: list[str] = []
    middleware = AdmissionMiddleware(
        Gate(),
        settings=Settings(rate="100/second"),
        store=CountingStore(events),
        handle_signals=False,
    )
    middleware.lifetime.on_close(lambda: events.append("application cleanup"))

    await asyncio.wait_for(middleware.drain(), GUARD_S)

    assert events == ["application cleanup", "store closed"]


async def test_new_requests_are_refused_with_503_before_their_handler_while_in_flight_finish() -> (
    None
):
    gate = Gate()
    middleware = new_middleware(gate)
    in_flight = asyncio.ensure_future(call(middleware, "/work"))
    await asyncio.wait_for(gate.entered.wait(), GUARD_S)

    drain = asyncio.ensure_future(middleware.drain())
    await settle()
    ready = await call(middleware, "/readyz")
    refused = await call(middleware, "/work")

    assert ready.status == 503
    assert json.loads(ready.body)["in_flight"] == 1
    assert refused.status == 503
    assert refused.headers["connection"] == "close"
    assert "retry-after" in refused.headers
    assert json.loads(refused.body)["reason"] == "draining"
    assert gate.starts == 1
    assert not drain.done()

    gate.open.set()
    finished = await asyncio.wait_for(in_flight, GUARD_S)
    await asyncio.wait_for(drain, GUARD_S)
    assert finished.status == 200
    assert finished.headers["connection"] == "close"


async def test_pre_drain_keeps_serving_with_connection_close_while_readiness_fails() -> None:
    gate = Gate()
    gate.open.set()
    middleware = new_middleware(gate, drain_delay=3600)

    middleware.drain_state.begin()
    await settle()
    ready = await call(middleware, "/readyz")
    served = await call(middleware, "/work")
    alive = await call(middleware, "/healthz")

    assert ready.status == 503
    assert json.loads(ready.body)["status"] == "draining"
    assert served.status == 200
    assert served.headers["connection"] == "close"
    assert alive.status == 200
    middleware.drain_state.hurry()
    await asyncio.wait_for(middleware.drain(), GUARD_S)


async def test_streaming_handler_sees_the_drain_begin_and_can_finish_early() -> None:
    seen = asyncio.Event()

    async def streamer(scope: Scope, receive: Any, send: Any) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while not draining(scope):
            await send({"type": "http.response.body", "body": b"tick\n", "more_body": True})
            await asyncio.sleep(0.001)
        seen.set()
        await send({"type": "http.response.body", "body": b"bye\n"})

    middleware = new_middleware(streamer, drain_delay=3600)
    stream = asyncio.ensure_future(call(middleware, "/stream"))
    await settle()
    middleware.drain_state.begin()

    await asyncio.wait_for(seen.wait(), GUARD_S)
    result = await asyncio.wait_for(stream, GUARD_S)
    assert result.body.endswith(b"bye\n")
    assert middleware.ledger.in_flight == 0
    middleware.drain_state.hurry()
    await asyncio.wait_for(middleware.drain(), GUARD_S)


async def test_websocket_is_closed_with_1001_when_draining_begins() -> None:
    from admission.demo import app as demo

    middleware = new_middleware(demo)
    sent: list[Message] = []
    accepted = asyncio.Event()
    gone = asyncio.Event()
    connected = False

    async def receive() -> Message:
        nonlocal connected
        if not connected:
            connected = True
            return {"type": "websocket.connect"}
        await gone.wait()
        return {"type": "websocket.disconnect", "code": 1001}

    async def send(message: Message) -> None:
        sent.append(message)
        if message["type"] == "websocket.accept":
            accepted.set()
        elif message["type"] == "websocket.close":
            gone.set()

    scope = {**http_scope("/ws"), "type": "websocket", "scheme": "ws", "subprotocols": []}
    del scope["method"]
    socket = asyncio.ensure_future(middleware(scope, receive, send))
    await asyncio.wait_for(accepted.wait(), GUARD_S)

    await asyncio.wait_for(middleware.drain(), GUARD_S)
    await asyncio.wait_for(socket, GUARD_S)

    closes = [m for m in sent if m["type"] == "websocket.close"]
    assert [m["code"] for m in closes] == [1001]


async def test_request_lifetime_ends_its_child_and_task_when_the_request_ends() -> None:
    started: dict[str, Any] = {}

    async def handler(scope: Scope, receive: Any, send: Any) -> None:
        life = request_lifetime(scope)
        started["child"] = await life.start_process("sleep", "60")
        started["task"] = life.spawn(asyncio.sleep(3600))
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    middleware = new_middleware(handler)
    result = await asyncio.wait_for(call(middleware, "/job"), GUARD_S)

    assert result.status == 200
    assert started["child"].returncode == -signal.SIGTERM
    assert not pid_alive(started["child"].pid)
    assert started["task"].cancelled()
    assert middleware.ledger.in_flight == 0
    await asyncio.wait_for(middleware.drain(), GUARD_S)


async def _forwarded_state(lifespan_running: bool) -> tuple[bool, list[int]]:
    """_forwarded_state runs the signal path's drain and reports whether the service lifetime
    was already closed when the signal was handed on to the server."""
    middleware = AdmissionMiddleware(Gate(), settings=Settings(), handle_signals=True)
    middleware.lifespan.running = lifespan_running
    forwarded: list[int] = []
    closed_at_forward: list[bool] = []

    def forward(sig: int, frame: object) -> None:
        forwarded.append(sig)
        closed_at_forward.append(middleware.lifetime.closed)

    assert middleware.signal_drain is not None
    middleware.signal_drain.signals.forward = forward  # type: ignore[method-assign]
    await asyncio.wait_for(
        middleware.signal_drain.drain_then_forward(signal.SIGTERM, None), GUARD_S
    )
    return closed_at_forward[0], forwarded


async def test_signal_drain_leaves_the_release_to_the_lifespan_shutdown_after_the_app_s_own() -> (
    None
):
    closed, forwarded = await _forwarded_state(lifespan_running=True)
    assert forwarded == [signal.SIGTERM]
    assert not closed


async def test_signal_drain_releases_resources_itself_when_the_server_runs_no_lifespan() -> None:
    closed, forwarded = await _forwarded_state(lifespan_running=False)
    assert forwarded == [signal.SIGTERM]
    assert closed

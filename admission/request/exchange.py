"""admission.request.exchange: one admitted request on its way through the application.

The middleware hands an admitted request to `Exchange.run` once, and the exchange finishes it
whatever happens: it attaches itself to the scope (for `admission.lifecycle.context`), enters
the ledger, wraps the request's `receive` and `send` to note when each timeout falls due (the
ticker of `admission.request.timeouts` enforces them), adds admission's response headers,
watches for the client going away, and can abort the application for a `Reason` (a timeout, a
disconnect, the drain). Aborting cancels the request's task; `run` catches that one cancellation
and turns it into the reason's answer: 408, 504, 503, a websocket close, or a dropped connection
when the response had already started. On the way out it closes the request's lifetime, leaves
the ledger and detaches from the scope.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from asyncio import current_task, get_running_loop
from collections.abc import Awaitable, Callable, Sequence
from time import perf_counter
from typing import TYPE_CHECKING, Protocol

from admission.bucket import Bucket
from admission.ledger import Ledger
from admission.lifecycle.context import STATE_KEY
from admission.lifetime import Lifetime
from admission.reasons import (
    DEADLINE,
    DISCONNECT,
    IDLE_TIMEOUT,
    READ_TIMEOUT,
    WRITE_TIMEOUT,
    WS_MESSAGE_RATE,
    Reason,
)
from admission.refusal import Refusal
from admission.request.abort import abort_connection
from admission.request.responses import answer_refusal
from admission.request.timeouts import DISCONNECT_WATCH_DELAY_S, NEVER, TICK_S, Ticker, Timeouts
from admission.stats import Stats
from admission.types import ASGIApp, Message, Receive, Scope, Send

if TYPE_CHECKING:
    from admission.ratelimit.messages import MessageLimiter, Meter

__all__ = ["Exchange", "Shared", "TimedExchange", "Timeouts"]

log = logging.getLogger("admission")


_HAS_UNCANCEL = sys.version_info >= (3, 11)
# How long admission's own answer to an abort may take to send, without a write timeout.
ANSWER_TIMEOUT_S = 5.0


class DrainFlag(Protocol):
    """DrainFlag is what an exchange reads of the drain: whether it has begun."""

    begun: bool


class Shared:
    """Shared is what every exchange of one middleware reads and counts on: the timeouts, the
    drain's flag, the ledger of requests in flight, the statistics and the ticker.

    `clock` replaces the event loop's clock for the timeouts, the ticker and `time_left`, and
    `time.perf_counter` for the latency (None: those). `watch_delay_s` is how long a request
    runs before its client is watched for going away. `drop_connection` drops a client's
    connection outright (a client that stopped reading would never take a closing answer); it
    says False where the server doesn't allow it. `on_refuse` (`Settings.on_refuse`) answers a
    request cut short before its response began, as it answers every refusal. With
    `times_service`, each exchange notes its `service_s` (see `Exchange`). `ws_messages` is
    each websocket connection's own bucket of messages (`ADMISSION_WS_MESSAGE_RATE`),
    `messages` the route policies' `message_limits`, per client (None: no such limit).
    """

    def __init__(
        self,
        timeouts: Timeouts,
        drain: DrainFlag,
        *,
        ledger: Ledger | None = None,
        stats: Stats | None = None,
        clock: Callable[[], float] | None = None,
        watch_delay_s: float = DISCONNECT_WATCH_DELAY_S,
        drop_connection: Callable[[Send], bool] = abort_connection,
        on_refuse: ASGIApp | None = None,
        ws_messages: Bucket | None = None,
        times_service: bool = False,
        messages: MessageLimiter | None = None,
    ) -> None:
        self.timeouts = timeouts
        self.drain = drain
        self.ledger = ledger if ledger is not None else Ledger()
        self.stats = stats if stats is not None else Stats()
        self.clock = clock
        # Latency on perf_counter, not the loop's clock: uvloop's is the time the loop's
        # iteration began, in whole milliseconds, which reads 0 for most fast requests.
        self.latency_clock = clock or perf_counter
        self.drop_connection = drop_connection
        # What answers a request cut short before its response began, as every refusal.
        self.on_refuse = on_refuse
        # Each websocket connection's own message budget (ADMISSION_WS_MESSAGE_RATE).
        self.ws_messages = ws_messages
        # Whether exchanges note when the body ended and the response started (the adaptive
        # window's service time): two clock reads a request that nothing else needs.
        self.times_service = times_service
        # The route policies' message limits, per client across its websockets.
        self.messages = messages
        # Without a timeout the ticker only starts the disconnect watch: twice per watch delay.
        self.ticker = Ticker(
            self.ledger,
            period_s=TICK_S if timeouts.enabled else watch_delay_s,
            watch_delay_s=watch_delay_s,
            clock=clock,
            watch_clock=self.latency_clock,
        )
        # Without write and idle timeouts, responses go through the exchange's lean `send`.
        self.untimed_send = timeouts.write_s is None and timeouts.idle_s is None


class Exchange:
    """Exchange is the per-request state: nothing about a request lives on the middleware.

    `run(app)` runs the application and finishes the request (see the module's docstring).
    `task` is the request's task, which an abort cancels; `loop` the loop it runs on. `now()`
    is the time every time of the exchange is read on (the loop's clock, unless the shared
    state gives one). `begun_at` is the time of admission on `Shared.latency_clock` (perf_counter
    unless the shared state gives a clock), `latency_s` the time from there to the end of the
    request, once it ended. Under `Shared.times_service`, `service_s()` is the service time:
    from admission, or the end of the body if later, to the response's start; `status` the
    response's status. `deadline` is the loop time at which the handler is cancelled (None:
    no deadline); `draining()` says whether the service has begun to drain. `lifetime` is
    created on first use by `admission.lifecycle.context.request_lifetime` and closed when the
    request ends. Made on the event loop the request runs on, from within its task. An Exchange
    enforces no timeout: a service with any timeout set gets a
    `TimedExchange`, so that one without pays nothing for them.
    """

    # Slots, every one set in __init__: later writes (started, completed, running) then cost a
    # store into a fixed slot, not a change to the shape of an instance dict.
    __slots__ = (
        "_extra_headers",
        "_receive",
        "_send",
        "_unread",
        "_watcher",
        "_ws_meter",
        "_ws_tat",
        "begun_at",
        "body_at",
        "body_done",
        "completed",
        "deadline",
        "disconnected",
        "latency_s",
        "lifetime",
        "loop",
        "reason",
        "running",
        "scope",
        "served_at",
        "shared",
        "started",
        "status",
        "task",
        "websocket",
    )

    def __init__(
        self,
        shared: Shared,
        scope: Scope,
        receive: Receive,
        send: Send,
        extra_headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        self.shared = shared
        self.scope = scope
        self._receive = receive
        self._send = send
        self._extra_headers = extra_headers
        self.loop = loop = get_running_loop()
        self.task: asyncio.Task[object] | None = current_task(loop)
        # One clock read per request: the loop's clock is read only by a TimedExchange.
        latency_clock = shared.latency_clock  # loaded, then called: see `send`
        self.begun_at = latency_clock()
        self.latency_s = 0.0
        self.websocket = scope["type"] == "websocket"
        self.reason: Reason | None = None
        self.running = True
        self.started = False
        self.completed = False
        self.disconnected = False
        self.body_done: bool | None = None
        self.body_at = self.served_at = 0.0
        self.status = 0
        self._ws_tat: float | None = None
        self._ws_meter: Meter | None = None
        self.lifetime: Lifetime | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._unread: list[Message] | None = None
        self.deadline: float | None = None

    async def run(self, app: ASGIApp) -> None:
        """run hands the request to `app` and finishes it, whatever happens: attached to the
        scope, entered in the ledger, timed and watched while the application runs; its own
        abort answered; and on the way out the request's lifetime closed, the ledger left and
        the scope detached. Any other exception or cancellation propagates."""
        shared = self.shared
        scope = self.scope
        state = scope.get("state")
        if state is None:
            scope["state"] = state = {}
        state[STATE_KEY] = self
        ledger = shared.ledger
        enter = ledger.enter  # loaded, then called: see `send`
        enter(self)
        if self.loop not in shared.ticker.timers:
            shared.ticker.arm(self.loop)
        shared.stats.admitted += 1
        try:
            await app(scope, self.receive, self.send if shared.untimed_send else self.send_timed)
        except asyncio.CancelledError:
            self.running = False  # nothing aborts it any more
            if not self.owns_cancellation():
                raise
            await self._answer_abort()
        finally:
            # Stopped: from here on `abort` and `tick` do nothing. Nothing can abort between
            # the application's return and these lines: no await comes between them.
            self.running = False
            if self._watcher is not None:
                self._watcher.cancel()
            try:
                if self.lifetime is not None:
                    await self.lifetime.close()
            finally:
                leave = ledger.leave
                leave(self)
                latency_clock = shared.latency_clock
                self.latency_s = latency = latency_clock() - self.begun_at
                shared.stats.observe(latency)
                # scope -> state -> exchange -> scope is a reference cycle: left in place, every
                # request's objects (the server's included) wait for the cyclic garbage
                # collector instead of being freed here, which costs more than all the rest.
                state.pop(STATE_KEY, None)

    async def _answer_abort(self) -> None:
        """_answer_abort answers for an application this exchange cut short, if anything can
        still be said: the reason's problem response before the response started, its close
        code for websockets, a dropped connection where the reason says so, else nothing (the
        server closes a half-sent response's connection)."""
        reason = self.reason
        assert reason is not None
        self.shared.stats.reject(reason)
        log.debug("request to %s cut short: %s", self.scope.get("path"), reason.label)
        send = self._send
        with contextlib.suppress(Exception):
            if self.websocket:
                if not self.completed and not self.disconnected:
                    close = {"type": "websocket.close", "code": reason.ws_close}
                    await send({**close, "reason": reason.label})
                return
            if (reason.drop_connection or self.started) and not self.disconnected:
                # A response under way can only be ended with its connection. Dropped here,
                # the server sees a client gone, not an application that "returned without
                # completing response" (an ERROR per cut); the cut is admission's to report.
                if self.shared.drop_connection(send):
                    log.info(
                        "%s %s cut short after its response started: %s; connection closed",
                        self.scope.get("method", "WEBSOCKET"),
                        self.scope.get("path"),
                        reason.label,
                    )
                    # One turn of the loop: the server learns of the closed connection before
                    # it looks at how the application ended.
                    await asyncio.sleep(0)
                return
            if reason.status is None or self.disconnected:
                return
            refusal = Refusal.of(reason)
            answer = answer_refusal(self.scope, self.receive, send, refusal, self.shared.on_refuse)
            await asyncio.wait_for(answer, self.shared.timeouts.write_s or ANSWER_TIMEOUT_S)

    def service_s(self) -> float:
        """service_s is how long the application took to start answering once it had the
        request: from admission, or from the end of its body when that came later (a slow
        upload is the client's time, not the service's), to the response's start; the whole
        latency when the response never started."""
        if not self.served_at:
            return self.latency_s
        begun = self.body_at if self.served_at >= self.body_at > self.begun_at else self.begun_at
        return self.served_at - begun

    def tick(self, now: float, watch_before: float) -> None:
        """tick starts the disconnect watch if the request began before `watch_before` (a
        TimedExchange first aborts the application if a timeout fell due by `now`)."""
        if self.running and self._watcher is None and self.begun_at <= watch_before:
            self.start_watch()

    def now(self) -> float:
        """now is the time on the exchange's clock: the shared state's, else the loop's. Read
        when needed, not kept per request: most requests read none (a TimedExchange keeps its
        own `clock`, which it reads all the time)."""
        clock = self.shared.clock
        return clock() if clock is not None else self.loop.time()

    def draining(self) -> bool:
        """draining is True once the service has begun to drain."""
        return self.shared.drain.begun

    def time_left(self) -> float | None:
        """time_left is the seconds until the handler's deadline (never negative), or None."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self.now())

    def abort(self, reason: Reason) -> None:
        """abort cancels the application for `reason`, once, while it runs."""
        if not self.running or self.reason is not None or self.task is None:
            return
        self.reason = reason
        self.task.cancel()

    def owns_cancellation(self) -> bool:
        """owns_cancellation is True when the CancelledError just caught is this exchange's own
        abort and nobody else also cancelled the task (then it must propagate)."""
        if self.reason is None:
            return False
        if _HAS_UNCANCEL and self.task is not None:
            remaining: int = self.task.uncancel()  # type: ignore[attr-defined,unused-ignore]
            return remaining == 0
        return True

    async def receive(self) -> Message:
        """receive is the application's `receive`: it notes the end of the body and a client
        gone away, and hands out first what the disconnect watch read ahead."""
        if self.disconnected:
            return {"type": "websocket.disconnect" if self.websocket else "http.disconnect"}
        message = self._unread.pop(0) if self._unread else await self._receive()
        self._received(message)
        if self.websocket and message["type"] == "websocket.receive":
            shared = self.shared
            # No coroutine per message where no message is limited.
            if shared.ws_messages is not None or shared.messages is not None:
                await self._count_message()
        return message

    async def _count_message(self) -> None:
        """_count_message takes a websocket message from the connection's budget
        (`ADMISSION_WS_MESSAGE_RATE`), then from its client's under the route policies'
        `message_limits` (one store call, none awaited on the memory store); over either, the
        socket is closed with 1008 and the message never reaches the application."""
        shared = self.shared
        bucket = shared.ws_messages
        if bucket is not None:
            tat, decision = bucket.decide(self._ws_tat, self.now())
            if not decision.allowed:
                return await self._close_for(WS_MESSAGE_RATE)
            self._ws_tat = tat
        messages = shared.messages
        if messages is None:
            return
        meter = self._ws_meter
        if meter is None:
            # Which buckets, for which client: worked out at the first message, once.
            meter = self._ws_meter = messages.meter(self.scope)
        if meter.charges:
            reason = (
                messages.take_now(meter) if messages.synchronous else await messages.take(meter)
            )
            if reason is not None:
                await self._close_for(reason)

    async def _close_for(self, reason: Reason) -> None:
        """_close_for aborts the application for a message over a limit: the socket is closed
        for `reason` and the message is never handed over."""
        self.abort(reason)
        # The abort's cancellation lands here, before the message is handed over.
        await asyncio.sleep(0)

    def _received(self, message: Message) -> None:
        kind = message["type"]
        if kind == "http.request":
            if not message.get("more_body", False):
                self.body_done = True
                if self.shared.times_service:
                    self.body_at = self.shared.latency_clock()
        elif kind == "http.disconnect" or kind == "websocket.disconnect":
            self.disconnected = True

    def send(self, message: Message) -> Awaitable[None]:
        """send is the application's `send`: it adds admission's headers to the response and
        notes when the response started and when it is complete. A plain function that returns
        the server's own `send(...)` to be awaited: no coroutine frame of its own for every
        message (what it does needs no await)."""
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            shared = self.shared
            if shared.times_service:
                self.served_at = shared.latency_clock()
                self.status = message["status"]
            draining = shared.drain.begun
            if self._extra_headers or draining:
                # Connection: close while draining: keep-alive clients reconnect, and so reach
                # an instance that is not draining.
                # One list built from both (not a copy then an extend: a call fewer).
                headers = [*message.get("headers", ()), *self._extra_headers]
                if draining:
                    headers.append((b"connection", b"close"))
                # A copy, the application's message left as it is: one dict made, where
                # `{**message, "headers": headers}` makes two and merges them.
                message = dict(message)
                message["headers"] = headers
        elif kind == "http.response.body":
            if not message.get("more_body", False):
                self.completed = True
        elif kind == "websocket.accept":
            self.started = True
        elif kind == "websocket.close":
            self.completed = True
        # Loaded, then called: Python 3.11 specialises no call of an attribute that holds a
        # function written as a method call (`self._send(...)`, `ledger.enter(...)`).
        send = self._send
        return send(message)

    # A plain Exchange times nothing; a TimedExchange overrides it.
    send_timed = send

    def start_watch(self) -> None:
        """start_watch listens for the client going away, once the application has read the
        whole body (listening earlier would steal it); until then it does nothing."""
        if not self.running or self.completed or self._watcher is not None or self.websocket:
            return
        if self._body_finished():
            self._watcher = self.loop.create_task(self._watch())

    def _body_finished(self) -> bool:
        if self.body_done is not None:
            return self.body_done
        for name, value in self.scope.get("headers", ()):
            if name == b"transfer-encoding" or (
                name == b"content-length" and value.strip() != b"0"
            ):
                return False
        return True

    async def _watch(self) -> None:
        message = await self._receive()
        while message["type"] == "http.request":
            # The (empty) body of a request the application never read: the server hands it
            # out before any disconnect. Kept for the application's own receive; watch on.
            if self._unread is None:
                self._unread = []
            self._unread.append(message)
            message = await self._receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
            if not self.completed:
                self.abort(DISCONNECT)


class TimedExchange(Exchange):
    """TimedExchange is an Exchange that enforces the timeouts.

    Each timeout is a time it falls due, NEVER while it does not apply: `_deadline_at` (the
    handler's deadline), `_receive_due` (while the application waits for the request body: the
    read deadline or the idle limit, whichever is first, for `_receive_reason`), `_send_due`
    (while a `send` blocks: the write timeout) and `_idle_due` (the gap after a chunk of a
    streaming response, or between two websocket messages). The ticker's `tick` compares them
    with the time.
    """

    __slots__ = (
        "_deadline_at",
        "_idle_due",
        "_read_deadline",
        "_receive_due",
        "_receive_reason",
        "_send_due",
        "clock",
        "timeouts",
    )

    def __init__(
        self,
        shared: Shared,
        scope: Scope,
        receive: Receive,
        send: Send,
        extra_headers: Sequence[tuple[bytes, bytes]] = (),
    ) -> None:
        # By name, not through super(): on Python 3.11 that builds a proxy object per request.
        Exchange.__init__(self, shared, scope, receive, send, extra_headers)
        self.timeouts = timeouts = shared.timeouts
        # The clock of every timeout: the shared state's, else the loop's. Loaded, then called,
        # wherever it is read (see `Exchange.send`).
        self.clock = clock = shared.clock or self.loop.time
        now = clock()
        self._deadline_at = self._read_deadline = NEVER
        self._receive_due = self._send_due = self._idle_due = NEVER
        self._receive_reason = IDLE_TIMEOUT
        if timeouts.request_s is not None and not self.websocket:
            self.deadline = self._deadline_at = now + timeouts.request_s
        if timeouts.read_s is not None:
            self._read_deadline = now + timeouts.read_s
        if self.websocket:
            self._touch_idle()

    def tick(self, now: float, watch_before: float) -> None:
        """tick aborts the application if one of its timeouts fell due by `now`, and otherwise
        starts the disconnect watch if the request began before `watch_before`."""
        if not self.running:
            return
        if now >= self._deadline_at:
            self.abort(DEADLINE)
        elif now >= self._receive_due:
            self.abort(self._receive_reason)
        elif now >= self._send_due:
            self.abort(WRITE_TIMEOUT)
        elif now >= self._idle_due:
            self.abort(IDLE_TIMEOUT)
        else:
            super().tick(now, watch_before)

    async def receive(self) -> Message:
        """receive is the application's `receive`, bounded by the read and idle timeouts while
        the request body is still coming, and by the idle timeout between websocket messages."""
        if self.disconnected or self._unread or self.websocket or self.body_done:
            message = await super().receive()
            if message["type"] == "websocket.receive":
                self._touch_idle()
            return message
        self._receive_due, self._receive_reason = self._receive_limit()
        try:
            message = await self._receive()
        finally:
            self._receive_due = NEVER
        self._received(message)
        return message

    def _receive_limit(self) -> tuple[float, Reason]:
        """_receive_limit is when a wait for the next chunk of the body falls due, and why:
        the read deadline, or the idle limit from now if that comes first."""
        idle = self.timeouts.idle_s
        if idle is not None:
            clock = self.clock
            idle_due = clock() + idle
            if idle_due < self._read_deadline:
                return idle_due, IDLE_TIMEOUT
        return self._read_deadline, READ_TIMEOUT

    async def send_timed(self, message: Message) -> None:
        """send_timed is the application's `send` when a write or idle timeout is set: it adds
        admission's headers to the response, bounds each send by the write timeout and times
        the gaps of a streaming response."""
        if message["type"] == "http.response.body":
            # The gap is over; the write timeout bounds the send itself.
            self._idle_due = NEVER
        # The flags and headers are `send`'s; it hands back the server's send to await.
        sending = self.send(message)
        write_s = self.timeouts.write_s
        if write_s is None:
            await sending
        else:
            clock = self.clock
            self._send_due = clock() + write_s
            try:
                await sending
            finally:
                self._send_due = NEVER
        # The next gap starts: between two websocket messages, or two chunks of a response.
        if self.websocket or (message["type"] == "http.response.body" and not self.completed):
            self._touch_idle()

    def _touch_idle(self) -> None:
        idle_s = self.timeouts.idle_s
        if idle_s is not None:
            clock = self.clock
            self._idle_due = clock() + idle_s

"""admission.exchange: one admitted request on its way through the application.

The middleware hands an admitted request to `Exchange.run` once, and the exchange finishes it
whatever happens: it attaches itself to the scope (for `admission.context`), enters the ledger,
wraps the request's `receive` and `send` to enforce the timeouts, adds admission's response
headers, watches for the client going away, and can abort the application for a `Reason` (a
timeout, a disconnect, the drain). Aborting cancels the request's task; `run` catches that one
cancellation and turns it into the reason's answer: 408, 504, 503, a websocket close, or a
dropped connection when the response had already started. On the way out it closes the
request's lifetime, leaves the ledger and detaches from the scope.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Protocol

from admission.context import STATE_KEY
from admission.ledger import Ledger
from admission.lifetime import Lifetime
from admission.metrics import Stats
from admission.reasons import (
    DEADLINE,
    DISCONNECT,
    IDLE_TIMEOUT,
    READ_TIMEOUT,
    WRITE_TIMEOUT,
    Reason,
)
from admission.responses import Message, Receive, Scope, Send, send_problem
from admission.uvicorn_adapter import abort_connection

log = logging.getLogger("admission")

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

# How long a request runs before a watcher listens for the client going away: short requests
# never pay for a watcher task, long ones learn of a hang-up within this delay.
DISCONNECT_WATCH_DELAY_S = 0.2

_HAS_UNCANCEL = sys.version_info >= (3, 11)


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Timeouts are the four limits, in seconds; None turns one off.

    `read_s`: the whole request body. `idle_s`: the gap between two body chunks, in either
    direction, or two websocket messages. `write_s`: one `send` of the response. `request_s`:
    the handler's deadline. `enabled` says whether any of them is set.
    """

    read_s: float | None = None
    idle_s: float | None = None
    write_s: float | None = None
    request_s: float | None = None

    # Computed once: every request reads it to skip all timer work when none is set.
    enabled: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        limits = (self.read_s, self.idle_s, self.write_s, self.request_s)
        object.__setattr__(self, "enabled", any(limit is not None for limit in limits))


class DrainFlag(Protocol):
    """DrainFlag is what an exchange reads of the drain: whether it has begun."""

    begun: bool


class Shared:
    """Shared is what every exchange of one middleware reads and counts on: the timeouts, the
    drain's flag, the ledger of requests in flight, the statistics and the disconnect watch.

    `clock` stands in for the event loop's clock in `time_left` (None: the loop's own).
    `drop_connection` drops a client's connection outright (a client that stopped reading
    would never take a closing answer); it says False where the server doesn't allow it.
    """

    def __init__(
        self,
        timeouts: Timeouts,
        drain: DrainFlag,
        *,
        ledger: Ledger | None = None,
        stats: Stats | None = None,
        clock: Callable[[], float] | None = None,
        drop_connection: Callable[[Send], bool] = abort_connection,
    ) -> None:
        self.timeouts = timeouts
        self.drain = drain
        self.ledger = ledger if ledger is not None else Ledger()
        self.stats = stats if stats is not None else Stats()
        self.watch = DisconnectWatch(self.ledger)
        self.clock = clock
        self.drop_connection = drop_connection
        # Without write and idle timeouts, responses go through the exchange's lean `send`.
        self.untimed_send = timeouts.write_s is None and timeouts.idle_s is None


class Exchange:
    """Exchange is the per-request state: nothing about a request lives on the middleware.

    `run(app)` runs the application and finishes the request (see the module's docstring).
    `begin()` arms the timers, `end()` disarms everything. `task` is the request's task, which
    an abort cancels. `begun_at` is the `time.perf_counter()` reading at admission. `deadline`
    is the loop time at which the handler is cancelled (None: no deadline); `draining()` says
    whether the service has begun to drain. `lifetime` is created on first use by
    `admission.context.request_lifetime` and closed when the request ends. Made on the event
    loop the request runs on, from within its task.
    """

    # Slots, every one set in __init__: later writes (started, completed, running) then cost a
    # store into a fixed slot, not a change to the shape of an instance dict.
    __slots__ = (
        "_clock",
        "_deadline_handle",
        "_drain",
        "_extra_headers",
        "_idle_handle",
        "_loop",
        "_read_deadline",
        "_receive",
        "_send",
        "_unread",
        "_watcher",
        "begun_at",
        "body_done",
        "completed",
        "deadline",
        "disconnected",
        "lifetime",
        "reason",
        "running",
        "scope",
        "shared",
        "started",
        "task",
        "timeouts",
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
        self.timeouts = timeouts = shared.timeouts
        self._extra_headers = extra_headers
        self._drain = shared.drain
        self._loop = loop = asyncio.get_running_loop()
        self._clock = shared.clock or loop.time
        self.task: asyncio.Task[object] | None = asyncio.current_task(loop)
        self.begun_at = perf_counter()
        self.websocket = websocket = scope["type"] == "websocket"
        self.reason: Reason | None = None
        self.running = True
        self.started = False
        self.completed = False
        self.disconnected = False
        self.body_done: bool | None = None
        self.lifetime: Lifetime | None = None
        self._deadline_handle: asyncio.TimerHandle | None = None
        self._idle_handle: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._unread: list[Message] | None = None
        self.deadline: float | None = None
        self._read_deadline: float | None = None
        if timeouts.enabled:
            now = self._clock()
            if timeouts.request_s is not None and not websocket:
                self.deadline = now + timeouts.request_s
            if timeouts.read_s is not None:
                self._read_deadline = now + timeouts.read_s

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
        shared.ledger.enter(self)
        if self._loop not in shared.watch.timers:
            shared.watch.arm(self._loop)
        shared.stats.admitted += 1
        try:
            if self.timeouts.enabled:
                self.begin()
            await app(scope, self.receive, self.send_untimed if shared.untimed_send else self.send)
        except asyncio.CancelledError:
            self.end()
            if not self.owns_cancellation():
                raise
            await self._answer_abort()
        except BaseException:
            self.end()
            raise
        else:
            self.end()
        finally:
            try:
                if self.lifetime is not None:
                    await self.lifetime.close()
            finally:
                shared.ledger.leave(self)
                shared.stats.observe(perf_counter() - self.begun_at)
                # scope -> state -> exchange -> scope is a reference cycle: left in place, every
                # request's objects (the server's included) wait for the cyclic garbage
                # collector instead of being freed here, which costs more than all the rest.
                if state.get(STATE_KEY) is self:
                    del state[STATE_KEY]

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
                    await send({"type": "websocket.close", "code": reason.ws_close})
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
            await asyncio.wait_for(send_problem(send, reason), self.timeouts.write_s or 5.0)

    def begin(self) -> None:
        """begin arms the deadline (and a websocket's idle timer); call it just before the app,
        where `end()` is sure to follow. Nothing to do, so no need to call it, when no timeout
        is set. The disconnect watch is started later, by `DisconnectWatch`, for requests that
        last."""
        if self.deadline is not None:
            self._deadline_handle = self._loop.call_at(self.deadline, self.abort, DEADLINE)
        if self.websocket:
            self._touch_idle()

    def draining(self) -> bool:
        """draining is True once the service has begun to drain."""
        return self._drain.begun

    def time_left(self) -> float | None:
        """time_left is the seconds until the handler's deadline (never negative), or None."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self._clock())

    def end(self) -> None:
        """end disarms everything; from here on `abort` does nothing. Synchronous on purpose:
        no timer can fire between the app returning and this call."""
        self.running = False
        if self._deadline_handle is not None:
            self._deadline_handle.cancel()
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        if self._watcher is not None:
            self._watcher.cancel()

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
        """receive is the application's `receive`, bounded by the read and idle timeouts."""
        if self.disconnected:
            return {"type": "websocket.disconnect" if self.websocket else "http.disconnect"}
        limit, reason = self._receive_limit()
        if self._unread:
            message = self._unread.pop(0)
        elif limit is None:
            message = await self._receive()
        else:
            timer = self._loop.call_later(limit, self.abort, reason)
            try:
                message = await self._receive()
            finally:
                timer.cancel()
        kind = message["type"]
        if kind == "http.request":
            if not message.get("more_body", False):
                self.body_done = True
        elif kind == "http.disconnect" or kind == "websocket.disconnect":
            self.disconnected = True
        elif kind == "websocket.receive":
            self._touch_idle()
        return message

    def _receive_limit(self) -> tuple[float | None, Reason]:
        if self.websocket or self.body_done:
            return None, IDLE_TIMEOUT
        idle = self.timeouts.idle_s
        if self._read_deadline is None:
            return idle, IDLE_TIMEOUT
        left = max(0.0, self._read_deadline - self._loop.time())
        if idle is not None and idle < left:
            return idle, IDLE_TIMEOUT
        return left, READ_TIMEOUT

    def send_untimed(self, message: Message) -> Awaitable[None]:
        """send_untimed is `send` for a service without write or idle timeouts: it only adds
        admission's headers and notes when the response is complete. A plain function that
        returns the server's own `send(...)` to be awaited: no coroutine frame of its own for
        every message (what it does needs no await)."""
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            draining = self._drain.begun
            if self._extra_headers or draining:
                # Connection: close while draining: keep-alive clients reconnect, and so reach
                # an instance that is not draining.
                headers = list(message.get("headers", ()))
                headers.extend(self._extra_headers)
                if draining:
                    headers.append((b"connection", b"close"))
                message = {**message, "headers": headers}
        elif kind == "http.response.body":
            if not message.get("more_body", False):
                self.completed = True
        elif kind == "websocket.accept":
            self.started = True
        elif kind == "websocket.close":
            self.completed = True
        return self._send(message)

    async def send(self, message: Message) -> None:
        """send is the application's `send`: it adds admission's headers to the response,
        bounds each send by the write timeout and times the gaps of a streaming response."""
        kind = message["type"]
        if kind == "http.response.body" and self._idle_handle is not None:
            self._idle_handle.cancel()
            self._idle_handle = None
        # The flags and headers are send_untimed's; it hands back the server's send to await.
        sending = self.send_untimed(message)
        if self.timeouts.write_s is None:
            await sending
        else:
            timer = self._loop.call_later(self.timeouts.write_s, self.abort, WRITE_TIMEOUT)
            try:
                await sending
            finally:
                timer.cancel()
        if self.websocket:
            self._touch_idle()
        elif kind == "http.response.body" and not self.completed and self.timeouts.idle_s:
            self._idle_handle = self._loop.call_later(
                self.timeouts.idle_s, self.abort, IDLE_TIMEOUT
            )

    def _touch_idle(self) -> None:
        if self.timeouts.idle_s is None or not self.running:
            return
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        self._idle_handle = self._loop.call_later(self.timeouts.idle_s, self.abort, IDLE_TIMEOUT)

    def start_watch(self) -> None:
        """start_watch listens for the client going away, once the application has read the
        whole body (listening earlier would steal it); until then it does nothing."""
        if not self.running or self.completed or self._watcher is not None or self.websocket:
            return
        if self._body_finished():
            self._watcher = self._loop.create_task(self._watch())

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


class DisconnectWatch:
    """DisconnectWatch finds the requests that have run DISCONNECT_WATCH_DELAY_S and starts
    listening for their clients going away.

    One timer per event loop serves every request on it, and only while some are in flight:
    the ledger already knows them, so a request costs nothing here unless it lasts. A timer,
    not a task: a service answering one short request at a time would otherwise start (and
    finish) a task per request, which costs more than everything else admission does. A
    hang-up is noticed between one and one and a half delays after the request began.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        #: The armed timer of each loop that has requests in flight. A loop's timer disarms
        #: itself once none of its requests is left; a loop closed before that is forgotten at
        #: the next arming.
        self.timers: dict[asyncio.AbstractEventLoop, asyncio.TimerHandle] = {}

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """arm starts the timer of `loop` (it disarms itself once nothing of `loop` is in
        flight). `if loop not in watch.timers: watch.arm(loop)` is what a request costs here."""
        for old in [old for old in list(self.timers) if old.is_closed()]:
            self.timers.pop(old, None)
        self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        # Read at every arming, so that tests can shorten it.
        delay = DISCONNECT_WATCH_DELAY_S
        self.timers[loop] = loop.call_later(delay / 2, self._tick, loop, delay)

    def _tick(self, loop: asyncio.AbstractEventLoop, delay: float) -> None:
        due = perf_counter() - delay
        mine = False
        for item in self.ledger.live():
            # Only this loop's requests: another loop's (another thread's) are not ours to touch.
            if isinstance(item, Exchange) and item._loop is loop:
                mine = True
                if item.begun_at <= due:
                    item.start_watch()
        if mine:
            self._arm(loop)
        else:
            self.timers.pop(loop, None)

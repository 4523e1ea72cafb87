"""admission.exchange: one admitted request on its way through the application.

An `Exchange` wraps the request's `receive` and `send` to enforce the timeouts, watches for
the client going away, adds admission's response headers, and can abort the application for a
reason (a timeout, a disconnect, the drain). Aborting cancels the request's task; the
middleware catches that one cancellation and turns it into the right answer: 408, 504, 503,
a websocket close, or a closed connection when the response had already started.
"""

from __future__ import annotations

import asyncio
import sys
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from time import perf_counter
from typing import Protocol

from admission.ledger import Ledger
from admission.lifetime import Lifetime
from admission.responses import Message, Receive, Scope, Send

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


class Exchange:
    """Exchange is the per-request state: nothing about a request lives on the middleware.

    `begin()` arms the timers, `end()` disarms everything. `loop` and `task` are the running
    loop and the request's task, which an abort cancels. `begun_at` is the
    `time.perf_counter()` reading at admission. `deadline` is the loop time at which the
    handler is cancelled (None: no deadline); `draining()` says whether the service has begun
    to drain. `lifetime` is created on first use by `admission.context.request_lifetime` and
    closed when the request ends.
    """

    # Slots, every one set in __init__: later writes (started, completed, running) then cost a
    # store into a fixed slot, not a change to the shape of an instance dict.
    __slots__ = (
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
        "started",
        "task",
        "timeouts",
        "websocket",
    )

    def __init__(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        timeouts: Timeouts,
        extra_headers: Sequence[tuple[bytes, bytes]],
        drain: DrainFlag,
        loop: asyncio.AbstractEventLoop,
        task: asyncio.Task[object] | None,
    ) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.timeouts = timeouts
        self._extra_headers = extra_headers
        self._drain = drain
        self._loop = loop
        self.task = task
        self.begun_at = perf_counter()
        self.websocket = websocket = scope["type"] == "websocket"
        self.reason: str | None = None
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
            now = loop.time()
            if timeouts.request_s is not None and not websocket:
                self.deadline = now + timeouts.request_s
            if timeouts.read_s is not None:
                self._read_deadline = now + timeouts.read_s

    def begin(self) -> None:
        """begin arms the deadline (and a websocket's idle timer); call it just before the app,
        where `end()` is sure to follow. Nothing to do, so no need to call it, when no timeout
        is set. The disconnect watch is started later, by `DisconnectWatch`, for requests that
        last."""
        if self.deadline is not None:
            self._deadline_handle = self._loop.call_at(self.deadline, self.abort, "deadline")
        if self.websocket:
            self._touch_idle()

    def draining(self) -> bool:
        """draining is True once the service has begun to drain."""
        return self._drain.begun

    def time_left(self) -> float | None:
        """time_left is the seconds until the handler's deadline (never negative), or None."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self._loop.time())

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

    def abort(self, reason: str) -> None:
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

    def _receive_limit(self) -> tuple[float | None, str]:
        if self.websocket or self.body_done:
            return None, ""
        idle = self.timeouts.idle_s
        if self._read_deadline is None:
            return idle, "idle_timeout"
        left = max(0.0, self._read_deadline - self._loop.time())
        if idle is not None and idle < left:
            return idle, "idle_timeout"
        return left, "read_timeout"

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
            timer = self._loop.call_later(self.timeouts.write_s, self.abort, "write_timeout")
            try:
                await sending
            finally:
                timer.cancel()
        if self.websocket:
            self._touch_idle()
        elif kind == "http.response.body" and not self.completed and self.timeouts.idle_s:
            self._idle_handle = self._loop.call_later(
                self.timeouts.idle_s, self.abort, "idle_timeout"
            )

    def _touch_idle(self) -> None:
        if self.timeouts.idle_s is None or not self.running:
            return
        if self._idle_handle is not None:
            self._idle_handle.cancel()
        self._idle_handle = self._loop.call_later(self.timeouts.idle_s, self.abort, "idle_timeout")

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
                self.abort("disconnect")


class DisconnectWatch:
    """DisconnectWatch finds the requests that have run DISCONNECT_WATCH_DELAY_S and starts
    listening for their clients going away.

    One timer serves every request, and only while some are in flight: the ledger already
    knows them, so a request costs nothing here unless it lasts. A timer, not a task: a
    service answering one short request at a time would otherwise start (and finish) a task
    per request, which costs more than everything else admission does. A hang-up is noticed
    between one and one and a half delays after the request began.
    """

    def __init__(self, ledger: Ledger) -> None:
        self.ledger = ledger
        #: The armed timer, None while disarmed: `if watch.timer is None: watch.arm()` is what
        #: a request admitted costs here.
        self.timer: asyncio.TimerHandle | None = None

    def arm(self) -> None:
        """arm starts the timer (it disarms itself once nothing is in flight)."""
        # Read at every arming, so that tests can shorten it.
        delay = DISCONNECT_WATCH_DELAY_S
        self.timer = asyncio.get_running_loop().call_later(delay / 2, self._tick, delay)

    def moved(self) -> None:
        """moved tells the watch that requests now run on another loop: a timer armed on the
        old one may never fire, so the next request arms a new one."""
        self.timer = None

    def _tick(self, delay: float) -> None:
        self.timer = None
        if not self.ledger.in_flight:
            return
        due = perf_counter() - delay
        loop = asyncio.get_running_loop()
        for item in self.ledger.live():
            # Only this loop's requests: another loop's (another thread's) are not ours to touch.
            if isinstance(item, Exchange) and item.begun_at <= due and item._loop is loop:
                item.start_watch()
        self.arm()

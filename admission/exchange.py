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
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from admission.lifetime import Lifetime
from admission.responses import Message, Receive, Scope, Send

# How long a request runs before a watcher listens for the client going away: short requests
# never pay for a watcher task, long ones learn of a hang-up within this delay.
DISCONNECT_WATCH_DELAY_S = 0.2

_HAS_UNCANCEL = sys.version_info >= (3, 11)
# uvloop's timers have millisecond resolution: a due this close to now counts as due.
_TIMER_SLACK_S = 0.001


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Timeouts are the four limits, in seconds; None turns one off.

    `read_s`: the whole request body. `idle_s`: the gap between two body chunks, in either
    direction, or two websocket messages. `write_s`: one `send` of the response. `request_s`:
    the handler's deadline.
    """

    read_s: float | None = None
    idle_s: float | None = None
    write_s: float | None = None
    request_s: float | None = None


class Exchange:
    """Exchange is the per-request state: nothing about a request lives on the middleware.

    `deadline` is the loop time at which the handler is cancelled (None: no deadline);
    `draining()` says whether the service has begun to drain. `lifetime` is created on first
    use by `admission.context.request_lifetime` and closed when the request ends.
    """

    __slots__ = (
        "_extra_headers",
        "_idle_handle",
        "_loop",
        "_read_deadline",
        "_receive",
        "_send",
        "_timers",
        "_unread",
        "_watch_entry",
        "_watch_queue",
        "_watcher",
        "body_done",
        "completed",
        "deadline",
        "disconnected",
        "draining",
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
        *,
        timeouts: Timeouts,
        extra_headers: list[tuple[bytes, bytes]],
        draining: Callable[[], bool],
        watch: WatchQueue | None = None,
    ) -> None:
        self.scope = scope
        self._receive = receive
        self._send = send
        self.timeouts = timeouts
        self._extra_headers = extra_headers
        self.draining = draining
        self.websocket = scope["type"] == "websocket"
        self._loop = asyncio.get_running_loop()
        self.task = asyncio.current_task(self._loop)
        self.reason: str | None = None
        self.running = False
        self.started = False
        self.completed = False
        self.disconnected = False
        self.body_done: bool | None = None
        self.lifetime: Lifetime | None = None
        self._timers: list[asyncio.TimerHandle] = []
        self._idle_handle: asyncio.TimerHandle | None = None
        self._watcher: asyncio.Task[None] | None = None
        self._watch_queue = watch
        self._watch_entry: list[Exchange | None] | None = None
        self._unread: list[Message] = []
        now = self._loop.time()
        self.deadline = (
            None if timeouts.request_s is None or self.websocket else now + timeouts.request_s
        )
        self._read_deadline = None if timeouts.read_s is None else now + timeouts.read_s

    def time_left(self) -> float | None:
        """time_left is the seconds until the handler's deadline (never negative), or None."""
        if self.deadline is None:
            return None
        return max(0.0, self.deadline - self._loop.time())

    def begin(self) -> None:
        """begin arms the deadline and the disconnect watch; call it just before the app."""
        self.running = True
        if self.deadline is not None:
            self._timers.append(self._loop.call_at(self.deadline, self.abort, "deadline"))
        if self.websocket:
            self._touch_idle()
            return
        if self._watch_queue is not None:
            self._watch_entry = self._watch_queue.add(self)
        if self._watch_entry is None:
            self._timers.append(self._loop.call_later(DISCONNECT_WATCH_DELAY_S, self._start_watch))

    def end(self) -> None:
        """end disarms everything; from here on `abort` does nothing. Synchronous on purpose:
        no timer can fire between the app returning and this call."""
        self.running = False
        for timer in self._timers:
            timer.cancel()
        self._timers.clear()
        if self._watch_entry is not None:
            self._watch_entry[0] = None
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

    async def send(self, message: Message) -> None:
        """send is the application's `send`: it adds admission's headers to the response,
        bounds each send by the write timeout and times the gaps of a streaming response."""
        kind = message["type"]
        if kind == "http.response.start":
            self.started = True
            headers = list(message.get("headers", ()))
            headers.extend(self._extra_headers)
            if self.draining():
                # Keep-alive clients reconnect, and so reach an instance that is not draining.
                headers.append((b"connection", b"close"))
            message = {**message, "headers": headers}
        elif kind == "http.response.body":
            if self._idle_handle is not None:
                self._idle_handle.cancel()
                self._idle_handle = None
            if not message.get("more_body", False):
                self.completed = True
        elif kind == "websocket.accept":
            self.started = True
        elif kind == "websocket.close":
            self.completed = True
        if self.timeouts.write_s is None:
            await self._send(message)
        else:
            timer = self._loop.call_later(self.timeouts.write_s, self.abort, "write_timeout")
            try:
                await self._send(message)
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

    def _start_watch(self) -> None:
        if not self.running or self.completed:
            return
        if not self._body_finished():
            # The application has not read the whole body: listening now would steal it.
            self._timers.append(self._loop.call_later(DISCONNECT_WATCH_DELAY_S, self._start_watch))
            return
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
            self._unread.append(message)
            message = await self._receive()
        if message["type"] == "http.disconnect":
            self.disconnected = True
            if not self.completed:
                self.abort("disconnect")


class WatchQueue:
    """WatchQueue starts the disconnect watch of many exchanges with one event-loop timer.

    Every watch is due DISCONNECT_WATCH_DELAY_S after its exchange begins, so dues arrive in
    order and a FIFO is a timer queue: arming and cancelling one loop timer per request costs
    more than the rest of an exchange. An entry is a one-item list the exchange empties when it
    ends, so a finished request is not kept alive until its due. The queue serves one event
    loop at a time; `add` returns None for an exchange on another loop that is still open
    (the exchange then arms its own timer).
    """

    __slots__ = ("_entries", "_loop", "_timer")

    def __init__(self) -> None:
        self._entries: deque[tuple[float, list[Exchange | None]]] = deque()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None

    def add(self, exchange: Exchange) -> list[Exchange | None] | None:
        """add schedules `exchange`'s watch and returns its entry, or None (see the class)."""
        loop = exchange._loop
        if loop is not self._loop:
            if self._loop is not None and not self._loop.is_closed():
                return None
            # The first loop, or a new one after the last closed (its timer died with it).
            self._loop = loop
            self._entries.clear()
            self._timer = None
        due = loop.time() + DISCONNECT_WATCH_DELAY_S
        entry: list[Exchange | None] = [exchange]
        self._entries.append((due, entry))
        if self._timer is None:
            self._timer = loop.call_at(due, self._fire)
        return entry

    def _fire(self) -> None:
        self._timer = None
        loop = self._loop
        assert loop is not None
        entries = self._entries
        try:
            now = loop.time() + _TIMER_SLACK_S
            while entries and entries[0][0] <= now:
                exchange = entries.popleft()[1][0]
                if exchange is not None:
                    exchange._start_watch()
        finally:
            if entries and self._timer is None:
                self._timer = loop.call_at(entries[0][0], self._fire)

"""admission.request.body: reading a request's body before it is admitted (`ADMISSION_BUFFER_BODY`).

A client that sends its body slowly holds whatever the request was given for as long as it
trickles: with a window, a slot that an honest client could have used. Read first, up to a
limit and under the read timeout, the body costs the service nothing but the bytes until it
is all there; only then does the request take a window slot and a token. The application
receives the very messages the server sent, in order; the part of a larger body past the limit
streams through after admission as usual (under the exchange's own read timeout).

Every body being read ahead shares one `Budget` (`ADMISSION_BUFFER_BODY_TOTAL`): a body whose
next part doesn't fit is refused at once (503, `BUFFERS_FULL`), holding nothing, so that what
clients send, however many connections they open, never makes the bytes held grow past it.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable

from admission.reasons import (
    BUFFERS_FULL,
    DISCONNECT,
    DRAINING,
    IDLE_TIMEOUT,
    READ_TIMEOUT,
    Reason,
)
from admission.types import Message, Receive, Scope


class Budget:
    """Budget is the bytes of body that every request read ahead may hold at once, in all:
    `available` of them are free now. Single-threaded: the event loop's."""

    __slots__ = ("available", "total")

    def __init__(self, total: int) -> None:
        self.total = total
        self.available = total

    def take(self, size: int) -> bool:
        """take holds `size` more bytes if they fit; False, holding nothing, if not."""
        if size > self.available:
            return False
        self.available -= size
        return True

    def give(self, size: int) -> None:
        """give lets go of `size` bytes taken before."""
        self.available += size


class Replay:
    """Replay is a `receive` that hands out `messages` first, then the server's `receive`.
    Each message handed out, or the rest of them when the Replay is dropped (the request
    ended without reading its whole body: a refusal, an application that didn't read it),
    gives its bytes back to `budget`."""

    __slots__ = ("_budget", "_messages", "_receive")

    def __init__(self, messages: deque[Message], receive: Receive, budget: Budget | None) -> None:
        self._messages = messages
        self._receive = receive
        self._budget = budget

    async def __call__(self) -> Message:
        if self._messages:
            message = self._messages.popleft()
            if self._budget is not None:
                self._budget.give(len(message.get("body", b"")))
            return message
        return await self._receive()

    def __del__(self) -> None:
        # Whatever path the request took, its Replay goes when the request does (reference
        # counting, at once): the one place every path passes.
        if self._budget is not None:
            self._budget.give(_held(self._messages))
            self._messages.clear()


def _held(messages: deque[Message]) -> int:
    return sum(len(m.get("body", b"")) for m in messages)


def has_body(scope: Scope) -> bool:
    """has_body says whether the request announces a body (a Content-Length other than 0, or
    a Transfer-Encoding); one that doesn't is admitted without waiting for anything."""
    for name, value in scope.get("headers", ()):
        if name == b"transfer-encoding" or (name == b"content-length" and value.strip() != b"0"):
            return True
    return False


async def buffer_body(
    scope: Scope,
    receive: Receive,
    limit: int,
    *,
    timeout_s: float | None,
    idle_s: float | None = None,
    stop: Callable[[], asyncio.Future[None]] | None = None,
    budget: Budget | None = None,
) -> Receive | Reason:
    """buffer_body reads an HTTP request's body until it is complete or `limit` bytes are in,
    and returns a `receive` that replays what it read, then goes on to the server's.

    The reading is bounded by `timeout_s` in all (the read timeout) and `idle_s` between two
    messages (the idle timeout); None leaves either off. When one runs out the result is that
    timeout's `Reason` (408) instead; a client that hangs up meanwhile gives `DISCONNECT`.
    Once the future `stop()` gives completes (the drain refuses new requests: the drain's
    `when_refusing`), the reading ends with `DRAINING`: the
    request is not admitted yet, so the drain would refuse it anyway, and it must not keep the
    service from stopping (nothing counts it in flight). A request that announces no body, or a
    websocket, gets its `receive` back untouched.
    Memory: at most `limit` bytes plus the last message the server handed over, taken from
    `budget` as they arrive; a part that doesn't fit gives everything back and the result is
    `BUFFERS_FULL`.
    """
    if scope["type"] != "http" or not has_body(scope):
        return receive
    loop = asyncio.get_running_loop()
    deadline = None if timeout_s is None else loop.time() + timeout_s
    messages: deque[Message] = deque()
    read = 0
    stopped = None if stop is None else stop()
    try:
        while read < limit:
            wait, reason = idle_s, IDLE_TIMEOUT
            if deadline is not None:
                left = deadline - loop.time()
                if wait is None or left <= wait:
                    wait, reason = max(0.0, left), READ_TIMEOUT
            if stopped is None:
                try:
                    message = await asyncio.wait_for(receive(), wait)
                except asyncio.TimeoutError:
                    return reason
            else:
                receiving: asyncio.Future[Message] = asyncio.ensure_future(receive())
                done, _ = await asyncio.wait(
                    (receiving, stopped), timeout=wait, return_when=asyncio.FIRST_COMPLETED
                )
                if receiving not in done:
                    receiving.cancel()
                    return DRAINING if stopped in done else reason
                message = receiving.result()
            kind = message["type"]
            if kind == "http.disconnect":
                return DISCONNECT
            size = len(message.get("body", b"")) if kind == "http.request" else 0
            if budget is not None and not budget.take(size):
                return BUFFERS_FULL
            messages.append(message)
            if kind != "http.request":
                break
            read += size
            if not message.get("more_body", False):
                break
        replay = Replay(messages, receive, budget)
        messages = deque()
        return replay
    finally:
        if stopped is not None:
            stopped.cancel()
        if budget is not None and messages:
            # Refused or cut short while reading: nothing read is kept.
            budget.give(_held(messages))

"""admission.server.protocol: uvicorn's httptools protocol with the limits of Go's
`http.Server`: the read timeout covers the request head, a head over `max_header_bytes` gets
431 at once without being buffered, and the keep-alive gap between requests is uvicorn's own
keep-alive timeout (`admission serve` sets it to `ADMISSION_IDLE_TIMEOUT`). Usable on its own
as `uvicorn --http admission.server.protocol:HttpProtocol`."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from admission.config.settings import Settings
from admission.reasons import HEADER_TIMEOUT, HEADER_TOO_LARGE, Reason
from admission.request.responses import problem_body

log = logging.getLogger("uvicorn.error")

# After a 431, how long and how much of the rest of the head is read and thrown away, so that
# the client, still sending, reads the 431 instead of a reset. Beyond either, the connection
# is closed as it is.
LINGER_S = 1.0
LINGER_BYTES = 1024 * 1024
# What a request may send besides its body once its head is read (chunk framing and
# trailers, which count against max_header_bytes with the head), per body byte received on top
# of max_header_bytes. The smallest chunk, "1\r\nX\r\n", costs 5 bytes of framing per body
# byte: 8 lets chunks of any size through, with room for short chunk extensions, while a
# client that sends no body can send no more than max_header_bytes in all, and one that does
# is held to a constant multiple of what it sent as body (which the application reads anyway).
FRAMING_PER_BODY_BYTE = 8
# How long a connection accepted but still silent when the server shuts down has to send its
# request (which the drain then answers) before it is closed unanswered.
FRESH_CONNECTION_GRACE_S = 1.0


@dataclass(frozen=True)
class ServerLimits:
    """ServerLimits are the connection-level limits `HttpProtocol` enforces: the request head
    must arrive within `read_timeout_s` (None: no limit) and fit in `max_header_bytes`."""

    read_timeout_s: float | None
    max_header_bytes: int

    def __post_init__(self) -> None:
        if self.max_header_bytes < 1:
            raise ValueError(f"max_header_bytes must be >= 1, not {self.max_header_bytes}")
        if self.read_timeout_s is not None and self.read_timeout_s <= 0:
            raise ValueError(f"read_timeout_s must be > 0 or None, not {self.read_timeout_s}")

    @classmethod
    def from_settings(cls, settings: Settings) -> ServerLimits:
        """from_settings takes ADMISSION_READ_TIMEOUT and ADMISSION_MAX_HEADER_BYTES."""
        return cls(settings.read_timeout, settings.max_header_bytes)


def server_limits(config: uvicorn.Config) -> ServerLimits:
    """server_limits are the limits `config` carries, else (plain `uvicorn --http
    admission.server.protocol:HttpProtocol`) those the ADMISSION_* environment gives."""
    limits = getattr(config, "admission_limits", None)
    if isinstance(limits, ServerLimits):
        return limits
    limits = ServerLimits.from_settings(Settings.from_env())
    # Read once per server, not once per connection.
    config.admission_limits = limits  # type: ignore[attr-defined]
    return limits


class HttpProtocol(HttpToolsProtocol):
    """HttpProtocol is uvicorn's httptools protocol, limited as Go's `http.Server` is.

    The head of each request (request line and headers) must arrive within the read timeout,
    counted from the connection's accept for the first request and from the first byte of
    each later one (the gap before it is the keep-alive timeout's): a connection that trickles
    its head is answered 408 and closed, one that sent nothing is closed. A head larger than
    `max_header_bytes` is answered 431 as soon as the limit is crossed; the parser never sees
    the rest. Each head is counted from its own first byte, pipelined or not. Trailer fields are
    dropped, never stored nor seen by the application, and count with chunk framing against the
    same limit (plus FRAMING_PER_BODY_BYTE per body byte). A connection still silent when the
    server shuts down gets FRESH_CONNECTION_GRACE_S to send its request, so that the drain
    answers it.
    """

    # Its own state in slots, not in the instance dict: uvicorn's protocol already keeps about
    # 28 attributes there, and past 30 CPython stops sharing the dict's keys between instances,
    # which takes the fast path off every attribute read of the protocol, uvicorn's own
    # included (with the trailer sink below, 3,250 instructions per request, about half of
    # it this; docs/performance.md).
    __slots__ = (
        "began",
        "discarded",
        "fed",
        "head_began",
        "head_timer",
        "in_head",
        "limit",
        "max_header_bytes",
        "piece_body",
        "piece_start",
        "read_timeout_s",
    )

    def __init__(
        self,
        config: uvicorn.Config,
        server_state: Any,
        app_state: dict[str, Any],
        _loop: asyncio.AbstractEventLoop | None = None,
    ) -> None:
        super().__init__(config, server_state, app_state, _loop)
        limits = server_limits(config)
        self.max_header_bytes = limits.max_header_bytes
        self.read_timeout_s = limits.read_timeout_s
        # The parser's position on the connection (bytes fed to it) and how far it may go: the
        # current request's start + max_header_bytes + (1 + FRAMING_PER_BODY_BYTE) per body
        # byte, so that what a request sends besides its body (head, chunk framing, trailers)
        # stays within max_header_bytes + FRAMING_PER_BODY_BYTE per body byte.
        self.fed = 0
        self.limit = self.max_header_bytes
        # Where the bytes being parsed start, and the body bytes in them so far: a request
        # that begins inside them begins after those body bytes.
        self.piece_start = 0
        self.piece_body = 0
        self.began = False
        self.in_head = True
        # The loop time the head in progress began at (None: no head under way, or no read
        # timeout), and the connection's one head timer (see `_head_begins`).
        self.head_began: float | None = None
        self.head_timer: asyncio.TimerHandle | None = None
        self.discarded: int | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        if self.read_timeout_s is not None:
            self._head_begins()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)

    # data_received, on_headers_complete, on_body and on_message_complete run for every
    # request: they call uvicorn's by name, not through super(), which on Python 3.11 builds a
    # proxy object per call (about 300 instructions per call).
    def data_received(self, data: bytes) -> None:
        if self.discarded is not None:
            self._discard(len(data))
            return
        if self.in_head and self.head_began is None and self.read_timeout_s is not None:
            # The first byte of a request after a kept-alive gap: the head's clock starts now
            # (`_head_begins`, inline: this runs for every request).
            self.head_began = self.loop.time()
            if self.head_timer is None:
                self._head_begins()
        if len(data) > self.limit - self.fed:
            self._feed_to_limit(data)
            return
        start = self.piece_start = self.fed
        self.fed = start + len(data)
        self.piece_body = 0
        HttpToolsProtocol.data_received(self, data)
        if self.began:
            self.began = False
            if self.in_head:
                # A request begun within `data` whose head is not over yet began after the
                # last blank line in `data`, if any (blank lines before a request line, which
                # llhttp skips and keeps nothing of, are the only ones it may contain).
                blank = data.rfind(b"\r\n\r\n")
                if blank >= 0:
                    # A comparison, not max(): this runs for every request, and the builtin
                    # call costs more than the rest of the line.
                    limit = start + blank + 4 + self.max_header_bytes
                    if limit > self.limit:
                        self.limit = limit

    def _feed_to_limit(self, data: bytes) -> None:
        """_feed_to_limit feeds `data`, more than the limit allows were it all head, chunk
        framing or trailers, to the parser in pieces, each as large as the limit allows then
        (which grows with body bytes, and starts over with each request), until the request
        in progress is over its limit."""
        pos = 0
        while pos < len(data):
            room = self.limit - self.fed
            if room <= 0:
                self._over_limit(len(data) - pos)
                return
            self.data_received(data[pos : pos + room])
            if self.transport.is_closing() or self.discarded is not None:
                return
            pos += room

    def on_headers_complete(self) -> None:
        # The head is in: its clock stops. The timer stays armed (see `_head_begins`).
        self.in_head = False
        self.head_began = None
        cycle = self.cycle
        HttpToolsProtocol.on_headers_complete(self)
        if self.cycle is not cycle:
            # A request to answer (a websocket upgrade makes no cycle here, and reads the
            # fields again). uvicorn's parser callback appends the trailer fields of a chunked
            # body to the list the scope shares: they must not be stored, nor merged into the
            # header section (RFC 9110 section 6.5.1). From here to the next request's start
            # (which makes a new list) only that callback and a declined upgrade's second
            # look use the attribute, so it gets a sink.
            self.headers = _TRAILER_SINK  # type: ignore[assignment]

    def on_body(self, body: bytes) -> None:
        self.piece_body += len(body)
        self.limit += (1 + FRAMING_PER_BODY_BYTE) * len(body)
        HttpToolsProtocol.on_body(self, body)

    def on_message_complete(self) -> None:
        HttpToolsProtocol.on_message_complete(self)
        # Whatever comes next is the next request's head; its clock starts with its first byte,
        # and it begins after the body bytes read with it (refined in data_received).
        self.in_head = True
        self.began = True
        self.limit = self.piece_start + self.piece_body + self.max_header_bytes

    def shutdown(self) -> None:
        """shutdown (the server is stopping) closes an idle kept-alive connection, lets a
        request in progress finish, and gives a connection whose request has not arrived yet
        FRESH_CONNECTION_GRACE_S to send it."""
        if self.in_head and (self.cycle is None or self._head_begun()):
            self.loop.call_later(FRESH_CONNECTION_GRACE_S, self._shutdown_now)
            return
        super().shutdown()

    def _head_begun(self) -> bool:
        """_head_begun is True once bytes of the next request's head have arrived."""
        return self.fed > self.limit - self.max_header_bytes

    def _shutdown_now(self) -> None:
        if not self.transport.is_closing():
            super().shutdown()

    def _head_begins(self) -> None:
        """_head_begins starts the clock of a request head: a loop time written down. The
        connection's one timer is armed only if it is not already; when it fires it closes a
        head that is late, re-arms for the due time of one in progress and otherwise lapses
        until the next head begins. A kept-alive connection so costs a clock read per request,
        not a timer armed and cancelled (see docs/performance.md, "The request path's cost
        cut", for what that buys)."""
        assert self.read_timeout_s is not None
        self.head_began = self.loop.time()
        if self.head_timer is None:
            self.head_timer = self.loop.call_later(self.read_timeout_s, self._head_timer_fired)

    def _disarm_head_timer(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_timer_fired(self) -> None:
        self.head_timer = None
        began = self.head_began
        if began is None or not self.in_head or self.transport.is_closing():
            return
        assert self.read_timeout_s is not None
        due = began + self.read_timeout_s
        if self.loop.time() < due:
            # A later head than the one the timer was armed for: wait for its own due time.
            self.head_timer = self.loop.call_at(due, self._head_timer_fired)
            return
        if self.cycle is not None and not self.cycle.response_complete:
            # Busy answering the previous request (these bytes were pipelined): the
            # keep-alive timeout covers the gap once it is answered; the head's clock starts
            # again with its next byte.
            self.head_began = None
            return
        if self._head_begun():
            self.transport.write(_problem(HEADER_TIMEOUT))
        self.transport.close()

    def _over_limit(self, unread: int) -> None:
        """_over_limit ends a request that sent more than its limit besides its body: with 431
        when nothing else is being answered on the connection, after the answers to the
        requests before it for a pipelined head; by closing the connection once an answer to
        it (or to a request after it) has begun."""
        self._disarm_head_timer()
        cycle = self.cycle
        if self.in_head:
            if cycle is not None and not cycle.response_complete:
                # The newest request is answered last: its end is this head's turn.
                self.discarded = 0
                self._discard(unread)
                cycle.on_response = self._refuse_after_response
                return
        elif cycle is None or self.pipeline or cycle.response_started:
            self.transport.close()
            return
        else:
            # Too much chunk framing or trailers: the request is over for its application too.
            cycle.disconnected = True
            cycle.message_event.set()
        self._refuse_head(unread)

    def _refuse_after_response(self) -> None:
        self.on_response_complete()
        if not self.transport.is_closing():
            self._unset_keepalive_if_required()
            self._refuse_head(0)

    def _refuse_head(self, unread: int) -> None:
        """_refuse_head answers 431, then reads and drops what the client still sends, up to
        LINGER_BYTES for at most LINGER_S, so that the client can read the answer."""
        self.transport.write(_problem(HEADER_TOO_LARGE))
        self.discarded = 0
        with contextlib.suppress(Exception):
            self.transport.write_eof()
        self.loop.call_later(LINGER_S, self._close)
        self._discard(unread)

    def _discard(self, n: int) -> None:
        assert self.discarded is not None
        self.discarded += n
        if self.discarded > LINGER_BYTES:
            self._close()

    def _close(self) -> None:
        if not self.transport.is_closing():
            self.transport.close()


def _problem(reason: Reason) -> bytes:
    """_problem is the whole HTTP/1.1 answer for `reason`, as bytes for the transport."""
    assert reason.status is not None
    body = problem_body(reason, reason.status)
    fields = [(b"content-type", b"application/problem+json")]
    fields += [(b"content-length", b"%d" % len(body)), *reason.headers]
    lines = [b"HTTP/1.1 %d %s" % (reason.status, HTTPStatus(reason.status).phrase.encode())]
    lines += [name + b": " + value for name, value in fields]
    return b"\r\n".join(lines) + b"\r\n\r\n" + body


class _TrailerSink:
    """_TrailerSink stands for uvicorn's list of a request's header fields once its head is
    read: the fields appended then are trailer fields, and it drops them. One for every
    connection: it holds nothing, and iterates as empty (uvicorn looks for an upgrade in it
    once more when it declines one, and then finds none either way)."""

    __slots__ = ()

    def append(self, field: tuple[bytes, bytes]) -> None:
        """append drops a trailer field."""

    def __iter__(self) -> Iterator[tuple[bytes, bytes]]:
        return iter(())


_TRAILER_SINK = _TrailerSink()

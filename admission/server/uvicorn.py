"""admission.server.uvicorn: everything admission knows about uvicorn, in one place.

- `HttpProtocol`: uvicorn's httptools protocol with the limits of Go's `http.Server`: the read
  timeout covers the request head, a head over `max_header_bytes` gets 431 at once without
  being buffered, and the keep-alive gap between requests is uvicorn's own keep-alive timeout
  (`admission serve` sets it to `ADMISSION_IDLE_TIMEOUT`).
- `AdmissionServer`: uvicorn's server, whose shutdown stops listening without dropping a
  connection the kernel had already accepted, and which hears the supervisor's stop relay.
- `Supervisor`: runs `--workers` processes; on SIGTERM/SIGINT it lets go of the listening
  socket at once and relays the stop to the workers by count, never by a second signal.
- `abort_connection`: drops a client's connection outright through uvicorn's transport.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import inspect
import logging
import multiprocessing
import os
import select
import signal
import socket
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from http import HTTPStatus
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.supervisors.multiprocess import Process

from admission.config.settings import Settings
from admission.lifecycle import signals
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
# At shutdown, the longest wait for the connections already queued on the listening socket
# to be accepted.
ACCEPT_QUEUE_WAIT_S = 1.0
# uvicorn's own graceful wait must outlast the drain: it only starts once the drain is over.
SERVER_GRACE_MARGIN_S = 5.0
# uvicorn's exit status for a server that failed to start (uvicorn.config.STARTUP_FAILURE).
STARTUP_FAILURE = 3
# How often the supervisor looks for a stop, and how often it checks that its workers are alive
# (each check is a round trip to every worker, as in uvicorn's supervisor).
SUPERVISOR_TICK_S = 0.1
HEALTHCHECK_EVERY_S = 0.5


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


class StopRelay:
    """StopRelay is what the supervisor and its workers share, in shared memory: how many stop
    signals (SIGTERM, SIGINT) the supervisor has received and the last one, which the workers
    read on their server's tick, and which workers still listen.

    A count rather than a forwarded signal: a signal sent to the whole process group (Ctrl+C,
    systemd's KillMode=control-group) reaches each worker directly as well, and the worker
    counts max(signals it received, stops relayed), so one group signal drains once while a
    deliberate second signal, to the group or to the supervisor alone, hurries.

    Which workers listen (one slot per worker) tells the last of them to stop listening that
    it is the last, and so the one that must not leave connections in the socket's queue."""

    def __init__(self, workers: int) -> None:
        self._shared = multiprocessing.get_context("spawn").RawArray("i", 2 + workers)

    def stopped(self, sig: int) -> None:
        """stopped records one more stop signal (called by the supervisor)."""
        self._shared[1] = sig
        self._shared[0] += 1

    def read(self) -> tuple[int, int]:
        """read is the number of stops so far and the last signal."""
        return int(self._shared[0]), int(self._shared[1])

    def listening(self, slot: int, listening: bool) -> None:
        """listening records whether the worker in `slot` holds the listening socket open."""
        self._shared[2 + slot] = int(listening)

    def others_listening(self, slot: int) -> bool:
        """others_listening is True while a worker other than `slot`'s still listens. Each
        worker clears its own slot before asking, so of two that stop at the same moment the
        second to clear always sees none."""
        return any(self._shared[2 + i] for i in range(len(self._shared) - 2) if i != slot)


class AdmissionConfig(uvicorn.Config):
    """AdmissionConfig is uvicorn's Config (same arguments) carrying admission's server
    limits (default: from the ADMISSION_* environment) and, with more than one worker, the
    supervisor's stop relay to the worker processes. Unless told otherwise it turns uvicorn's
    proxy headers off (admission decides who the client is) and speaks `HttpProtocol`."""

    def __init__(
        self,
        *args: Any,
        limits: ServerLimits | None = None,
        relay: StopRelay | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("proxy_headers", False)
        kwargs.setdefault("http", HttpProtocol)
        super().__init__(*args, **kwargs)
        self.admission_limits = limits
        if relay is None and self.workers > 1:
            relay = StopRelay(self.workers)
        self.admission_relay = relay


def server_limits(config: uvicorn.Config) -> ServerLimits:
    """server_limits are the limits `config` carries, else (plain `uvicorn --http
    admission.server.uvicorn:HttpProtocol`) those the ADMISSION_* environment gives."""
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


class AdmissionServer(uvicorn.Server):
    """AdmissionServer is uvicorn's server with three changes.

    - A signal reaching its own handler (one that arrives before admission's drain handler is
      installed, or after it handed the signal on) ends it with status 0 instead of being
      raised again at exit, as after a drain.
    - Under the supervisor it reads the stop relay on every tick and hands new stops to
      admission's signal chain (or, with no middleware handling signals, acts on them itself).
    - Its shutdown stops listening without losing a connection: when it is the last process
      holding the listening socket, the kernel first stops completing new handshakes, the
      connections already queued are accepted (and answered by the drain), and only then is
      the socket closed, so that a client either gets an answer or is refused at connect.
    """

    def __init__(self, config: uvicorn.Config, *, slot: int | None = None) -> None:
        super().__init__(config)
        self.relayed = 0
        # This worker's place in the supervisor's StopRelay (None: not under the supervisor).
        self.slot = slot

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        signals.ask_server_to_exit(self, sig)

    async def on_tick(self, counter: int) -> bool:
        relay: StopRelay | None = getattr(self.config, "admission_relay", None)
        if relay is not None:
            count, sig = relay.read()
            if count > self.relayed:
                steps, self.relayed = count - self.relayed, count
                if not signals.relay(count, sig):
                    for _ in range(steps):
                        self.handle_exit(sig, None)
        return await super().on_tick(counter)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        relay = getattr(self.config, "admission_relay", None)
        if relay is not None and self.slot is not None and self.started:
            relay.listening(self.slot, True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await stop_listening(self.servers, last_holder=self._last_holder())
        for sock in sockets or []:
            sock.close()
        await super().shutdown(sockets)

    def _last_holder(self) -> bool:
        """_last_holder is True when closing this process's listening socket may close it for
        good: always alone; under the supervisor, when the whole service stops (the
        supervisor has let go of its copy) and no other worker still listens. A worker
        stopping on its own (replaced, --limit-max-requests) just lets go: the others accept
        what is queued."""
        relay: StopRelay | None = getattr(self.config, "admission_relay", None)
        if relay is None or self.slot is None:
            return True
        relay.listening(self.slot, False)
        return self.relayed > 0 and not relay.others_listening(self.slot)


async def stop_listening(servers: list[Any], *, last_holder: bool) -> None:
    """stop_listening closes the listening `servers`. As `last_holder` it first has the kernel
    refuse new connections (`refuse_new_connections`) and waits, at most ACCEPT_QUEUE_WAIT_S,
    for the connections already queued to be accepted: closing the last descriptor of a
    listening socket resets every connection still in its queue."""
    if last_holder:
        fds = [s.fileno() for server in servers for s in (server.sockets or ())]
        if all(refuse_new_connections(fd) for fd in fds):
            deadline = time.monotonic() + ACCEPT_QUEUE_WAIT_S
            # Polled: the loop's own reader on these sockets is what accepts them, and the
            # kernel's queue has no event of its own to wait on.
            while fds and _queued(fds) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    for server in servers:
        server.close()


# SO_ATTACH_FILTER and a classic BPF program that drops what opens a connection and keeps
# the rest. A listening socket's filter sees its packets from the TCP header on: byte 13 holds
# the flags. A packet without ACK (a SYN) is dropped ("keep 0 bytes"), so no new handshake
# begins; the ACK that completes a handshake already under way goes through, so that
# connection reaches the queue and is answered. (A drop-everything filter also dropped those
# ACKs: the client, whose connect had returned, was reset when the socket closed.)
SO_ATTACH_FILTER = 26
_TCP_FLAGS = 13
_ACK = 0x10
_REFUSE_SYN = b"".join(
    struct.pack("HBBI", code, jt, jf, k)
    for code, jt, jf, k in (
        (0x30, 0, 0, _TCP_FLAGS),  # BPF_LD|BPF_B|BPF_ABS: A = the flags byte
        (0x45, 1, 0, _ACK),  # BPF_JMP|BPF_JSET|BPF_K: ACK set? keep it, else drop it
        (0x06, 0, 0, 0),  # BPF_RET|BPF_K: drop
        (0x06, 0, 0, 0xFFFFFFFF),  # BPF_RET|BPF_K: keep the whole packet
    )
)


def refuse_new_connections(fd: int) -> bool:
    """refuse_new_connections attaches a socket filter that drops SYNs to the listening socket
    `fd` (Linux): the kernel no longer answers new handshakes (the client retries its SYN, and
    once the socket is closed is refused), while handshakes under way complete and connections
    already queued stay acceptable. False where that isn't possible, after which closing may
    reset queued connections."""
    if not sys.platform.startswith("linux"):
        return False
    program = ctypes.create_string_buffer(_REFUSE_SYN)
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("HP", len(_REFUSE_SYN) // 8, ctypes.addressof(program))
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as exc:
        log.warning("cannot stop the listening socket taking connections: %s", exc)
        return False
    return True


def _queued(fds: list[int]) -> bool:
    # A listening socket is readable while its accept queue is not empty.
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


class _Worker(Process):
    """_Worker is one of uvicorn's supervised worker processes, running `AdmissionServer`."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], slot: int) -> None:
        server = AdmissionServer(config, slot=slot)
        init: Any = super().__init__
        if "target" in inspect.signature(Process.__init__).parameters:
            init(config, server.run, sockets)  # older uvicorn: the worker runs `target`
        else:
            init(config, sockets)
            self._server = server


class Supervisor:
    """Supervisor runs `config.workers` worker processes on the listening `sockets`, replaces
    a worker that dies, and stops them all on SIGTERM or SIGINT.

    Unlike uvicorn's supervisor it never signals a worker to stop: the first stop signal makes
    it close its own copy of the listening socket at once (the workers hold theirs and keep
    accepting through the drain; a copy left in the supervisor would queue connections that
    no one accepts, reset when it exits) and relays the stop by count (`StopRelay`), so that
    a signal that reached the workers as well is not counted twice.
    """

    def __init__(self, config: AdmissionConfig, sockets: list[socket.socket]) -> None:
        assert config.admission_relay is not None
        self.config = config
        self.relay = config.admission_relay
        self.sockets = sockets
        self.workers: list[_Worker] = []
        self.stops = 0
        self.status = 0

    def run(self) -> int:
        """run starts the workers and returns once they have all exited after a stop: 0, or
        uvicorn's start-up failure status (3) when a worker failed to start."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        # uvicorn's supervisor restarts its workers on SIGHUP; this one doesn't, and must not
        # die of it either (its default action), leaving the workers without a supervisor.
        signal.signal(signal.SIGHUP, self._on_hangup)
        log.info("Started parent process [%d]", os.getpid())
        self.workers = [self._start(slot) for slot in range(self.config.workers)]
        checked = time.monotonic()
        while not self.stops:
            time.sleep(SUPERVISOR_TICK_S)
            if time.monotonic() - checked >= HEALTHCHECK_EVERY_S:
                self._replace_dead()
                checked = time.monotonic()
        for worker in self.workers:
            worker.join()
        log.info("Stopping parent process [%d]", os.getpid())
        return self.status

    def _on_stop(self, sig: int, frame: FrameType | None) -> None:
        # In the handler itself, not on the next tick: a worker with nothing in flight may
        # finish its drain within milliseconds.
        self.stops += 1
        if self.stops == 1:
            log.info("Received %s, stopping the workers.", signal.Signals(sig).name)
            for sock in self.sockets:
                sock.close()
        self.relay.stopped(sig)

    def _on_hangup(self, sig: int, frame: FrameType | None) -> None:
        log.warning("Received SIGHUP: ignored (to restart the workers, restart the service).")

    def _start(self, slot: int) -> _Worker:
        # A worker that died may have left its slot marked as listening.
        self.relay.listening(slot, False)
        worker = _Worker(self.config, self.sockets, slot)
        worker.start()
        return worker

    def _replace_dead(self) -> None:
        healthcheck_s = getattr(self.config, "timeout_worker_healthcheck", 5)
        for i, worker in enumerate(self.workers):
            if self.stops or worker.is_alive(timeout=healthcheck_s):
                continue
            worker.kill()
            worker.join()
            if worker.process.exitcode == STARTUP_FAILURE:
                # The app or the socket is broken: every new worker would fail the same way.
                log.error("Child process [%s] failed to start, stopping.", worker.pid)
                self.status = STARTUP_FAILURE
                self._on_stop(signal.SIGTERM, None)
                return
            log.info("Child process [%s] died", worker.pid)
            try:
                self.workers[i] = self._start(i)
            except OSError:
                if not self.stops:
                    raise
                # A stop closed the listening socket while the replacement was being started.
                return


def run(config: AdmissionConfig) -> int:
    """run serves `config` (in this process, or under a `Supervisor` with more than one
    worker) until it is stopped; returns the exit status (0, or 3 when it failed to start).
    A single process that fails to start exits with 3 itself, as uvicorn does."""
    if config.workers > 1:
        sock = config.bind_socket()
        return Supervisor(config, [sock]).run()
    AdmissionServer(config).run()
    return 0

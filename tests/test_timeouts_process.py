"""Real-server tests of the four timeouts: `admission serve` of the demo on a free loopback port,
slow and stalled clients played with raw sockets.

Each test starts its own server with only the timeouts it is about (one timeout must not fire
in place of another), plus ADMISSION_WINDOW=2 to show the slot comes back. Timeouts are 1 s;
run time about 10 s.
"""

from __future__ import annotations

import contextlib
import json
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from admission.bench.process import Server
from tests.support import (
    SETTLE_S,
    admission_serve,
    body_of,
    get_concurrently,
    in_flight,
    metric,
    open_request,
    read_response,
    run_server,
    wait_until,
)

pytestmark = pytest.mark.process

TIMEOUT_S = 1.0
WINDOW = 2
# The bound for the read timeout; the others get the same slack or more.
READ_MARGIN_S = 0.5

Serve = Callable[..., Server]


@pytest.fixture
def serve() -> Iterator[Serve]:
    """serve starts the demo under admission with the given ADMISSION_* settings, stopped at
    the end of the test."""
    with contextlib.ExitStack() as stack:

        def start(**settings: str) -> Server:
            env = {"ADMISSION_WINDOW": str(WINDOW)}
            env.update({f"ADMISSION_{name.upper()}": value for name, value in settings.items()})
            return stack.enter_context(run_server(admission_serve(), env))

        yield start


def assert_slots_free(server: Server) -> None:
    wait_until(lambda: in_flight(server) == 0, SETTLE_S, "in_flight to return to 0")
    assert metric(server, "admission_window_used", kind="http") == 0
    assert get_concurrently(server, ["/slow?ms=100"] * WINDOW) == [200] * WINDOW


def server_holds_connection(server_port: int, client_port: int) -> bool:
    """server_holds_connection is True while the server's socket for the connection from
    `client_port` still exists, as the kernel lists it in /proc/net/tcp."""
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, remote = line.split()[1:3]
            if (
                int(local.rsplit(":", 1)[1], 16) == server_port
                and int(remote.rsplit(":", 1)[1], 16) == client_port
            ):
                return True
    return False


def read_until_closed(sock: socket.socket, limit: int, timeout_s: float = SETTLE_S) -> bytes:
    """read_until_closed reads what the server still sends until it closes the connection
    (or resets it), failing if that takes more than `limit` bytes or `timeout_s`."""
    sock.settimeout(timeout_s)
    data = bytearray()
    while len(data) <= limit:
        try:
            chunk = sock.recv(65536)
        except ConnectionResetError:
            break
        if not chunk:
            break
        data += chunk
    assert len(data) <= limit, "the server kept sending: the response was not cut off"
    return bytes(data)


def test_stalled_body_gets_408_with_connection_close_at_the_read_timeout(serve: Serve) -> None:
    server = serve(read_timeout=str(TIMEOUT_S))
    started = time.monotonic()
    sock = open_request(
        server.port,
        "/echo",
        method="POST",
        headers={"Content-Length": "100", "Content-Type": "text/plain"},
        body=b"0123456789",  # 10 of the 100 bytes announced, then nothing
    )
    with sock:
        response = read_response(sock)
        elapsed = time.monotonic() - started
        assert response.status == 408
        assert response.headers["Connection"] == "close"
        assert json.loads(body_of(response))["reason"] == "read_timeout"
        assert TIMEOUT_S * 0.9 <= elapsed <= TIMEOUT_S + READ_MARGIN_S
        assert sock.recv(1) == b""  # and the server closed the connection
    assert metric(server, "admission_rejected_total", reason="read_timeout") == 1
    assert_slots_free(server)


def test_chunked_body_that_stops_gets_408_at_the_idle_timeout(serve: Serve) -> None:
    # The read timeout is ten times longer, so a 408 within about a second is the idle one.
    server = serve(idle_timeout=str(TIMEOUT_S), read_timeout=str(10 * TIMEOUT_S))
    started = time.monotonic()
    sock = open_request(
        server.port,
        "/echo",
        method="POST",
        headers={"Transfer-Encoding": "chunked"},
        body=b"5\r\nhello\r\n",  # one chunk, then the client goes quiet
    )
    with sock:
        response = read_response(sock)
        elapsed = time.monotonic() - started
        assert response.status == 408
        assert response.headers["Connection"] == "close"
        assert json.loads(body_of(response))["reason"] == "idle_timeout"
        assert TIMEOUT_S * 0.9 <= elapsed <= TIMEOUT_S + 2 * READ_MARGIN_S
    assert metric(server, "admission_rejected_total", reason="idle_timeout") == 1
    assert_slots_free(server)


def test_handler_past_its_deadline_gets_504_after_about_the_request_timeout(serve: Serve) -> None:
    server = serve(request_timeout=str(TIMEOUT_S))
    started = time.monotonic()
    with open_request(server.port, "/slow?ms=5000") as sock:
        response = read_response(sock)
    elapsed = time.monotonic() - started
    assert response.status == 504
    assert response.headers["Content-Type"] == "application/problem+json"
    assert json.loads(body_of(response))["reason"] == "deadline"
    assert TIMEOUT_S * 0.9 <= elapsed <= TIMEOUT_S + 2 * READ_MARGIN_S
    assert metric(server, "admission_rejected_total", reason="deadline") == 1
    assert_slots_free(server)


@pytest.mark.skipif(not hasattr(socket, "TCP_MAXSEG"), reason="needs TCP_MAXSEG")
def test_client_that_never_reads_is_cut_off_and_frees_its_slot_at_the_write_timeout(
    serve: Serve,
) -> None:
    server = serve(write_timeout=str(TIMEOUT_S))
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    # A small receive buffer, and a small segment size: on loopback the server's send buffer
    # is sized from the segment size (64 KiB by default, so megabytes of buffer) and would
    # swallow the whole stream; with 536-byte segments it holds a few tens of KiB and the
    # server's sends block soon, as they would behind a slow client on a real network.
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_MAXSEG, 536)
    sock.settimeout(SETTLE_S)
    with sock:
        sock.connect(("127.0.0.1", server.port))
        started = time.monotonic()
        # About 1.7 MB of chunks with no pause between them; the client reads none of it.
        open_request(server.port, "/stream?chunks=100000&gap_ms=0", sock=sock)
        wait_until(lambda: in_flight(server) == 1, SETTLE_S, "the stream to start")
        wait_until(
            lambda: in_flight(server) == 0,
            TIMEOUT_S + 4.0,
            "the stalled stream's slot to come back",
        )
        freed_after_s = time.monotonic() - started
        assert metric(server, "admission_rejected_total", reason="write_timeout") == 1
        # Aborted, not merely closed: the server's end of the connection is gone while this
        # client still has not read a byte (a close would wait for it to drain the buffer).
        client_port = sock.getsockname()[1]
        wait_until(
            lambda: not server_holds_connection(server.port, client_port),
            SETTLE_S,
            "the server to drop the stalled connection",
        )
        # The server dropped the connection rather than wait for this client to read what it
        # had buffered: reading ends at once (a reset, or the end of what the kernel already
        # held), far short of the whole body and without its final zero-length chunk.
        rest = read_until_closed(sock, limit=1_000_000)
        assert not rest.endswith(b"0\r\n\r\n")
    assert freed_after_s >= TIMEOUT_S
    assert_slots_free(server)

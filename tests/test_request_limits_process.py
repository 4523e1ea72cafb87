"""Hostile request framing against a real `admission serve`, over raw sockets: chunked trailers
(never stored, never in the scope, bounded with the head), pipelined bursts (each head counted
from its own start) and a head that begins in the same read as the previous request's body."""

from __future__ import annotations

import contextlib
import socket
import threading
import time

import pytest

from tests.support import admission_serve, run_server

ONE_BYTE_CHUNKED = (
    b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n1\r\na\r\n0\r\n"
)


def raw_exchange(
    port: int, request: bytes, *, responses: int = 0, timeout_s: float = 10.0
) -> bytes:
    """raw_exchange sends `request` from a thread while reading, and returns what was read
    until the server closed, `responses` answers arrived (0: until closed), or `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        chunks: list[bytes] = []

        def send() -> None:
            with contextlib.suppress(OSError):
                sock.sendall(request)

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        with contextlib.suppress(OSError):
            while time.monotonic() < deadline:
                sock.settimeout(max(0.01, deadline - time.monotonic()))
                data = sock.recv(65536)
                if not data:
                    break
                chunks.append(data)
                if responses and b"".join(chunks).count(b"HTTP/1.1 ") >= responses:
                    break
        return b"".join(chunks)


def statuses(answer: bytes) -> list[int]:
    return [int(part[:3]) for part in answer.split(b"HTTP/1.1 ")[1:]]


def test_many_trailer_fields_are_refused_with_431_not_stored() -> None:
    trailers = b"X-T: " + b"t" * 1000 + b"\r\n"
    request = ONE_BYTE_CHUNKED + trailers * 8000 + b"\r\n"  # 8 MB of trailer fields
    with run_server(admission_serve(), {"ADMISSION_READ_TIMEOUT": "20"}) as server:
        answer = raw_exchange(server.port, request)
        fits = raw_exchange(server.port, ONE_BYTE_CHUNKED + trailers * 10 + b"\r\n", responses=1)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert fits.startswith(b"HTTP/1.1 200 "), fits[:300]


def test_one_giant_trailer_field_is_refused_with_431() -> None:
    request = ONE_BYTE_CHUNKED + b"X-T: " + b"t" * 8_000_000 + b"\r\n\r\n"
    with run_server(admission_serve(), {"ADMISSION_READ_TIMEOUT": "20"}) as server:
        answer = raw_exchange(server.port, request)
    assert answer.startswith(b"HTTP/1.1 431 "), answer[:200]


def test_one_byte_chunks_are_served_however_many() -> None:
    # 500 KB of chunk framing for 100 KB of body: framing earns its room from the body.
    request = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n"
    request += b"1\r\nb\r\n" * 100_000 + b"0\r\nX-Done: 1\r\n\r\n"
    with run_server(admission_serve(), {}) as server:
        answer = raw_exchange(server.port, request, responses=1)
    assert answer.startswith(b"HTTP/1.1 200 "), answer[:200]


@pytest.mark.parametrize(
    "connection",
    [b"Connection: close\r\n", b"Connection: upgrade, close\r\nUpgrade: h2c\r\n"],
    ids=["plain", "declined-upgrade"],
)
def test_a_trailer_never_chooses_the_clients_bucket(connection: bytes) -> None:
    # Also with an upgrade the server declines: uvicorn then looks at the fields once more.
    env = {"ADMISSION_RATE": "2/minute", "ADMISSION_TRUSTED_PROXIES": "127.0.0.1"}
    head = b"POST /echo HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n"
    head += b"X-Forwarded-For: 1.1.1.1\r\n" + connection + b"\r\n"
    with run_server(admission_serve(), env) as server:
        answers = [
            raw_exchange(
                server.port, head + b"1\r\na\r\n0\r\nX-Forwarded-For: 9.9.9.%d\r\n\r\n" % i
            )
            for i in range(3)
        ]
    assert [statuses(a)[:1] for a in answers] == [[200], [200], [429]], [a[:80] for a in answers]


PADDED_GET = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 500 + b"\r\n\r\n"


def test_a_pipelined_burst_over_the_head_limit_is_answered_in_full() -> None:
    with run_server(admission_serve(), {}) as server:
        answer = raw_exchange(server.port, PADDED_GET * 200, responses=200)
    assert statuses(answer) == [200] * 200


def test_a_pipelined_head_over_the_limit_gets_431_after_the_answers_before_it() -> None:
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n"
    with run_server(admission_serve(), {}) as server:
        answer = raw_exchange(server.port, PADDED_GET * 3 + big)
    assert statuses(answer) == [200, 200, 200, 431], answer[-300:]


def test_a_head_read_with_the_previous_body_is_limited_from_its_own_start() -> None:
    post = b"POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\nExpect: 100-continue\r\n\r\n"
    big = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 100_000 + b"\r\n\r\n"
    with (
        run_server(admission_serve(), {}) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock,
    ):
        sock.sendall(post)
        # The 100 Continue says the head was read on its own: the body and the next
        # request's head then arrive together.
        assert sock.recv(65536).startswith(b"HTTP/1.1 100 ")
        sock.sendall(b"0123456789" + big)
        answer = b""
        with contextlib.suppress(OSError):
            while data := sock.recv(65536):
                answer += data
    assert statuses(answer) == [200, 431], answer[-300:]


def test_a_head_begun_in_the_read_of_the_request_before_has_the_whole_limit() -> None:
    # The second head starts 10 KB into a read and ends in the next one: counted from the
    # read's start it would be over the 64 KiB limit, from its own start it is well within.
    first = b"GET / HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"p" * 10_000 + b"\r\n\r\n"
    second = b"GET / HTTP/1.1\r\nHost: x\r\nX-Big: " + b"b" * 60_000 + b"\r\n\r\n"
    with (
        run_server(admission_serve(), {}) as server,
        socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock,
    ):
        sock.sendall(first + second[:30_000])
        answer = b""
        while b"\r\n\r\n" not in answer:
            answer += sock.recv(65536)
        # The first request is answered: the read that carried it was parsed.
        sock.sendall(second[30_000:] + b"GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
        with contextlib.suppress(OSError):
            while data := sock.recv(65536):
                answer += data
    assert statuses(answer) == [200, 200, 200], answer[-300:]

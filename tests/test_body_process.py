"""Slow bodies against a real `admission serve`: with ADMISSION_BUFFER_BODY they hold no window
slot while they trickle in, so an honest client is served all along.

Eight connections each announce a 100-byte body and send it a byte every 50 ms, which would
take 5 s; the read timeout of 2 s ends them with 408. Meanwhile an honest client posts small
bodies for 1.2 s. With a window of 8 and no buffering, the eight trickles hold every slot and
the honest client is refused; with buffering it is served every time.
"""

from __future__ import annotations

import select
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import admission_serve, run_server, server_has_read, wait_until

pytestmark = pytest.mark.process

TRICKLES = 8


class Trickle:
    """Trickle is one connection sending a POST's body a byte at a time, in a thread."""

    def __init__(self, port: int, stop: threading.Event) -> None:
        self.sock = socket.create_connection(("127.0.0.1", port), timeout=10)
        self.sock.sendall(
            b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Type: text/plain\r\n"
            b"Content-Length: 100\r\n\r\nx"
        )
        self.stop = stop
        self.answer = b""
        self.answered_at = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.sock.settimeout(0.05)
        try:
            while not self.stop.is_set():
                try:
                    data = self.sock.recv(4096)
                except TimeoutError:
                    self.sock.sendall(b"x")
                    continue
                if data:
                    self.answer += data
                    self.answered_at = self.answered_at or time.monotonic()
                if not data or b"\r\n\r\n" in self.answer:
                    return
        except OSError:
            return
        finally:
            self.sock.close()


def rejected(url: str, reason: str) -> float:
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name == "admission_rejected_total" and sample.labels["reason"] == reason:
                return sample.value
    return 0.0


@pytest.mark.parametrize("buffer", ["65536", ""])
def test_an_honest_client_is_served_while_eight_bodies_trickle_into_a_window_of_eight(
    buffer: str,
) -> None:
    env = {
        "ADMISSION_WINDOW": "8",
        "ADMISSION_READ_TIMEOUT": "2",
        "ADMISSION_BUFFER_BODY": buffer,
    }
    stop = threading.Event()
    with (
        run_server(admission_serve(), env) as server,
        httpx.Client(base_url=server.url, timeout=5) as honest,
    ):
        try:
            started = time.monotonic()
            trickles = [Trickle(server.port, stop) for _ in range(TRICKLES)]
            if not buffer:
                # Unbuffered, the trickles are admitted at once and fill the window.
                wait_until(
                    lambda: honest.get("/readyz").json()["in_flight"] == TRICKLES,
                    5,
                    "the trickles to fill the window",
                )
            statuses = []
            while time.monotonic() - started < 1.2:
                response = honest.post("/echo", content=b"hello")
                statuses.append(response.status_code)
                if response.status_code == 200:
                    assert response.content == b"hello"
            honest_done = time.monotonic()
            for trickle in trickles:
                trickle.thread.join(timeout=10)
        finally:
            stop.set()
        print(f"\nbuffer={buffer or 'off'}: honest {statuses.count(200)}/{len(statuses)} admitted")
        # Every trickle was still sending while the honest client was served, and ended 408.
        assert all(t.answer.startswith(b"HTTP/1.1 408") for t in trickles), [
            t.answer[:20] for t in trickles
        ]
        assert all(t.answered_at > honest_done for t in trickles)
        assert len(statuses) >= 10
        if buffer:
            assert statuses == [200] * len(statuses)
            assert rejected(server.url, "window") == 0
        else:
            assert statuses.count(429) == len(statuses)
        assert rejected(server.url, "read_timeout") == TRICKLES


def test_sigterm_while_a_body_is_read_ahead_answers_it_503_and_exits_promptly() -> None:
    # The body is read before admission, so nothing counts it in flight: the drain must still
    # answer it, not leave it to the server's graceful timeout (a 500 after drain delay +
    # drain timeout + 5 s).
    env = {"ADMISSION_BUFFER_BODY": "65536", "ADMISSION_DRAIN_TIMEOUT": "2"}
    with run_server(admission_serve(), env) as server:
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        with sock:
            sock.sendall(b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 100\r\n\r\nabc")
            # The server has read the head and the first bytes: its request task, started then,
            # runs before the signal's callback does, so the drain finds the body being read.
            client_port = sock.getsockname()[1]
            wait_until(lambda: server_has_read(server.port, client_port), 5, "the server reads")
            signalled = time.monotonic()
            server.process.send_signal(signal.SIGTERM)
            answer = b""
            while b"\r\n\r\n" not in answer:
                data = sock.recv(4096)
                if not data:
                    break
                answer += data
            answered = time.monotonic() - signalled
        wait_until(lambda: server.process.poll() is not None, 10, "the server to exit")
        exited = time.monotonic() - signalled
    assert answer.startswith(b"HTTP/1.1 503"), answer
    assert answered < 1.5, f"answered {answered:.2f}s after SIGTERM"
    assert server.process.returncode == 0
    assert exited < 3.0, f"exited {exited:.2f}s after SIGTERM"


def _rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


STALLED = 100
HALF = 512 * 1024


@pytest.mark.parametrize("total", ["8388608", "1073741824"], ids=["8MiB", "1GiB"])
def test_stalled_bodies_hold_no_more_memory_than_the_budget(total: str) -> None:
    # 100 connections each announce a 1 MiB body, send half of it and stall: 50 MiB sent.
    env = {
        "ADMISSION_WINDOW": "8",
        "ADMISSION_READ_TIMEOUT": "30",
        "ADMISSION_BUFFER_BODY": "1048576",
        "ADMISSION_BUFFER_BODY_TOTAL": total,
    }
    with run_server(admission_serve(), env) as server:
        before = _rss_bytes(server.process.pid)
        socks = []
        try:
            for _ in range(STALLED):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                sock.sendall(
                    b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n"
                    + b"x" * HALF
                )
                socks.append(sock)
            refused = rejected_after(server.url, server.port, socks)
            held = _rss_bytes(server.process.pid) - before
        finally:
            for sock in socks:
                sock.close()
        print(f"\nbudget {int(total) >> 20} MiB: {refused} refused, RSS +{held >> 20} MiB")
        if total == "8388608":
            # 16 halves fit 8 MiB; the rest are refused at once instead of held.
            assert refused == STALLED - 16
            assert held < int(total) + 24 * 1024 * 1024
        else:
            assert refused == 0


def rejected_after(url: str, port: int, socks: list[socket.socket]) -> int:
    """rejected_after waits until the server has answered or taken in every stalled body
    (an answer to read, or an empty receive queue on its side), then counts the refusals."""

    def settled(sock: socket.socket) -> bool:
        answered, _, _ = select.select([sock], [], [], 0)
        return bool(answered) or server_has_read(port, sock.getsockname()[1])

    wait_until(lambda: all(settled(sock) for sock in socks), 15, "every body answered or read")
    return int(rejected(url, "buffers_full"))


def test_two_hundred_stalled_bodies_within_the_default_budget_and_healthz_answers() -> None:
    # 200 connections each announce a 1 MiB body, send half of it and stall, against a window
    # of 8 and the default ADMISSION_BUFFER_BODY_TOTAL (32 MiB): the bodies held stay within
    # it, resident memory within 96 MiB of where it was, and /healthz answers meanwhile.
    env = {
        "ADMISSION_WINDOW": "8",
        "ADMISSION_READ_TIMEOUT": "30",
        "ADMISSION_BUFFER_BODY": "1048576",
    }
    with run_server(admission_serve(), env) as server:
        before = _rss_bytes(server.process.pid)
        socks = []
        try:
            for _ in range(200):
                sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
                sock.sendall(
                    b"POST /echo HTTP/1.1\r\nHost: t\r\nContent-Length: 1048576\r\n\r\n"
                    + b"x" * HALF
                )
                socks.append(sock)
            refused = rejected_after(server.url, server.port, socks)
            held = _rss_bytes(server.process.pid) - before
            health = httpx.get(server.url + "/healthz", timeout=5)
        finally:
            for sock in socks:
                sock.close()
    print(f"\n200 stalled bodies: {refused} refused, RSS +{held >> 20} MiB")
    assert health.status_code == 200
    assert refused == 200 - 64  # 64 halves of 512 KiB fill the 32 MiB
    assert held <= 96 * 1024 * 1024

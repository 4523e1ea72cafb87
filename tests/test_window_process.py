"""Real-server tests of the concurrency window: an `admission serve` process of the demo on a
free loopback port, driven through real sockets.

One server (ADMISSION_WINDOW=4, ADMISSION_WEBSOCKET_WINDOW=2) serves the whole module; each
test starts from nothing in flight and leaves nothing in flight. Run time: about 6 s.
"""

from __future__ import annotations

import contextlib
import http.client
import json
import re
import socket
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from tests.support import ServerProcess, admission_serve, run_server, wait_until

pytestmark = pytest.mark.process

WINDOW = 4
WEBSOCKET_WINDOW = 2
# Generous: the machine is shared, and nothing here measures speed but the hang-up test.
SETTLE_S = 5.0


# --- raw HTTP over sockets, shared with test_timeouts_process -------------------------------


def open_request(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    sock: socket.socket | None = None,
) -> socket.socket:
    """open_request sends one HTTP/1.1 request on `sock` (default: a new connection) and
    leaves the answer unread."""
    if sock is None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=SETTLE_S)
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    return sock


def read_response(sock: socket.socket, timeout_s: float = 15.0) -> http.client.HTTPResponse:
    """read_response reads one whole response (head and body) from `sock`."""
    sock.settimeout(timeout_s)
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.body = response.read()  # type: ignore[attr-defined]
    return response


def body_of(response: http.client.HTTPResponse) -> bytes:
    return response.body  # type: ignore[attr-defined,no-any-return]


def in_flight(server: ServerProcess) -> int:
    return int(httpx.get(server.url + "/readyz", timeout=2).json()["in_flight"])


def metric(server: ServerProcess, name: str, **labels: str) -> float:
    """metric is one sample of the server's /metrics, 0.0 when absent."""
    text = httpx.get(server.url + "/metrics", timeout=2).text
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", re.MULTILINE)
    for match in pattern.finditer(text):
        got = ",".join(sorted((match.group(1) or "").split(","))) if match.group(1) else ""
        if got == want:
            return float(match.group(2))
    return 0.0


def request_concurrently(server: ServerProcess, paths: list[str]) -> list[http.client.HTTPResponse]:
    """request_concurrently connects once per path, then sends every request before reading
    any answer, so that all of them are in the server at once."""
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=SETTLE_S) for _ in paths]
    try:
        for sock, path in zip(socks, paths, strict=True):
            open_request(server.port, path, sock=sock)
        return [read_response(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def get_concurrently(server: ServerProcess, paths: list[str]) -> list[int]:
    """get_concurrently is the statuses of `request_concurrently`."""
    return [response.status for response in request_concurrently(server, paths)]


def assert_idle(server: ServerProcess) -> None:
    """assert_idle waits until nothing is in flight and no slot is taken."""
    wait_until(lambda: in_flight(server) == 0, SETTLE_S, "in_flight to return to 0")
    assert metric(server, "admission_window_used", kind="http") == 0
    assert metric(server, "admission_window_used", kind="websocket") == 0


# --- the server --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    env = {"ADMISSION_WINDOW": str(WINDOW), "ADMISSION_WEBSOCKET_WINDOW": str(WEBSOCKET_WINDOW)}
    with run_server(admission_serve(), env) as proc:
        yield proc


@pytest.fixture
def idle_server(server: ServerProcess) -> ServerProcess:
    assert_idle(server)
    return server


# --- tests --------------------------------------------------------------------------------------


def test_window_admits_exactly_its_size_and_rejects_the_rest_with_retry_after(
    idle_server: ServerProcess,
) -> None:
    server = idle_server
    # Every request arrives within a few milliseconds, long before the first admitted one
    # (800 ms) could free its slot.
    responses = request_concurrently(server, ["/slow?ms=800"] * 20)
    assert Counter(r.status for r in responses) == {200: 4, 429: 16}
    for response in responses:
        if response.status == 429:
            assert int(response.headers["Retry-After"]) >= 1
            assert response.headers["Content-Type"] == "application/problem+json"
            assert json.loads(body_of(response))["reason"] == "window"
        else:
            assert body_of(response) == b"slept 800 ms\n"
    wait_until(lambda: in_flight(server) == 0, SETTLE_S, "in_flight to return to 0")
    assert_idle(server)


def test_slots_come_back_within_a_second_when_clients_hang_up(idle_server: ServerProcess) -> None:
    server = idle_server
    disconnects = metric(server, "admission_rejected_total", reason="disconnect")
    socks = [open_request(server.port, "/slow?ms=10000") for _ in range(5)]
    try:
        wait_until(lambda: in_flight(server) == WINDOW, SETTLE_S, "the window to fill")
    finally:
        hung_up = time.monotonic()
        for sock in socks:
            sock.close()
    wait_until(lambda: in_flight(server) == 0, 1.0, "in_flight to fall to 0 after the hang-ups")
    freed_after_s = time.monotonic() - hung_up
    assert freed_after_s < 1.0
    # The slots are really free: a full window of new requests gets through.
    assert get_concurrently(server, ["/slow?ms=300"] * WINDOW) == [200] * WINDOW
    assert metric(server, "admission_rejected_total", reason="disconnect") == disconnects + WINDOW
    assert_idle(server)


def test_failing_handler_answers_500_and_leaks_no_slot(idle_server: ServerProcess) -> None:
    server = idle_server
    # More failures than slots, one after another: a leaked slot per failure would fill the
    # window and turn the last ones into 429.
    statuses = [httpx.get(server.url + "/boom", timeout=SETTLE_S).status_code for _ in range(6)]
    assert statuses == [500] * 6
    assert_idle(server)
    assert get_concurrently(server, ["/slow?ms=300"] * WINDOW) == [200] * WINDOW
    assert_idle(server)


def test_websockets_have_their_own_window_and_do_not_starve_http(
    idle_server: ServerProcess,
) -> None:
    server = idle_server
    url = f"ws://127.0.0.1:{server.port}/ws"
    with contextlib.ExitStack() as stack:
        sockets = [
            stack.enter_context(ws_connect(url, open_timeout=SETTLE_S))
            for _ in range(WEBSOCKET_WINDOW)
        ]
        for i, ws in enumerate(sockets):
            ws.send(f"hello {i}")
            assert ws.recv(timeout=SETTLE_S) == f"hello {i}"
        # The websocket window is full: the next handshake is refused before it is accepted.
        with pytest.raises(InvalidStatus) as refused:
            ws_connect(url, open_timeout=SETTLE_S)
        assert refused.value.response.status_code == 429
        assert int(refused.value.response.headers["Retry-After"]) >= 1
        # Sockets are in flight (the drain waits for them) but hold no HTTP slot.
        assert in_flight(server) == WEBSOCKET_WINDOW
        assert metric(server, "admission_window_used", kind="websocket") == WEBSOCKET_WINDOW
        assert metric(server, "admission_window_used", kind="http") == 0
        assert get_concurrently(server, ["/slow?ms=300"] * WINDOW) == [200] * WINDOW
    assert_idle(server)
    # The websocket window is free again.
    with ws_connect(url, open_timeout=SETTLE_S) as ws:
        ws.send("again")
        assert ws.recv(timeout=SETTLE_S) == "again"
    assert_idle(server)

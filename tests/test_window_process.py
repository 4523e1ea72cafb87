"""Real-server tests of the concurrency window: an `admission serve` process of the demo on a
free loopback port, driven through real sockets.

One server (ADMISSION_WINDOW=4, ADMISSION_WEBSOCKET_WINDOW=2) serves the whole module; each
test starts from nothing in flight and leaves nothing in flight. Run time: about 6 s.
"""

from __future__ import annotations

import contextlib
import json
import time
from collections import Counter
from collections.abc import Iterator

import httpx
import pytest
from websockets.exceptions import InvalidStatus
from websockets.sync.client import connect as ws_connect

from admission.bench.process import Server
from tests.support import (
    SETTLE_S,
    admission_serve,
    body_of,
    get_concurrently,
    in_flight,
    metric,
    open_request,
    request_concurrently,
    run_server,
    wait_until,
)

pytestmark = pytest.mark.process

WINDOW = 4
WEBSOCKET_WINDOW = 2


def assert_idle(server: Server) -> None:
    """assert_idle waits until nothing is in flight and no slot is taken."""
    wait_until(lambda: in_flight(server) == 0, SETTLE_S, "in_flight to return to 0")
    assert metric(server, "admission_window_used", kind="http") == 0
    assert metric(server, "admission_window_used", kind="websocket") == 0


# --- the server --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    env = {"ADMISSION_WINDOW": str(WINDOW), "ADMISSION_WEBSOCKET_WINDOW": str(WEBSOCKET_WINDOW)}
    with run_server(admission_serve(), env) as proc:
        yield proc


@pytest.fixture
def idle_server(server: Server) -> Server:
    assert_idle(server)
    return server


# --- tests --------------------------------------------------------------------------------------


def test_window_admits_exactly_its_size_and_rejects_the_rest_with_retry_after(
    idle_server: Server,
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


def test_slots_come_back_within_a_second_when_clients_hang_up(idle_server: Server) -> None:
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


def test_failing_handler_answers_500_and_leaks_no_slot(idle_server: Server) -> None:
    server = idle_server
    # More failures than slots, one after another: a leaked slot per failure would fill the
    # window and turn the last ones into 429.
    statuses = [httpx.get(server.url + "/boom", timeout=SETTLE_S).status_code for _ in range(6)]
    assert statuses == [500] * 6
    assert_idle(server)
    assert get_concurrently(server, ["/slow?ms=300"] * WINDOW) == [200] * WINDOW
    assert_idle(server)


def test_websockets_have_their_own_window_and_do_not_starve_http(
    idle_server: Server,
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

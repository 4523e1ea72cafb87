"""Tests of HTTP/2 under hypercorn, with real HTTP/2 clients: every stream of a connection is a
request of its own for the window, and a connection that is reset gives back every slot its
streams held."""

from __future__ import annotations

import asyncio
import signal
import socket
import struct
import time

import h2.config
import h2.connection
import httpx
import pytest

from tests.support import plain_hypercorn, run_server
from tests.test_drain_process import exit_status, in_flight

pytestmark = pytest.mark.process

APP = "tests.apps.counted:app"
WINDOW = 8
STREAMS = 20


def window_used(url: str) -> float:
    """window_used is admission_window_used from the server's /metrics (-1 when unreadable)."""
    try:
        text = httpx.get(url + "/metrics", timeout=1).text
    except httpx.HTTPError:
        return -1
    for line in text.splitlines():
        if line.startswith("admission_window_used"):
            return float(line.split()[-1])
    return -1


def wait_for(predicate: object, timeout_s: float, what: str) -> None:
    """wait_for polls `predicate` every 10 ms until it holds, or fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.01)


async def test_twenty_streams_on_one_connection_against_a_window_of_8_admit_exactly_8() -> None:
    env = {"ADMISSION_WINDOW": str(WINDOW)}
    with run_server(plain_hypercorn(APP), env) as server:
        # http1=False: HTTP/2 with prior knowledge over cleartext, as hypercorn accepts it.
        async with httpx.AsyncClient(http1=False, http2=True, timeout=10) as client:
            first = await client.get(server.url + "/")
            requests = [
                asyncio.ensure_future(client.get(server.url + "/slow?ms=1500"))
                for _ in range(STREAMS)
            ]
            peak = 0
            while not all(r.done() for r in requests):
                peak = max(peak, await asyncio.to_thread(in_flight, server))
            replies = [r.result() for r in requests]
    # One connection, one network stream under every response.
    connections = {id(r.extensions["network_stream"]) for r in [first, *replies]}

    assert first.http_version == "HTTP/2"
    assert len(connections) == 1, f"the streams went over {len(connections)} connections"
    statuses = sorted(r.status_code for r in replies)
    assert statuses == [200] * WINDOW + [429] * (STREAMS - WINDOW), statuses
    refused = [r.json()["reason"] for r in replies if r.status_code == 429]
    assert set(refused) == {"window"}, refused
    assert peak == WINDOW, peak


def h2_requests(port: int, path: str, count: int) -> socket.socket:
    """h2_requests opens one HTTP/2 connection (prior knowledge) to 127.0.0.1:`port` and sends
    `count` GET requests for `path` on it, one stream each, leaving them open."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=5)
    conn = h2.connection.H2Connection(h2.config.H2Configuration(client_side=True))
    conn.initiate_connection()
    for i in range(count):
        conn.send_headers(
            1 + 2 * i,
            [(":method", "GET"), (":path", path), (":scheme", "http"), (":authority", "t")],
            end_stream=True,
        )
    sock.sendall(conn.data_to_send())
    return sock


def reset(sock: socket.socket) -> None:
    """reset closes `sock` with a TCP reset (SO_LINGER 0), as a client that crashed."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_a_reset_connection_gives_back_every_slot_its_streams_held() -> None:
    env = {"ADMISSION_WINDOW": str(WINDOW)}
    with run_server(plain_hypercorn(APP), env) as server:
        sock = h2_requests(server.port, "/slow?ms=20000", WINDOW)
        wait_for(lambda: in_flight(server) == WINDOW, 10, f"{WINDOW} streams in flight")
        held = window_used(server.url)
        full = httpx.get(server.url + "/", timeout=5)
        reset(sock)
        reset_at = time.monotonic()
        wait_for(lambda: in_flight(server) == 0, 5, "the streams to be let go")
        freed_after = time.monotonic() - reset_at
        used = window_used(server.url)
        again = httpx.get(server.url + "/", timeout=5)

    assert held == WINDOW
    assert (full.status_code, full.json()["reason"]) == (429, "window")
    assert used == 0
    assert again.status_code == 200
    print(f"\nslots freed {freed_after:.2f}s after the reset")


async def test_a_drain_answers_the_streams_in_flight_and_refuses_new_ones() -> None:
    with run_server(plain_hypercorn(APP)) as server:
        async with httpx.AsyncClient(http1=False, http2=True, timeout=10) as client:
            requests = [
                asyncio.ensure_future(client.get(server.url + "/slow?ms=1500")) for _ in range(4)
            ]
            await asyncio.to_thread(wait_for, lambda: in_flight(server) == 4, 10, "4 in flight")
            server.process.send_signal(signal.SIGTERM)
            await asyncio.to_thread(
                wait_for, lambda: "draining: new requests refused" in server.log(), 5, "draining"
            )
            late = await client.get(server.url + "/")
            replies = await asyncio.gather(*requests)
        connections = {id(r.extensions["network_stream"]) for r in [late, *replies]}
        status, _ = await asyncio.to_thread(exit_status, server, 10)
        log = server.log()

    assert len(connections) == 1
    assert [r.status_code for r in replies] == [200] * 4
    assert (late.status_code, late.json()["reason"]) == (503, "draining")
    assert status == 0, log
    assert "(0 cancelled)" in log

"""Tests of the drain under hypercorn and granian, in real server processes with real signals.

Each server runs `tests.apps.counted:app` (a Starlette app with `AdmissionMiddleware` added) with
the command docs/deployment.md gives. The server hands its signals to the event loop; admission
takes the loop's handler over at lifespan start-up and calls the server's once the drain is
over, so the pre-drain comes first, as under uvicorn.
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections import Counter
from collections.abc import Callable

import pytest

from admission.bench.process import Server
from tests.support import (
    assert_hurried,
    plain_granian,
    plain_hypercorn,
    read_stream_response,
    run_server,
)
from tests.test_drain_process import Reply, exit_status, fetch, in_flight

pytestmark = pytest.mark.process

APP = "tests.apps.counted:app"
SERVERS: dict[str, Callable[..., list[str]]] = {
    "hypercorn": plain_hypercorn,
    "granian": plain_granian,
}
# granian starts a worker process after its main one: give it time on a busy machine.
START_S = 30.0


def wait_for(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """wait_for polls `predicate` every 10 ms until it holds, or fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")
        time.sleep(0.01)


@pytest.mark.parametrize("name", sorted(SERVERS))
async def test_sigterm_fails_readiness_at_once_serves_through_the_delay_then_refuses(
    name: str,
) -> None:
    env = {"ADMISSION_DRAIN_DELAY": "1"}
    with run_server(SERVERS[name](APP), env, start_timeout_s=START_S) as server:
        held = asyncio.ensure_future(fetch(server.url + "/slow?ms=2500"))
        await asyncio.to_thread(wait_for, lambda: in_flight(server) >= 1, 10, "1 in flight")
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)

        readyz = await fetch(server.url + "/readyz")
        while readyz.status == 200 and time.monotonic() - signalled < 1.0:
            readyz = await fetch(server.url + "/readyz")
        not_ready_after = readyz.at - signalled
        # The pre-drain: every new request is served, on a connection of its own.
        during: list[Reply] = []
        while time.monotonic() - signalled < 0.7:
            during.append(await fetch(server.url + "/"))
        healthz = await fetch(server.url + "/healthz")

        await asyncio.sleep(max(0.0, signalled + 1.3 - time.monotonic()))
        after = await fetch(server.url + "/")
        reply = await held
        status, _ = await asyncio.to_thread(exit_status, server, 10)
        log = server.log()

    assert readyz.status == 503, readyz
    assert not_ready_after < 0.5, f"/readyz still 200 {not_ready_after:.2f}s after SIGTERM"
    assert during, "no request was sent during the pre-drain"
    assert [(r.status, r.error) for r in during] == [(200, None)] * len(during), during
    assert all(r.headers.get("connection") == "close" for r in during), during
    assert healthz.status == 200
    assert (after.status, after.reason) == (503, "draining"), after
    assert reply.status == 200, reply
    assert status == 0, log
    assert "still serving for 1s" in log
    assert "(0 cancelled)" in log
    assert log.index("drained in") < log.index("closed: resources released")


@pytest.mark.parametrize("name", sorted(SERVERS))
async def test_a_second_signal_cancels_what_is_in_flight(name: str) -> None:
    env = {"ADMISSION_DRAIN_TIMEOUT": "60"}
    argv = SERVERS[name](APP)
    with run_server(argv, env, start_timeout_s=START_S, new_session=True) as server:
        requests = [asyncio.ensure_future(fetch(server.url + "/slow?ms=20000")) for _ in range(2)]
        await asyncio.to_thread(wait_for, lambda: in_flight(server) >= 2, 10, "2 in flight")
        server.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(
            wait_for, lambda: "draining: new requests refused" in server.log(), 5, "draining"
        )
        hurried = time.monotonic()
        # To the process group: granian's main process does not pass a second signal on to its
        # worker (docs/deployment.md), a terminal's second Ctrl+C reaches it directly.
        os.killpg(server.process.pid, signal.SIGINT)
        status, exited = await asyncio.to_thread(exit_status, server, 15)
        replies = await asyncio.gather(*requests)
        log = server.log()

    assert_hurried(status, exited, hurried, replies, log)


# --- five drains under a light load --------------------------------------------------------------
#
# Four kept-alive connections send /slow?ms=20 one after the other; a 503 is followed by the
# wait its Retry-After asks for, as a client or a load balancer with somewhere else to go does.
# Every request is answered (200, or 503 `draining`) or its connection is refused at connect
# (or reset before a request was sent on it, when the handshake meets the listener's close).

LOAD_CONNECTIONS = 4
DRAINS = 5


async def polite_client(port: int, tally: Counter[str], stop_at: float) -> None:
    """polite_client sends requests until a connection is refused or the time is up,
    counting how each ended."""
    request = b"GET /slow?ms=20 HTTP/1.1\r\nHost: t\r\n\r\n"
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
        except ConnectionRefusedError:
            tally["refused at connect"] += 1
            return
        except ConnectionResetError:
            # The handshake met the listener's close: no request was sent on it, and the
            # client learns at once that the server is gone, as from a refusal.
            tally["reset at connect"] += 1
            return
        except OSError as exc:
            tally[f"connect failed ({type(exc).__name__})"] += 1
            return
        try:
            while time.monotonic() < stop_at:
                writer.write(request)
                try:
                    status, headers, _ = await asyncio.wait_for(read_stream_response(reader), 10)
                except asyncio.TimeoutError:
                    tally["hang"] += 1
                    return
                except (ConnectionError, EOFError, asyncio.IncompleteReadError) as exc:
                    tally[f"lost after connect ({type(exc).__name__})"] += 1
                    break
                tally[str(status)] += 1
                if status == 503:
                    await asyncio.sleep(float(headers.get("retry-after", "1")))
                if headers.get("connection") == "close":
                    break
        finally:
            writer.close()


async def drain_under_load(server: Server, tally: Counter[str]) -> int:
    """drain_under_load runs the polite clients against `server`, sends SIGTERM once they are
    being served and returns the exit status."""
    stop_at = time.monotonic() + 15
    clients = [
        asyncio.ensure_future(polite_client(server.port, tally, stop_at))
        for _ in range(LOAD_CONNECTIONS)
    ]
    await asyncio.to_thread(wait_for, lambda: tally["200"] >= 40, 10, "the load")
    server.process.send_signal(signal.SIGTERM)
    await asyncio.gather(*clients)
    status, _ = await asyncio.to_thread(exit_status, server, 15)
    return status


@pytest.mark.parametrize("name", sorted(SERVERS))
async def test_five_drains_under_a_light_load_lose_no_connection(name: str) -> None:
    env = {"ADMISSION_DRAIN_DELAY": "0.3"}
    totals: Counter[str] = Counter()
    for _ in range(DRAINS):
        tally: Counter[str] = Counter()
        with run_server(SERVERS[name](APP), env, start_timeout_s=START_S) as server:
            status = await drain_under_load(server, tally)
            assert status == 0, server.log()
        totals.update(tally)
    print(f"\n{DRAINS} drains under load, {name}: {dict(totals)}")
    # Every request sent was answered; every client's last connection was refused at connect.
    assert set(totals) <= {"200", "503", "refused at connect", "reset at connect"}, totals
    ended = totals["refused at connect"] + totals["reset at connect"]
    assert ended == DRAINS * LOAD_CONNECTIONS, totals
    assert totals["503"] > 0, "no request arrived during the drain"


def test_hypercorn_under_its_supervisor_is_warned_of() -> None:
    # `--workers 1`, hypercorn's default: its supervisor stops the worker without a signal.
    argv = [a for a in plain_hypercorn(APP) if a not in ("--workers", "0")]
    with run_server(argv, start_timeout_s=START_S) as server:
        log = server.log()
    assert "Run hypercorn with --workers 0" in log, log

"""Tests of the drain in real server processes, with real signals.

Each test starts `admission serve` (or a plain `uvicorn`) on 127.0.0.1, puts requests in flight,
signals the process and checks what every client saw, what the log says and how the process
ended. The bounds (1 s from the last response to exit, 2.5 s from SIGTERM to exit past the
drain timeout) are the contract; the whole file runs in about 25 s on 2 cores.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import json
import signal
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import websockets

from admission.bench.process import Server
from tests.support import (
    admission_serve,
    assert_hurried,
    pid_alive,
    plain_uvicorn,
    read_stream_response,
    run_server,
    wait_until,
)

pytestmark = pytest.mark.process

# How long a client waits for any answer: far beyond every drain here, so a hang fails the test
# instead of passing as "slow".
CLIENT_TIMEOUT_S = 10.0
SLOW_MS = 1500
IN_FLIGHT = 8


# --- helpers -----------------------------------------------------------------------------------


def exit_status(server: Server, timeout_s: float) -> tuple[int, float]:
    """exit_status waits for the server to exit and returns its status and the monotonic time
    at which it was first seen gone (polled every 10 ms)."""
    deadline = time.monotonic() + timeout_s
    while server.process.poll() is None:
        if time.monotonic() > deadline:
            raise AssertionError(f"server still running after {timeout_s}s:\n{server.log()}")
        time.sleep(0.01)
    return server.process.returncode, time.monotonic()


def in_flight(server: Server) -> int:
    """in_flight is what the server's /readyz reports (-1 when it does not answer)."""
    try:
        return int(httpx.get(server.url + "/readyz", timeout=1).json()["in_flight"])
    except (httpx.HTTPError, ValueError, KeyError):
        return -1


@dataclass
class Reply:
    """Reply is what one client request ended with: a status, or the error instead."""

    status: int | None = None
    reason: str | None = None
    error: str | None = None
    at: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)


async def fetch(url: str, *, timeout_s: float = CLIENT_TIMEOUT_S) -> Reply:
    """fetch GETs `url` on a connection of its own and never raises: a refused connection, a
    closed one or a timeout comes back as `error`."""
    try:
        async with httpx.AsyncClient(timeout=timeout_s) as client:
            response = await client.get(url)
    except httpx.TimeoutException as exc:
        return Reply(error=f"timeout: {exc!r}", at=time.monotonic())
    except httpx.ConnectError as exc:
        return Reply(error=f"refused: {exc!r}", at=time.monotonic())
    except httpx.HTTPError as exc:
        return Reply(error=f"closed: {exc!r}", at=time.monotonic())
    reason = None
    if response.headers.get("content-type", "").startswith("application/problem+json"):
        reason = response.json().get("reason")
    return Reply(response.status_code, reason, None, time.monotonic(), dict(response.headers))


@pytest.fixture
def starts_file(tmp_path: Path) -> Path:
    """starts_file is where tests.apps.counted records each handler start."""
    return tmp_path / "starts.txt"


def started_ids(path: Path) -> Counter[str]:
    """started_ids counts, per request id, how often its handler started."""
    if not path.exists():
        return Counter()
    return Counter(line.split()[1] for line in path.read_text().splitlines() if line.strip())


def started_count(path: Path) -> int:
    """started_count is how many handler starts were recorded."""
    return len(path.read_text().splitlines()) if path.exists() else 0


def started_at_least(path: Path, count: int) -> bool:
    """started_at_least is True once `count` handler starts were recorded."""
    return started_count(path) >= count


def started_pids(path: Path) -> set[str]:
    """started_pids are the pids of the workers whose handler started."""
    if not path.exists():
        return set()
    return {line.split()[0] for line in path.read_text().splitlines() if line.strip()}


async def sigterm_with_requests_in_flight(
    server: Server, *, extra_until: float | None = None
) -> tuple[list[Reply], Reply, float]:
    """sigterm_with_requests_in_flight puts IN_FLIGHT requests to /slow?ms=SLOW_MS in flight,
    sends SIGTERM, sends a new request 0.2 s later and returns the in-flight replies, the new
    request's reply and the time of the signal."""
    url = server.url + f"/slow?ms={SLOW_MS}"
    requests = [asyncio.ensure_future(fetch(url)) for _ in range(IN_FLIGHT)]
    await asyncio.to_thread(
        wait_until, lambda: in_flight(server) >= IN_FLIGHT, 10, f"{IN_FLIGHT} in flight"
    )
    signalled = time.monotonic()
    server.process.send_signal(signal.SIGTERM)
    await asyncio.sleep(0.2)
    late = await fetch(server.url + "/", timeout_s=5)
    return list(await asyncio.gather(*requests)), late, signalled


def assert_drained_cleanly(replies: list[Reply], late: Reply) -> float:
    """assert_drained_cleanly checks every in-flight reply is 200 and the late one was refused,
    and returns the time of the last reply."""
    assert [r.status for r in replies] == [200] * IN_FLIGHT, replies
    assert all(r.headers.get("connection") == "close" for r in replies), replies
    if late.error is None:
        assert (late.status, late.reason) == (503, "draining"), late
        assert late.headers.get("connection") == "close"
    else:
        assert late.error.startswith("refused"), late
    return max(r.at for r in replies)


# --- (1) admission serve, SIGTERM with 8 requests in flight -------------------------------------


async def test_sigterm_lets_8_in_flight_requests_finish_refuses_new_ones_and_exits_0() -> None:
    with run_server(admission_serve()) as server:
        replies, late, signalled = await sigterm_with_requests_in_flight(server)
        last = assert_drained_cleanly(replies, late)
        status, exited = exit_status(server, 10)
        log = server.log()

    assert status == 0, log
    assert exited - last < 1.0, f"exit {exited - last:.2f}s after the last response"
    assert last - signalled < SLOW_MS / 1000 + 1.0
    assert "drain started: 8 in flight" in log
    assert "(0 cancelled)" in log


# --- (2) pre-drain delay -------------------------------------------------------------------------


async def test_drain_delay_fails_readiness_while_still_serving_then_refuses() -> None:
    with run_server(admission_serve(), {"ADMISSION_DRAIN_DELAY": "1.5"}) as server:
        # One long request keeps the process in its draining phase after the delay.
        holder = asyncio.ensure_future(fetch(server.url + "/slow?ms=3000"))
        await asyncio.to_thread(wait_until, lambda: in_flight(server) >= 1, 10, "1 in flight")
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)

        readyz = await fetch(server.url + "/readyz")
        while readyz.status == 200 and time.monotonic() - signalled < 1.0:
            readyz = await fetch(server.url + "/readyz")
        during = await fetch(server.url + "/")
        healthz = await fetch(server.url + "/healthz")
        checked = time.monotonic() - signalled

        await asyncio.sleep(max(0.0, signalled + 1.8 - time.monotonic()))
        after = await fetch(server.url + "/")
        readyz_after = await fetch(server.url + "/readyz")
        held = await holder
        status, _ = exit_status(server, 10)
        log = server.log()

    assert checked < 1.5, f"the checks meant for the delay ended {checked:.2f}s after SIGTERM"
    assert readyz.status == 503
    assert during.status == 200
    assert during.headers.get("connection") == "close"
    assert healthz.status == 200
    assert (after.status, after.reason) == (503, "draining"), after
    assert readyz_after.status == 503
    assert held.status == 200
    assert status == 0, log
    assert "still serving for 1.5s" in log


# --- (3) drain timeout: stragglers cancelled ----------------------------------------------------


async def test_drain_timeout_cancels_stragglers_closes_connections_and_logs_how_many() -> None:
    with run_server(admission_serve(), {"ADMISSION_DRAIN_TIMEOUT": "1"}) as server:
        url = server.url + "/slow?ms=20000"
        requests = [asyncio.ensure_future(fetch(url)) for _ in range(3)]
        await asyncio.to_thread(wait_until, lambda: in_flight(server) >= 3, 10, "3 in flight")
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        status, exited = await asyncio.to_thread(exit_status, server, 10)
        replies = await asyncio.gather(*requests)
        log = server.log()

    assert exited - signalled < 2.5, f"exit {exited - signalled:.2f}s after SIGTERM"
    assert status == 0, log
    for reply in replies:
        # An answer (503, the request did not complete) or a closed connection: never a hang.
        assert reply.error is None or reply.error.startswith("closed"), reply
        if reply.error is None:
            assert (reply.status, reply.reason) == (503, "drain_deadline"), reply
        assert reply.at - signalled < 2.5
    assert "drain deadline: cancelled 3 request(s)" in log


# --- (4) the middleware under plain uvicorn, with and without workers ---------------------------


async def test_sigterm_drains_the_middleware_under_plain_uvicorn(starts_file: Path) -> None:
    env = {"DRAIN_TEST_STARTS": str(starts_file)}
    with run_server(plain_uvicorn("tests.apps.counted:app"), env) as server:
        replies, late, _ = await sigterm_with_requests_in_flight(server)
        last = assert_drained_cleanly(replies, late)
        status, exited = exit_status(server, 10)
        log = server.log()

    # uvicorn re-raises the signal once it has shut down: killed by SIGTERM, after the drain.
    # A clean drain exits 0 under plain uvicorn too: admission handled the signal, so uvicorn
    # is asked to shut down without raising it again at exit.
    assert status == 0, log
    assert exited - last < 1.0, f"exit {exited - last:.2f}s after the last response"
    assert "drain started: 8 in flight" in log
    assert "(0 cancelled)" in log


@pytest.mark.parametrize(
    "argv",
    [
        plain_uvicorn("tests.apps.counted:app", "--workers", "2"),
        admission_serve("tests.apps.counted:app", "--workers", "2"),
    ],
    ids=["uvicorn", "admission-serve"],
)
async def test_sigterm_drains_every_worker(argv: list[str], starts_file: Path) -> None:
    env = {"DRAIN_TEST_STARTS": str(starts_file)}
    with run_server(argv, env, start_timeout_s=30) as server:
        await asyncio.to_thread(
            wait_until,
            lambda: server.log().count("Application startup complete") == 2,
            30,
            "both workers started",
        )
        url = server.url + f"/slow?ms={SLOW_MS}"
        requests = [asyncio.ensure_future(fetch(url)) for _ in range(IN_FLIGHT)]
        await asyncio.to_thread(
            wait_until, lambda: started_count(starts_file) >= IN_FLIGHT, 10, "8 started"
        )
        # Each new connection goes to whichever worker accepts it first: add requests until
        # both workers hold some (a few more at most), so that both must drain.
        while len(started_pids(starts_file)) < 2 and len(requests) < 4 * IN_FLIGHT:
            requests.append(asyncio.ensure_future(fetch(url)))
            added_started = functools.partial(started_at_least, starts_file, len(requests))
            await asyncio.to_thread(wait_until, added_started, 10, "the added request started")
        workers = started_pids(starts_file)
        signalled = time.monotonic()
        server.process.send_signal(signal.SIGTERM)
        # The supervisor passes the signal on within its 0.5 s polling period; until then a new
        # request is still served. Once both workers drain, a new one is refused.
        await asyncio.to_thread(
            wait_until, lambda: server.log().count("drain started") == 2, 5, "both workers drain"
        )
        late = await fetch(server.url + "/", timeout_s=5)
        replies = await asyncio.gather(*requests)
        status, exited = exit_status(server, 10)
        log = server.log()

    assert len(workers) == 2, f"all requests went to one worker: {workers}"
    assert [r.status for r in replies] == [200] * len(replies), replies
    if late.error is None:
        assert (late.status, late.reason) == (503, "draining"), late
    else:
        assert late.error.startswith("refused"), late
    last = max(r.at for r in replies)
    # The process exits once drained, not at the drain timeout (30 s): within the
    # supervisor's 0.5 s poll and two interpreters' teardown, which take over a second on a
    # loaded machine.
    assert exited - last < 3.0, f"exit {exited - last:.2f}s after the last response"
    assert last - signalled < SLOW_MS / 1000 + 1.5
    assert status == 0, log
    assert log.count("(0 cancelled)") == 2, log


# --- (5) what the drain releases, websockets, a second SIGINT ------------------------------------


async def test_drain_releases_children_tasks_and_cleanups_after_the_app_shutdown(
    tmp_path: Path,
) -> None:
    events_file = tmp_path / "events.txt"
    env = {"DRAIN_TEST_EVENTS": str(events_file)}
    with run_server(admission_serve("tests.apps.resources:app"), env) as server:
        job = asyncio.ensure_future(fetch(server.url + "/job?ms=1000"))
        await asyncio.to_thread(
            wait_until,
            lambda: events_file.exists() and "job-child" in events_file.read_text(),
            10,
            "the job's child",
        )
        server.process.send_signal(signal.SIGTERM)
        reply = await job
        status, _ = exit_status(server, 15)
        log = server.log()

    events = events_file.read_text().splitlines()
    children = [int(e.split()[1]) for e in events if e.split()[0] in ("service-child", "job-child")]
    assert reply.status == 200
    assert status == 0, log
    assert len(children) == 2, events
    assert not any(pid_alive(pid) for pid in children), events
    # The job's lifetime ends with the job; the service's after the app's own shutdown, its
    # cleanups last-registered first, a raising one not stopping the rest.
    tail = events[events.index("app shutdown") :]
    assert events.index("job-task cancelled") < events.index("app shutdown")
    assert tail == [
        "app shutdown",
        "service-task cancelled",
        "cleanup 3",
        "cleanup 2 raises",
        "cleanup 1",
    ], events
    assert "cleanup 2 failed on purpose" in log


async def test_open_websocket_is_closed_with_1001_when_the_drain_begins() -> None:
    with run_server(admission_serve()) as server:
        ws_url = server.url.replace("http", "ws") + "/ws"
        async with websockets.connect(ws_url, open_timeout=5) as socket:
            await socket.send("hello")
            assert await asyncio.wait_for(socket.recv(), 5) == "hello"
            server.process.send_signal(signal.SIGTERM)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await asyncio.wait_for(socket.recv(), CLIENT_TIMEOUT_S)
        status, _ = exit_status(server, 10)
        log = server.log()

    assert closed.value.rcvd is not None
    assert closed.value.rcvd.code == 1001
    assert status == 0, log


async def test_second_sigint_cancels_what_is_in_flight_instead_of_waiting() -> None:
    with run_server(admission_serve(), {"ADMISSION_DRAIN_TIMEOUT": "60"}) as server:
        url = server.url + "/slow?ms=20000"
        requests = [asyncio.ensure_future(fetch(url)) for _ in range(2)]
        await asyncio.to_thread(wait_until, lambda: in_flight(server) >= 2, 10, "2 in flight")
        server.process.send_signal(signal.SIGINT)
        await asyncio.to_thread(
            wait_until, lambda: "draining: new requests refused" in server.log(), 5, "draining"
        )
        hurried = time.monotonic()
        server.process.send_signal(signal.SIGINT)
        status, exited = await asyncio.to_thread(exit_status, server, 15)
        replies = await asyncio.gather(*requests)
        log = server.log()

    assert_hurried(status, exited, hurried, replies, log)


# --- (6) under load ------------------------------------------------------------------------------
#
# Four kept-alive connections send /slow?ms=50 one request after the other, each with its own
# X-Request-Id, while SIGTERM arrives; tests.apps.counted records which ids reached the handler.
# A "hammering" client reconnects at once after a 503 (the worst case); a "polite" one waits the
# Retry-After the 503 carries, as a client or a load balancer with somewhere else to go does.
# Only a hammering client can meet the instant the listener closes. A connection the kernel had
# accepted but the server had not yet taken would be reset when the listening socket is closed;
# admission serve has the kernel refuse new handshakes first and answers what was queued, so
# every request is answered or its connection refused: no reset of any kind.

LOAD_CONNECTIONS = 4
LOAD_MAX_S = 3.0
LOAD_MAX_REQUESTS = 2000


@dataclass
class LoadTally:
    """LoadTally counts how each request of the load ended, keeping the ids of the requests
    that were answered 200, refused with 503, or lost with their connection."""

    outcomes: Counter[str] = field(default_factory=Counter)
    ok_ids: list[str] = field(default_factory=list)
    refused_ids: list[str] = field(default_factory=list)
    reset_ids: list[str] = field(default_factory=list)
    sent: int = 0
    stop_at: float = 0.0


async def load_connection(port: int, ids: Iterator[int], tally: LoadTally, *, polite: bool) -> None:
    """load_connection sends requests one after the other on a kept-alive connection,
    reconnecting when the server says `Connection: close`, until the listener is gone, the time
    is up or the request budget is spent. Every ending is counted apart."""
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    reused = False
    while time.monotonic() < tally.stop_at and tally.sent < LOAD_MAX_REQUESTS:
        if writer is None:
            try:
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
            except (ConnectionRefusedError, ConnectionResetError):
                # The listener is gone (a reset here is the handshake meeting its close).
                tally.outcomes["refused new connection"] += 1
                return
            reused = False
        assert reader is not None
        request_id = str(next(ids))
        tally.sent += 1
        writer.write(
            f"GET /slow?ms=50 HTTP/1.1\r\nHost: test\r\nX-Request-Id: {request_id}\r\n\r\n".encode()
        )
        try:
            status, headers, body = await asyncio.wait_for(
                read_stream_response(reader), CLIENT_TIMEOUT_S
            )
        except asyncio.TimeoutError:
            tally.outcomes["hang"] += 1
            return
        except (ConnectionError, EOFError, asyncio.IncompleteReadError) as exc:
            kind = "reused" if reused else "new"
            tally.outcomes[f"reset on {kind} connection ({type(exc).__name__})"] += 1
            tally.reset_ids.append(request_id)
            writer.close()
            writer = None
            continue
        reused = True
        if status == 200:
            tally.outcomes["200"] += 1
            tally.ok_ids.append(request_id)
        elif status == 503 and json.loads(body).get("reason") == "draining":
            tally.outcomes["503 draining"] += 1
            tally.refused_ids.append(request_id)
        else:
            tally.outcomes[f"status {status}"] += 1
        if headers.get("connection") == "close":
            writer.close()
            writer = None
        if polite and status == 503:
            wait_s = float(headers.get("retry-after", "0"))
            await asyncio.sleep(min(wait_s, max(0.0, tally.stop_at - time.monotonic())))
    if writer is not None:
        writer.close()


@pytest.mark.parametrize(
    ("client", "delay"), [("hammering", "0"), ("polite", "0.5")], ids=["hammering", "polite"]
)
async def test_steady_load_through_sigterm_completes_or_refuses_every_request(
    client: str, delay: str, starts_file: Path
) -> None:
    env = {"DRAIN_TEST_STARTS": str(starts_file), "ADMISSION_DRAIN_DELAY": delay}
    with run_server(admission_serve("tests.apps.counted:app"), env) as server:
        started = time.monotonic()
        tally = LoadTally(stop_at=started + 2 + LOAD_MAX_S)
        ids = itertools.count()
        clients = [
            asyncio.ensure_future(
                load_connection(server.port, ids, tally, polite=client == "polite")
            )
            for _ in range(LOAD_CONNECTIONS)
        ]
        # Signal in the middle of the stream, once it runs on kept-alive connections.
        await asyncio.to_thread(
            wait_until, lambda: tally.outcomes["200"] >= 10 * LOAD_CONNECTIONS, 5, "the stream"
        )
        served_before = tally.outcomes["200"]
        server.process.send_signal(signal.SIGTERM)
        tally.stop_at = time.monotonic() + LOAD_MAX_S
        await asyncio.gather(*clients)
        status, _ = await asyncio.to_thread(exit_status, server, 10)
        log = server.log()

    starts = started_ids(starts_file)
    print(f"\n{client} load, drain delay {delay}s: {dict(tally.outcomes)}; sent {tally.sent}")
    assert served_before >= 10 * LOAD_CONNECTIONS
    assert status == 0, log
    assert tally.outcomes["503 draining"] > 0, "no request arrived during the drain"
    assert tally.outcomes["refused new connection"] == LOAD_CONNECTIONS, tally.outcomes
    # Every request reached its handler once and completed with 200, or was refused or lost
    # before the handler ran; no other status, no hang.
    assert all(starts[i] == 1 for i in tally.ok_ids)
    assert [i for i in tally.refused_ids if i in starts] == []
    assert [i for i in tally.reset_ids if i in starts] == []
    assert sum(starts.values()) == len(tally.ok_ids)
    allowed = {"200", "503 draining", "refused new connection"}
    assert set(tally.outcomes) <= allowed, tally.outcomes

"""Tests of what `admission serve` does as a server, in real processes with real sockets.

Who the client is (uvicorn never rewrites it from forwarded headers), the limits on a request
head (the read timeout, ADMISSION_MAX_HEADER_BYTES's 431, the idle timeout between kept-alive
requests), and the drain under `--workers`: no connection accepted and then dropped, and a
signal to the whole process group (Ctrl+C) counted once.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import os
import signal
import socket
import subprocess
import threading
import time
from collections import Counter
from pathlib import Path

import httpx
import pytest
import uvicorn.config

from admission.bench.process import Server
from tests.support import (
    REPO,
    admission_serve,
    body_of,
    open_request,
    read_response,
    read_stream_response,
    run_server,
    server_has_read,
    wait_until,
)

pytestmark = pytest.mark.process

CLIENT_TIMEOUT_S = 10.0


def exit_status(server: Server, timeout_s: float) -> int:
    """exit_status waits (polling) for the server to exit and returns its status."""
    wait_until(lambda: server.process.poll() is not None, timeout_s, "the server to exit")
    return int(server.process.returncode)


# --- who the client is ---------------------------------------------------------------------------


def test_forwarded_headers_from_loopback_never_choose_the_clients_bucket() -> None:
    # uvicorn trusts X-Forwarded-For from 127.0.0.1 by default; admission serve must not, with
    # ADMISSION_TRUSTED_PROXIES unset: ten "different" clients are one client, limited at 5.
    env = {"ADMISSION_RATE": "5/minute"}
    with run_server(admission_serve(), env) as server, httpx.Client(timeout=5) as client:
        statuses = [
            client.get(
                server.url + "/",
                headers={
                    "X-Forwarded-For": f"198.51.100.{i}",
                    "Forwarded": f"for=203.0.113.{i}",
                    "X-Forwarded-Proto": "https",
                },
            ).status_code
            for i in range(10)
        ]
    assert statuses == [200] * 5 + [429] * 5


# --- limits on the request head ------------------------------------------------------------------

TRICKLING = 200


async def trickle_head(port: int, give_up_at: float) -> float | None:
    """trickle_head opens a connection, sends a request head one byte a second, and returns
    how long after connecting the server closed it (None if it never did before `give_up_at`)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened = time.monotonic()
    writer.write(b"GET / HTTP/1.1\r\nHost: test\r\nX-Slow: ")
    try:
        while time.monotonic() < give_up_at:
            try:
                data = await asyncio.wait_for(reader.read(4096), 1.0)
            except asyncio.TimeoutError:
                writer.write(b"a")
                continue
            if not data:
                return time.monotonic() - opened
    except ConnectionError:
        return time.monotonic() - opened
    finally:
        writer.close()
    return None


async def healthz_latencies(url: str, count: int) -> list[float]:
    """healthz_latencies GETs /healthz `count` times, 100 ms apart, on fresh connections, and
    returns how long each took."""
    took = []
    for _ in range(count):
        started = time.monotonic()
        async with httpx.AsyncClient(timeout=5) as client:
            assert (await client.get(url + "/healthz")).status_code == 200
        took.append(time.monotonic() - started)
        await asyncio.sleep(0.1)
    return took


async def test_heads_sent_a_byte_a_second_are_closed_within_the_read_timeout() -> None:
    with run_server(admission_serve(), {"ADMISSION_READ_TIMEOUT": "2"}) as server:
        give_up_at = time.monotonic() + 10
        trickles = [
            asyncio.ensure_future(trickle_head(server.port, give_up_at)) for _ in range(TRICKLING)
        ]
        await asyncio.sleep(0.5)
        latencies = await healthz_latencies(server.url, 10)
        closed_after = await asyncio.gather(*trickles)
    print(f"\nhealthz while {TRICKLING} heads trickle: max {max(latencies) * 1000:.0f} ms")
    assert None not in closed_after, "a trickling head was never closed"
    assert max(c for c in closed_after if c is not None) < 3.0, sorted(closed_after)[-5:]  # type: ignore[type-var]
    # /healthz kept answering (its speed is measured in benchmarks/server_limits.py).
    assert len(latencies) == 10


def raw_exchange(port: int, request: bytes, timeout_s: float = 5.0) -> bytes:
    """raw_exchange sends `request` on a socket of its own, from a thread so that the server
    may answer before it is all sent, and returns everything read until the server closed."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        chunks: list[bytes] = []

        def read_all() -> None:
            with contextlib.suppress(OSError):
                while data := sock.recv(65536):
                    chunks.append(data)

        reader = threading.Thread(target=read_all)
        reader.start()
        # The server may stop reading after its answer: what matters is the answer.
        with contextlib.suppress(OSError):
            sock.sendall(request)
        reader.join(timeout_s)
        return b"".join(chunks)


def test_a_head_over_the_limit_gets_431_and_one_within_it_is_served() -> None:
    with run_server(admission_serve(), {}) as server:
        big = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * (1024 * 1024) + b"\r\n\r\n"
        answer = raw_exchange(server.port, big)
        fits = b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX-Big: "
        fits_answer = raw_exchange(server.port, fits + b"a" * 60_000 + b"\r\n\r\n")
        healthy = httpx.get(server.url + "/healthz", timeout=5).status_code
    head, _, body = answer.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 431 "), answer[:200]
    assert b"connection: close" in head.lower()
    assert json.loads(body)["reason"] == "header_too_large"
    assert fits_answer.startswith(b"HTTP/1.1 200 "), fits_answer[:200]
    assert healthy == 200


def test_admission_max_header_bytes_sets_the_limit() -> None:
    def head(size: int) -> bytes:
        return b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\nX: " + b"a" * size + b"\r\n\r\n"

    with run_server(admission_serve(), {"ADMISSION_MAX_HEADER_BYTES": "4096"}) as server:
        over = raw_exchange(server.port, head(5000))
        within = raw_exchange(server.port, head(3000))
    assert over.startswith(b"HTTP/1.1 431 "), over[:100]
    assert within.startswith(b"HTTP/1.1 200 "), within[:100]


async def test_an_idle_kept_alive_connection_is_closed_after_the_idle_timeout() -> None:
    with run_server(admission_serve(), {"ADMISSION_IDLE_TIMEOUT": "1"}) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, headers, _ = await read_stream_response(reader)
        answered = time.monotonic()
        assert status == 200 and headers.get("connection") != "close"
        # uvicorn's own keep-alive timeout is 5 s: closed well before it, at the idle timeout.
        assert await asyncio.wait_for(reader.read(1), 4) == b""
        idle_for = time.monotonic() - answered
        writer.close()
    assert 0.8 < idle_for < 3.0, idle_for


async def test_every_request_of_a_kept_alive_connection_has_the_head_limits() -> None:
    forty_kib = b"GET / HTTP/1.1\r\nHost: t\r\nX-Big: " + b"a" * 40_000 + b"\r\n\r\n"
    with run_server(admission_serve(), {"ADMISSION_READ_TIMEOUT": "1"}) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        # Two heads of 40 KiB each: each within the 64 KiB limit, together over it.
        for _ in range(2):
            writer.write(forty_kib)
            status, _, _ = await read_stream_response(reader)
            assert status == 200
        # A third head, trickled: its clock starts with its first byte (uvicorn's keep-alive
        # timeout, 5 s, stops counting then), so it is closed after the read timeout.
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n")
        started = time.monotonic()
        status, _, body = await asyncio.wait_for(read_stream_response(reader), 4)
        assert (status, json.loads(body)["reason"]) == (408, "header_timeout")
        assert await asyncio.wait_for(reader.read(1), 4) == b""
        assert time.monotonic() - started < 3.0
        writer.close()


async def test_a_head_gets_the_whole_read_timeout_from_its_first_byte_on_an_older_connection() -> (
    None
):
    # The connection's one head timer is armed at the accept, for the first request: when it
    # fires, the second head has run for less than the read timeout and must not be cut yet.
    with run_server(admission_serve(), {"ADMISSION_READ_TIMEOUT": "1"}) as server:
        reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
        connected = time.monotonic()
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, _ = await read_stream_response(reader)
        assert status == 200
        # Past the middle of the first read timeout, a second head starts and stalls.
        await asyncio.sleep(max(0.0, connected + 0.6 - time.monotonic()))
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n")
        started = time.monotonic()
        status, _, body = await asyncio.wait_for(read_stream_response(reader), 5)
        waited = time.monotonic() - started
        writer.close()
    assert (status, json.loads(body)["reason"]) == (408, "header_timeout")
    # Never early (the timer armed for the first head fired 0.4 s into this one), and not
    # much late either.
    assert 0.95 <= waited < 3.0, waited


# --- the drain under --workers -------------------------------------------------------------------

LOAD_CONNECTIONS = 6
DRAINS = 5


async def hammer(port: int, tally: Counter[str], stop_at: float) -> None:
    """hammer sends /slow?ms=20 requests one after the other on kept-alive connections,
    reconnecting at once whenever the server says `Connection: close`, until a connection is
    refused or the time is up; every ending is counted apart."""
    request = b"GET /slow?ms=20 HTTP/1.1\r\nHost: t\r\n\r\n"
    while time.monotonic() < stop_at:
        try:
            reader, writer = await asyncio.wait_for(
                asyncio.open_connection("127.0.0.1", port), CLIENT_TIMEOUT_S
            )
        except ConnectionRefusedError:
            tally["refused at connect"] += 1
            return
        except (OSError, asyncio.TimeoutError) as exc:
            tally[f"connect failed ({type(exc).__name__})"] += 1
            return
        try:
            while time.monotonic() < stop_at:
                writer.write(request)
                try:
                    status, headers, _ = await asyncio.wait_for(
                        read_stream_response(reader), CLIENT_TIMEOUT_S
                    )
                except asyncio.TimeoutError:
                    tally["hang"] += 1
                    return
                except (ConnectionError, EOFError, asyncio.IncompleteReadError) as exc:
                    tally[f"lost after connect ({type(exc).__name__})"] += 1
                    break
                tally[str(status)] += 1
                if headers.get("connection") == "close":
                    break
        finally:
            writer.close()


async def test_five_sigterms_under_steady_load_with_two_workers_lose_no_request() -> None:
    totals: Counter[str] = Counter()
    for _ in range(DRAINS):
        tally: Counter[str] = Counter()
        with run_server(admission_serve(None, "--workers", "2", "--no-access-log")) as server:
            stop_at = time.monotonic() + 20
            clients = [
                asyncio.ensure_future(hammer(server.port, tally, stop_at))
                for _ in range(LOAD_CONNECTIONS)
            ]
            loaded = functools.partial(lambda t: t["200"] >= 50, tally)
            await asyncio.to_thread(wait_until, loaded, 10, "the load")
            server.process.send_signal(signal.SIGTERM)
            await asyncio.gather(*clients)
            status = await asyncio.to_thread(exit_status, server, 15)
            assert status == 0, server.log()
        totals.update(tally)
    print(f"\n{DRAINS} drains under load with --workers 2: {dict(totals)}")
    # Every request was answered 200 or 503, or its connection was refused outright; none was
    # accepted and then reset or left unanswered.
    assert set(totals) <= {"200", "503", "refused at connect"}, totals
    assert totals["refused at connect"] == DRAINS * LOAD_CONNECTIONS, totals


def slow_request(url: str, ms: int) -> tuple[int, str | None, float]:
    """slow_request GETs /slow?ms=`ms` and returns the status, the problem reason and how
    long it took."""
    started = time.monotonic()
    response = httpx.get(f"{url}/slow?ms={ms}", timeout=CLIENT_TIMEOUT_S)
    reason = None
    if response.headers.get("content-type", "").startswith("application/problem+json"):
        reason = response.json().get("reason")
    return response.status_code, reason, time.monotonic() - started


def both_workers_started(server: Server) -> None:
    """both_workers_started waits until both workers have started their application: a
    worker still starting when the signal comes has no drain to run yet."""
    wait_until(lambda: server.log().count("Application startup complete.") >= 2, 20, "both workers")


def in_flight_at_least(url: str, n: int) -> bool:
    """in_flight_at_least asks /readyz of whichever worker answers (True if any has `n`)."""
    try:
        return int(httpx.get(url + "/readyz", timeout=1).json()["in_flight"]) >= n
    except (httpx.HTTPError, ValueError, KeyError):
        return False


async def test_ctrl_c_to_the_process_group_drains_once_under_workers() -> None:
    argv = admission_serve(None, "--workers", "2")
    with run_server(argv, {}, new_session=True) as server:
        await asyncio.to_thread(both_workers_started, server)
        request = asyncio.ensure_future(asyncio.to_thread(slow_request, server.url, 1500))
        await asyncio.to_thread(
            wait_until,
            lambda: in_flight_at_least(server.url, 1),
            5,
            "the request in flight",
        )
        # Every process of the group gets SIGINT, as from a terminal's Ctrl+C.
        os.killpg(server.process.pid, signal.SIGINT)
        status, reason, took = await request
        exit_code = await asyncio.to_thread(exit_status, server, 15)
        log = server.log()
    assert (status, reason) == (200, None), (status, reason, took, log)
    assert exit_code == 0, log
    assert log.count("received signal 2: draining") == 2, log
    assert "again" not in log, log


@pytest.mark.parametrize("to", ["group", "supervisor"])
async def test_a_deliberate_second_signal_hurries_the_drain_under_workers(to: str) -> None:
    argv = admission_serve(None, "--workers", "2")
    env = {"ADMISSION_DRAIN_TIMEOUT": "60"}
    with run_server(argv, env, new_session=True) as server:
        await asyncio.to_thread(both_workers_started, server)
        socks = [open_request(server.port, "/slow?ms=20000") for _ in range(2)]
        # Both requests in a worker's hands (not just one of them: the other could otherwise
        # arrive after the first signal and be refused as `draining`).
        ports = [sock.getsockname()[1] for sock in socks]
        await asyncio.to_thread(
            wait_until,
            lambda: all(server_has_read(server.port, port) for port in ports),
            5,
            "both requests read",
        )
        requests = [asyncio.to_thread(read_reply, sock) for sock in socks]

        def send(sig: int) -> None:
            if to == "group":
                os.killpg(server.process.pid, sig)
            else:
                server.process.send_signal(sig)

        send(signal.SIGINT)
        await asyncio.to_thread(
            wait_until, lambda: server.log().count("draining: new requests") >= 1, 5, "draining"
        )
        hurried = time.monotonic()
        send(signal.SIGINT)
        replies = await asyncio.gather(*requests)
        exit_code = await asyncio.to_thread(exit_status, server, 15)
        log = server.log()
        for sock in socks:
            sock.close()
    assert time.monotonic() - hurried < 8, "the second signal did not cut the 60 s drain short"
    assert exit_code == 0, log
    assert replies == [(503, "drain_deadline")] * 2, (replies, log)


def read_reply(sock: socket.socket) -> tuple[int, str | None]:
    """read_reply reads the answer on `sock`: its status and its problem reason, if any."""
    response = read_response(sock, CLIENT_TIMEOUT_S)
    reason = None
    if response.getheader("content-type", "").startswith("application/problem+json"):
        reason = json.loads(body_of(response)).get("reason")
    return response.status, reason


def listening_inode(port: int) -> str:
    """listening_inode is the inode of the socket listening on 127.0.0.1:`port`."""
    for line in Path("/proc/net/tcp").read_text().splitlines()[1:]:
        fields = line.split()
        if fields[1].endswith(f":{port:04X}") and fields[3] == "0A":
            return fields[9]
    raise AssertionError(f"nothing listens on {port}")


def holds_socket(pid: int, inode: str) -> bool:
    """holds_socket is True while process `pid` has a descriptor on socket `inode`."""
    fd_dir = f"/proc/{pid}/fd"
    for fd in os.listdir(fd_dir):
        with contextlib.suppress(OSError):
            if os.readlink(f"{fd_dir}/{fd}") == f"socket:[{inode}]":
                return True
    return False


async def test_the_supervisor_lets_go_of_the_listening_socket_when_the_drain_begins() -> None:
    # Were it kept, the socket would go on queueing connections that no worker accepts after
    # the workers close theirs, and reset them all when the supervisor exits.
    with run_server(admission_serve(None, "--workers", "2")) as server:
        inode = listening_inode(server.port)
        supervisor = server.process.pid
        assert holds_socket(supervisor, inode)
        request = asyncio.ensure_future(asyncio.to_thread(slow_request, server.url, 3000))
        await asyncio.to_thread(
            wait_until, lambda: in_flight_at_least(server.url, 1), 5, "the request in flight"
        )
        server.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(
            wait_until, lambda: not holds_socket(supervisor, inode), 2, "the supervisor to let go"
        )
        # The workers still hold theirs: the one draining goes on answering.
        assert listening_inode(server.port) == inode
        status, _, _ = await request
        assert await asyncio.to_thread(exit_status, server, 15) == 0
    assert status == 200


@pytest.mark.skipif(
    not hasattr(uvicorn.config, "STARTUP_FAILURE"),
    reason="this uvicorn's worker exits 0 when its start-up fails, and is restarted",
)
def test_a_worker_that_fails_to_start_stops_admission_serve_with_status_3() -> None:
    argv = [a.replace("{port}", "0") for a in admission_serve("tests.apps.failing_startup:app")]
    process = subprocess.run(
        [*argv, "--workers", "2"],
        cwd=REPO,
        env={k: v for k, v in os.environ.items() if not k.startswith("ADMISSION_")},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert process.returncode == 3, process.stderr
    assert "failed to start" in process.stderr


async def test_a_worker_still_draining_accepts_after_the_other_has_stopped() -> None:
    # The first worker to finish its drain must not stop the socket taking connections while
    # another still drains: a client then gets that worker's 503 at once, not a hang.
    with run_server(admission_serve(None, "--workers", "2")) as server:
        await asyncio.to_thread(both_workers_started, server)
        request = asyncio.ensure_future(asyncio.to_thread(slow_request, server.url, 4000))
        await asyncio.to_thread(
            wait_until, lambda: in_flight_at_least(server.url, 1), 5, "the request in flight"
        )
        server.process.send_signal(signal.SIGTERM)
        await asyncio.to_thread(
            wait_until,
            lambda: server.log().count("Finished server process") == 1,
            10,
            "the idle worker to stop",
        )
        started = time.monotonic()
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", server.port), 0.5
        )
        writer.write(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n")
        status, _, body = await asyncio.wait_for(read_stream_response(reader), 2)
        answered_in = time.monotonic() - started
        writer.close()
        slow_status, _, _ = await request
        assert await asyncio.to_thread(exit_status, server, 15) == 0
    assert (status, json.loads(body)["reason"]) == (503, "draining")
    assert answered_in < 1.0
    assert slow_status == 200


def test_sighup_leaves_the_supervisor_and_its_workers_serving() -> None:
    with run_server(admission_serve(None, "--workers", "2")) as server:
        server.process.send_signal(signal.SIGHUP)
        wait_until(lambda: "Received SIGHUP" in server.log(), 5, "the SIGHUP logged")
        assert httpx.get(server.url + "/", timeout=5).status_code == 200
        assert server.process.poll() is None
        server.process.send_signal(signal.SIGTERM)
        assert exit_status(server, 15) == 0

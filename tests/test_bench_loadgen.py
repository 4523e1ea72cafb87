"""Tests of the bench's load generator and of serving a target for it.

The load runs against a tiny asyncio HTTP/1.1 server defined here, whose every response
shape (Content-Length, chunked, Connection: close, rejections, silence) is known exactly.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from admission.bench.loadgen import (
    LoadResult,
    ResponseError,
    load,
    read_response,
    run_load,
    split_concurrency,
)
from admission.bench.sweep import (
    BenchError,
    Launcher,
    LoadPlan,
    UrlTarget,
    http_get,
    parse_url_target,
    served,
    server_env,
    sweep_url,
)

OK = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\n\r\nok\n"
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"3;name=value\r\nabc\r\n2\r\nde\r\n0\r\nX-Checksum: 1\r\n\r\n"
)
CLOSING = b"HTTP/1.1 200 OK\r\nContent-Length: 3\r\nConnection: close\r\n\r\nbye"
READY = (
    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 50\r\n\r\n"
    b'{"status": "ready", "in_flight": 0, "window": 16} '
)
REJECTED = b"HTTP/1.1 429 Too Many Requests\r\nContent-Length: 4\r\nRetry-After: 1\r\n\r\nslow"


async def reader_of(data: bytes) -> asyncio.StreamReader:
    reader = asyncio.StreamReader()
    reader.feed_data(data)
    reader.feed_eof()
    return reader


# read_response


async def test_reads_content_length_body_exactly_leaving_the_next_response() -> None:
    reader = await reader_of(OK + REJECTED)
    assert await read_response(reader) == (200, True, None)
    assert await read_response(reader) == (429, True, 1.0)
    assert reader.at_eof()


async def test_reads_chunked_body_with_extensions_and_trailers() -> None:
    reader = await reader_of(CHUNKED + OK)
    assert await read_response(reader) == (200, True, None)
    assert await read_response(reader) == (200, True, None)


async def test_connection_close_ends_keep_alive() -> None:
    assert await read_response(await reader_of(CLOSING)) == (200, False, None)


async def test_body_without_length_is_read_to_eof_and_ends_keep_alive() -> None:
    reader = await reader_of(b"HTTP/1.1 200 OK\r\n\r\nuntil the end")
    assert await read_response(reader) == (200, False, None)
    assert reader.at_eof()


async def test_http_1_0_is_not_kept_alive_unless_it_says_so() -> None:
    plain = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\n\r\n"
    kept = b"HTTP/1.0 200 OK\r\nContent-Length: 0\r\nConnection: keep-alive\r\n\r\n"
    assert await read_response(await reader_of(plain)) == (200, False, None)
    assert await read_response(await reader_of(kept)) == (200, True, None)


async def test_no_content_has_no_body_even_with_a_length_header() -> None:
    reader = await reader_of(b"HTTP/1.1 204 No Content\r\nContent-Length: 5\r\n\r\n" + OK)
    assert await read_response(reader) == (204, True, None)
    assert await read_response(reader) == (200, True, None)


@pytest.mark.parametrize(
    "data",
    [
        b"SMTP ready\r\n\r\n",
        b"HTTP/1.1 2x0 OK\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: many\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
    ],
)
async def test_malformed_responses_raise_response_error(data: bytes) -> None:
    with pytest.raises(ResponseError):
        await read_response(await reader_of(data))


async def test_truncated_body_raises_incomplete_read() -> None:
    with pytest.raises(asyncio.IncompleteReadError):
        await read_response(await reader_of(OK[:-2]))


# LoadResult and splitting


def test_merge_adds_counts_and_keeps_the_longest_elapsed_time() -> None:
    merged = LoadResult.merge(
        [
            LoadResult({200: 3, 429: 1}, errors=1, latencies_s=[0.1, 0.2, 0.3], elapsed_s=1.0),
            LoadResult({200: 1, 503: 2}, errors=0, latencies_s=[0.4], elapsed_s=1.5),
        ]
    )
    assert merged.status_counts == {200: 4, 429: 1, 503: 2}
    assert (merged.errors, merged.elapsed_s, sorted(merged.latencies_s)) == (
        1,
        1.5,
        [0.1, 0.2, 0.3, 0.4],
    )
    assert merged.rejected_ratio == pytest.approx(3 / 7)


@pytest.mark.parametrize(
    ("concurrency", "processes", "shares"),
    [(64, 1, [64]), (64, 2, [32, 32]), (7, 3, [3, 2, 2]), (2, 5, [1, 1])],
)
def test_clients_are_split_evenly_and_no_process_gets_none(
    concurrency: int, processes: int, shares: list[int]
) -> None:
    assert split_concurrency(concurrency, processes) == shares


# run_load and load against a server


@dataclass
class TinyServer:
    """TinyServer answers by path: /ok, /chunked, /close, /mixed (200 and 429 in turn),
    /busy (always 429, Retry-After: 1), /hang (never), and /healthz and /readyz (window 16)."""

    port: int = 0
    connections: int = 0
    requests: int = 0
    handlers: set[asyncio.Task[None]] = field(default_factory=set)

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        task = asyncio.current_task()
        assert task is not None
        self.handlers.add(task)
        try:
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, ConnectionError):
                    return
                self.requests += 1
                path = head.split(b" ", 2)[1]
                if path == b"/hang":
                    await reader.read()
                    return
                response = {
                    b"/ok": OK,
                    b"/chunked": CHUNKED,
                    b"/close": CLOSING,
                    b"/mixed": REJECTED if self.requests % 2 else OK,
                    b"/busy": REJECTED,
                    b"/healthz": OK,
                    b"/readyz": READY,
                }[path]
                writer.write(response)
                await writer.drain()
                if response is CLOSING:
                    return
        finally:
            self.handlers.discard(task)
            writer.close()

    @contextlib.asynccontextmanager
    async def running(self) -> AsyncIterator[TinyServer]:
        server = await asyncio.start_server(self.handle, "127.0.0.1", 0)
        self.port = server.sockets[0].getsockname()[1]
        try:
            yield self
        finally:
            server.close()
            for task in list(self.handlers):
                task.cancel()
            await asyncio.gather(*self.handlers, return_exceptions=True)
            await server.wait_closed()


@pytest.fixture
async def tiny() -> AsyncIterator[TinyServer]:
    async with TinyServer().running() as server:
        yield server


@pytest.mark.parametrize("path", ["/ok", "/chunked"])
async def test_keep_alive_load_reuses_one_connection_per_client(
    tiny: TinyServer, path: str
) -> None:
    result = await run_load("127.0.0.1", tiny.port, path, concurrency=4, duration_s=0.3)
    assert result.errors == 0
    assert set(result.status_counts) == {200}
    assert result.ok == tiny.requests > 100
    assert tiny.connections == 4
    assert len(result.latencies_s) == result.ok
    assert all(0 < latency < 0.3 for latency in result.latencies_s)
    assert 0.3 <= result.elapsed_s < 1.0
    assert result.throughput_rps == pytest.approx(result.ok / result.elapsed_s)


async def test_connection_close_makes_the_client_reconnect(tiny: TinyServer) -> None:
    result = await run_load("127.0.0.1", tiny.port, "/close", concurrency=2, duration_s=0.2)
    assert result.errors == 0
    assert result.ok > 10
    assert tiny.connections == result.ok


async def test_rejections_are_counted_but_only_2xx_have_latencies(tiny: TinyServer) -> None:
    result = await run_load("127.0.0.1", tiny.port, "/mixed", concurrency=3, duration_s=0.2)
    assert set(result.status_counts) == {200, 429}
    assert len(result.latencies_s) == result.status_counts[200]
    assert abs(result.status_counts[200] - result.status_counts[429]) <= 3
    assert result.rejected_ratio == pytest.approx(0.5, abs=0.05)


async def test_rejected_clients_honour_retry_after_up_to_the_cap(tiny: TinyServer) -> None:
    result = await run_load(
        "127.0.0.1", tiny.port, "/busy", concurrency=4, duration_s=0.3, retry_after_cap_s=0.1
    )
    # Each pause lasts at least the 0.1 s cap, so a client fits at most 3 requests in 0.3 s,
    # and the cap (not the server's 1 s) decides, so some client comes back for a second.
    assert result.status_counts[429] == tiny.requests
    assert 4 < tiny.requests <= 12


async def test_rejected_clients_retry_at_once_when_retry_after_is_ignored(
    tiny: TinyServer,
) -> None:
    result = await run_load("127.0.0.1", tiny.port, "/busy", concurrency=4, duration_s=0.3)
    assert result.status_counts[429] == tiny.requests > 100
    assert result.rejected_ratio == 1.0
    assert result.throughput_rps == 0.0


async def test_a_server_that_never_answers_cannot_hold_the_run_past_its_grace(
    tiny: TinyServer,
) -> None:
    started = time.perf_counter()
    result = await run_load(
        "127.0.0.1", tiny.port, "/hang", concurrency=3, duration_s=0.1, grace_s=0.2
    )
    assert time.perf_counter() - started < 1.0
    assert result.responses == 0
    assert tiny.requests == 3
    assert result.errors == 3


async def test_a_refused_connection_is_an_error_not_a_response() -> None:
    async with TinyServer().running() as gone:
        port = gone.port
    result = await run_load("127.0.0.1", port, "/ok", concurrency=2, duration_s=0.1)
    assert result.responses == 0
    assert result.errors >= 2
    assert result.throughput_rps == 0.0


@pytest.fixture
def threaded_tiny() -> Iterator[TinyServer]:
    """threaded_tiny runs TinyServer on its own loop in a thread, for synchronous callers."""
    server = TinyServer()
    ready = threading.Event()
    stop: list[asyncio.Event] = []
    loop = asyncio.new_event_loop()

    async def serve() -> None:
        stop.append(asyncio.Event())
        async with server.running():
            ready.set()
            await stop[0].wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(serve(),), daemon=True)
    thread.start()
    assert ready.wait(timeout=5.0)
    try:
        yield server
    finally:
        loop.call_soon_threadsafe(stop[0].set)
        thread.join(timeout=5.0)
        loop.close()


def test_load_spread_over_processes_merges_every_process_result(
    threaded_tiny: TinyServer,
) -> None:
    result = load(
        "127.0.0.1", threaded_tiny.port, "/ok", concurrency=4, duration_s=0.3, processes=2
    )
    assert result.errors == 0
    assert result.ok == threaded_tiny.requests > 100
    assert threaded_tiny.connections == 4
    assert len(result.latencies_s) == result.ok
    assert 0.3 <= result.elapsed_s < 1.5


# serving a target


APP = textwrap.dedent(
    """
    import os

    async def app(scope, receive, send):
        assert scope["type"] == "http"
        body = os.environ.get("ADMISSION_WINDOW", "-").encode()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": body})
    """
)


def uvicorn_in(app_dir: Path) -> Launcher:
    return Launcher(
        "test uvicorn",
        lambda target, port: [
            sys.executable,
            "-m",
            "uvicorn",
            target,
            "--app-dir",
            str(app_dir),
            "--host",
            "127.0.0.1",
            "--port",
            str(port),
        ],
        "/",
    )


def test_server_env_sets_window_and_no_queueing_over_the_callers_environment() -> None:
    env = server_env(16, {"PATH": "/bin", "ADMISSION_WINDOW": "2", "ADMISSION_RATE": "5/second"})
    assert env["ADMISSION_WINDOW"] == "16"
    assert env["ADMISSION_QUEUE_TIMEOUT"] == "0"
    assert env["ADMISSION_RATE"] == "5/second"
    assert env["PATH"] == "/bin"


@pytest.mark.process
def test_served_target_answers_with_its_window_and_stops_on_leaving(tmp_path: Path) -> None:
    (tmp_path / "windowapp.py").write_text(APP)
    with served("windowapp:app", 12, uvicorn_in(tmp_path)) as port:
        assert http_get("127.0.0.1", port, "/", timeout_s=2.0) == (200, b"12")
    with pytest.raises(OSError):
        http_get("127.0.0.1", port, "/", timeout_s=2.0)


@pytest.mark.process
def test_target_that_exits_at_start_is_reported_with_its_output(tmp_path: Path) -> None:
    started = time.monotonic()
    with pytest.raises(BenchError) as caught, served("nosuchmodule:app", 1, uvicorn_in(tmp_path)):
        pass
    assert time.monotonic() - started < 10.0
    assert "exited with code" in str(caught.value)
    assert "nosuchmodule" in str(caught.value)


def test_url_target_is_measured_once_with_the_window_its_readyz_reports(
    threaded_tiny: TinyServer,
) -> None:
    target = parse_url_target(f"http://127.0.0.1:{threaded_tiny.port}")
    plan = LoadPlan(path="/ok", concurrency=2, duration_s=0.2, warmup_s=0.0)
    [row] = sweep_url(target, plan)
    assert row.window == 16
    assert row.throughput_rps > 0
    assert row.rejected_ratio == 0.0


def test_unreachable_url_target_fails_before_any_load() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    started = time.monotonic()
    with pytest.raises(BenchError, match="cannot reach"):
        sweep_url(UrlTarget("127.0.0.1", port), LoadPlan(duration_s=5.0))
    assert time.monotonic() - started < 3.0


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("http://127.0.0.1:8000", UrlTarget("127.0.0.1", 8000)),
        ("http://localhost/", UrlTarget("localhost", 80)),
    ],
)
def test_url_target_is_host_and_port(url: str, expected: UrlTarget) -> None:
    assert parse_url_target(url) == expected


@pytest.mark.parametrize(
    "url", ["https://127.0.0.1", "http://127.0.0.1:8000/api", "http://u:p@127.0.0.1", "http://:80"]
)
def test_url_target_with_what_the_client_cannot_honour_is_refused(url: str) -> None:
    with pytest.raises(BenchError):
        parse_url_target(url)


@pytest.mark.process
def test_a_target_whose_settings_in_code_fix_the_window_is_refused() -> None:
    # Settings given in code win over ADMISSION_WINDOW: every window would measure one service.
    repo = Path(__file__).resolve().parent.parent
    with (
        pytest.raises(BenchError) as caught,
        served("tests.apps.code_settings:app", 4, uvicorn_in(repo)),
    ):
        pass
    assert "window of 64, not the 4 under test" in str(caught.value)

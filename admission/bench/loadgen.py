"""admission.bench.loadgen: a closed-loop HTTP/1.1 load generator fast enough to saturate a server.

Each client holds one keep-alive connection and sends its next request as soon as the
previous response has been read, so the offered load adapts to the server (a closed loop):
`concurrency` is the most requests outstanding at any moment. A rejected client may first
wait the Retry-After it was given, as a well-behaved client does. The client speaks just
enough HTTP/1.1 over raw asyncio streams to read a response (status line, Content-Length,
chunked bodies, `Connection: close`); a general-purpose client spends more time in itself
than the server under test spends answering.
"""

from __future__ import annotations

import asyncio
import contextlib
import multiprocessing
import queue
import random
import time
from collections import Counter
from collections.abc import Coroutine
from dataclasses import dataclass, field
from multiprocessing.synchronize import Barrier
from typing import Any, NamedTuple, TypeVar

_T = TypeVar("_T")

#: Largest response head the client accepts; a bigger one is counted as an error.
MAX_HEAD_BYTES = 64 * 1024

#: Pause after a failed connection, so a refusing server is not hammered in a tight loop.
ERROR_BACKOFF_S = 0.01

#: How long a load process waits for its siblings to start before giving up.
BARRIER_TIMEOUT_S = 30.0


class LoadError(RuntimeError):
    """LoadError means a load could not be carried out as asked (a load process failed)."""


class ResponseError(Exception):
    """ResponseError means the server sent something the client cannot read as HTTP/1.1."""


@dataclass
class LoadResult:
    """LoadResult is what one load run saw.

    `status_counts` maps each HTTP status to how many responses carried it; `errors` counts
    requests that got no response (refused, reset, malformed, or abandoned unanswered).
    `latencies_s` holds the latency of every 2xx response, in seconds, unsorted.
    `elapsed_s` is the wall time from the first request to the last response; it is 0.0
    for a run that never started.
    """

    status_counts: dict[int, int] = field(default_factory=dict)
    errors: int = 0
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0

    @property
    def responses(self) -> int:
        """responses is the number of requests answered with any status."""
        return sum(self.status_counts.values())

    @property
    def ok(self) -> int:
        """ok is the number of 2xx responses."""
        return sum(n for status, n in self.status_counts.items() if 200 <= status < 300)

    @property
    def throughput_rps(self) -> float:
        """throughput_rps is 2xx responses per second of elapsed time; 0.0 if nothing ran."""
        return self.ok / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def rejected_ratio(self) -> float:
        """rejected_ratio is the share of responses that were not 2xx; 0.0 with no responses.

        Requests that got no response at all are counted in `errors`, not here.
        """
        total = self.responses
        return (total - self.ok) / total if total else 0.0

    @staticmethod
    def merge(results: list[LoadResult]) -> LoadResult:
        """merge combines runs made side by side: counts add up, the elapsed time is the longest.

        Merging no results gives an empty LoadResult.
        """
        counts: Counter[int] = Counter()
        latencies: list[float] = []
        for result in results:
            counts.update(result.status_counts)
            latencies.extend(result.latencies_s)
        return LoadResult(
            status_counts=dict(counts),
            errors=sum(r.errors for r in results),
            latencies_s=latencies,
            elapsed_s=max((r.elapsed_s for r in results), default=0.0),
        )


def build_request(host: str, port: int, path: str) -> bytes:
    """build_request encodes the GET request every client sends, once, as bytes."""
    return (
        f"GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: admission-bench\r\n"
        "Accept: */*\r\n\r\n"
    ).encode("latin-1")


class Response(NamedTuple):
    """Response is what the load generator keeps of one response.

    `keep_alive` says whether the connection can carry another request; `retry_after_s` is
    the Retry-After header in seconds, None when absent or given as an HTTP date.
    """

    status: int
    keep_alive: bool
    retry_after_s: float | None


async def read_response(reader: asyncio.StreamReader) -> Response:
    """read_response reads one response to a GET and returns its Response summary.

    The body is read and discarded: by Content-Length, by chunked transfer coding (chunk
    extensions and trailers are skipped), or, when the response has neither, until the
    server closes the connection. keep_alive is False when the connection cannot carry
    another request: `Connection: close`, an HTTP/1.0 response without keep-alive, or a
    body delimited by closing. A malformed head raises ResponseError; a connection closed
    mid-response raises asyncio.IncompleteReadError.
    """
    try:
        head = await reader.readuntil(b"\r\n\r\n")
    except asyncio.LimitOverrunError as exc:
        raise ResponseError("response head too large") from exc
    if len(head) > MAX_HEAD_BYTES:
        raise ResponseError("response head too large")
    lines = head[:-4].split(b"\r\n")
    parts = lines[0].split(b" ", 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1.") or len(parts[1]) != 3:
        raise ResponseError(f"bad status line {lines[0][:80]!r}")
    try:
        status = int(parts[1])
    except ValueError as exc:
        raise ResponseError(f"bad status line {lines[0][:80]!r}") from exc
    keep_alive = parts[0] == b"HTTP/1.1"
    length: int | None = None
    chunked = False
    retry_after: float | None = None
    for line in lines[1:]:
        name, _, value = line.partition(b":")
        name = name.strip().lower()
        if name == b"content-length":
            try:
                length = int(value)
            except ValueError as exc:
                raise ResponseError(f"bad Content-Length {value[:40]!r}") from exc
        elif name == b"transfer-encoding":
            chunked = b"chunked" in value.lower()
        elif name == b"connection":
            tokens = value.lower()
            if b"close" in tokens:
                keep_alive = False
            elif b"keep-alive" in tokens:
                keep_alive = True
        elif name == b"retry-after":
            retry_after = _delay_seconds(value)
    # 1xx, 204 and 304 never have a body, whatever the headers say.
    if status < 200 or status in (204, 304):
        return Response(status, keep_alive, retry_after)
    if chunked:
        await _read_chunked(reader)
    elif length is not None:
        await reader.readexactly(length)
    else:
        await reader.read()
        keep_alive = False
    return Response(status, keep_alive, retry_after)


def _delay_seconds(value: bytes) -> float | None:
    """_delay_seconds reads a Retry-After given in seconds; an HTTP date or junk gives None.

    Dates are not worth the parsing here: the middleware always sends seconds.
    """
    try:
        seconds = float(value.strip())
    except ValueError:
        return None
    return seconds if seconds >= 0 else None


async def _read_chunked(reader: asyncio.StreamReader) -> None:
    """_read_chunked discards a chunked body, including its trailer section."""
    while True:
        size_line = await reader.readuntil(b"\r\n")
        try:
            size = int(size_line.split(b";", 1)[0].strip(), 16)
        except ValueError as exc:
            raise ResponseError(f"bad chunk size {size_line[:40]!r}") from exc
        if size == 0:
            break
        await reader.readexactly(size + 2)
    while await reader.readuntil(b"\r\n") != b"\r\n":
        pass


@dataclass
class _Tally:
    """_Tally is one client's private counts, merged once at the end to keep the hot loop cheap."""

    statuses: Counter[int] = field(default_factory=Counter)
    errors: int = 0
    latencies_s: list[float] = field(default_factory=list)
    awaiting: bool = False


async def _client(
    host: str,
    port: int,
    request: bytes,
    deadline: float,
    tally: _Tally,
    retry_after_cap_s: float | None,
) -> None:
    """_client sends requests one after another until `deadline` (a perf_counter value).

    With `retry_after_cap_s` set, a rejection carrying Retry-After pauses this client for
    that long (at most the cap), as a well-behaved client would.
    """
    perf_counter = time.perf_counter
    writer: asyncio.StreamWriter | None = None
    reader: asyncio.StreamReader | None = None
    try:
        while perf_counter() < deadline:
            if writer is None or reader is None:
                try:
                    reader, writer = await asyncio.open_connection(host, port)
                except OSError:
                    tally.errors += 1
                    await asyncio.sleep(ERROR_BACKOFF_S)
                    continue
            started = perf_counter()
            tally.awaiting = True
            try:
                # Requests are tiny and one is outstanding per connection, so the write
                # buffer never reaches its high-water mark: no drain() needed.
                writer.write(request)
                status, keep_alive, retry_after_s = await read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ResponseError):
                tally.awaiting = False
                tally.errors += 1
                _close(writer)
                writer = reader = None
                continue
            tally.awaiting = False
            if 200 <= status < 300:
                tally.latencies_s.append(perf_counter() - started)
            tally.statuses[status] += 1
            if not keep_alive:
                _close(writer)
                writer = reader = None
            if retry_after_cap_s is not None and retry_after_s is not None and status >= 300:
                await _pause(min(retry_after_s, retry_after_cap_s), deadline)
    finally:
        if writer is not None:
            _close(writer)


async def _pause(delay_s: float, deadline: float) -> None:
    """_pause waits `delay_s` stretched by up to half again, but never past `deadline`.

    The random stretch keeps clients rejected together from all coming back together.
    """
    remaining = deadline - time.perf_counter()
    delay_s = min(delay_s * random.uniform(1.0, 1.5), remaining)
    if delay_s > 0:
        await asyncio.sleep(delay_s)


def _close(writer: asyncio.StreamWriter) -> None:
    """_close drops a connection without waiting for the peer; the run is over or it is broken."""
    with contextlib.suppress(Exception):
        writer.close()


async def run_load(
    host: str,
    port: int,
    path: str,
    concurrency: int,
    duration_s: float,
    *,
    retry_after_cap_s: float | None = None,
    grace_s: float | None = None,
) -> LoadResult:
    """run_load drives `concurrency` keep-alive clients at GET `path` for `duration_s` seconds.

    Each client sends its next request as soon as the previous response is read. With
    `retry_after_cap_s` set, a client whose request was rejected with a Retry-After header
    first pauses that many seconds (at most the cap, stretched by a random 0-50 % so that
    clients rejected together do not return together); None ignores Retry-After and retries
    at once.

    No client starts a request after the duration; requests already sent are awaited for up
    to `grace_s` more seconds (default: a fifth of the duration, at least one second) and
    then abandoned and counted as errors, so a server that hangs cannot hang the run.
    Latency is taken with time.perf_counter from the write of a request to the end of its
    response. A concurrency below 1 or a negative duration is a ValueError; a zero duration
    sends nothing and returns an empty result.
    """
    if concurrency < 1:
        raise ValueError(f"run_load: concurrency must be at least 1, got {concurrency}")
    if duration_s < 0:
        raise ValueError(f"run_load: duration must not be negative, got {duration_s}")
    if grace_s is None:
        grace_s = max(1.0, duration_s / 5)
    request = build_request(host, port, path)
    tallies = [_Tally() for _ in range(concurrency)]
    started = time.perf_counter()
    deadline = started + duration_s
    tasks = [
        asyncio.ensure_future(_client(host, port, request, deadline, t, retry_after_cap_s))
        for t in tallies
    ]
    _, pending = await asyncio.wait(tasks, timeout=duration_s + grace_s)
    for task in pending:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    elapsed = time.perf_counter() - started
    statuses: Counter[int] = Counter()
    latencies: list[float] = []
    for tally in tallies:
        statuses.update(tally.statuses)
        latencies.extend(tally.latencies_s)
    # A request still unanswered when the grace period ran out got no response: an error.
    errors = sum(t.errors + t.awaiting for t in tallies)
    return LoadResult(
        status_counts=dict(statuses),
        errors=errors,
        latencies_s=latencies,
        elapsed_s=elapsed if statuses or errors else 0.0,
    )


def run_coroutine(coro: Coroutine[Any, Any, _T]) -> _T:
    """run_coroutine runs `coro` to completion on a fresh event loop, uvloop's when installed.

    uvloop roughly doubles what one client process can drive; without it the standard
    loop is used and the bench still works, only with less headroom.
    """
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    loop = uvloop.new_event_loop()
    try:
        return loop.run_until_complete(coro)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.close()


def split_concurrency(concurrency: int, processes: int) -> list[int]:
    """split_concurrency shares `concurrency` clients among at most `processes` processes.

    The shares differ by at most one and none is zero, so asking for more processes than
    clients gives one client per process. Both arguments must be at least 1 (ValueError).
    """
    if concurrency < 1 or processes < 1:
        raise ValueError("split_concurrency: concurrency and processes must be at least 1")
    processes = min(processes, concurrency)
    base, extra = divmod(concurrency, processes)
    return [base + (1 if i < extra else 0) for i in range(processes)]


def _worker(
    host: str,
    port: int,
    path: str,
    concurrency: int,
    duration_s: float,
    retry_after_cap_s: float | None,
    barrier: Barrier,
    results: multiprocessing.Queue[LoadResult],
) -> None:
    """_worker is one load process: it waits for its siblings, runs its share, reports it."""
    # Bounded, so one sibling failing to start cannot leave the others waiting forever.
    barrier.wait(timeout=BARRIER_TIMEOUT_S)
    result = run_coroutine(
        run_load(host, port, path, concurrency, duration_s, retry_after_cap_s=retry_after_cap_s)
    )
    results.put(result)


def load(
    host: str,
    port: int,
    path: str,
    concurrency: int,
    duration_s: float,
    processes: int = 1,
    *,
    retry_after_cap_s: float | None = None,
) -> LoadResult:
    """load runs run_load from synchronous code, spread over `processes` worker processes.

    With one process the load runs in this process. With more, the clients are split among
    spawned processes (split_concurrency) that start together behind a barrier; their
    results are merged (LoadResult.merge), so the elapsed time is the slowest process's. A
    worker that dies without reporting makes this raise LoadError rather than report a
    partial load as a whole one. As with any spawned process, a script calling this with
    more than one process must guard its top level with `if __name__ == "__main__":`.
    """
    shares = split_concurrency(concurrency, processes)
    if len(shares) == 1:
        return run_coroutine(
            run_load(host, port, path, concurrency, duration_s, retry_after_cap_s=retry_after_cap_s)
        )
    # spawn, not fork: the caller may hold threads or an event loop that must not be copied.
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(len(shares))
    results_queue: multiprocessing.Queue[LoadResult] = context.Queue()
    workers = [
        context.Process(
            target=_worker,
            args=(host, port, path, share, duration_s, retry_after_cap_s, barrier, results_queue),
            daemon=True,
        )
        for share in shares
    ]
    for worker in workers:
        worker.start()
    results: list[LoadResult] = []
    # Generous bound: process start-up plus the run plus run_load's own grace period.
    limit = time.monotonic() + 30.0 + duration_s * 1.5
    try:
        while len(results) < len(workers):
            remaining = limit - time.monotonic()
            if remaining <= 0:
                raise LoadError("load: a load worker process did not report in time")
            try:
                results.append(results_queue.get(timeout=min(remaining, 0.5)))
            except queue.Empty:
                dead = [w for w in workers if w.exitcode not in (None, 0)]
                if dead:
                    raise LoadError(
                        f"load: a load worker process exited with code {dead[0].exitcode}"
                    ) from None
    finally:
        for worker in workers:
            worker.join(timeout=5.0)
            if worker.is_alive():
                worker.kill()
                worker.join()
    return LoadResult.merge(results)

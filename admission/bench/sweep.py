"""admission.bench.sweep: serve a target once per window size, load it, and turn the load into rows.

A `MODULE:APP` target is started as a child process on a free loopback port for each
window, so every window is measured on a fresh process with nothing left over from the
previous one. An `http://` URL target is a service someone else runs: it is measured once,
as it is configured.
"""

from __future__ import annotations

import json
import os
import sys
import urllib.parse
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass

from admission.bench import process
from admission.bench.loadgen import LoadResult, load
from admission.bench.process import LOOPBACK, free_port, http_get
from admission.bench.recommend import Row, percentile
from admission.config.storage import redact_uri
from admission.errors import quote

#: How long a served target may take to answer its health check before the bench gives up.
START_TIMEOUT_S = 30.0

#: How long a served target may take to exit after SIGTERM before it is killed.
STOP_TIMEOUT_S = 10.0


class BenchError(Exception):
    """BenchError is a failure the bench reports to its user in one line (bad target, no start)."""


@dataclass(frozen=True)
class Launcher:
    """Launcher says how to serve a `MODULE:APP` target on a port and how to tell it is up.

    `argv(target, port)` is the command line; `health_path` is polled until it answers 200.
    """

    name: str
    argv: Callable[[str, int], list[str]]
    health_path: str


def _admission_serve_argv(target: str, port: int) -> list[str]:
    """_admission_serve_argv runs the target under the middleware with `admission serve`."""
    return [
        sys.executable,
        "-m",
        "admission",
        "serve",
        target,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
    ]


def _bare_uvicorn_argv(target: str, port: int) -> list[str]:
    """_bare_uvicorn_argv runs the target with plain uvicorn, without the middleware."""
    return [
        sys.executable,
        "-m",
        "uvicorn",
        target,
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--no-access-log",
    ]


#: The real thing: the target under the middleware, health from the middleware's /healthz.
ADMISSION_SERVE = Launcher("admission serve", _admission_serve_argv, "/healthz")

#: The baseline: the bare target, which has no /healthz of its own, so "/" is polled.
BARE_UVICORN = Launcher("uvicorn", _bare_uvicorn_argv, "/")


@dataclass(frozen=True)
class LoadPlan:
    """LoadPlan is the load applied to each window: clients, seconds, path and processes.

    `warmup_s` of load precedes each measurement and is not counted, so connection setup
    and first-request costs do not land in the numbers. `retry_after_cap_s` is how long
    at most a rejected client honours Retry-After before retrying (None: it retries at
    once); see run_load.
    """

    path: str = "/"
    concurrency: int = 64
    duration_s: float = 5.0
    processes: int = 1
    warmup_s: float = 0.5
    retry_after_cap_s: float | None = None


def server_env(window: int, base: Mapping[str, str] | None = None) -> dict[str, str]:
    """server_env is the environment of a served target: `base` (default os.environ) plus
    the window under test, no queueing for a slot, and no drain delay.

    A queue timeout of 0 makes a full window reject at once, so the window's effect shows up
    as rejections rather than as hidden waiting. The drain delay only matters to load
    balancers, and there is none here, so it is zeroed to stop each window quickly.
    """
    env = dict(os.environ if base is None else base)
    env["ADMISSION_WINDOW"] = str(window)
    env["ADMISSION_QUEUE_TIMEOUT"] = "0"
    env["ADMISSION_DRAIN_DELAY"] = "0"
    return env


@contextmanager
def started(
    target: str,
    env: Mapping[str, str],
    launcher: Launcher = ADMISSION_SERVE,
    *,
    start_timeout_s: float = START_TIMEOUT_S,
) -> Iterator[int]:
    """started runs `target` with `env` on a free port and yields the port once the
    launcher's health path answers 200.

    If the process exits or `start_timeout_s` passes first, BenchError is raised with the end
    of the process's output. On leaving, the process gets SIGTERM, and is killed if it has
    not exited within STOP_TIMEOUT_S.
    """
    port = free_port()
    with ExitStack() as stack:
        try:
            stack.enter_context(
                process.served(
                    launcher.argv(target, port),
                    env,
                    port=port,
                    ready_path=launcher.health_path,
                    start_timeout_s=start_timeout_s,
                    stop_timeout_s=STOP_TIMEOUT_S,
                )
            )
        except process.NotReady as exc:
            raise BenchError(_not_ready(launcher, exc)) from exc
        yield port


@contextmanager
def served(
    target: str,
    window: int,
    launcher: Launcher = ADMISSION_SERVE,
    *,
    start_timeout_s: float = START_TIMEOUT_S,
) -> Iterator[int]:
    """served runs `target` with the given window (server_env) as `started` does and yields
    the port, once it has checked that the target runs with that window (_check_window)."""
    with started(target, server_env(window), launcher, start_timeout_s=start_timeout_s) as port:
        _check_window(target, window, port)
        yield port


def _check_window(target: str, window: int, port: int) -> None:
    """_check_window refuses a target whose own settings fix the window: settings given in
    code win over ADMISSION_WINDOW, so every window of the sweep would measure the same
    service and the recommendation would mean nothing. A target that reports no window (no
    admission, or no /readyz) is measured as it is."""
    reported = reported_window(UrlTarget(LOOPBACK, port))
    if reported is not None and reported != window:
        raise BenchError(
            f"{target} runs with a window of {reported}, not the {window} under test: settings "
            "given in code win over ADMISSION_WINDOW; bench the app without them (read the "
            "settings from ADMISSION_* variables, e.g. Settings.from_env())"
        )


def _not_ready(launcher: Launcher, exc: process.NotReady) -> str:
    """_not_ready says in one line why a served target did not start, with the last three
    non-blank lines of its output ("(no output)" when there were none)."""
    tail = " | ".join(process.last_lines(exc.log, 3)) or "(no output)"
    if exc.returncode is not None:
        return (
            f"{launcher.name} exited with code {exc.returncode} before it answered "
            f"{launcher.health_path}: {tail}"
        )
    return (
        f"{launcher.name} did not answer 200 on {launcher.health_path} within "
        f"{exc.timeout_s:g} s (last status {exc.last_status or 'none'}): {tail}"
    )


def to_row(window: int | None, result: LoadResult) -> Row:
    """to_row condenses one load result into a row: 2xx throughput, 2xx p50/p99 in ms, rejects.

    A result with no 2xx response has no latency percentiles (None).
    """
    latencies = sorted(result.latencies_s)
    p50 = percentile(latencies, 50)
    p99 = percentile(latencies, 99)
    return Row(
        window=window,
        throughput_rps=result.throughput_rps,
        p50_ms=None if p50 is None else p50 * 1000.0,
        p99_ms=None if p99 is None else p99 * 1000.0,
        rejected_ratio=result.rejected_ratio,
    )


def measure(host: str, port: int, plan: LoadPlan) -> LoadResult:
    """measure warms the server up for `plan.warmup_s` (uncounted), then runs the plan's load."""
    if plan.warmup_s > 0:
        _load(host, port, plan, plan.warmup_s)
    return _load(host, port, plan, plan.duration_s)


def _load(host: str, port: int, plan: LoadPlan, duration_s: float) -> LoadResult:
    """_load runs the plan's load for `duration_s` seconds."""
    return load(
        host,
        port,
        plan.path,
        plan.concurrency,
        duration_s,
        plan.processes,
        retry_after_cap_s=plan.retry_after_cap_s,
    )


Progress = Callable[[Row, LoadResult], None]


def sweep_app(
    target: str,
    windows: Sequence[int],
    plan: LoadPlan,
    launcher: Launcher = ADMISSION_SERVE,
    progress: Progress | None = None,
) -> list[Row]:
    """sweep_app measures `target` once per window, each on a freshly started process.

    Rows come back in the order of `windows`; `progress`, if given, is called after each
    one. An empty `windows` measures nothing and returns no rows.
    """
    rows: list[Row] = []
    for window in windows:
        with served(target, window, launcher) as port:
            result = measure(LOOPBACK, port, plan)
        _check_answered(result, f"{target} at window {window}")
        row = to_row(window, result)
        rows.append(row)
        if progress is not None:
            progress(row, result)
    return rows


def _check_answered(result: LoadResult, what: str) -> None:
    """_check_answered raises BenchError when a load got no response at all: a row of
    zeros would read as a measurement when it is a failure."""
    if result.responses == 0:
        raise BenchError(
            f"{what} answered none of the load's requests ({result.errors} failed to connect "
            "or got no response)"
        )


@dataclass(frozen=True)
class UrlTarget:
    """UrlTarget is the host and port of an `http://` target; the path comes from the plan."""

    host: str
    port: int


def parse_url_target(url: str) -> UrlTarget:
    """parse_url_target reads `http://host[:port][/]`; the port defaults to 80.

    https, a path other than "/", a query or credentials are BenchError: the load client
    speaks plain HTTP only, and the request path is given separately (--path).
    """
    # Quoted as every value is, any credential in it hidden.
    shown = quote(redact_uri(url))
    parts = urllib.parse.urlsplit(url)
    if parts.scheme != "http":
        raise BenchError(f"target {shown}: only http:// URLs can be benchmarked")
    if parts.path not in ("", "/") or parts.query or parts.fragment:
        raise BenchError(f"target {shown}: give the URL without a path and the path with --path")
    if parts.username or parts.password:
        raise BenchError(f"target {shown}: credentials in the URL are not supported")
    if not parts.hostname:
        raise BenchError(f"target {shown}: no host")
    try:
        port = parts.port or 80
    except ValueError as exc:
        raise BenchError(f"target {shown}: bad port") from exc
    return UrlTarget(parts.hostname, port)


def reported_window(target: UrlTarget) -> int | None:
    """reported_window asks the running service's /readyz for its window.

    It is the integer under "window" in the JSON body, whatever the status (a draining
    service still reports it); None when the key is missing, not an integer, or /readyz
    cannot be read or parsed.
    """
    try:
        _, body = http_get(target.host, target.port, "/readyz", timeout_s=2.0)
        document = json.loads(body)
    except (OSError, ValueError):
        return None
    if not isinstance(document, dict):
        return None
    window = document.get("window")
    # bool is an int subclass, and `true` is not a window size.
    if isinstance(window, int) and not isinstance(window, bool):
        return window
    return None


def sweep_url(target: UrlTarget, plan: LoadPlan, progress: Progress | None = None) -> list[Row]:
    """sweep_url measures a running service once, as configured: a list of exactly one row.

    A service that cannot be reached is a BenchError before any load is sent.
    """
    try:
        http_get(target.host, target.port, "/healthz", timeout_s=2.0)
    except OSError as exc:
        raise BenchError(f"cannot reach http://{target.host}:{target.port}: {exc}") from exc
    window = reported_window(target)
    result = measure(target.host, target.port, plan)
    _check_answered(result, f"http://{target.host}:{target.port}")
    row = to_row(window, result)
    if progress is not None:
        progress(row, result)
    return [row]

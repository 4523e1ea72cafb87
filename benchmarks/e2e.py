"""benchmarks/e2e.py: throughput of the demo's `/` under uvicorn, bare and under admission.

Servers run side by side on loopback, each one uvicorn worker with the same event loop and
HTTP implementation ("auto": uvloop and httptools when installed, the same for all since they
run in the same environment; the script checks that every process loaded the same ones) and
no access log:

  bare          python -m uvicorn admission.demo:app --loop auto --http auto --no-access-log
  admission     python -m admission serve --no-access-log
                (the same demo app under AdmissionMiddleware with default settings: the
                ledger, metrics, drain gate and disconnect watch, no limit configured)
  admission+rate  ADMISSION_RATE=1000000/second python -m admission serve --no-access-log
                (rate limiting on: a memory-store decision and two RateLimit fields per
                response)
  send-only     (with --calibrate) the demo under a middleware that passes every response
                message through its own `send` and changes nothing: the least any middleware
                that sees the response adds
  headers-only  (with --calibrate) the demo under a middleware that only adds the two
                RateLimit fields admission adds: what the contract's headers cost alone

The load comes from admission's own closed-loop generator (admission.bench.loadgen) in this
process, separate from the servers: N keep-alive connections each sending its next GET as
soon as the previous response arrived. Every round starts each server afresh: with one
process per server for a whole run, two runs of the same code gave median ratios of 0.74 and
1.00, as if a process kept a speed of its own for its life. Runs alternate (bare, admission,
admission, bare, ...) so that a noisy neighbour hits all alike; each run is preceded by a
short warm-up. With two or more CPUs the servers are pinned to the last one and the load
generator to the others, so that neither migrates onto the other's core mid-run. Reported:
the median over rounds of the admission/bare throughput ratio in the same round, and each
server's CPU time per request (from /proc/<pid>/stat), which does not depend on whether the
server or the load generator was the bottleneck in a run. The target is called met or missed
only when a distribution-free ~95 % interval of the median ratio lies wholly on one side of
it; otherwise the run did not resolve it.

Run: python benchmarks/e2e.py [--pairs 9] [--duration 3] [--concurrency 32] [--calibrate]
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
import statistics
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from admission.bench.loadgen import LoadResult, load
from admission.bench.process import NotReady, served, without_settings
from admission.bench.recommend import percentile

HOST = "127.0.0.1"
RATE = "1000000/second"
# The target for admission/bare with default settings.
TARGET_RATIO = 0.95
# Shared objects whose presence in a server's memory map shows which loop/parser it runs.
IMPLEMENTATIONS = ("uvloop", "httptools")


@dataclass(frozen=True)
class Server:
    """Server is one uvicorn process under test."""

    name: str
    process: subprocess.Popen[bytes]
    port: int

    def implementations(self) -> list[str]:
        """implementations lists the IMPLEMENTATIONS whose extension modules are mapped in the
        server process (Linux only; empty elsewhere)."""
        try:
            maps = Path(f"/proc/{self.process.pid}/maps").read_text()
        except OSError:
            return []
        return [name for name in IMPLEMENTATIONS if f"/{name}/" in maps]

    def cpu_s(self) -> float:
        """cpu_s is the CPU time (user + system) the server process has used so far."""
        fields = Path(f"/proc/{self.process.pid}/stat").read_text().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


@contextlib.contextmanager
def server(
    name: str,
    argv: list[str],
    env: dict[str, str],
    *,
    start_timeout_s: float = 30,
    stop_timeout_s: float = 15,
    cpus: set[int] | None = None,
) -> Iterator[Server]:
    """server starts `argv` with `{port}` filled in (on `cpus` only, if given), waits until
    `/` answers 200, yields it, and stops it with SIGTERM (SIGKILL if it lingers)."""
    with contextlib.ExitStack() as stack:
        try:
            running = stack.enter_context(
                served(
                    argv,
                    env,
                    ready_path="/",
                    start_timeout_s=start_timeout_s,
                    stop_timeout_s=stop_timeout_s,
                    cpus=cpus,
                )
            )
        except NotReady as exc:
            raise SystemExit(f"{name} server did not start:\n{exc.log}") from exc
        yield Server(name, running.process, running.port)


@dataclass
class Run:
    """Run is one measured run: what the load generator saw and the server's CPU time."""

    result: LoadResult
    server_cpu_s: float

    @property
    def rps(self) -> float:
        """rps is the throughput in 200 responses per second."""
        return self.result.throughput_rps

    @property
    def busy(self) -> float:
        """busy is the share of one core the server used during the run (1.0: saturated)."""
        return self.server_cpu_s / self.result.elapsed_s

    @property
    def cpu_us(self) -> float:
        """cpu_us is the server CPU time per request, in microseconds."""
        return self.server_cpu_s / self.result.ok * 1e6


def run_once(srv: Server, concurrency: int, duration_s: float, warmup_s: float) -> Run:
    """run_once warms `srv` up, then measures it; every response must be a 200."""
    load(HOST, srv.port, "/", concurrency, warmup_s)
    cpu_before = srv.cpu_s()
    result = load(HOST, srv.port, "/", concurrency, duration_s)
    cpu = srv.cpu_s() - cpu_before
    if result.ok != result.responses or result.errors:
        raise SystemExit(
            f"{srv.name}: not all requests succeeded: {result.status_counts}, "
            f"{result.errors} errors"
        )
    return Run(result, cpu)


# Fewer values than this: even their whole range holds the median with less than 95 %
# confidence (1 - 2 * 0.5**n), so no interval can be given.
MIN_ROUNDS_FOR_INTERVAL = 6


def ms(seconds: float | None) -> str:
    """ms is `seconds` in milliseconds for the report, '-' for none."""
    return "-" if seconds is None else f"{seconds * 1e3:.2f}"


def median_interval(values: list[float]) -> tuple[float, float] | None:
    """median_interval is a distribution-free interval holding the true median with about
    95 % confidence: the order statistics n/2 -+ 0.98 sqrt(n) of `values`. None for fewer
    than MIN_ROUNDS_FOR_INTERVAL values."""
    ordered = sorted(values)
    n = len(ordered)
    if n < MIN_ROUNDS_FOR_INTERVAL:
        return None
    k = max(0, n // 2 - math.ceil(0.98 * math.sqrt(n)))
    return ordered[k], ordered[n - 1 - k]


class Calibration:
    """Calibration wraps an ASGI app, passes every response message through its own `send`
    and adds `headers` to the response start, and does nothing else. With no headers it is
    the least any middleware that sees the response (to know whether it started or finished,
    or to add a header) adds to a request; with admission's two RateLimit fields, it shows
    what the headers the contract requires cost by themselves in the server."""

    def __init__(self, app: Any, headers: list[tuple[bytes, bytes]]) -> None:
        self.app = app
        self.headers = headers

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        extra = self.headers

        def send_(message: Any) -> Any:
            if extra and message["type"] == "http.response.start":
                message = {**message, "headers": [*message.get("headers", ()), *extra]}
            return send(message)

        await self.app(scope, receive, send_)


def send_only() -> Any:
    """send_only is the demo app under a Calibration that adds nothing (a uvicorn factory)."""
    from admission.demo import app

    return Calibration(app, [])


def headers_only() -> Any:
    """headers_only is the demo app under a Calibration that adds the two RateLimit fields
    (an app factory for uvicorn)."""
    from admission.demo import app

    return Calibration(app, CALIBRATION_HEADERS)


CALIBRATION_HEADERS = [
    (b"ratelimit-policy", b'"default";q=1000000;w=1'),
    (b"ratelimit", b'"default";r=999999;t=1'),
]


def server_commands(*, calibrate: bool) -> dict[str, tuple[list[str], dict[str, str]]]:
    """server_commands maps each server variant to its command line (with `{port}` to fill
    in) and environment; with `calibrate`, the two calibration middlewares too."""
    python = sys.executable
    uvicorn_opts = ("--workers", "1", "--loop", "auto", "--http", "auto", "--no-access-log")
    listen = ("--host", HOST, "--port", "{port}")
    serve = [python, "-m", "admission", "serve", *listen, "--workers", "1", "--no-access-log"]
    commands: dict[str, tuple[list[str], dict[str, str]]] = {
        "bare": (
            [python, "-m", "uvicorn", "admission.demo:app", *listen, *uvicorn_opts],
            without_settings(),
        ),
        "admission": (serve, without_settings()),
        "admission+rate": (serve, without_settings() | {"ADMISSION_RATE": RATE}),
    }
    if calibrate:
        here = str(Path(__file__).resolve().parent)
        for name, factory in (("send-only", "e2e:send_only"), ("headers-only", "e2e:headers_only")):
            app = (factory, "--factory", "--app-dir", here)
            commands[name] = (
                [python, "-m", "uvicorn", *app, *listen, *uvicorn_opts],
                without_settings(),
            )
    return commands


def split_cpus() -> tuple[set[int], set[int]] | None:
    """split_cpus gives the servers the last CPU this process may use and the load generator
    the others, so that neither migrates onto the other's core mid-run; None with one CPU."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        return None
    return {allowed[-1]}, set(allowed[:-1])


def main(argv: list[str] | None = None) -> int:
    """main runs the alternating measurement and prints the runs and the median ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=9, help="rounds of bare/admission runs")
    parser.add_argument("--duration", type=float, default=3.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before each run")
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive connections")
    parser.add_argument(
        "--calibrate",
        action="store_true",
        help="also run the demo under two calibration middlewares: one that only passes the "
        "response through its own send, one that only adds the RateLimit headers",
    )
    args = parser.parse_args(argv)

    commands = server_commands(calibrate=args.calibrate)
    cpus = split_cpus()
    server_cpus = None
    if cpus is not None:
        server_cpus, load_cpus = cpus
        os.sched_setaffinity(0, load_cpus)
    print(
        f"{os.cpu_count()} CPUs; {args.pairs} rounds of {args.duration:g} s runs "
        f"(+{args.warmup:g} s warm-up each), {args.concurrency} connections, "
        "1 load process (this one)"
        + (f"; servers on CPU {sorted(server_cpus)}, load on the rest" if server_cpus else "")
    )
    for name, (cmd, env) in commands.items():
        extra = f"ADMISSION_RATE={RATE} " if "ADMISSION_RATE" in env else ""
        print(f"{name + ':':<14}{extra}python " + " ".join(cmd[1:]))
    names = list(commands)
    runs: dict[str, list[Run]] = {n: [] for n in names}
    seen: list[str] | None = None
    print(
        f"\n{'round':>5}"
        + "".join(f"{n + ' req/s':>20}" for n in names)
        + f"{'ratio':>8}"
        + "".join(f"{n + ' CPU µs/req':>26}" for n in names)
    )
    for i in range(args.pairs):
        # Rotate which goes first, so none always follows another's warm-up.
        order = names[i % len(names) :] + names[: i % len(names)]
        for name in order:
            # A fresh process every round: a process seems to keep a speed of its own for its
            # life (hash seed, memory layout), which would otherwise weigh on every round.
            with server(name, *commands[name], cpus=server_cpus) as srv:
                loaded = srv.implementations()
                if seen is None:
                    seen = loaded
                if loaded != seen:
                    raise SystemExit(f"{name} runs {loaded or '?'}, the others {seen or '?'}")
                runs[name].append(run_once(srv, args.concurrency, args.duration, args.warmup))
        ratio = runs["admission"][-1].rps / runs["bare"][-1].rps
        print(
            f"{i + 1:>5}"
            + "".join(f"{runs[n][-1].rps:>20.0f}" for n in names)
            + f"{ratio:>8.3f}"
            + "".join(f"{runs[n][-1].cpu_us:>14.1f} ({runs[n][-1].busy:>4.0%})" for n in names)
        )
    ratios = [a.rps / b.rps for a, b in zip(runs["admission"], runs["bare"], strict=True)]
    median_ratio = statistics.median(ratios)
    rate_ratios = [a.rps / b.rps for a, b in zip(runs["admission+rate"], runs["bare"], strict=True)]
    cpu = {n: statistics.median(r.cpu_us for r in rs) for n, rs in runs.items()}
    print("\n(in brackets: the share of one core the server used during the run)")
    print(f"every server process loaded: {', '.join(seen or []) or '?'}")
    for name, rs in runs.items():
        lat = sorted(x for r in rs for x in r.result.latencies_s)
        print(
            f"{name:<13} median {statistics.median(r.rps for r in rs):>7.0f} req/s, "
            f"server CPU {cpu[name]:.1f} µs/request (+{cpu[name] - cpu['bare']:.1f} vs bare), "
            f"latency p50 {ms(percentile(lat, 50))} ms, "
            f"p99 {ms(percentile(lat, 99))} ms"
        )
    interval = median_interval(ratios)
    if interval is None:
        spread = (
            f"too few rounds for an interval of the median (--pairs {MIN_ROUNDS_FOR_INTERVAL}+)"
        )
        verdict = "not resolved by this run"
    else:
        low, high = interval
        spread = f"~95 % interval of the median {low:.3f}-{high:.3f}"
        if low >= TARGET_RATIO:
            verdict = "met"
        elif high < TARGET_RATIO:
            verdict = "MISSED"
        else:
            verdict = "not resolved by this run (the machine's noise spans it)"
    print(
        f"median throughput ratio admission/bare: {median_ratio:.3f} "
        f"(rounds: min {min(ratios):.3f}, max {max(ratios):.3f}; {spread}); "
        f"target >= {TARGET_RATIO}: {verdict}"
        f"\nmedian throughput ratio admission+rate/bare: {statistics.median(rate_ratios):.3f} "
        f"(rounds: min {min(rate_ratios):.3f}, max {max(rate_ratios):.3f})"
        f"\nCPU capacity ratio (bare CPU/request over admission CPU/request, the throughput "
        f"ratio of a saturated core): {cpu['bare'] / cpu['admission']:.3f}, with rate limiting "
        f"{cpu['bare'] / cpu['admission+rate']:.3f}"
    )
    for name in ("send-only", "headers-only"):
        if name in runs:
            ratios = [a.rps / b.rps for a, b in zip(runs[name], runs["bare"], strict=True)]
            print(
                f"median throughput ratio {name}/bare: {statistics.median(ratios):.3f} "
                f"(rounds: min {min(ratios):.3f}, max {max(ratios):.3f})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

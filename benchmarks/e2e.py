"""benchmarks/e2e.py: throughput of the demo's `/` under uvicorn, bare and under admission.

Two servers run side by side on loopback, each one uvicorn worker with the same event loop and
HTTP implementation ("auto": uvloop and httptools when installed, the same for both since they
run in the same environment; the script checks that both processes loaded the same ones) and
no access log:

  bare       python -m uvicorn admission.demo:app --loop auto --http auto --no-access-log
  admission  ADMISSION_RATE=1000000/second python -m admission serve --no-access-log
             (the same demo app under AdmissionMiddleware, default settings otherwise)

The load comes from admission's own closed-loop generator (admission.bench.loadgen) in this
process, separate from both servers: N keep-alive connections each sending its next GET as
soon as the previous response arrived. Runs alternate (bare, admission, bare, admission, ...)
so that a noisy neighbour hits both alike; each run is preceded by a short warm-up, and the
ratio reported is the median over pairs of admission/bare throughput in the same pair.

Run: python benchmarks/e2e.py [--pairs 7] [--duration 4] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from admission.bench.loadgen import LoadResult, load

HOST = "127.0.0.1"
RATE = "1000000/second"
# Shared objects whose presence in a server's memory map shows which loop/parser it runs.
IMPLEMENTATIONS = ("uvloop", "httptools")


def free_port() -> int:
    """free_port is a TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


@dataclass
class Server:
    """Server is one uvicorn process under test."""

    name: str
    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

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


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=0.5) as response:
            return bool(response.status == 200)
    except OSError:
        return False


@contextlib.contextmanager
def server(name: str, argv: list[str], env: dict[str, str]) -> Iterator[Server]:
    """server starts `argv` with `{port}` filled in, waits until `/` answers 200, yields it,
    and stops it with SIGTERM (SIGKILL if it lingers)."""
    port = free_port()
    with tempfile.NamedTemporaryFile(prefix=f"e2e-{name}-", suffix=".log") as log:
        process = subprocess.Popen(
            [a.replace("{port}", str(port)) for a in argv],
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        srv = Server(name, process, port, Path(log.name))
        try:
            deadline = time.monotonic() + 30
            while not _answers(f"http://{HOST}:{port}/"):
                if process.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{name} server did not start:\n{srv.log_path.read_text()}")
                time.sleep(0.1)
            yield srv
        finally:
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait()


def base_env() -> dict[str, str]:
    """base_env is this environment without any ADMISSION_* variable."""
    return {k: v for k, v in os.environ.items() if not k.startswith("ADMISSION_")}


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


def percentile(values: list[float], q: float) -> float:
    """percentile is the q-quantile (0..1) of `values`, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    """main runs the alternating measurement and prints the runs and the median ratio."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pairs", type=int, default=7, help="bare/admission run pairs")
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per run")
    parser.add_argument("--warmup", type=float, default=0.5, help="seconds before each run")
    parser.add_argument("--concurrency", type=int, default=32, help="keep-alive connections")
    args = parser.parse_args(argv)

    python = sys.executable
    bare_argv = [
        *(python, "-m", "uvicorn", "admission.demo:app", "--host", HOST, "--port", "{port}"),
        *("--workers", "1", "--loop", "auto", "--http", "auto", "--no-access-log"),
    ]
    admission_argv = [
        *(python, "-m", "admission", "serve", "--host", HOST, "--port", "{port}"),
        *("--workers", "1", "--no-access-log"),
    ]
    admission_env = base_env() | {"ADMISSION_RATE": RATE}
    print(
        f"{os.cpu_count()} CPUs; {args.pairs} pairs of {args.duration:g} s runs "
        f"(+{args.warmup:g} s warm-up each), {args.concurrency} connections, "
        "1 load process (this one)"
    )
    print("bare:      " + " ".join(bare_argv[1:]))
    print(f"admission: ADMISSION_RATE={RATE} " + " ".join(admission_argv[1:]))
    with (
        server("bare", bare_argv, base_env()) as bare,
        server("admission", admission_argv, admission_env) as admitted,
    ):
        impl_bare, impl_adm = bare.implementations(), admitted.implementations()
        print(f"loaded by bare: {impl_bare or '?'}; by admission: {impl_adm or '?'}")
        if impl_bare != impl_adm:
            raise SystemExit("the two servers run different loop/http implementations")
        rows: list[tuple[Run, Run]] = []
        print(
            f"\n{'pair':>4}{'bare req/s':>12}{'admission req/s':>17}{'ratio':>8}"
            f"{'server busy bare/adm':>22}{'server CPU µs/req bare/adm':>28}"
        )
        for i in range(args.pairs):
            # Alternate which goes first, so neither always follows the other's warm-up.
            first, second = (bare, admitted) if i % 2 == 0 else (admitted, bare)
            a = run_once(first, args.concurrency, args.duration, args.warmup)
            b = run_once(second, args.concurrency, args.duration, args.warmup)
            r_bare, r_adm = (a, b) if first is bare else (b, a)
            rows.append((r_bare, r_adm))
            print(
                f"{i + 1:>4}{r_bare.rps:>12.0f}{r_adm.rps:>17.0f}{r_adm.rps / r_bare.rps:>8.3f}"
                f"{r_bare.busy:>14.0%} / {r_adm.busy:<5.0%}"
                f"{r_bare.cpu_us:>20.1f} / {r_adm.cpu_us:<6.1f}"
            )
    ratios = [adm.rps / bare_.rps for bare_, adm in rows]
    median_ratio = statistics.median(ratios)
    bare_rps = statistics.median(r.rps for r, _ in rows)
    adm_rps = statistics.median(r.rps for _, r in rows)
    cpu_bare = statistics.median(r.cpu_us for r, _ in rows)
    cpu_adm = statistics.median(r.cpu_us for _, r in rows)
    lat_bare = [x for r, _ in rows for x in r.result.latencies_s]
    lat_adm = [x for _, r in rows for x in r.result.latencies_s]
    print(
        f"\nmedian throughput: bare {bare_rps:.0f} req/s, admission {adm_rps:.0f} req/s"
        f"\nmedian server CPU per request: bare {cpu_bare:.1f} µs, admission {cpu_adm:.1f} µs "
        f"(+{cpu_adm - cpu_bare:.1f} µs)"
        f"\nlatency p50/p99: bare {percentile(lat_bare, 0.5) * 1e3:.2f}/"
        f"{percentile(lat_bare, 0.99) * 1e3:.2f} ms, admission "
        f"{percentile(lat_adm, 0.5) * 1e3:.2f}/{percentile(lat_adm, 0.99) * 1e3:.2f} ms"
        f"\nmedian ratio admission/bare: {median_ratio:.3f} "
        f"(pairs: min {min(ratios):.3f}, max {max(ratios):.3f}); "
        f"target >= 0.95: {'met' if median_ratio >= 0.95 else 'MISSED'}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

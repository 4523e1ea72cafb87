"""benchmarks/overload.py: four times the load the demo's `/slow?ms=20` serves well, with and
without a concurrency window, against real `admission serve` processes.

What "the load it can serve" means here. `/slow?ms=20` only sleeps, so one process can have
any number of them in flight; what runs out is the CPU the process spends per request (HTTP
parsing, routing, the middleware, the access log). Past some number in flight, requests queue
for that CPU and latency climbs while throughput barely grows. That point, the knee, is
measured, not assumed:

1. Unloaded: one client sends requests one after another for a few seconds: the unloaded
   p50 and p99.
2. Knee: a quick sweep of closed-loop concurrency (8, 16, 32, 64, 128 clients; no window).
   The knee is the largest concurrency at which the process still serves well: throughput
   still grows in proportion (at least 90 % of clients / unloaded p50, Little's law) and the
   p99 is within 1.5x the unloaded p99. Its throughput is the capacity. `--window N` skips
   the sweep and uses N.
3. Overload: 4 x knee clients, closed loop (each client sends its next request as soon as it
   has the answer to the previous one), for `--duration` seconds, against
   a. `admission serve` without a window: every request is admitted;
   b. `admission serve` with ADMISSION_WINDOW = knee (queue timeout 0): the excess gets 429
      with `Retry-After: 1`, and the rejected client waits that long (stretched by a random
      0-50 %, see admission.bench.loadgen) before it tries again, as clients are asked to;
   c. the same window, with clients that ignore Retry-After and retry at once. Reported, not
      checked: it shows what a 429 costs when clients hammer (about what serving a sleeping
      request costs, so a storm of them saturates the CPU as the requests themselves would).
4. Check: with the window (b), the p99 of admitted requests is within 2x the unloaded p99.
   The exit status is 1 when it is not.

Latency is that of 2xx responses, from the write of the request to the end of its response,
measured by the load generator (admission.bench.loadgen: one process, uvloop, keep-alive
connections); "rejected" is the share of responses that were not 2xx; "offered" is all
responses per second. Each server is warmed up before it is measured. The load generator and
the server share the machine: on a 2-core machine each gets about one core.

Run: python benchmarks/overload.py [--duration S] [--window N] [--factor F]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import textwrap
from collections.abc import Iterator
from dataclasses import dataclass

from admission.bench.loadgen import LoadResult, load
from admission.bench.process import PORT, NotReady, served, without_settings
from admission.bench.recommend import percentile

HOST = "127.0.0.1"
PATH = "/slow?ms=20"
SWEEP = (8, 16, 32, 64, 128)
# The knee: throughput still within this share of proportional growth...
LINEAR_SHARE = 0.9
# ...and p99 within this multiple of the unloaded p99.
KNEE_P99_FACTOR = 1.5
# The bound: admitted p99 under overload, with the window, against the unloaded p99.
P99_BOUND = 2.0
# Seconds a rejected client honours Retry-After at most: the middleware sends 1.
RETRY_AFTER_CAP_S = 1.0
WARMUP_S = 1.0
START_TIMEOUT_S = 30.0


@dataclass(frozen=True)
class Line:
    """Line is one row of the table: a load and what it saw."""

    name: str
    clients: int
    window: int | None
    result: LoadResult

    def p(self, q: float) -> float | None:
        value = percentile(sorted(self.result.latencies_s), q)
        return None if value is None else value * 1000.0

    @property
    def offered_rps(self) -> float:
        r = self.result
        return r.responses / r.elapsed_s if r.elapsed_s > 0 else 0.0


@contextlib.contextmanager
def admission_serve(window: int | None) -> Iterator[int]:
    """admission_serve runs the demo under `admission serve` on a free port, with the window
    (None: none), and yields the port once /healthz answers."""
    env = without_settings()
    if window is not None:
        env["ADMISSION_WINDOW"] = str(window)
        env["ADMISSION_QUEUE_TIMEOUT"] = "0"
    argv = [sys.executable, "-m", "admission", "serve", "--host", HOST, "--port", PORT]
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(
                served(argv, env, start_timeout_s=START_TIMEOUT_S, stop_timeout_s=15)
            )
        except NotReady as exc:
            raise SystemExit(f"admission serve did not start:\n{exc.log[-2000:]}") from exc
        load(HOST, server.port, PATH, 8, WARMUP_S)
        yield server.port


def find_knee(port: int, unloaded: Line, duration_s: float) -> tuple[int, list[Line]]:
    """find_knee sweeps SWEEP clients without a window and returns the knee and the sweep."""
    p50, p99 = unloaded.p(50), unloaded.p(99)
    assert p50 is not None and p99 is not None
    knee = SWEEP[0]
    lines = []
    for clients in SWEEP:
        line = Line(f"sweep {clients}", clients, None, load(HOST, port, PATH, clients, duration_s))
        lines.append(line)
        proportional = clients / (p50 / 1000.0)
        line_p99 = line.p(99)
        serves_well = (
            line.result.throughput_rps >= LINEAR_SHARE * proportional
            and line_p99 is not None
            and line_p99 <= KNEE_P99_FACTOR * p99
        )
        if not serves_well:
            break
        knee = clients
    return knee, lines


def table(lines: list[Line]) -> str:
    """table formats the lines as a fixed-width table."""
    head = (
        f"{'run':<34} {'clients':>7} {'window':>6} {'admitted/s':>10} {'p50 ms':>7} "
        f"{'p99 ms':>7} {'rejected':>8} {'offered/s':>9}"
    )
    out = [head, "-" * len(head)]
    for line in lines:
        p50, p99 = line.p(50), line.p(99)
        out.append(
            f"{line.name:<34} {line.clients:>7} {line.window or '-':>6} "
            f"{line.result.throughput_rps:>10.0f} "
            f"{'-' if p50 is None else f'{p50:.1f}':>7} {'-' if p99 is None else f'{p99:.1f}':>7} "
            f"{line.result.rejected_ratio:>8.1%} {line.offered_rps:>9.0f}"
        )
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(
        prog="benchmarks/overload.py",
        # The docstring's first paragraph (one sentence over two lines) is the description;
        # the rest, the method, is the epilog, kept as written.
        description=textwrap.fill(
            " ".join(__doc__.split("\n\n")[0].split())
            .removeprefix("benchmarks/overload.py: ")
            .capitalize()
        ),
        epilog=__doc__.split("\n\n", 1)[1],
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--duration", type=float, default=5.0, help="seconds per overload run (default: 5)"
    )
    parser.add_argument(
        "--sweep-duration",
        type=float,
        default=1.5,
        help="seconds per step of the concurrency sweep that finds the knee (default: 1.5)",
    )
    parser.add_argument(
        "--unloaded-duration",
        type=float,
        default=4.0,
        help="seconds of the one-client run that measures the unloaded latency (default: 4)",
    )
    parser.add_argument(
        "--factor",
        type=float,
        default=4.0,
        help="overload clients, in multiples of the knee (default: 4)",
    )
    parser.add_argument(
        "--window",
        type=int,
        help="use this window instead of the measured knee (default: measure the knee)",
    )
    args = parser.parse_args()

    lines: list[Line] = []
    print(
        f"admission overload benchmark: GET {PATH}, python {sys.version.split()[0]}, "
        f"{os.cpu_count()} CPUs",
        flush=True,
    )
    with admission_serve(None) as port:
        unloaded = Line(
            "unloaded (1 client)", 1, None, load(HOST, port, PATH, 1, args.unloaded_duration)
        )
        lines.append(unloaded)
        if args.window is None:
            knee, sweep = find_knee(port, unloaded, args.sweep_duration)
            lines += sweep
            capacity = next(line.result.throughput_rps for line in sweep if line.clients == knee)
            how = f"measured; it serves {capacity:.0f} requests/s"
        else:
            knee, how = args.window, "given"
        clients = max(1, round(args.factor * knee))
        unloaded_p50 = unloaded.p(50)
        assert unloaded_p50 is not None
        print(
            f"knee ({how}): {knee} in flight; offering {clients} clients, up to "
            f"{clients / (unloaded_p50 / 1000):.0f} requests/s at the unloaded latency",
            flush=True,
        )
        lines.append(
            Line(
                "overload, no window", clients, None, load(HOST, port, PATH, clients, args.duration)
            )
        )
    with admission_serve(knee) as port:
        honouring = Line(
            "overload, window, Retry-After kept",
            clients,
            knee,
            load(HOST, port, PATH, clients, args.duration, retry_after_cap_s=RETRY_AFTER_CAP_S),
        )
        lines.append(honouring)
        lines.append(
            Line(
                "overload, window, retry at once",
                clients,
                knee,
                load(HOST, port, PATH, clients, args.duration),
            )
        )
    print(table(lines))
    unloaded_p99 = unloaded.p(99)
    admitted_p99 = honouring.p(99)
    assert unloaded_p99 is not None
    if admitted_p99 is None:
        print("check: FAIL, no request was admitted with the window")
        return 1
    bound = P99_BOUND * unloaded_p99
    verdict = "PASS" if admitted_p99 <= bound else "FAIL"
    print(
        f"check: admitted p99 with the window {admitted_p99:.1f} ms <= {P99_BOUND:g} x unloaded "
        f"p99 ({P99_BOUND:g} x {unloaded_p99:.1f} = {bound:.1f} ms): {verdict} "
        f"({admitted_p99 / unloaded_p99:.2f}x)"
    )
    return 0 if verdict == "PASS" else 1


if __name__ == "__main__":
    sys.exit(main())

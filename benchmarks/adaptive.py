"""benchmarks/adaptive.py: static windows against `ADMISSION_WINDOW=auto` when the capacity of
what the service calls drops halfway through a run.

The service is the demo's `GET /backend?ms=20&capacity=C` under `admission serve`: a simulated
downstream (a database pool) of C slots, each call holding one for 20 ms, so past C in flight
calls queue for a slot and latency grows. 128 closed-loop clients (each sends its next request
as soon as it has the answer to the previous one) call it with capacity=16 for the first half
of the run and capacity=4 for the second: the downstream lost three quarters of its capacity.
The clients change the URL at the halfway instant; the demo's pool takes the capacity of the
latest call, so from then on at most 4 calls hold a slot. (Requests already in flight finish;
the change is as abrupt as a client-visible capacity change gets.)

Each configuration runs against its own fresh server: static windows of 8, 16, 64 and 1000
and `auto` (bounded by 1..1000), queue timeout 0. A refused client honours Retry-After (the
middleware sends 1 s) stretched by a random 0-50 %, as a well-behaved client does; so the
refused ones do not turn into a storm of 429s that would cost the server its CPU.

Measured, per half: goodput (2xx per second), the p50 and p99 latency of 2xx responses (from
the write of the request to the end of the response, at the client), and for the second half
also the p99 from 5 s after the change to the end ("settled"). The unloaded latency is the
median of one client calling /backend?ms=20&capacity=16 one request after another. The run
warms each server up for `--warmup` seconds (not measured) before the first half.

Checks (issue 13): in both halves auto's goodput >= 90 % of the best static window's; auto's
settled p99 <= 2x unloaded; static 16's second-half p99 >= 4x unloaded. Exit status 1 when one
fails. `--plot PATH` draws latency, goodput and auto's window over time.

Pinning: with `--pin` (default on a machine with 2+ CPUs) the server runs on CPU 0 and this
process, the load generator, on CPU 1, so the two don't take turns on one core.

Run: python benchmarks/adaptive.py [--half S] [--warmup S] [--plot docs/img/adaptive.png]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass, field

from admission.bench.loadgen import (
    ResponseError,
    build_request,
    read_response,
    run_coroutine,
)
from admission.bench.process import PORT, NotReady, served, without_settings
from admission.bench.recommend import percentile

HOST = "127.0.0.1"
CLIENTS = 128
HOLD_MS = 20
CAPACITY_BEFORE = 16
CAPACITY_AFTER = 4
WINDOWS: tuple[int | str, ...] = (8, 16, 64, 1000, "auto")
AUTO_MIN, AUTO_MAX = 1, 1000
RETRY_AFTER_CAP_S = 1.0
SETTLE_S = 5.0
START_TIMEOUT_S = 30.0
# Seconds between two reads of /readyz's "window" while a run goes on.
WINDOW_POLL_S = 0.1
BIN_S = 0.5
# The bounds.
GOODPUT_SHARE = 0.9
AUTO_P99_FACTOR = 2.0
STATIC_P99_FACTOR = 4.0


def path(capacity: int) -> str:
    return f"/backend?ms={HOLD_MS}&capacity={capacity}"


@dataclass
class Run:
    """Run is what one configuration saw: every response's end time (seconds from the start
    of the first half), status and latency, and the window /readyz reported over time."""

    name: str
    half_s: float
    responses: list[tuple[float, int, float]] = field(default_factory=list)
    windows: list[tuple[float, int]] = field(default_factory=list)
    errors: int = 0

    def ok(self, start: float, end: float) -> list[float]:
        """ok is the latencies (s) of 2xx responses that ended in [start, end)."""
        return [lat for t, status, lat in self.responses if start <= t < end and status < 300]

    def goodput(self, start: float, end: float) -> float:
        return len(self.ok(start, end)) / (end - start)

    def p_ms(self, q: float, start: float, end: float) -> float | None:
        value = percentile(sorted(self.ok(start, end)), q)
        return None if value is None else value * 1000

    def refused(self, start: float, end: float) -> float:
        seen = [status for t, status, _ in self.responses if start <= t < end]
        return sum(1 for s in seen if s >= 300) / len(seen) if seen else 0.0


@contextlib.contextmanager
def serve(window: int | str, pin: bool) -> Iterator[int]:
    """serve runs the demo under `admission serve` with the window on a free port (on CPU 0
    only, with `pin`) and yields the port once /healthz answers."""
    env = without_settings()
    env["ADMISSION_WINDOW"] = str(window)
    env["ADMISSION_QUEUE_TIMEOUT"] = "0"
    if window == "auto":
        env["ADMISSION_WINDOW_MIN"] = str(AUTO_MIN)
        env["ADMISSION_WINDOW_MAX"] = str(AUTO_MAX)
    argv = [sys.executable, "-m", "admission", "serve", "--host", HOST, "--port", PORT]
    cpus = {0} if pin else None
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(
                served(argv, env, start_timeout_s=START_TIMEOUT_S, stop_timeout_s=15, cpus=cpus)
            )
        except NotReady as exc:
            raise SystemExit(f"admission serve did not start:\n{exc.log[-2000:]}") from exc
        yield server.port


def _get(port: int, target: str) -> dict[str, object] | None:
    try:
        with urllib.request.urlopen(f"http://{HOST}:{port}{target}", timeout=1) as response:
            body = response.read()
            return json.loads(body) if target == "/readyz" else {}  # type: ignore[no-any-return]
    except (OSError, urllib.error.URLError, ValueError):
        return None


async def _client(port: int, run: Run, t0: float, change: float, end: float) -> None:
    """_client calls /backend one request after another until `end`, with the first half's
    capacity before `change` and the second's after (perf_counter times; t0 is the start)."""
    before = build_request(HOST, port, path(CAPACITY_BEFORE))
    after = build_request(HOST, port, path(CAPACITY_AFTER))
    clock = time.perf_counter
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    try:
        while (now := clock()) < end:
            if writer is None or reader is None:
                try:
                    reader, writer = await asyncio.open_connection(HOST, port)
                except OSError:
                    run.errors += 1
                    await asyncio.sleep(0.01)
                    continue
                now = clock()
            writer.write(before if now < change else after)
            try:
                status, keep_alive, retry_after_s = await read_response(reader)
            except (OSError, asyncio.IncompleteReadError, ResponseError):
                run.errors += 1
                writer.close()
                reader = writer = None
                continue
            done = clock()
            run.responses.append((done - t0, status, done - now))
            if not keep_alive:
                writer.close()
                reader = writer = None
            if status >= 300 and retry_after_s is not None:
                pause = min(retry_after_s, RETRY_AFTER_CAP_S) * random.uniform(1.0, 1.5)
                await asyncio.sleep(max(0.0, min(pause, end - clock())))
    finally:
        if writer is not None:
            writer.close()


async def _poll_window(port: int, run: Run, t0: float, end: float) -> None:
    loop = asyncio.get_running_loop()
    while time.perf_counter() < end:
        body = await loop.run_in_executor(None, _get, port, "/readyz")
        if body is not None and isinstance(body.get("window"), int):
            run.windows.append((time.perf_counter() - t0, int(body["window"])))  # type: ignore[call-overload]
        await asyncio.sleep(WINDOW_POLL_S)


async def drive(port: int, name: str, half_s: float, warmup_s: float) -> Run:
    """drive runs CLIENTS clients: `warmup_s` unmeasured, then a half at each capacity."""
    run = Run(name, half_s)
    t0 = time.perf_counter() + warmup_s
    change, end = t0 + half_s, t0 + 2 * half_s
    tasks = [asyncio.create_task(_client(port, run, t0, change, end)) for _ in range(CLIENTS)]
    tasks.append(asyncio.create_task(_poll_window(port, run, t0, end)))
    await asyncio.gather(*tasks)
    run.responses = [r for r in run.responses if r[0] >= 0]
    return run


async def unloaded(port: int, seconds: float) -> list[float]:
    """unloaded is the latency of one client calling one request after another."""
    reader, writer = await asyncio.open_connection(HOST, port)
    request = build_request(HOST, port, path(CAPACITY_BEFORE))
    latencies = []
    end = time.perf_counter() + seconds
    try:
        while (start := time.perf_counter()) < end:
            writer.write(request)
            status, _, _ = await read_response(reader)
            if status < 300:
                latencies.append(time.perf_counter() - start)
    finally:
        writer.close()
    return latencies


def fmt(value: float | None) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(runs: list[Run], half_s: float) -> str:
    head = (
        f"{'window':>6} | {'1st half: ok/s':>14} {'p50':>6} {'p99':>6} {'refused':>7} | "
        f"{'2nd half: ok/s':>14} {'p50':>6} {'p99':>6} {'refused':>7} | {'p99 settled':>11} "
        f"{'window at end':>13}"
    )
    out = [head, "-" * len(head)]
    for run in runs:
        h1, h2 = (0.0, half_s), (half_s, 2 * half_s)
        settled = (half_s + SETTLE_S, 2 * half_s)
        last = run.windows[-1][1] if run.windows else None
        out.append(
            f"{run.name:>6} | {run.goodput(*h1):>14.0f} {fmt(run.p_ms(50, *h1)):>6} "
            f"{fmt(run.p_ms(99, *h1)):>6} {run.refused(*h1):>7.1%} | "
            f"{run.goodput(*h2):>14.0f} {fmt(run.p_ms(50, *h2)):>6} {fmt(run.p_ms(99, *h2)):>6} "
            f"{run.refused(*h2):>7.1%} | {fmt(run.p_ms(99, *settled)):>11} {last or '-':>13}"
        )
    return "\n".join(out)


def checks(runs: list[Run], half_s: float, base_ms: float) -> list[tuple[str, bool]]:
    by = {run.name: run for run in runs}
    auto = by["auto"]
    statics = [run for run in runs if run.name != "auto"]
    out = []
    for label, span in (("1st", (0.0, half_s)), ("2nd", (half_s, 2 * half_s))):
        best = max(statics, key=lambda r: r.goodput(*span))
        share = auto.goodput(*span) / best.goodput(*span)
        out.append(
            (
                f"{label} half: auto's goodput {auto.goodput(*span):.0f}/s is {share:.0%} of the "
                f"best static window's ({best.name}: {best.goodput(*span):.0f}/s), >= 90 %",
                share >= GOODPUT_SHARE,
            )
        )
    settled = auto.p_ms(99, half_s + SETTLE_S, 2 * half_s)
    out.append(
        (
            f"auto's p99 from {SETTLE_S:g} s after the change: {fmt(settled)} ms = "
            f"{(settled or 0) / base_ms:.2f}x unloaded, <= {AUTO_P99_FACTOR:g}x",
            settled is not None and settled <= AUTO_P99_FACTOR * base_ms,
        )
    )
    if "16" in by:
        p99 = by["16"].p_ms(99, half_s, 2 * half_s)
        out.append(
            (
                f"static 16's 2nd-half p99: {fmt(p99)} ms = {(p99 or 0) / base_ms:.2f}x "
                f"unloaded, >= {STATIC_P99_FACTOR:g}x",
                p99 is not None and p99 >= STATIC_P99_FACTOR * base_ms,
            )
        )
    return out


def plot(runs: list[Run], half_s: float, base_ms: float, target: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (lat, good, win) = plt.subplots(3, 1, figsize=(9, 9), sharex=True)
    end = 2 * half_s
    bins = [i * BIN_S for i in range(int(end / BIN_S))]
    for run in runs:
        label = f"window {run.name}"
        style = {"linewidth": 2.2, "color": "black"} if run.name == "auto" else {"alpha": 0.8}
        p99s = [run.p_ms(99, b, b + BIN_S) for b in bins]
        lat.plot(
            [b + BIN_S / 2 for b, v in zip(bins, p99s, strict=True) if v is not None],
            [v for v in p99s if v is not None],
            label=label,
            **style,  # type: ignore[arg-type]
        )
        good.plot(
            [b + BIN_S / 2 for b in bins],
            [run.goodput(b, b + BIN_S) for b in bins],
            label=label,
            **style,  # type: ignore[arg-type]
        )
        if run.windows:
            win.step(
                [t for t, _ in run.windows], [w for _, w in run.windows], where="post", **style
            )  # type: ignore[arg-type]
    lat.axhline(AUTO_P99_FACTOR * base_ms, color="grey", linestyle=":", linewidth=1)
    lat.text(0.1, AUTO_P99_FACTOR * base_ms * 1.05, "2x unloaded", color="grey", fontsize=8)
    lat.set_yscale("log")
    lat.set_ylabel("p99 latency of 2xx, ms\n(per 0.5 s)")
    lat.legend(fontsize=8, ncol=5, loc="upper left")
    good.set_ylabel("goodput, 2xx/s\n(per 0.5 s)")
    win.set_yscale("log")
    win.set_ylabel("window size\n(/readyz)")
    win.set_xlabel(
        f"seconds; downstream capacity {CAPACITY_BEFORE} -> {CAPACITY_AFTER} at {half_s:g} s"
    )
    for ax in (lat, good, win):
        ax.axvline(half_s, color="red", linestyle="--", linewidth=1)
        ax.grid(alpha=0.3)
    fig.suptitle(
        f"{CLIENTS} closed-loop clients, GET /backend?ms={HOLD_MS}: static windows vs auto",
        fontsize=11,
    )
    fig.tight_layout()
    fig.savefig(target, dpi=110)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--half", type=float, default=8.0, help="seconds per half")
    parser.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first")
    parser.add_argument("--unloaded", type=float, default=2.0, help="seconds of one client")
    parser.add_argument("--windows", default=",".join(map(str, WINDOWS)))
    parser.add_argument("--plot", help="write the plot to this PNG")
    parser.add_argument("--no-pin", dest="pin", action="store_false")
    args = parser.parse_args()
    pin = args.pin and (os.cpu_count() or 1) >= 2 and hasattr(os, "sched_setaffinity")
    if pin:
        os.sched_setaffinity(0, {1})
    windows = [int(w) if w.isdigit() else w for w in args.windows.split(",")]
    print(
        f"admission adaptive-window benchmark: {CLIENTS} clients, GET {path(CAPACITY_BEFORE)} "
        f"then capacity={CAPACITY_AFTER} after {args.half:g} s; python "
        f"{sys.version.split()[0]}, {os.cpu_count()} CPUs, pinned: {pin}",
        flush=True,
    )
    with serve(1000, pin) as port:
        base = run_coroutine(unloaded(port, args.unloaded))
    base_ms = (percentile(sorted(base), 50) or 0.0) * 1000
    base_p99 = (percentile(sorted(base), 99) or 0.0) * 1000
    print(f"unloaded (1 client): p50 {base_ms:.1f} ms, p99 {base_p99:.1f} ms", flush=True)
    runs = []
    for window in windows:
        with serve(window, pin) as port:
            run = run_coroutine(drive(port, str(window), args.half, args.warmup))
        runs.append(run)
        print(f"  window {window}: {len(run.responses)} responses, {run.errors} errors", flush=True)
    print(table(runs, args.half))
    if args.plot:
        plot(runs, args.half, base_ms, args.plot)
        print(f"plot: {args.plot}")
    failed = False
    if "auto" in {run.name for run in runs}:
        for text, ok in checks(runs, args.half, base_ms):
            print(f"check: {text}: {'PASS' if ok else 'FAIL'}")
            failed |= not ok
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

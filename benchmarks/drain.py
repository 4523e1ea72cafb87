"""benchmarks/drain.py: how long a SIGTERM takes to become an exit, against the longest request
in flight.

For each longest duration L (default 0.5, 1 and 2 s) it starts a server with the demo app under
the middleware, puts N requests to `/slow` in flight whose durations are spread evenly up to L,
sends SIGTERM once all N are in flight, and measures, from the signal: when the last response
arrived and when the process exited. The difference between the two is what the drain and the
server's shutdown add after the last request; the drain itself never ends a request early.

    python benchmarks/drain.py                          # admission serve, 3 runs per row
    python benchmarks/drain.py --server uvicorn         # the middleware under plain uvicorn
    python benchmarks/drain.py --longest 0.5 1 2 5 --in-flight 16 --runs 5

Loopback only; each row is the median of the runs. Every request must answer 200 (the drain
waits for all of them), otherwise the run is reported as failed.
"""

from __future__ import annotations

import argparse
import asyncio
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

from admission.bench.process import PORT, served, without_settings

REPO = Path(__file__).resolve().parent.parent
SERVERS = {
    "serve": [sys.executable, "-m", "admission", "serve", "--host", "127.0.0.1", "--port"],
    # The same app (the demo under the middleware) run by uvicorn's own command line.
    "uvicorn": [
        sys.executable,
        "-m",
        "uvicorn",
        "admission.server.serve:make_app",
        "--factory",
        "--host",
        "127.0.0.1",
        "--port",
    ],
}


@dataclass
class Run:
    """Run is one measurement, in seconds from SIGTERM."""

    last_response_s: float
    exit_s: float
    status: int

    @property
    def after_last_s(self) -> float:
        return self.exit_s - self.last_response_s


async def in_flight(probe: httpx.AsyncClient) -> int:
    """in_flight is what /readyz reports, or -1 while the server does not answer."""
    try:
        return int((await probe.get("/readyz")).json()["in_flight"])
    except (httpx.HTTPError, ValueError, KeyError):
        return -1


def one_run(server: str, longest_s: float, count: int) -> Run:
    """one_run starts a server, drains it once with `count` requests in flight and returns the
    times measured from SIGTERM."""
    env = without_settings()
    env["ADMISSION_DRAIN_TIMEOUT"] = str(max(30.0, 3 * longest_s))
    # Up once /readyz answers: the in-flight count the run watches comes from it.
    with served([*SERVERS[server], PORT], env, ready_path="/readyz", cwd=REPO) as running:
        return asyncio.run(_drain_once(running.process, running.port, longest_s, count))


async def _drain_once(
    process: subprocess.Popen[bytes], port: int, longest_s: float, count: int
) -> Run:
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    limits = httpx.Limits(max_connections=count)
    async with (
        httpx.AsyncClient(base_url=url, timeout=1) as probe,
        httpx.AsyncClient(base_url=url, timeout=longest_s + 30, limits=limits) as client,
    ):

        async def request(ms: int) -> tuple[int, float]:
            response = await client.get(f"/slow?ms={ms}")
            return response.status_code, time.monotonic()

        durations_ms = [round(longest_s * 1000 * (i + 1) / count) for i in range(count)]
        tasks = [asyncio.ensure_future(request(ms)) for ms in durations_ms]
        while await in_flight(probe) < count:
            if time.monotonic() > deadline:
                raise RuntimeError("the requests did not all start")
            await asyncio.sleep(0.005)
        signalled = time.monotonic()
        process.send_signal(signal.SIGTERM)
        results = await asyncio.gather(*tasks)
    while process.poll() is None:
        if time.monotonic() - signalled > longest_s + 60:
            raise RuntimeError("the server did not exit")
        await asyncio.sleep(0.005)
    exited = time.monotonic()
    if any(status != 200 for status, _ in results):
        raise RuntimeError(f"a request did not complete: {[s for s, _ in results]}")
    last = max(at for _, at in results)
    return Run(last - signalled, exited - signalled, process.returncode)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--longest", type=float, nargs="+", default=[0.5, 1.0, 2.0])
    parser.add_argument("--in-flight", type=int, default=8)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--server", choices=sorted(SERVERS), default="serve")
    args = parser.parse_args()

    print(f"server: {args.server}; {args.in_flight} requests in flight; median of {args.runs} runs")
    header = (
        f"{'longest in flight':>18} | {'SIGTERM→last response':>21} | {'SIGTERM→exit':>12} | "
        f"{'last response→exit':>18} | {'exit status':>11}"
    )
    print(header)
    print("-" * len(header))
    for longest in args.longest:
        runs = [one_run(args.server, longest, args.in_flight) for _ in range(args.runs)]
        last = statistics.median(r.last_response_s for r in runs)
        exit_ = statistics.median(r.exit_s for r in runs)
        after = statistics.median(r.after_last_s for r in runs)
        statuses = ",".join(sorted({str(r.status) for r in runs}))
        print(
            f"{longest:>17.2f}s | {last:>20.3f}s | {exit_:>11.3f}s | {after:>17.3f}s | "
            f"{statuses:>11}"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""benchmarks/server_limits.py: what an oversized or trickled request head costs the server.

Two measurements against one server process on loopback:

1. **An oversized head.** For each size (default 1 MiB and 16 MiB) it sends one request whose
   `X-Big` header has that many bytes, reads the answer, and takes the server's CPU time for it
   from `/proc/<pid>/task/*/schedstat` (nanoseconds on CPU, all threads), less what the idle
   server burns over the same wall time (uvicorn ticks ten times a second). Median of the runs.
2. **Slowloris.** It opens N connections (default 200) that send their head one byte a second,
   and meanwhile GETs `/healthz` every 100 ms on a fresh connection: the latencies of those,
   and how long after connecting the server closed each trickling connection.

    python benchmarks/server_limits.py                    # admission serve, READ_TIMEOUT=2
    python benchmarks/server_limits.py --server uvicorn   # plain uvicorn, for comparison
    python benchmarks/server_limits.py --sizes 1 64 --runs 5 --trickling 500

Plain uvicorn has no head limit (it parses and answers every head, whatever its size) and no
head timeout: its trickling connections stay open, so that part stops after --trickle-s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from pathlib import Path

import httpx

from admission.bench.process import PORT, served, without_settings

REPO = Path(__file__).resolve().parent.parent
SERVERS = {
    "serve": [sys.executable, "-m", "admission", "serve", "--no-access-log"],
    "uvicorn": [sys.executable, "-m", "uvicorn", "admission.demo:app", "--no-access-log"],
}


def cpu_ns(pid: int) -> int:
    """cpu_ns is the CPU time of every thread of `pid`, in nanoseconds."""
    total = 0
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(FileNotFoundError, ProcessLookupError):
            total += int((task / "schedstat").read_text().split()[0])
    return total


async def send_head(port: int, size: int) -> bytes:
    """send_head sends one request with a `size`-byte header while reading the answer, and
    returns the status line (or what the connection ended with)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = b"GET / HTTP/1.1\r\nHost: b\r\nX-Big: " + b"a" * size + b"\r\n\r\n"

    async def write() -> None:
        try:
            writer.write(head)
            await writer.drain()
        except ConnectionError:
            pass

    writing = asyncio.ensure_future(write())
    try:
        status = await asyncio.wait_for(reader.readline(), 60)
    except ConnectionError as exc:
        status = type(exc).__name__.encode()
    writing.cancel()
    writer.close()
    return status.strip()


async def head_cost(pid: int, port: int, size: int, runs: int) -> tuple[float, bytes]:
    """head_cost is the median CPU milliseconds one `size`-byte head costs the server."""
    idle_start, idle_wall = cpu_ns(pid), time.monotonic()
    await asyncio.sleep(1.0)
    idle_rate = (cpu_ns(pid) - idle_start) / (time.monotonic() - idle_wall)
    costs = []
    status = b""
    for _ in range(runs):
        before, wall = cpu_ns(pid), time.monotonic()
        status = await send_head(port, size)
        await asyncio.sleep(0.2)  # let the server finish with the connection
        spent = cpu_ns(pid) - before - idle_rate * (time.monotonic() - wall)
        costs.append(max(spent, 0.0) / 1e6)
    return statistics.median(costs), status


async def trickle(port: int, give_up_at: float) -> float | None:
    """trickle sends a head a byte a second; returns when the server closed it, or None."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    opened = time.monotonic()
    writer.write(b"GET / HTTP/1.1\r\nHost: b\r\nX-Slow: ")
    try:
        while time.monotonic() < give_up_at:
            try:
                if not await asyncio.wait_for(reader.read(4096), 1.0):
                    return time.monotonic() - opened
            except asyncio.TimeoutError:
                writer.write(b"a")
    except ConnectionError:
        return time.monotonic() - opened
    finally:
        writer.close()
    return None


async def slowloris(url: str, port: int, n: int, trickle_s: float) -> None:
    give_up_at = time.monotonic() + trickle_s
    tasks = [asyncio.ensure_future(trickle(port, give_up_at)) for _ in range(n)]
    await asyncio.sleep(0.5)
    latencies = []
    async with httpx.AsyncClient(timeout=5) as client:
        for _ in range(20):
            started = time.monotonic()
            await client.get(url + "/healthz", headers={"Connection": "close"})
            latencies.append((time.monotonic() - started) * 1000)
            await asyncio.sleep(0.1)
    closed = await asyncio.gather(*tasks)
    done = sorted(c for c in closed if c is not None)
    print(
        f"{n} trickling heads: /healthz median {statistics.median(latencies):.1f} ms, "
        f"max {max(latencies):.1f} ms; closed {len(done)}/{n}"
        + (f", the last {done[-1]:.2f} s after connecting" if done else "")
    )


async def measure(args: argparse.Namespace, pid: int, port: int) -> None:
    for mib in args.sizes:
        ms, status = await head_cost(pid, port, mib * 1024 * 1024, args.runs)
        print(f"{args.server}: a {mib} MiB header -> {status.decode()!r}: {ms:.1f} ms CPU")
    await slowloris(f"http://127.0.0.1:{port}", port, args.trickling, args.trickle_s)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--server", choices=sorted(SERVERS), default="serve")
    parser.add_argument("--sizes", type=int, nargs="+", default=[1, 16], help="MiB")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--trickling", type=int, default=200)
    parser.add_argument("--trickle-s", type=float, default=6.0)
    args = parser.parse_args()
    env = without_settings()
    env["ADMISSION_READ_TIMEOUT"] = "2"
    argv = [*SERVERS[args.server], "--host", "127.0.0.1", "--port", PORT]
    # Any answer on /healthz will do: plain uvicorn's demo has none of its own (404).
    with served(
        argv, env, ready=lambda status: True, start_timeout_s=20, stop_timeout_s=30, cwd=REPO
    ) as server:
        asyncio.run(measure(args, server.process.pid, server.port))


if __name__ == "__main__":
    main()

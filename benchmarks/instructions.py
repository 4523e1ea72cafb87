"""benchmarks/instructions.py: what a request costs each server, in instructions, not seconds.

The same servers as benchmarks/e2e.py (bare uvicorn + the demo, `admission serve`, with rate
limiting, and with --calibrate the two calibration middlewares), plus `admission+all` (every
feature on: rate, window 1000, read 5 s, write 3 s, idle 60 s, request 30 s) and a FastAPI
JSON endpoint (benchmarks/fastapi_json.py: a pydantic model in and out), bare and under
admission with rate limiting, and `rate+refused`: rate limiting with ADMISSION_HEADERS=refused
(no RateLimit fields on admitted responses). Each runs under valgrind's callgrind, which counts the
instructions the server process executes. Each server is started twice and sent a fixed
number of requests (`GET /`, or the endpoint's `POST /items`) on keep-alive connections (N1,
then N2);
the difference of the two totals, divided by N2 - N1, is the cost of one request with
start-up and shutdown taken out. Instruction counts do not move with what else the machine is
doing, so unlike the throughput of benchmarks/e2e.py they compare across runs and machines;
bare / variant is the throughput ratio of a server whose core is saturated and whose every
instruction costs the same (in practice admission's run a little dearer: see
docs/performance.md).

Needs valgrind (`apt install valgrind`). Takes a few minutes: everything runs about 50 times
slower under callgrind.

Run: python benchmarks/instructions.py [--requests 1000,5000] [--connections 8] [--calibrate]
       [--only NAME,NAME]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
from pathlib import Path

from e2e import HOST, RATE, server, server_commands
from fastapi_json import BODY

from admission.bench.process import without_settings

HERE = Path(__file__).resolve().parent
GET = b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n"
POST = (
    b"POST /items HTTP/1.1\r\nHost: bench\r\nContent-Type: application/json\r\n"
    b"Content-Length: " + str(len(BODY)).encode() + b"\r\n\r\n" + BODY
)
# Every feature on, as in benchmarks/overhead.py's admission-all (less the trusted proxy: no
# proxy header reaches these servers).
ALL_FEATURES = {
    "ADMISSION_RATE": RATE,
    "ADMISSION_WINDOW": "1000",
    "ADMISSION_READ_TIMEOUT": "5",
    "ADMISSION_WRITE_TIMEOUT": "3",
    "ADMISSION_IDLE_TIMEOUT": "60",
    "ADMISSION_REQUEST_TIMEOUT": "30",
}
Commands = dict[str, tuple[list[str], dict[str, str]]]


def all_commands(*, calibrate: bool) -> tuple[Commands, dict[str, bytes]]:
    """all_commands is every server measured here and the request each one is sent."""
    commands = server_commands(calibrate=calibrate)
    serve, env = commands["admission"]
    # Rate limiting without the RateLimit fields on admitted responses: what they cost.
    commands["rate+refused"] = (
        serve,
        env | {"ADMISSION_RATE": RATE, "ADMISSION_HEADERS": "refused"},
    )
    commands["admission+all"] = (serve, env | ALL_FEATURES)
    python = sys.executable
    listen = ["--host", HOST, "--port", "{port}"]
    env = without_settings()
    app_env = env | {
        "PYTHONPATH": os.pathsep.join(filter(None, (str(HERE), env.get("PYTHONPATH"))))
    }
    commands["fastapi"] = (
        [python, "-m", "uvicorn", "fastapi_json:app", *listen, "--no-access-log"],
        app_env,
    )
    commands["fastapi+rate"] = (
        [python, "-m", "admission", "serve", "fastapi_json:app", *listen, "--no-access-log"],
        app_env | {"ADMISSION_RATE": RATE},
    )
    requests = {name: POST if name.startswith("fastapi") else GET for name in commands}
    return commands, requests


# Each variant's baseline, for the ratio.
BASELINE = {"fastapi+rate": "fastapi"}


async def _client(port: int, requests: int, request: bytes) -> None:
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        for _ in range(requests):
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise SystemExit(f"unexpected response: {head[:80]!r}")
            length = 0
            for line in head.split(b"\r\n"):
                name, _, value = line.partition(b":")
                if name.lower() == b"content-length":
                    length = int(value)
            await reader.readexactly(length)
    finally:
        writer.close()


async def send_requests(port: int, requests: int, connections: int, request: bytes) -> None:
    """send_requests sends exactly `requests` copies of `request`, spread over `connections`."""
    shares = [requests // connections + (i < requests % connections) for i in range(connections)]
    await asyncio.gather(*(_client(port, share, request) for share in shares))


def count(
    name: str,
    argv: list[str],
    env: dict[str, str],
    requests: int,
    connections: int,
    request: bytes = GET,
) -> int:
    """count runs one server under callgrind, sends it `requests` requests, stops it and
    returns the instructions it executed in all."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "callgrind.out"
        grind = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *argv]
        # Pinned hash seed: string hashing then follows the same path in every run. Not 0: that
        # turns hash randomisation off, and the memory store then digests keys with a keyed
        # BLAKE2b instead of the keyed hash a deployment uses (admission/stores/memory.py).
        with server(
            name, grind, env | {"PYTHONHASHSEED": "1"}, start_timeout_s=300, stop_timeout_s=300
        ) as srv:
            asyncio.run(send_requests(srv.port, requests, connections, request))
        for line in out.read_text().splitlines():
            if line.startswith("summary:") or line.startswith("totals:"):
                return int(line.split()[1])
    raise SystemExit(f"{name}: callgrind wrote no total")


def main(argv: list[str] | None = None) -> int:
    """main counts every server's instructions per request and prints them side by side."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--requests", default="1000,5000", help="the two request counts N1,N2 (default 1000,5000)"
    )
    parser.add_argument("--connections", type=int, default=8, help="keep-alive connections")
    parser.add_argument("--calibrate", action="store_true", help="also the calibration servers")
    parser.add_argument("--only", default="", help="comma-separated servers to run (and bare)")
    args = parser.parse_args(argv)
    if shutil.which("valgrind") is None:
        raise SystemExit("valgrind is not installed (apt install valgrind)")
    low, high = (int(n) for n in args.requests.split(","))
    if not 0 < low < high:
        raise SystemExit("--requests needs two counts N1 < N2")

    commands, request = all_commands(calibrate=args.calibrate)
    if args.only:
        keep = {"bare", *args.only.split(",")}
        keep |= {BASELINE[name] for name in keep if name in BASELINE}
        commands = {name: value for name, value in commands.items() if name in keep}
    print(
        f"instructions per request: (total at {high} requests - total at {low}) / {high - low}, "
        f"{args.connections} keep-alive connections, each server under callgrind"
    )
    per: dict[str, float] = {}
    for name, (cmd, env) in commands.items():
        totals = [count(name, cmd, env, n, args.connections, request[name]) for n in (low, high)]
        per[name] = (totals[1] - totals[0]) / (high - low)
        print(f"  {name:<15}{per[name]:>10,.0f}", flush=True)
    print(f"\n{'server':<15}{'instr/request':>15}{'added':>10}{'base/server':>13}  base")
    for name, value in per.items():
        base = BASELINE.get(name, "bare")
        if name == "fastapi":
            print(f"{name:<15}{value:>15,.0f}")
            continue
        ref = per[base]
        print(f"{name:<15}{value:>15,.0f}{value - ref:>+10,.0f}{ref / value:>13.3f}  {base}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""benchmarks/redis_store.py: a Redis rate-limit decision, alone and 64 at once, against PING.

One process, one event loop (uvloop when installed), against a redis-server this script
starts on a free loopback port (so no one else's traffic moves its counters; `--url` to use
another). N concurrent callers each decide for a key of their own as fast as they can (a
closed loop), for N = 1 and N = 64. Variants, each with a client of its own:

  ping       redis-py `await client.ping()` on `redis.asyncio.Redis.from_url(url)`: the
             floor of a round trip through redis-py's command path
  limits     `limits`' fixed window on redis-py, its lightest configuration:
             `FixedWindowRateLimiter(RedisStorage("async+redis://...",
             implementation="redispy")).hit(RateLimitItemPerSecond(1_000_000), key)`,
             one `EVALSHA` of its INCRBY+EXPIRE script per hit
  admission  `open_store(Settings(rate="1000000/second", storage=url, ...)).decide(key)`:
             what the middleware decides with for ADMISSION_STORAGE=redis://..., with the
             defaults ADMISSION_STORAGE_TIMEOUT=0.05 and ADMISSION_ON_STORAGE_ERROR=local
             (a GuardedStore around a RedisStore)
  ping-conn  (one caller only) PING packed by hand on one held redis-py connection, read by
             redis-py's parser: what a round trip costs without redis-py's command path,
             which is how admission's lone caller travels; for reference

A rate of 1,000,000/second with as large a bucket, so every decision admits and writes its
key. Rounds interleave the variants (the order rotates each round) and the figures are
medians over the rounds. Reported per variant: decisions per second, µs per decision
(1/rate), median and p99 latency; at 1 caller the ratio to `ping`, at 64 the ratio to the
next best. The server time of admission's script comes from Redis itself, read around
admission's runs only: `INFO commandstats` (`usec_per_call` of EVALSHA: mean, everything
included) and `INFO latencystats` (p50), after `CONFIG RESETSTAT` on the script's own server.
Any decision the guard answered without Redis (a storage error or timeout) is counted and
shown: such a run is not a Redis figure.

Then, where a lone decision's client time goes: one caller, each layer timed alone in the
same rounds, as thread CPU time per call (what the client itself spends: encoding, the event
loop, system calls, parsing; not the wait for Redis) and wall time per call. From the bottom:
PING and the script's EVALSHA pre-packed on one held connection, then `ConnectionLine.run`
(packing, the NOSCRIPT and reconnect handling), `bounded` (the storage timeout; beside it the
same call under `asyncio.timeout`), `RedisStore.decide` (the key, the lone path, the decision
from the reply) and `GuardedStore.decide`; and for comparison redis-py's own `ping()` and
`evalsha()` through its command path.

Run: python benchmarks/redis_store.py [--rounds 7] [--duration 1] [--layer-calls 2000]
                                     [--url redis://...]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis
from limits import RateLimitItemPerSecond
from limits.aio.storage import RedisStorage
from limits.aio.strategies import FixedWindowRateLimiter

from admission.bench.recommend import percentile
from admission.config.settings import Settings
from admission.stores import open_store
from admission.stores.guard import GuardedStore
from admission.stores.redis import GCRA, RedisStore
from admission.stores.redis_wire import bounded, pack_script_call

RATE = 1_000_000

Decide = Callable[[str], Awaitable[Any]]


@dataclass
class Sample:
    """Sample is one timed run of one variant."""

    decisions: int = 0
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    server: dict[str, float] = field(default_factory=dict)

    @property
    def rate(self) -> float:
        """rate is decisions per second."""
        return self.decisions / self.elapsed_s


async def run(decide: Decide, callers: int, duration_s: float) -> Sample:
    """run lets `callers` coroutines decide for their own keys for `duration_s` seconds."""
    sample = Sample()
    perf = time.perf_counter
    deadline = perf() + duration_s

    async def caller(i: int) -> None:
        key = f"client-{i}"
        latencies = sample.latencies_s
        while perf() < deadline:
            started = perf()
            await decide(key)
            latencies.append(perf() - started)
            sample.decisions += 1

    started = perf()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    sample.elapsed_s = perf() - started
    return sample


class PingConn:
    """PingConn is a PING on one connection held out of a redis-py pool, packed by hand."""

    def __init__(self, client: Any) -> None:
        self.conn = client.connection_pool.make_connection()
        self.conn.socket_timeout = None

    async def decide(self, key: str) -> Any:
        """decide sends PING and reads the reply (the key is ignored)."""
        conn = self.conn
        if not conn.is_connected:
            await conn.connect()
        await conn.send_packed_command(b"*1\r\n$4\r\nPING\r\n", check_health=False)
        return await conn.read_response()


@contextmanager
def own_redis() -> Iterator[str]:
    """own_redis starts a throwaway redis-server on a free loopback port, yields its URL."""
    binary = shutil.which("redis-server")
    if binary is None:
        sys.exit("redis-server is not installed; pass --url")
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with tempfile.TemporaryDirectory(prefix="admission-bench-redis-") as tmp:
        argv = [binary, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
        argv += ["--appendonly", "no", "--dir", tmp]
        process = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 10
            while True:
                try:
                    with socket.create_connection(("127.0.0.1", port), timeout=0.5) as conn:
                        conn.sendall(b"PING\r\n")
                        if conn.recv(16).startswith(b"+PONG"):
                            break
                except OSError:
                    pass
                if time.monotonic() > deadline or process.poll() is not None:
                    sys.exit("redis-server did not start")
                time.sleep(0.02)
            yield f"redis://127.0.0.1:{port}/0"
        finally:
            process.terminate()
            process.wait(timeout=10)


async def server_time(admin: Any, reset: bool) -> dict[str, float]:
    """server_time is EVALSHA's calls and total µs so far, and its p50 when `reset` was used."""
    stats = (await admin.info("commandstats")).get("cmdstat_evalsha", {})
    out = {"calls": float(stats.get("calls", 0)), "usec": float(stats.get("usec", 0))}
    if reset:
        lat = (await admin.info("latencystats")).get("latency_percentiles_usec_evalsha", {})
        out["p50"] = float(lat.get("p50", 0.0))
    return out


async def measure(url: str, own: bool, duration_s: float, rounds: int, layer_calls: int) -> None:
    """measure runs every variant at 1 and 64 callers and prints the tables."""
    prefix = f"admission-bench-{os.getpid()}-{time.time_ns()}"
    admin = aioredis.Redis.from_url(url, single_connection_client=True)
    ping_client = aioredis.Redis.from_url(url)
    limiter = FixedWindowRateLimiter(
        RedisStorage("async+" + url, implementation="redispy", key_prefix=prefix + "-limits")
    )
    item = RateLimitItemPerSecond(RATE)
    guarded = open_store(Settings(rate=f"{RATE}/second", storage=url, key_prefix=prefix))
    assert isinstance(guarded, GuardedStore) and isinstance(guarded.store, RedisStore)
    redis_store = guarded.store
    ping_conn = PingConn(ping_client)

    def limits_hit(key: str) -> Awaitable[bool]:
        return limiter.hit(item, key)

    variants: dict[str, Decide] = {
        "ping": lambda key: ping_client.ping(),
        "limits": limits_hit,
        "admission": guarded.decide,
        "ping-conn": ping_conn.decide,
    }
    try:
        for decide in variants.values():  # warm up: connections, script caches
            await run(decide, 1, 0.3)
        for decide in list(variants.values())[:3]:
            await run(decide, 64, 0.3)
        info = await admin.info("server")
        print(
            f"Redis {info['redis_version']} at {url}"
            f"{' (started by this script)' if own else ''}; event loop: {loop_name()}"
        )
        print(
            f"{rounds} rounds of {duration_s:g} s per variant and concurrency, variants "
            "interleaved; medians of the rounds\n"
        )
        for callers in (1, 64):
            names = list(variants) if callers == 1 else ["ping", "limits", "admission"]
            samples: dict[str, list[Sample]] = {name: [] for name in names}
            errors_before = guarded.errors
            for r in range(rounds):
                order = names[r % len(names) :] + names[: r % len(names)]
                for name in order:
                    if name == "admission" and own:
                        await admin.config_resetstat()
                    before = await server_time(admin, False)
                    sample = await run(variants[name], callers, duration_s)
                    after = await server_time(admin, own and name == "admission")
                    sample.server = {k: after[k] - before.get(k, 0.0) for k in after}
                    if "p50" in after:
                        sample.server["p50"] = after["p50"]
                    samples[name].append(sample)
            report(callers, samples, guarded.errors - errors_before)
        await layers(ping_client, redis_store, guarded, ping_conn, rounds, layer_calls)
        if guarded.errors:
            print(f"WARNING: {guarded.errors} storage errors in all: the guard answered some")
    finally:
        await delete_prefix(admin, prefix)
        await ping_conn.conn.disconnect()
        await guarded.close()
        await ping_client.aclose()
        await admin.aclose()


def _percentile(sorted_values: list[float], q: float) -> float:
    """_percentile is `percentile` of latencies a run must have measured."""
    value = percentile(sorted_values, q)
    if value is None:
        raise SystemExit("no latencies were measured")
    return value


def report(callers: int, samples: dict[str, list[Sample]], errors: int) -> None:
    """report prints one table for one concurrency."""
    rates = {name: statistics.median(s.rate for s in ss) for name, ss in samples.items()}
    lats = {name: sorted(x for s in ss for x in s.latencies_s) for name, ss in samples.items()}
    p50s = {name: _percentile(lat, 50) for name, lat in lats.items()}
    print(
        f"{callers} caller{'s' if callers > 1 else ''}:\n"
        f"  {'variant':<11}{'decisions/s':>12}{'µs/decision':>13}{'p50 µs':>9}{'p99 µs':>9}"
        f"{'vs ping':>9}"
    )
    for name in samples:
        p99 = _percentile(lats[name], 99)
        print(
            f"  {name:<11}{rates[name]:>12.0f}{1e6 / rates[name]:>13.1f}"
            f"{p50s[name] * 1e6:>9.0f}{p99 * 1e6:>9.0f}"
            f"{rates['ping'] / rates[name]:>8.2f}x"
        )
    ours = samples["admission"]
    calls = sum(s.server["calls"] for s in ours)
    decisions = sum(s.decisions for s in ours)
    per_call = [s.server["usec"] / s.server["calls"] for s in ours if s.server["calls"]]
    print(
        f"  admission: {calls / decisions:.3f} EVALSHA per decision; server time of its script "
        f"(INFO commandstats usec_per_call, median of rounds): {statistics.median(per_call):.2f} "
        f"µs per call, {statistics.median(s.server['usec'] / s.decisions for s in ours):.2f} µs "
        "per decision"
        + (
            f"; p50 per call (INFO latencystats): "
            f"{statistics.median(s.server['p50'] for s in ours):.2f} µs"
            if "p50" in ours[0].server
            else ""
        )
    )
    others = {n: r for n, r in rates.items() if n not in ("admission", "ping-conn")}
    if callers == 1:
        print(
            f"  admission takes {rates['ping'] / rates['admission']:.2f}x ping's time per "
            f"decision (p50: {p50s['admission'] / p50s['ping']:.2f}x) and "
            f"{rates['limits'] / rates['admission']:.2f}x limits' "
            f"(p50: {p50s['admission'] / p50s['limits']:.2f}x)"
        )
    else:
        best = max(others, key=lambda n: others[n])
        print(
            f"  admission makes {rates['admission'] / others[best]:.2f}x the decisions of the "
            f"next best ({best})"
        )
    if errors:
        print(
            f"  WARNING: {errors} storage errors: the guard answered decisions without Redis "
            "for up to a second after each, so these figures are not Redis's"
        )
    print()


async def per_call(call: Callable[[], Awaitable[Any]], n: int) -> tuple[float, float]:
    """per_call is the thread CPU time and the wall time of one of `n` calls, in µs."""
    cpu, wall = time.thread_time, time.perf_counter
    cpu0, wall0 = cpu(), wall()
    for _ in range(n):
        await call()
    return (cpu() - cpu0) / n * 1e6, (wall() - wall0) / n * 1e6


async def layers(
    ping_client: Any,
    store: RedisStore,
    guarded: GuardedStore,
    ping_conn: PingConn,
    rounds: int,
    n: int,
) -> None:
    """layers prints what each layer of a lone decision costs the client."""
    key = store.redis_key("layers")
    args = [*store._args, b"1"]
    packed = pack_script_call(GCRA, [key], args)
    line = store._lone_line
    await store.decide("layers")  # connected, script cached
    conn = line._conn  # type: ignore[attr-defined]

    async def held_evalsha() -> Any:
        await conn.send_packed_command(packed, check_health=False)
        return await conn.read_response()

    async def under_asyncio_timeout() -> Any:
        async with asyncio.timeout(store.timeout_s):  # type: ignore[attr-defined,unused-ignore]
            return await line.run(GCRA, [key], args)

    calls: dict[str, Callable[[], Awaitable[Any]]] = {
        "PING, held connection": lambda: ping_conn.decide(""),
        "EVALSHA, held connection": held_evalsha,
        "+ ConnectionLine.run": lambda: line.run(GCRA, [key], args),
        "+ bounded (timeout)": lambda: bounded(line.run(GCRA, [key], args), store.timeout_s),
        "  (asyncio.timeout instead)": under_asyncio_timeout,
        "+ RedisStore.decide": lambda: store.decide("layers"),
        "+ GuardedStore.decide": lambda: guarded.decide("layers"),
        "redis-py client.ping()": ping_client.ping,
        "redis-py client.evalsha()": lambda: ping_client.evalsha(GCRA.sha, 1, key, *args),
    }
    if sys.version_info < (3, 11):
        del calls["  (asyncio.timeout instead)"]
    for call in calls.values():
        await per_call(call, max(n // 10, 1))
    cpu: dict[str, list[float]] = {name: [] for name in calls}
    wall: dict[str, list[float]] = {name: [] for name in calls}
    for r in range(rounds):
        names = list(calls)
        for name in names[r % len(names) :] + names[: r % len(names)]:
            c, w = await per_call(calls[name], n)
            cpu[name].append(c)
            wall[name].append(w)
    print(f"One caller, layer by layer ({rounds} rounds of {n} calls, medians):")
    print(f"  {'layer':<30}{'client CPU µs':>14}{'wall µs':>9}")
    for name in calls:
        print(
            f"  {name:<30}{statistics.median(cpu[name]):>14.1f}"
            f"{statistics.median(wall[name]):>9.1f}"
        )
    print()


async def delete_prefix(client: Any, prefix: str) -> None:
    """delete_prefix deletes every key under `prefix` (both admission's and limits')."""
    async for key in client.scan_iter(match=f"{prefix}*", count=1000):
        await client.delete(key)


def loop_name() -> str:
    """loop_name is the running event loop's module."""
    return type(asyncio.get_running_loop()).__module__.split(".")[0]


def main(argv: list[str] | None = None) -> int:
    """main parses the options and runs the measurement on uvloop when installed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="an existing Redis instead of starting one")
    parser.add_argument("--duration", type=float, default=1.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--layer-calls", type=int, default=2000, help="calls per layer and round")
    args = parser.parse_args(argv)

    def go(url: str, own: bool) -> None:
        coro = measure(url, own, args.duration, args.rounds, args.layer_calls)
        if importlib.util.find_spec("uvloop"):
            import uvloop

            uvloop.run(coro)
        else:
            asyncio.run(coro)

    if args.url:
        go(args.url, False)
    else:
        with own_redis() as url:
            go(url, True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""benchmarks/redis_store.py: Redis store decisions per second, batched against naive.

Against a real Redis (default redis://127.0.0.1:6379/0), one process, one redis-py asyncio
client shared by every variant, N concurrent callers each deciding for its own client key as
fast as it can (a closed loop), for 1 and for 64 concurrent callers:

  batched        RedisStore: decisions that arrive while a round trip is under way are sent
                 together in the next one (one EVALSHA of the GCRA script for many keys)
  naive-serial   RedisStore(batching=False): one EVALSHA per decision, one at a time
  naive-direct   each caller awaits its own EVALSHA of the same script on the shared client
                 (its connection pool opens as many connections as callers): one round trip
                 per decision, concurrent, no batching

Reported per variant: decisions per second (median of the rounds, variants interleaved
round by round), mean and p99 latency of one decision, and EVALSHA commands per decision as
counted by Redis itself (INFO commandstats). A PING round trip is measured alongside, so
"no more than one round trip" at 1 caller can be read off directly. Keys live under a
unique prefix and are deleted at the end.

Run: python benchmarks/redis_store.py [--url redis://127.0.0.1:6379/0] [--duration 2]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import math
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import redis.asyncio as aioredis

from admission.bucket import Bucket, Decision
from admission.stores.redis import SCRIPT, SCRIPT_SHA, RedisStore

# One million tokens per second and as many in the bucket: every decision is an admission,
# so all variants do the same work (a SET per decision) and none is refused.
BUCKET = Bucket(interval_s=1e-6, capacity=1_000_000)
TIMEOUT_S = 2.0

Decide = Callable[[str], Awaitable[Decision]]


class NaiveDirect:
    """NaiveDirect is the obvious implementation: each decision awaits its own EVALSHA of
    admission's GCRA script, with nothing shared between concurrent decisions."""

    def __init__(self, client: Any, prefix: str) -> None:
        self.client = client
        self.prefix = prefix
        self.args = (repr(BUCKET.interval_s * 1e6), str(BUCKET.capacity), "1")

    async def decide(self, key: str) -> Decision:
        """decide runs the script for one key and reads its four numbers."""
        rkey = f"{self.prefix}:{{{key}}}"
        reply = await self.client.evalsha(SCRIPT_SHA, 1, rkey, *self.args)
        allowed, remaining, retry_us, reset_us = (int(v) for v in reply)
        return Decision(
            bool(allowed), remaining, math.inf if retry_us < 0 else retry_us / 1e6, reset_us / 1e6
        )


@dataclass
class Sample:
    """Sample is one timed run of one variant."""

    decisions: int = 0
    refused: int = 0
    errors: int = 0
    latencies_s: list[float] = field(default_factory=list)
    elapsed_s: float = 0.0
    evalsha: int = 0

    @property
    def rate(self) -> float:
        """rate is decisions per second."""
        return self.decisions / self.elapsed_s


async def evalsha_calls(client: Any) -> int:
    """evalsha_calls is Redis's own count of EVALSHA (plus EVAL) commands so far."""
    stats = await client.info("commandstats")
    return sum(
        int(stats.get(name, {}).get("calls", 0)) for name in ("cmdstat_evalsha", "cmdstat_eval")
    )


async def run(client: Any, decide: Decide, callers: int, duration_s: float) -> Sample:
    """run lets `callers` coroutines decide for their own keys for `duration_s` seconds."""
    sample = Sample()
    perf = time.perf_counter
    deadline = perf() + duration_s

    async def caller(i: int) -> None:
        key = f"client-{i}"
        latencies = sample.latencies_s
        while perf() < deadline:
            started = perf()
            try:
                decision = await decide(key)
            except Exception:
                sample.errors += 1
                continue
            latencies.append(perf() - started)
            sample.decisions += 1
            if not decision.allowed:
                sample.refused += 1

    before = await evalsha_calls(client)
    started = perf()
    await asyncio.gather(*(caller(i) for i in range(callers)))
    sample.elapsed_s = perf() - started
    sample.evalsha = await evalsha_calls(client) - before
    return sample


async def ping_rtt_s(client: Any, n: int = 2000) -> float:
    """ping_rtt_s is the mean time of one PING round trip on the same client."""
    started = time.perf_counter()
    for _ in range(n):
        await client.ping()
    return (time.perf_counter() - started) / n


async def delete_prefix(client: Any, prefix: str) -> int:
    """delete_prefix deletes every key under `prefix` and returns how many there were."""
    deleted = 0
    async for key in client.scan_iter(match=f"{prefix}:*", count=1000):
        deleted += await client.delete(key)
    return deleted


async def measure(url: str, duration_s: float, rounds: int, concurrency: list[int]) -> None:
    """measure runs every variant at every concurrency and prints the table."""
    prefix = f"admission-bench-{os.getpid()}-{time.time_ns()}"
    client = aioredis.Redis.from_url(url)
    try:
        await client.script_load(SCRIPT)
        variants: dict[str, Decide] = {
            "batched": RedisStore(client, BUCKET, timeout_s=TIMEOUT_S, prefix=prefix).decide,
            "naive-serial": RedisStore(
                client, BUCKET, timeout_s=TIMEOUT_S, prefix=prefix, batching=False
            ).decide,
            "naive-direct": NaiveDirect(client, prefix).decide,
        }
        for decide in variants.values():  # warm up: connections, script cache
            await run(client, decide, 64, 0.3)
        rtt = statistics.median([await ping_rtt_s(client) for _ in range(3)])
        print(f"Redis {url}; PING round trip {rtt * 1e6:.0f} µs (mean, same client)")
        print(
            f"{rounds} rounds of {duration_s:g} s per variant and concurrency, interleaved; "
            "medians of the rounds\n"
        )
        header = (
            f"{'callers':>7}  {'variant':<13}{'decisions/s':>12}{'mean µs':>9}{'p99 µs':>9}"
            f"{'EVALSHA/decision':>18}{'vs naive-serial':>17}{'vs naive-direct':>17}"
        )
        print(header)
        for callers in concurrency:
            samples: dict[str, list[Sample]] = {name: [] for name in variants}
            for r in range(rounds):
                order = list(variants) if r % 2 == 0 else list(reversed(variants))
                for name in order:
                    samples[name].append(await run(client, variants[name], callers, duration_s))
            rates = {n: statistics.median(s.rate for s in ss) for n, ss in samples.items()}
            for name, ss in samples.items():
                lat = sorted(x for s in ss for x in s.latencies_s)
                total = sum(s.decisions for s in ss)
                bad = sum(s.errors + s.refused for s in ss)
                per = sum(s.evalsha for s in ss) / total
                print(
                    f"{callers:>7}  {name:<13}{rates[name]:>12.0f}"
                    f"{statistics.fmean(lat) * 1e6:>9.0f}{lat[int(0.99 * len(lat))] * 1e6:>9.0f}"
                    f"{per:>18.3f}{rates[name] / rates['naive-serial']:>16.2f}x"
                    f"{rates[name] / rates['naive-direct']:>16.2f}x"
                    + (f"  ({bad} refused or failed)" if bad else "")
                )
        left = await delete_prefix(client, prefix)
        # Each key expires when its bucket is full again, here a millisecond after its last use.
        print(f"\n{left} keys were left under {prefix}:* and were deleted")
    finally:
        await delete_prefix(client, prefix)
        await client.aclose()


def main(argv: list[str] | None = None) -> int:
    """main parses the options and runs the measurement on uvloop when installed."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", default="redis://127.0.0.1:6379/0")
    parser.add_argument("--duration", type=float, default=2.0, help="seconds per run")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--concurrency", default="1,64", help="comma-separated caller counts")
    args = parser.parse_args(argv)
    concurrency = [int(c) for c in args.concurrency.split(",")]
    coro = measure(args.url, args.duration, args.rounds, concurrency)
    if importlib.util.find_spec("uvloop"):
        import uvloop

        uvloop.run(coro)
    else:
        asyncio.run(coro)
    return 0


if __name__ == "__main__":
    sys.exit(main())

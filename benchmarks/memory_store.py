"""benchmarks/memory_store.py: resident memory of the MemoryStore with one million active keys.

Each measurement runs in a fresh Python process: it imports admission, creates an empty
MemoryStore holding at most `--keys` keys, reads its resident set size (/proc/self/statm),
then makes one decision for each of that many distinct client keys, all still active (a
fixed clock, so no bucket refills and nothing is forgotten), and reads the RSS again. The
difference is what the process really holds for the store: its arrays' pages as written,
and anything the allocator keeps (the RSS, not tracemalloc, which would miss both). Each key
is a new string, as a request's key is, either shaped like an address ("ip:10.x.y.z") or
padded to `--key-bytes` (200) like a long header value. A flood of as many fresh keys again
follows, each forgetting the least recently used one, and the RSS is read a third time:
what the store costs at its cap while it churns. Then every held key is used again, in a
scrambled order, and the RSS is read a fourth time, with the peak RSS (VmHWM) of the whole
run. The same process then times decisions at the cap (held keys, random order) and on an
almost empty store, for comparison. Repeated in several processes; medians.

Run: python benchmarks/memory_store.py [--keys 1000000] [--runs 3] [--key-bytes 200]
"""

from __future__ import annotations

import argparse
import json
import os
import random
import statistics
import subprocess
import sys
import time

from admission.bucket import Bucket
from admission.stores.memory import MemoryStore

# A thousand tokens a second, a million in the bucket: a key stays active (its bucket not full
# again) for a while after each decision, and no decision measured here is ever refused.
BUCKET = Bucket(interval_s=0.001, capacity=1_000_000)
NOW = 1_000.0


def rss_bytes() -> int:
    """rss_bytes is this process's resident set size now."""
    with open("/proc/self/statm") as statm:
        resident_pages = int(statm.read().split()[1])
    return resident_pages * os.sysconf("SC_PAGE_SIZE")


def peak_rss_bytes() -> int:
    """peak_rss_bytes is this process's highest resident set size so far (VmHWM)."""
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmHWM in /proc/self/status")


def key(i: int) -> str:
    """key is the i-th client key, an address in 10.0.0.0/8."""
    return f"ip:10.{(i >> 16) & 255}.{(i >> 8) & 255}.{i & 255}"


def long_key(i: int, length: int) -> str:
    """long_key is the i-th client key padded to `length` characters, like a long header."""
    return f"h:{i:010d}".ljust(length, "x")


def time_decisions(store: MemoryStore, keys: list[str], repeats: int = 5) -> float:
    """time_decisions is the best mean seconds per decision over `repeats` passes on `keys`."""
    best = float("inf")
    decide = store.decide_at
    for _ in range(repeats):
        started = time.perf_counter()
        for k in keys:
            decide(k, NOW)
        best = min(best, (time.perf_counter() - started) / len(keys))
    return best


def child(n: int, key_bytes: int) -> dict[str, float]:
    """child is one measurement in this (fresh) process; `key_bytes` 0 means address keys."""
    make = key if key_bytes == 0 else (lambda i: long_key(i, key_bytes))
    store = MemoryStore(BUCKET, max_keys=max(n, 1), clock=lambda: NOW)
    before = rss_bytes()
    for i in range(n):
        store.decide_at(make(i), NOW)
    after = rss_bytes()
    assert len(store) == n, f"the store holds {len(store)} keys, not {n}"
    for i in range(n, 2 * n):
        store.decide_at(make(i), NOW)
    flooded = rss_bytes()
    assert len(store) == n, f"the store holds {len(store)} keys, not {n}"
    # Every held key once more, in a scrambled order (a stride coprime with n): all hits.
    stride = 7_919 if n % 7_919 else 7_907
    for i in range(n):
        assert store.decide_at(make(n + (i * stride) % n), NOW).allowed
    reused = rss_bytes()
    peak = peak_rss_bytes()
    assert len(store) == n, f"the store holds {len(store)} keys, not {n}"
    rng = random.Random(1)
    sample = [make(n + rng.randrange(n)) for _ in range(200_000)]
    full_s = time_decisions(store, sample)
    small = MemoryStore(BUCKET, clock=lambda: NOW)
    few = [make(i) for i in range(100)] * 2000
    small_s = time_decisions(small, few)
    return {
        "keys": n,
        "rss_delta_bytes": after - before,
        "rss_flooded_bytes": flooded - before,
        "rss_reused_bytes": reused - before,
        "rss_peak_bytes": peak - before,
        "decide_full_s": full_s,
        "decide_small_s": small_s,
    }


def main(argv: list[str] | None = None) -> int:
    """main runs the measurement in fresh processes and prints the medians."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--keys", type=int, default=1_000_000)
    parser.add_argument("--runs", type=int, default=3, help="fresh processes")
    parser.add_argument("--key-bytes", type=int, default=200, help="key length; 0 for address keys")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.keys, args.key_bytes)))
        return 0
    results = []
    for _ in range(args.runs):
        out = subprocess.run(
            [
                sys.executable,
                __file__,
                "--child",
                "--keys",
                str(args.keys),
                "--key-bytes",
                str(args.key_bytes),
            ],
            check=True,
            capture_output=True,
            text=True,
        )
        results.append(json.loads(out.stdout))
    delta = statistics.median(r["rss_delta_bytes"] for r in results)
    per_million = delta / args.keys * 1_000_000
    full = statistics.median(r["decide_full_s"] for r in results)
    small = statistics.median(r["decide_small_s"] for r in results)
    shape = f"{args.key_bytes}-byte keys" if args.key_bytes else "address keys (ip:10.x.y.z)"
    print(f"python {sys.version.split()[0]}, {args.runs} fresh processes, {args.keys} {shape}")
    print(f"RSS delta per run: {[round(r['rss_delta_bytes'] / 2**20, 1) for r in results]} MiB")
    print(
        f"resident memory: {delta / 2**20:.1f} MiB for {args.keys} keys "
        f"= {per_million / 2**20:.1f} MiB per million keys ({delta / args.keys:.0f} bytes/key)"
    )
    flooded = statistics.median(r["rss_flooded_bytes"] for r in results)
    print(
        f"after a flood of {args.keys} fresh keys at the cap: {flooded / 2**20:.1f} MiB "
        f"({flooded / args.keys:.0f} bytes/key)"
    )
    reused = statistics.median(r["rss_reused_bytes"] for r in results)
    peak = statistics.median(r["rss_peak_bytes"] for r in results)
    print(
        f"after every held key is used again: {reused / 2**20:.1f} MiB; "
        f"peak over the run: {peak / 2**20:.1f} MiB above the empty store's process"
    )
    print(
        f"time per decision: {full * 1e6:.2f} µs with {args.keys} keys held, "
        f"{small * 1e6:.2f} µs with 100 keys held (best of 5 passes, median of runs)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

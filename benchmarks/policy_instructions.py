"""benchmarks/policy_instructions.py: what route policies cost per request, in instructions.

The in-process variants of benchmarks/overhead.py (the middleware driven through ASGI with a
fake receive/send, no network), each run under valgrind's callgrind twice, N1 then N2 requests
after the same warm-up; the difference of the two totals over N2 - N1 is one request's cost.
Unlike the timings of overhead.py, the counts don't move with what else the machine is doing.

Variants: bare (no middleware), norate (the middleware, no rate), admission (ADMISSION_RATE),
admission-1000c (the same, requests from 1,000 client addresses in turn, as in overhead.py),
policy (one route policy of one limit), 3x2 (3 policies of 2 limits each matching the
request), 1000 (1,000 policies on distinct literal paths, one matching).

Needs valgrind. Run: python benchmarks/policy_instructions.py [--requests 1000,6000]
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from pathlib import Path

from callgrind import parse, per_unit

HERE = Path(__file__).resolve().parent
VARIANTS = ("bare", "norate", "admission", "admission-1000c", "policy", "3x2", "1000")


def build(name: str) -> object:
    """build is the app of variant `name`."""
    sys.path.insert(0, str(HERE))
    import overhead as o

    from admission import AdmissionMiddleware, Settings

    settings = {
        "norate": Settings(),
        "admission": Settings(rate=o.RATE),
        "admission-1000c": Settings(rate=o.RATE),
        "policy": o.policy_settings(o.RATE),
        "3x2": o.policy_settings(o.RATE, 3, 2),
        "1000": o.policy_settings(o.RATE, 1, 1, 999),
    }
    if name == "bare":
        return o.bare_app
    return AdmissionMiddleware(o.bare_app, settings=settings[name], handle_signals=False)


def run(name: str, requests: int) -> None:
    """run drives variant `name`: a warm-up, then `requests` requests (the child's work)."""
    sys.path.insert(0, str(HERE))
    import overhead as o

    scopes = [o.make_scope()]
    if name == "admission-1000c":
        scopes = [o.make_scope(f"10.0.{i >> 8}.{i & 255}") for i in range(1000)]
    driver = o.Driver(name, build(name), scopes)

    async def go() -> None:
        await driver.run(200)
        await driver.run(requests)

    asyncio.run(go())
    if driver.not_ok:
        raise SystemExit(f"{name}: {driver.not_ok} responses were not 200")


def main(argv: list[str] | None = None) -> int:
    """main counts each variant's instructions per request and prints the added costs."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", default="1000,6000", help="N1,N2 (default 1000,6000)")
    parsed = parse(parser, argv, run, "requests")
    if parsed is None:
        return 0
    _, low, high = parsed
    per = {}
    for name in VARIANTS:
        per[name] = per_unit(__file__, name, low, high)
        print(f"  {name:<10}{per[name]:>10,.0f}", flush=True)
    added = {name: per[name] - per["bare"] for name in VARIANTS}
    print(f"\n{'variant':<10}{'instr/request':>15}{'added':>10}")
    for name in VARIANTS:
        print(f"{name:<10}{per[name]:>15,.0f}{added[name]:>+10,.0f}")
    print(
        f"\n1,000 clients add {added['admission-1000c'] / added['admission']:.3f}x what one "
        "client adds (target <= 1.10)"
    )
    print(
        f"3 policies of 2 limits add {added['3x2'] / added['admission']:.2f}x what "
        f"ADMISSION_RATE adds, {added['3x2'] / added['policy']:.2f}x what one one-limit "
        f"policy adds; 1,000 literal policies add {per['1000'] - per['policy']:+,.0f} "
        "instructions to matching one"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

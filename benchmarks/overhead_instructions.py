"""benchmarks/overhead_instructions.py: benchmarks/overhead.py's comparison in instructions.

Each variant of benchmarks/overhead.py (the same apps, scopes and fake receive/send, built by
`overhead.variants()`) runs alone in a child process under valgrind's callgrind, twice: the
same warm-up, then N1 or N2 requests; the difference of the two totals over N2 - N1 is one
request's cost, start-up and warm-up taken out. Unlike overhead.py's timings, the counts
don't move with what else a shared machine is doing, so the ratios its targets ask for can be
read on a busy machine: admission-1000c's added cost against admission's (issue 18: at most
1.10), and slowapi's SlowAPIASGIMiddleware and fastapi-limiter against admission over 1,000
clients (at least 6x and 4x).

Variants by default: bare, admission, admission-1000c, admission-all, starlette,
starlette+admission-1000c, starlette+slowapi-asgi-1000c, fastapi, fastapi+admission-1000c,
fastapi+fastapi-limiter-1000c; `--only` picks others of overhead.py's (their baselines come
along). The loop is overhead.py's default (uvloop when installed). Two children run at once
(`--jobs`): counts don't depend on it.

Needs valgrind. Takes a few minutes. Run:
  python benchmarks/overhead_instructions.py [--requests 2000,6000] [--only NAME,NAME] [--jobs 2]
"""

from __future__ import annotations

import argparse
import asyncio
import importlib.util
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from callgrind import instructions, parse

HERE = Path(__file__).resolve().parent
VARIANTS = (
    "bare",
    "admission",
    "admission-1000c",
    "admission-all",
    "starlette",
    "starlette+admission-1000c",
    "starlette+slowapi-asgi-1000c",
    "fastapi",
    "fastapi+admission-1000c",
    "fastapi+fastapi-limiter-1000c",
)
# Requests before counting starts: every 1,000-client key is held by then, every cache warm.
WARM_UP = 2000


def _overhead():  # type: ignore[no-untyped-def]
    sys.path.insert(0, str(HERE))
    import overhead

    return overhead


def run(name: str, requests: int) -> None:
    """run drives variant `name`: the warm-up, then `requests` requests (the child's work)."""
    o = _overhead()
    driver = o.variants()[name]()
    if importlib.util.find_spec("uvloop") is not None:
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        loop.run_until_complete(driver.run(WARM_UP))
        loop.run_until_complete(driver.run(requests))
    finally:
        loop.close()
    if driver.not_ok:
        raise SystemExit(f"{name}: {driver.not_ok} responses were not 200")


def count(name: str, requests: int) -> int:
    """count runs one variant under callgrind and returns the instructions it executed."""
    return instructions(__file__, name, requests)


# (variant, baseline) pairs whose difference is the added cost, as in overhead.py.
def _baseline(name: str) -> str | None:
    if name in ("bare", "starlette", "fastapi"):
        return None
    if name.startswith("starlette+"):
        return "starlette"
    if name.startswith("fastapi+"):
        return "fastapi"
    if name == "admission-1000":
        return "admission-policy"
    return "bare"


def main(argv: list[str] | None = None) -> int:
    """main counts each variant's instructions per request and prints the added costs and the
    ratios overhead.py's targets are about."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", default="2000,6000", help="N1,N2 (default 2000,6000)")
    parser.add_argument("--only", default="", help="comma-separated variants (and baselines)")
    parser.add_argument("--jobs", type=int, default=2, help="children under callgrind at once")
    parsed = parse(parser, argv, run, "requests")
    if parsed is None:
        return 0
    args, low, high = parsed
    names = list(VARIANTS)
    if args.only:
        wanted = args.only.split(",")
        names = []
        for name in wanted:
            for needed in (_baseline(name), name):
                if needed is not None and needed not in names:
                    names.append(needed)
    runs = [(name, n) for name in names for n in (low, high)]
    with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        totals = dict(zip(runs, pool.map(lambda run: count(*run), runs), strict=True))
    per = {name: (totals[name, high] - totals[name, low]) / (high - low) for name in names}
    print(
        f"instructions per request: (total at {high} - total at {low}) / {high - low}, "
        f"after {WARM_UP} requests of warm-up, each variant alone under callgrind"
    )
    added: dict[str, float] = {}
    print(f"\n{'variant':<31}{'instr/request':>14}{'added':>10}  base")
    for name in names:
        base = _baseline(name)
        if base is None:
            print(f"{name:<31}{per[name]:>14,.0f}")
            continue
        added[name] = per[name] - per[base]
        print(f"{name:<31}{per[name]:>14,.0f}{added[name]:>+10,.0f}  {base}")
    print()
    if "admission-1000c" in added and "admission" in added:
        ratio = added["admission-1000c"] / added["admission"]
        print(
            f"1,000 clients add {ratio:.3f}x what one client adds "
            f"(target <= 1.10: {'met' if ratio <= 1.10 else 'MISSED'})"
        )
    for peer, ours, target in (
        ("starlette+slowapi-asgi-1000c", "starlette+admission-1000c", 6),
        ("fastapi+fastapi-limiter-1000c", "fastapi+admission-1000c", 4),
    ):
        if peer in added and ours in added:
            ratio = added[peer] / added[ours]
            print(
                f"1,000 clients: {peer} adds {ratio:.2f}x what {ours} adds "
                f"(target >= {target}: {'met' if ratio >= target else 'MISSED'})"
            )
    return 0


if __name__ == "__main__":
    sys.exit(main())

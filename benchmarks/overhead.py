"""benchmarks/overhead.py: the per-request cost of admission in process, against slowapi.

Every app is driven directly through ASGI with a minimal fake `receive`/`send`, many requests
in a loop on one event loop: no network and no HTTP client, so what is measured is the
middleware itself. All variants run in the same process, interleaved round by round, and the
added costs are paired per round (variant minus its baseline in the same round), so a noisy
neighbour slows both sides of a difference alike.

Variants:
  bare            a bare ASGI app answering 200 "ok"
  admission       the same app under AdmissionMiddleware, memory store, rate 1000000/second,
                  every request from the same client address (one key, like slowapi's run),
                  in 1,000 scope objects as 1,000 requests' would be
  admission-1000c the same, but requests come from 1,000 distinct client addresses in turn
                  (every request moves its key in the memory store's order of use)
  admission-keys  the same, but requests come from 65,536 distinct client addresses
  admission-all   every feature on: rate, window, the four timeouts, a trusted proxy whose
                  X-Forwarded-For is walked to find the client
  admission-policy     the same, but the one limit is a route policy (`GET /`, 1000000/second)
  admission-3x2   route policies: 3 policies matching `GET /`, each of 2 limits (6 buckets)
  admission-1000  1,000 route policies on distinct literal paths, one of them `GET /`
  starlette       a Starlette app with one route answering the same
  starlette+admission  that Starlette app under AdmissionMiddleware (as in the `admission` row)
  starlette+slowapi    that Starlette app with slowapi's SlowAPIMiddleware and
                  Limiter(key_func=get_remote_address, default_limits=["1000000/second"])
  starlette+slowapi-asgi  the same with slowapi's lighter, pure-ASGI SlowAPIASGIMiddleware
  *-1000c         starlette+admission, starlette+slowapi-asgi, fastapi+admission and
                  fastapi+fastapi-limiter with requests from 1,000 distinct clients in turn
  fastapi         a FastAPI app with one route, `GET /`, answering the same
  fastapi+admission-1000c      that app under AdmissionMiddleware (rate 1000000/second)
  fastapi+fastapi-limiter-1000c  that app with fastapi-limiter's RateLimiter dependency on the
                  route, its lightest set-up: pyrate-limiter's in-memory bucket (no Redis)

Targets (issue 10, added cost, shown for the median and the best-of-N): admission-all adds at
most 12 µs and admission (rate limiting alone) at most 6 µs; admission-1000c at most 1.10 times
what admission adds (issue 18: many clients cost no more than one); slowapi's added cost is reported
against admission's for both of its middlewares, and the honest ratio is the one against the
lighter.

Before timing, each limiter is checked to refuse the third request at "2/minute", so the
figures are those of middleware that really limits every request.

Run: python benchmarks/overhead.py [--requests N] [--rounds R] [--loop asyncio|uvloop]
     [--only VARIANT,...]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib.util
import platform
import random
import statistics
import sys
import time
from collections.abc import Callable
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from admission import AdmissionMiddleware, Settings
from admission.config.policies import Policy

Scope = dict[str, Any]
Message = dict[str, Any]

RATE = "1000000/second"
# Yield to the event loop every this many requests, as a server does between requests: timers
# the middleware arms and cancels are then cleaned up as they would be in production.
YIELD_EVERY = 32
BODY = b"ok\n"
START: Message = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/plain; charset=utf-8"), (b"content-length", b"3")],
}
END: Message = {"type": "http.response.body", "body": BODY}
REQUEST: Message = {"type": "http.request", "body": b"", "more_body": False}


async def bare_app(scope: Scope, receive: Any, send: Any) -> None:
    """bare_app is the cheapest complete HTTP response an ASGI app can give."""
    await send(START)
    await send(END)


async def index(request: Request) -> Response:
    """index is the one Starlette route: the same response as bare_app."""
    return PlainTextResponse("ok\n")


def starlette_app() -> Starlette:
    """starlette_app is a Starlette app with one route, `/`."""
    return Starlette(routes=[Route("/", index)])


def slowapi_app(limit: str, *, asgi: bool = False) -> Starlette:
    """slowapi_app is starlette_app with slowapi set up as its documentation says for a limit
    on every route: the limiter on app.state, its 429 handler, and SlowAPIMiddleware (with
    `asgi`, the pure-ASGI SlowAPIASGIMiddleware)."""
    from slowapi import Limiter, _rate_limit_exceeded_handler
    from slowapi.errors import RateLimitExceeded
    from slowapi.middleware import SlowAPIASGIMiddleware, SlowAPIMiddleware
    from slowapi.util import get_remote_address

    app = starlette_app()
    app.state.limiter = Limiter(key_func=get_remote_address, default_limits=[limit])
    app.add_exception_handler(RateLimitExceeded, _rate_limit_exceeded_handler)  # type: ignore[arg-type]
    app.add_middleware(SlowAPIASGIMiddleware if asgi else SlowAPIMiddleware)
    return app


def fastapi_app(limit: str | None = None) -> Any:
    """fastapi_app is a FastAPI app with one route, `GET /`, answering "ok"; with `limit`
    ("N/second" or "N/minute"), fastapi-limiter's RateLimiter guards it, as its README sets it
    up, on pyrate-limiter's in-memory bucket (the lightest: no Redis round trip)."""
    from fastapi import Depends, FastAPI

    app = FastAPI()
    dependencies = []
    if limit is not None:
        from fastapi_limiter.depends import RateLimiter
        from pyrate_limiter import Duration, Limiter, Rate

        amount, _, per = limit.partition("/")
        period = {"second": Duration.SECOND, "minute": Duration.MINUTE}[per]
        dependencies.append(Depends(RateLimiter(limiter=Limiter(Rate(int(amount), period)))))

    @app.get("/", dependencies=dependencies, response_class=PlainTextResponse)
    async def root() -> str:
        return "ok\n"

    return app


def all_features(rate: str) -> Settings:
    """all_features turns every layer on: rate, window, the four timeouts, trusted proxies."""
    return Settings(
        rate=rate,
        window=1000,
        read_timeout=5,
        write_timeout=3,
        idle_timeout=60,
        request_timeout=30,
        trusted_proxies="127.0.0.0/8",
    )


def policy_settings(rate: str, policies: int = 1, limits: int = 1, others: int = 0) -> Settings:
    """policy_settings is `policies` route policies matching `GET /`, each of `limits` limits
    (the first at `rate`, the others far looser), plus `others` policies on other paths."""
    more = ["100000000/hour", "1000000000/day"]
    match = [
        Policy(name=f"p{i}", match="GET /", limits=[rate, *more[: limits - 1]])
        for i in range(policies)
    ]
    rest = [Policy(name=f"o{i}", match=f"GET /items/{i}", limits=rate) for i in range(others)]
    return Settings(policies=[*match, *rest])


def make_scope(client: str = "127.0.0.1") -> Scope:
    """make_scope is a GET / as uvicorn would pass it, through a local proxy that sets
    X-Forwarded-For (ignored unless the proxy is trusted)."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.4"},
        "http_version": "1.1",
        "method": "GET",
        "scheme": "http",
        "path": "/",
        "raw_path": b"/",
        "root_path": "",
        "query_string": b"",
        "headers": [
            (b"host", b"127.0.0.1:8000"),
            (b"user-agent", b"overhead-bench"),
            (b"accept", b"*/*"),
            (b"x-forwarded-for", b"203.0.113.7, 127.0.0.2"),
        ],
        "client": (client, 50000),
        "server": ("127.0.0.1", 8000),
        "state": {},
    }


class Driver:
    """Driver calls one app with fresh scopes and counts responses that were not 200."""

    def __init__(self, name: str, app: Any, scopes: list[Scope]) -> None:
        self.name = name
        self.app = app
        self.scopes = scopes
        self.not_ok = 0

    async def run(self, n: int) -> float:
        """run makes `n` requests and returns the seconds they took."""
        app = self.app
        scopes = self.scopes
        count = len(scopes)

        async def receive() -> Message:
            return REQUEST

        async def send(message: Message) -> None:
            if message["type"] == "http.response.start" and message["status"] != 200:
                self.not_ok += 1

        sleep = asyncio.sleep
        perf = time.perf_counter
        started = perf()
        for i in range(n):
            scope = scopes[i % count].copy()
            scope["state"] = {}
            await app(scope, receive, send)
            if i % YIELD_EVERY == 0:
                await sleep(0)
        return perf() - started


async def refuses_third(app: Any, scope: Scope) -> list[int]:
    """refuses_third sends three requests and returns their statuses."""
    statuses: list[int] = []

    async def receive() -> Message:
        return REQUEST

    async def send(message: Message) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    for _ in range(3):
        await app(scope.copy() | {"state": {}}, receive, send)
    return statuses


async def check_limiters() -> None:
    """check_limiters makes sure each limiter measured here refuses the third request at
    2/minute, i.e. that its setup really limits every request."""
    scope = make_scope()
    cases = {
        "admission": AdmissionMiddleware(
            bare_app, settings=Settings(rate="2/minute"), handle_signals=False
        ),
        "admission-all": AdmissionMiddleware(
            bare_app, settings=all_features("2/minute"), handle_signals=False
        ),
        "admission-3x2": AdmissionMiddleware(
            bare_app, settings=policy_settings("2/minute", 3, 2), handle_signals=False
        ),
        "starlette+slowapi": slowapi_app("2/minute"),
        "starlette+slowapi-asgi": slowapi_app("2/minute", asgi=True),
        "fastapi+fastapi-limiter": fastapi_app("2/minute"),
    }
    for name, app in cases.items():
        statuses = await refuses_third(app, scope)
        if statuses != [200, 200, 429]:
            raise SystemExit(f"{name} does not limit: statuses {statuses} at 2/minute")


def variants() -> dict[str, Callable[[], Driver]]:
    """variants maps each variant's name to what builds it: its own middleware instance and
    store, and the scopes it is sent (benchmarks/overhead_instructions.py builds one alone)."""
    # One client's requests in 1,000 scopes, as a server's 1,000 requests would be (each its
    # own headers and client tuple): the one-client and 1,000-client cases then differ only in
    # the client, not in how much memory the requests themselves touch.
    one = [make_scope() for _ in range(1000)]
    rng = random.Random(7)
    many = [make_scope(f"10.0.{i >> 8}.{i & 255}") for i in range(65536)]
    rng.shuffle(many)
    thousand = many[:1000]
    rate = Settings(rate=RATE)

    def admission(app: Any, settings: Settings = rate) -> Any:
        return AdmissionMiddleware(app, settings=settings, handle_signals=False)

    built: dict[str, tuple[Callable[[], Any], list[Scope]]] = {
        "bare": (lambda: bare_app, one),
        "admission": (lambda: admission(bare_app), one),
        "admission-1000c": (lambda: admission(bare_app), thousand),
        "admission-keys": (lambda: admission(bare_app), many),
        "admission-all": (lambda: admission(bare_app, all_features(RATE)), one),
        "admission-policy": (lambda: admission(bare_app, policy_settings(RATE)), one),
        "admission-3x2": (lambda: admission(bare_app, policy_settings(RATE, 3, 2)), one),
        "admission-1000": (lambda: admission(bare_app, policy_settings(RATE, 1, 1, 999)), one),
        "starlette": (starlette_app, one),
        "starlette+admission": (lambda: admission(starlette_app()), one),
        "starlette+slowapi": (lambda: slowapi_app(RATE), one),
        "starlette+slowapi-asgi": (lambda: slowapi_app(RATE, asgi=True), one),
        "starlette+admission-1000c": (lambda: admission(starlette_app()), thousand),
        "starlette+slowapi-asgi-1000c": (lambda: slowapi_app(RATE, asgi=True), thousand),
        "fastapi": (fastapi_app, thousand),
        "fastapi+admission-1000c": (lambda: admission(fastapi_app()), thousand),
        "fastapi+fastapi-limiter-1000c": (lambda: fastapi_app(RATE), thousand),
    }

    def factory(name: str) -> Callable[[], Driver]:
        make, scopes = built[name]
        return lambda: Driver(name, make(), scopes)

    return {name: factory(name) for name in built}


def drivers(only: set[str] | None = None) -> list[Driver]:
    """drivers builds every variant (or those named in `only`, with the baselines their added
    costs need), each with its own middleware instance and store."""
    if only is not None:
        only = only | {base for name, base in ADDED if name in only}
    return [make() for name, make in variants().items() if only is None or name in only]


# (variant, baseline) pairs whose paired difference is reported as the added cost.
ADDED = [
    ("admission", "bare"),
    ("admission-1000c", "bare"),
    ("admission-keys", "bare"),
    ("admission-all", "bare"),
    ("admission-policy", "bare"),
    ("admission-3x2", "bare"),
    ("admission-1000", "admission-policy"),
    ("starlette+admission", "starlette"),
    ("starlette+slowapi", "starlette"),
    ("starlette+slowapi-asgi", "starlette"),
    ("starlette+admission-1000c", "starlette"),
    ("starlette+slowapi-asgi-1000c", "starlette"),
    ("fastapi+admission-1000c", "fastapi"),
    ("fastapi+fastapi-limiter-1000c", "fastapi"),
]


async def measure(
    requests: int, rounds: int, only: set[str] | None = None
) -> dict[str, list[float]]:
    """measure runs every variant (or those of `only`) `rounds` times, interleaved in a fresh
    random order each round, and returns the µs per request of each run."""
    await check_limiters()
    ds = drivers(only)
    for d in ds:
        await d.run(max(1000, requests // 5))  # warm up: imports, caches, first-call set-up
    per: dict[str, list[float]] = {d.name: [] for d in ds}
    order = list(ds)
    rng = random.Random(1)
    for _ in range(rounds):
        rng.shuffle(order)
        for d in order:
            gc.collect()
            per[d.name].append(await d.run(requests) / requests * 1e6)
    bad = {d.name: d.not_ok for d in ds if d.not_ok}
    if bad:
        raise SystemExit(f"some responses were not 200: {bad}")
    return per


def added_costs(per: dict[str, list[float]]) -> dict[str, tuple[float, float]]:
    """added_costs is, per (variant, baseline) pair, the added µs per request: the median of
    the per-round differences, and best-of-N (fastest variant run minus fastest baseline run)."""
    out = {}
    for name, base in ADDED:
        if name not in per or base not in per:
            continue
        diffs = [a - b for a, b in zip(per[name], per[base], strict=True)]
        out[name] = (statistics.median(diffs), min(per[name]) - min(per[base]))
    return out


def report(per: dict[str, list[float]], loop_name: str, requests: int, rounds: int) -> None:
    """report prints µs/request per variant, the added costs and the slowapi ratio."""
    print(
        f"python {platform.python_version()}, loop {loop_name}, {requests} requests x "
        f"{rounds} rounds per variant, interleaved"
    )
    print(f"\n{'variant':<22}{'median µs/req':>14}{'best µs/req':>13}")
    for name, values in per.items():
        print(f"{name:<22}{statistics.median(values):>14.2f}{min(values):>13.2f}")
    added = added_costs(per)
    print(f"\n{'added cost, µs/request':<40}{'median':>10}{'best-of-N':>11}")
    for name, base in ADDED:
        if name in added:
            median, best = added[name]
            print(f"{name + ' vs ' + base:<40}{median:>10.2f}{best:>11.2f}")
    if set(added) != {name for name, _ in ADDED}:
        # --only: the ratios below need variants that did not run.
        report_clients(added)
        return
    for slowapi in ("starlette+slowapi", "starlette+slowapi-asgi"):
        ratio_median = added[slowapi][0] / added["admission"][0]
        ratio_best = added[slowapi][1] / added["admission"][1]
        print(
            f"{slowapi} added / admission added: {ratio_median:.1f}x (medians), "
            f"{ratio_best:.1f}x (best-of-N)"
        )
    for label, pick in (("median", 0), ("best-of-N", 1)):
        rate, every = added["admission"][pick], added["admission-all"][pick]
        print(
            f"targets ({label}): rate limiting adds <= 6 µs: "
            f"{'met' if rate <= 6 else 'MISSED'} ({rate:.2f} µs); all features add <= 12 µs: "
            f"{'met' if every <= 12 else 'MISSED'} ({every:.2f} µs)"
        )
    for peer, ours, target in (
        ("starlette+slowapi-asgi-1000c", "starlette+admission-1000c", 6),
        ("fastapi+fastapi-limiter-1000c", "fastapi+admission-1000c", 4),
    ):
        for label, pick in (("median", 0), ("best-of-N", 1)):
            ratio = added[peer][pick] / added[ours][pick]
            print(
                f"1,000 clients: {peer} adds {ratio:.1f}x what {ours} adds ({label}; "
                f"target >= {target}: {'met' if ratio >= target else 'MISSED'})"
            )
    report_clients(added)
    policies = added["admission-3x2"][0] / added["admission"][0]
    print(
        f"3 policies of 2 limits add {policies:.2f}x what one limit adds (medians; target <= 2: "
        f"{'met' if policies <= 2 else 'MISSED'}); 1,000 literal policies add "
        f"{added['admission-1000'][0]:.2f} µs to matching one (target <= 1: "
        f"{'met' if added['admission-1000'][0] <= 1 else 'MISSED'})"
    )


def report_clients(added: dict[str, tuple[float, float]]) -> None:
    """report_clients prints what 1,000 clients add against one client, when both ran."""
    if "admission-1000c" not in added or "admission" not in added:
        return
    for label, pick in (("median", 0), ("best-of-N", 1)):
        clients = added["admission-1000c"][pick] / added["admission"][pick]
        print(
            f"1,000 clients add {clients:.2f}x what one client adds ({label}; target <= 1.10: "
            f"{'met' if clients <= 1.10 else 'MISSED'})"
        )


def main(argv: list[str] | None = None) -> int:
    """main parses the options, runs the measurement on the chosen loop, prints the report."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=10000, help="requests per run")
    parser.add_argument("--rounds", type=int, default=15, help="runs per variant")
    parser.add_argument(
        "--loop",
        choices=["asyncio", "uvloop"],
        default=None,
        help="event loop (default: uvloop when installed, as uvicorn chooses)",
    )
    parser.add_argument(
        "--only",
        default=None,
        help="comma-separated variants to run, interleaved alone (with their baselines)",
    )
    args = parser.parse_args(argv)
    only = set(args.only.split(",")) if args.only else None
    loop_name = args.loop or ("uvloop" if importlib.util.find_spec("uvloop") else "asyncio")
    if loop_name == "uvloop":
        import uvloop

        loop = uvloop.new_event_loop()
    else:
        loop = asyncio.new_event_loop()
    try:
        per = loop.run_until_complete(measure(args.requests, args.rounds, only))
    finally:
        loop.close()
    report(per, loop_name, args.requests, args.rounds)
    return 0


if __name__ == "__main__":
    sys.exit(main())

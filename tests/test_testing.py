"""admission.testing: reset(app) refills buckets and empties the window of the middleware
wherever it sits in a Starlette or FastAPI stack, a manual clock drives the buckets, admission
can be taken out of the stack, and an app's lifespan runs around httpx's ASGI transport."""

from __future__ import annotations

import contextlib
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from admission import AdmissionMiddleware, Settings
from admission.testing import (
    LifespanFailed,
    ManualClock,
    areset,
    disabled,
    lifespan,
    middlewares,
    reset,
    use_clock,
)

ONE_A_MINUTE = Settings(rate="1/minute")


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def starlette_app(settings: Settings = ONE_A_MINUTE) -> Starlette:
    app = Starlette(routes=[Route("/", hello)])
    app.add_middleware(AdmissionMiddleware, settings=settings, handle_signals=False)
    return app


def fastapi_app(settings: Settings = ONE_A_MINUTE) -> FastAPI:
    app = FastAPI()

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"hello": "world"}

    app.add_middleware(AdmissionMiddleware, settings=settings, handle_signals=False)
    return app


APPS = pytest.mark.parametrize("make", [fastapi_app, starlette_app], ids=["fastapi", "starlette"])


@APPS
def test_reset_refills_a_one_a_minute_bucket(make: Callable[[], Starlette]) -> None:
    app = make()
    with TestClient(app) as client:
        before = [client.get("/").status_code for _ in range(2)]
        found = reset(app)
        after = [client.get("/").status_code for _ in range(2)]
    assert before == [200, 429]
    assert after == [200, 429]
    assert len(found) == 1


@APPS
def test_reset_before_the_first_request_builds_the_stack_starlette_then_uses(
    make: Callable[[], Starlette],
) -> None:
    app = make()
    assert app.middleware_stack is None
    [middleware] = reset(app)
    with TestClient(app) as client:
        statuses = [client.get("/").status_code for _ in range(2)]
    assert statuses == [200, 429]
    # The stack reset built is the one that served: the bucket it drained is this one's.
    assert middleware.stats.admitted == 1


def test_reset_finds_the_middleware_as_the_app_itself_and_in_a_mounted_app() -> None:
    inner = starlette_app()
    outer = Starlette(routes=[Mount("/api", app=inner)])
    bare = AdmissionMiddleware(Starlette(routes=[Route("/", hello)]), settings=ONE_A_MINUTE)
    assert len(middlewares(outer)) == 1
    assert middlewares(bare) == [bare]
    with pytest.raises(LookupError):
        reset(Starlette(routes=[Route("/", hello)]))


def test_reset_empties_the_window() -> None:
    app = starlette_app(Settings(window=1))
    with TestClient(app) as client:
        [middleware] = middlewares(app)
        assert middleware.window is not None
        # A slot that was never given back, as a test cut short would leave it.
        assert middleware.window.try_take()
        full = client.get("/")
        reset(app)
        after = client.get("/")
    assert full.status_code == 429
    assert after.status_code == 200


def test_a_manual_clock_refills_the_bucket_only_when_moved_on() -> None:
    app = fastapi_app()
    clock = ManualClock()
    with TestClient(app) as client:
        restore = use_clock(app, clock)
        first = [client.get("/").status_code for _ in range(2)]
        clock.advance(59)
        early = client.get("/").status_code
        clock.advance(1)
        refilled = client.get("/").status_code
        restore()
        back = client.get("/").status_code
    assert first == [200, 429]
    assert early == 429
    assert refilled == 200
    assert back == 200


def test_policies_read_the_manual_clock_too(tmp_path: Path) -> None:
    policies = tmp_path / "policies.toml"
    policies.write_text('[[policy]]\nname = "root"\nmatch = "GET /"\nlimits = ["1/minute"]\n')
    app = starlette_app(Settings(policies=str(policies)))
    clock = ManualClock()
    with TestClient(app) as client:
        use_clock(app, clock)
        first = [client.get("/").status_code for _ in range(2)]
        clock.advance(60)
        refilled = client.get("/").status_code
    assert first == [200, 429]
    assert refilled == 200


@pytest.mark.parametrize("wrapped", [False, True], ids=["in-stack", "app-itself"])
def test_disabled_takes_admission_out_and_puts_it_back(wrapped: bool) -> None:
    app = (
        AdmissionMiddleware(Starlette(routes=[Route("/", hello)]), settings=ONE_A_MINUTE)
        if wrapped
        else starlette_app()
    )
    with disabled(app) as bare, TestClient(bare) as client:
        free = [client.get("/").status_code for _ in range(3)]
        readyz = client.get("/readyz").status_code
    with TestClient(app) as client:
        limited = [client.get("/").status_code for _ in range(2)]
    assert free == [200, 200, 200]
    assert readyz == 404
    assert limited == [200, 429]


async def test_lifespan_runs_the_apps_own_start_up_and_shutdown_around_httpx() -> None:
    events: list[str] = []

    @contextlib.asynccontextmanager
    async def app_lifespan(app: object) -> AsyncIterator[None]:
        events.append("started")
        yield
        events.append("stopped")

    app = Starlette(routes=[Route("/", hello)], lifespan=app_lifespan)
    app.add_middleware(AdmissionMiddleware, settings=ONE_A_MINUTE, handle_signals=False)
    statuses = []
    for _ in range(2):
        transport = httpx.ASGITransport(app=app)
        async with (
            lifespan(app),
            httpx.AsyncClient(transport=transport, base_url="http://test") as client,
        ):
            statuses += [(await client.get("/")).status_code for _ in range(2)]
            statuses.append((await client.get("/readyz")).status_code)
    assert events == ["started", "stopped", "started", "stopped"]
    # Each lifespan's shutdown released the memory store's buckets: the second starts full.
    assert statuses == [200, 429, 200, 200, 429, 200]


async def test_lifespan_raises_when_the_app_refuses_to_start() -> None:
    @contextlib.asynccontextmanager
    async def failing(app: object) -> AsyncIterator[None]:
        raise RuntimeError("no database")
        yield

    app = Starlette(lifespan=failing)
    with pytest.raises(LifespanFailed, match="no database"):
        async with lifespan(app):
            pass


@pytest.mark.redis
async def test_areset_deletes_the_buckets_of_a_redis_store(redis_url: str) -> None:
    prefix = f"testing-{uuid.uuid4().hex}"
    app = starlette_app(Settings(rate="1/minute", storage=redis_url, key_prefix=prefix))
    transport = httpx.ASGITransport(app=app)
    async with (
        lifespan(app),
        httpx.AsyncClient(transport=transport, base_url="http://test") as client,
    ):
        before = [(await client.get("/")).status_code for _ in range(2)]
        with pytest.raises(TypeError, match="areset"):
            reset(app)
        await areset(app)
        after = [(await client.get("/")).status_code for _ in range(2)]
        [middleware] = middlewares(app)
        errors = middleware.store.errors  # type: ignore[union-attr]
    assert before == [200, 429]
    assert after == [200, 429]
    assert errors == 0


def test_a_stack_that_never_ends_is_an_error_not_a_hang() -> None:
    class Endless:
        @property
        def app(self) -> Endless:
            return Endless()

    with pytest.raises(RecursionError):
        middlewares(Endless())


def test_reset_starts_an_adaptive_window_over_from_its_first_size() -> None:
    app = starlette_app(Settings(window="auto"))
    [middleware] = middlewares(app)
    adaptive, window = middleware.adaptive, middleware.window
    assert adaptive is not None and window is not None
    start = adaptive.params.start
    # As if intervals of fast requests had grown it.
    adaptive.estimate = dataclasses.replace(adaptive.estimate, limit=float(start + 5))
    window.resize(start + 5)
    reset(app)
    assert (adaptive.limit, window.size) == (start, start)

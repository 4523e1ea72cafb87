"""Any number of lifespans: a lifespan that starts after a completed shutdown serves again, with
a fresh lifetime that the next shutdown releases, once; cleanups run in the order their
priorities state."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator, Callable

import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from admission import AdmissionMiddleware, Lifetime, Settings, service_lifetime
from admission.stores import GuardedStore


def recording_lifespan(
    events: list[str],
) -> Callable[[object], contextlib.AbstractAsyncContextManager[None]]:
    """recording_lifespan is an app lifespan that registers one cleanup per lifespan with the
    service lifetime, and records when each lifespan starts and which cleanup ran."""
    starts = 0

    @contextlib.asynccontextmanager
    async def lifespan(app: object) -> AsyncIterator[None]:
        nonlocal starts
        starts += 1
        n = starts
        events.append(f"start {n}")
        service_lifetime().on_close(lambda: events.append(f"cleanup {n}"))
        yield

    return lifespan


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


def starlette_app(events: list[str], settings: Settings) -> Starlette:
    app = Starlette(routes=[Route("/", hello)], lifespan=recording_lifespan(events))
    app.add_middleware(AdmissionMiddleware, settings=settings, handle_signals=False)
    return app


def fastapi_app(events: list[str], settings: Settings) -> FastAPI:
    app = FastAPI(lifespan=recording_lifespan(events))

    @app.get("/")
    async def root() -> dict[str, str]:
        return {"hello": "world"}

    app.add_middleware(AdmissionMiddleware, settings=settings, handle_signals=False)
    return app


@pytest.mark.parametrize("make", [fastapi_app, starlette_app], ids=["fastapi", "starlette"])
def test_two_testclient_blocks_on_one_app_both_answer_200(
    make: Callable[[list[str], Settings], Starlette],
) -> None:
    events: list[str] = []
    app = make(events, Settings(rate="100/minute", window=4))
    with TestClient(app) as client:
        first = client.get("/")
    with TestClient(app) as client:
        second = client.get("/")
        ready = client.get("/readyz")
    assert first.status_code == 200, first.text
    assert second.status_code == 200, second.text
    assert ready.status_code == 200, ready.text
    # Each lifespan released what it registered, once, at its own shutdown.
    assert events == ["start 1", "cleanup 1", "start 2", "cleanup 2"]


def test_a_reopened_service_drains_again_on_its_own_shutdown() -> None:
    events: list[str] = []
    app = starlette_app(events, Settings())
    for _ in range(3):
        with TestClient(app) as client:
            assert client.get("/").status_code == 200
    middleware = app.middleware_stack
    while not isinstance(middleware, AdmissionMiddleware):
        middleware = middleware.app  # type: ignore[union-attr]
    assert middleware.drain_state.phase.value == "closed"
    assert events == ["start 1", "cleanup 1", "start 2", "cleanup 2", "start 3", "cleanup 3"]


@pytest.mark.redis
def test_a_redis_store_decides_again_in_the_next_lifespan(redis_url: str) -> None:
    prefix = f"lifespans-{uuid.uuid4().hex}"
    settings = Settings(
        rate="2/minute", storage=redis_url, on_storage_error="allow", key_prefix=prefix
    )
    app = starlette_app([], settings)
    with TestClient(app) as client:
        first = [client.get("/").status_code for _ in range(2)]
    with TestClient(app) as client:
        # Redis remembers the client's bucket across lifespans: refused, not allowed by an
        # outage of a closed store.
        second = client.get("/")
    middleware = app.middleware_stack
    while not isinstance(middleware, AdmissionMiddleware):
        middleware = middleware.app  # type: ignore[union-attr]
    assert isinstance(middleware.store, GuardedStore)
    assert first == [200, 200]
    assert second.status_code == 429, second.text
    assert middleware.store.errors == 0


async def test_cleanups_run_highest_priority_first_ties_last_registered_first() -> None:
    life = Lifetime("test")
    ran: list[str] = []
    life.on_close(lambda: ran.append("pool closes"))
    life.on_close(lambda: ran.append("health last"), priority=-10)
    life.on_close(lambda: ran.append("flush 1"), priority=10)

    @life.on_close(priority=10)
    async def flush_2() -> None:
        ran.append("flush 2")

    life.on_close(lambda: ran.append("cache closes"))
    await life.close()
    await life.close()
    assert ran == ["flush 2", "flush 1", "cache closes", "pool closes", "health last"]

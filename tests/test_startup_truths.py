"""tests.test_startup_truths: start-up tells the truth. The middleware added twice stops
start-up with one line; an app route that admission's endpoints shadow is named; a pod whose
store is down under `deny` fails readiness; several workers on memory stores are said to
limit per worker."""

from __future__ import annotations

import asyncio
import logging

import httpx
import pytest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from admission import AdmissionMiddleware, Settings
from admission.config.report import WORKERS_ENV, announce
from admission.testing import lifespan
from tests.support import RedisServer, admission_serve, plain_uvicorn, run_server, wait_until


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("app's own")


def _twice() -> Starlette:
    app = Starlette(routes=[Route("/", ok)])
    app.add_middleware(AdmissionMiddleware, settings=Settings(rate="3/minute"))
    app.add_middleware(AdmissionMiddleware, settings=Settings(rate="3/minute"))
    return app


def test_the_middleware_added_twice_fails_start_up_with_one_line() -> None:
    app = _twice()
    with pytest.raises(BaseException) as failed, TestClient(app):
        pass
    message = str(failed.value)
    assert "AdmissionMiddleware is in this application's stack twice" in message
    assert "AdmissionMiddleware > AdmissionMiddleware" in message


@pytest.mark.process
def test_the_middleware_added_twice_stops_plain_uvicorn_with_one_line() -> None:
    argv = plain_uvicorn("tests.apps.twice:app")
    with pytest.raises(AssertionError) as failed, run_server(argv, {}, start_timeout_s=15):
        pass
    log = str(failed.value)
    assert "server exited with 3" in log
    lines = [line for line in log.splitlines() if "stack twice" in line]
    assert len(lines) == 1, log


def test_once_is_fine() -> None:
    app = Starlette(routes=[Route("/", ok)])
    app.add_middleware(AdmissionMiddleware, settings=Settings(rate="3/minute"))
    with TestClient(app) as client:
        assert client.get("/").status_code == 200


def test_an_app_route_admission_shadows_is_named_at_start_up(
    caplog: pytest.LogCaptureFixture,
) -> None:
    app = Starlette(routes=[Route("/healthz", ok), Route("/metrics", ok), Route("/", ok)])
    app.add_middleware(AdmissionMiddleware, settings=Settings())
    with caplog.at_level(logging.WARNING, logger="admission"), TestClient(app) as client:
        assert client.get("/healthz").json() == {"status": "ok"}
    lines = [r.getMessage() for r in caplog.records if "never reached" in r.getMessage()]
    assert len(lines) == 2
    assert "/healthz" in lines[0] and "ADMISSION_HEALTH_PATH" in lines[0]
    assert "/metrics" in lines[1] and "ADMISSION_METRICS_PATH" in lines[1]


@pytest.mark.redis
async def test_readiness_fails_while_the_store_is_down_under_deny(
    redis_server: RedisServer,
) -> None:
    settings = Settings(
        rate="100/minute",
        storage=redis_server.url,
        on_storage_error="deny",
        storage_timeout=0.2,
    )
    app = AdmissionMiddleware(Starlette(routes=[Route("/", ok)]), settings=settings)
    transport = httpx.ASGITransport(app=app)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        assert (await c.get("/readyz")).status_code == 200
        redis_server.kill()
        assert (await c.get("/")).status_code == 503
        ready = await c.get("/readyz")
        assert ready.status_code == 503
        assert ready.json()["status"] == "storage_unavailable"
        redis_server.start()
        loop = asyncio.get_running_loop()
        end = loop.time() + 10.0
        while (await c.get("/readyz")).status_code != 200:
            assert loop.time() < end, "readiness never came back with the store"
            await asyncio.sleep(0.05)
        assert (await c.get("/")).status_code == 200


@pytest.mark.parametrize("policy", ["allow", "local"])
@pytest.mark.redis
async def test_readiness_holds_while_the_store_is_down_under_other_policies(
    redis_server: RedisServer, policy: str
) -> None:
    settings = Settings(
        rate="100/minute", storage=redis_server.url, on_storage_error=policy, storage_timeout=0.2
    )
    app = AdmissionMiddleware(Starlette(routes=[Route("/", ok)]), settings=settings)
    transport = httpx.ASGITransport(app=app)
    async with lifespan(app), httpx.AsyncClient(transport=transport, base_url="http://t") as c:
        redis_server.kill()
        assert (await c.get("/")).status_code == 200
        ready = await c.get("/readyz")
        assert ready.status_code == 200 and ready.json()["storage"] == "degraded"


@pytest.mark.parametrize(
    ("workers", "storage", "said"),
    [("4", "memory://", True), ("1", "memory://", False), ("4", "redis://127.0.0.1:6379/0", False)],
)
def test_workers_on_memory_stores_are_said_to_limit_per_worker(
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
    workers: str,
    storage: str,
    said: bool,
) -> None:
    monkeypatch.setenv(WORKERS_ENV, workers)
    log = logging.getLogger("admission.test")
    with caplog.at_level(logging.INFO, logger="admission.test"):
        announce(Settings(rate="10/minute", storage=storage), in_code=True, log=log)
    line = caplog.records[0].getMessage()
    assert line.startswith("settings in effect:")
    assert ("per worker: each of the 4 workers" in line) is said


@pytest.mark.process
def test_admission_serve_with_workers_says_the_rate_is_per_worker() -> None:
    argv = admission_serve(None, "--workers", "2")
    with run_server(argv, {"ADMISSION_RATE": "10/minute"}) as server:
        wait_until(lambda: server.log().count("settings in effect") >= 2, 10, "both workers")
        lines = [line for line in server.log().splitlines() if "settings in effect" in line]
    assert all("each of the 2 workers keeps its own memory store" in line for line in lines)

"""Admission's own endpoints: configurable paths, switchable off, GET and HEAD only, and its
metrics inside the application's Prometheus registry."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from admission import AdmissionMiddleware, Settings


async def own(request: Request) -> PlainTextResponse:
    return PlainTextResponse(f"app {request.method} {request.url.path}")


APP_PATHS = ["/healthz", "/readyz", "/metrics", "/livez", "/internal/metrics"]
METHODS = ["GET", "HEAD", "POST", "PUT", "DELETE", "OPTIONS", "PATCH"]


def service(registry: CollectorRegistry | None = None, **settings: object) -> httpx.AsyncClient:
    app = Starlette(routes=[Route(p, own, methods=METHODS) for p in APP_PATHS])
    middleware = AdmissionMiddleware(
        app,
        settings=Settings(**settings),  # type: ignore[arg-type]
        handle_signals=False,
        metrics_registry=registry,
    )
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=middleware), base_url="http://t")


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE", "OPTIONS", "PATCH"])
async def test_other_methods_on_the_endpoint_paths_reach_the_application(
    path: str, method: str
) -> None:
    async with service() as client:
        response = await client.request(method, path)
    assert response.status_code == 200
    assert response.text == f"app {method} {path}"


@pytest.mark.parametrize("path", ["/healthz", "/readyz", "/metrics"])
async def test_head_gets_the_get_answers_head_without_a_body(path: str) -> None:
    async with service() as client:
        get = await client.get(path)
        head = await client.head(path)
    assert not get.text.startswith("app")
    assert head.status_code == get.status_code
    assert head.headers["content-type"] == get.headers["content-type"]
    assert head.content == b""


async def test_paths_are_configurable_and_the_old_ones_go_to_the_application() -> None:
    async with service(health_path="/livez", metrics_path="/internal/metrics") as client:
        assert (await client.get("/livez")).json() == {"status": "ok"}
        assert b"admission_in_flight" in (await client.get("/internal/metrics")).content
        assert (await client.get("/healthz")).text == "app GET /healthz"
        assert (await client.get("/metrics")).text == "app GET /metrics"
        assert (await client.get("/readyz")).json()["status"] == "ready"


async def test_an_endpoint_switched_off_leaves_its_path_to_the_application() -> None:
    settings = Settings.from_env(
        {
            "ADMISSION_HEALTH_PATH": "off",
            "ADMISSION_READY_PATH": "off",
            "ADMISSION_METRICS_PATH": "off",
        }
    )
    assert (settings.health_path, settings.ready_path, settings.metrics_path) == (None,) * 3
    async with service(health_path=None, ready_path=None, metrics_path=None) as client:
        for path in ("/healthz", "/readyz", "/metrics"):
            assert (await client.get(path)).text == f"app GET {path}"


async def test_admission_metrics_join_the_applications_registry_and_endpoint() -> None:
    registry = CollectorRegistry()
    orders = Counter("orders", "Orders placed.", registry=registry)
    orders.inc(3)
    async with service(registry) as client:
        await client.get("/livez")
        text = (await client.get("/metrics")).text
    # The application's own metrics are not hidden by admission's endpoint...
    assert "orders_total 3.0" in text
    assert "admission_admitted_total 1.0" in text
    # ...and admission's are in the application's registry, for its own endpoint.
    assert b"admission_admitted_total 1.0" in generate_latest(registry)

"""tests.test_coverage: a policy pattern that names no route the application serves is said at
start-up, once, with the policy and the pattern: Starlette, FastAPI, mounts and routers."""

from __future__ import annotations

import logging

import pytest
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route, WebSocketRoute
from starlette.testclient import TestClient
from starlette.websockets import WebSocket

from admission import AdmissionMiddleware, Policy, Settings
from admission.served import unserved


async def ok(request: Request) -> PlainTextResponse:
    return PlainTextResponse("ok")


async def socket(websocket: WebSocket) -> None:
    await websocket.accept()
    await websocket.close()


async def static(scope: object, receive: object, send: object) -> None:
    raise NotImplementedError


STARLETTE = Starlette(
    routes=[
        Route("/login", ok, methods=["POST"]),
        Route("/export", ok, methods=["GET"]),
        Route("/users/{id:int}", ok),
        Route("/files/{key:uuid}", ok),
        Mount("/api", routes=[Route("/items", ok), Mount("/admin", routes=[Route("/x", ok)])]),
        Mount("/static", app=static),
        WebSocketRoute("/ws", socket),
    ]
)

SERVED = [
    "POST /login",
    "GET /export",
    "HEAD /export",
    "/users/{id}",
    "GET /users/{user}",
    "/files/{key}",
    "GET /api/items",
    "/api/admin/x",
    "/api/*",
    "/api/ad*",
    "/static/app.js",
    "/static/*",
    "GET /ws",
    "*",
    "GET *",
]
UNSERVED = [
    "POST /logn",
    "GET /login",
    "DELETE /export",
    "/users/{id}/posts",
    "/api/items/1",
    "/api/admin",
    "/v2/*",
    "POST /ws",
]


@pytest.mark.parametrize("pattern", SERVED)
def test_a_pattern_the_app_routes_is_served(pattern: str) -> None:
    policy = Policy(name="p", match=[pattern], limits=["1/second"])
    assert unserved(STARLETTE, [policy]) == []


@pytest.mark.parametrize("pattern", UNSERVED)
def test_a_pattern_no_route_takes_is_unserved(pattern: str) -> None:
    policy = Policy(name="p", match=[pattern], limits=["1/second"])
    assert unserved(STARLETTE, [policy]) == [("p", pattern)]


def test_fastapi_routers_and_prefixes_are_followed() -> None:
    app = FastAPI()
    router = APIRouter(prefix="/v1")

    @router.get("/orders/{order_id}")
    async def order(order_id: int) -> dict[str, int]:
        return {"id": order_id}

    app.include_router(router)
    things = APIRouter()

    @things.post("/things")
    async def thing() -> dict[str, int]:
        return {}

    app.include_router(things, prefix="/v2")
    policies = [
        Policy(name="orders", match=["GET /v1/orders/{id}"], limits=["1/second"]),
        Policy(name="things", match=["POST /v2/things", "/v2/*"], limits=["1/second"]),
        Policy(name="typo", match=["DELETE /v1/orders/{id}", "/v1/order/*"], limits=["1/second"]),
    ]
    assert unserved(app, policies) == [
        ("typo", "DELETE /v1/orders/{id}"),
        ("typo", "/v1/order/*"),
    ]


def test_a_plain_asgi_app_is_not_checked() -> None:
    policy = Policy(name="p", match=["POST /nowhere"], limits=["1/second"])
    assert unserved(static, [policy]) == []


def test_start_up_names_each_unserved_pattern_once(caplog: pytest.LogCaptureFixture) -> None:
    app = Starlette(routes=[Route("/login", ok, methods=["POST"])])
    policies = (
        Policy(name="login", match=["POST /logn", "POST /login"], limits=["3/minute"]),
        Policy(name="all", match=["*"], limits=["100/minute"]),
    )
    app.add_middleware(AdmissionMiddleware, settings=Settings(policies=policies))
    with caplog.at_level(logging.WARNING, logger="admission"), TestClient(app) as client:
        assert client.post("/login").status_code == 200
    lines = [r.getMessage() for r in caplog.records if "matches no route" in r.getMessage()]
    assert lines == [
        "policy 'login': 'POST /logn' matches no route of the application: it limits nothing"
    ]

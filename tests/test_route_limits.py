"""tests.test_route_limits: limits declared on the route with `@limit`. The endpoint is
returned unchanged; its route becomes a policy named after it, enforced before the handler,
all or nothing with every other policy, HEAD with GET, under mounts and included routers."""

from __future__ import annotations

import pytest
from fastapi import APIRouter, FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Mount, Route
from starlette.testclient import TestClient

from admission import AdmissionMiddleware, Policy, PolicyError, Settings, limit
from admission.ratelimit.decorator import route_policies


def _fastapi(runs: list[str], **settings: object) -> FastAPI:
    app = FastAPI()

    @app.post("/login")
    @limit("2/minute")
    async def login(request: Request) -> dict[str, bool]:
        runs.append("login")
        return {"ok": True}

    @limit("1/minute")
    @app.get("/export")
    async def export(request: Request) -> dict[str, bool]:
        runs.append(request.method)
        return {"ok": True}

    @app.get("/free")
    async def free() -> dict[str, bool]:
        return {"ok": True}

    app.add_middleware(AdmissionMiddleware, settings=Settings(**settings))  # type: ignore[arg-type]
    return app


def test_fastapi_login_limited_on_its_route_serves_two_of_five() -> None:
    runs: list[str] = []
    with TestClient(_fastapi(runs)) as client:
        statuses = [client.post("/login").status_code for _ in range(5)]
        body = client.post("/login").json()
        assert [client.get("/free").status_code for _ in range(5)] == [200] * 5
    assert statuses == [200, 200, 429, 429, 429]
    assert runs == ["login", "login"]
    assert body["policy"] == "route.login"


def test_the_decorator_returns_the_endpoint_unchanged() -> None:
    async def handler(request: Request) -> PlainTextResponse:
        return PlainTextResponse("x")

    assert limit("1/second")(handler) is handler


def test_head_on_a_decorated_get_route_is_counted_either_decorator_order() -> None:
    runs: list[str] = []
    with TestClient(_fastapi(runs)) as client:
        # FastAPI's GET route answers HEAD 405 itself, but the request was counted first.
        assert client.head("/export").status_code == 405
        assert client.get("/export").status_code == 429
    assert runs == []


def test_starlette_routes_and_mounts_are_limited() -> None:
    runs: list[str] = []

    @limit("2/minute", key="header:X-User")
    async def item(request: Request) -> PlainTextResponse:
        runs.append(request.method)
        return PlainTextResponse("item")

    app = Starlette(routes=[Mount("/api", routes=[Route("/items/{id:int}", item)])])
    app.add_middleware(AdmissionMiddleware, settings=Settings())
    with TestClient(app) as client:
        a = [client.head("/api/items/1", headers={"x-user": "a"}).status_code for _ in range(2)]
        a.append(client.get("/api/items/2", headers={"x-user": "a"}).status_code)
        b = client.get("/api/items/1", headers={"x-user": "b"}).status_code
    assert a == [200, 200, 429] and b == 200
    assert runs == ["HEAD", "HEAD", "GET"]


def test_route_limits_join_file_policies_all_or_nothing() -> None:
    everything = Policy(name="all", match=["*"], limits=["3/minute"])
    runs: list[str] = []
    with TestClient(_fastapi(runs, policies=(everything,), rate="100/minute")) as client:
        statuses = [client.post("/login").status_code for _ in range(3)]
        free = [client.get("/free").status_code for _ in range(2)]
    # The route's 2/minute refuses the third login; the third request overall takes the
    # last of "all"'s 3, so /free gets nothing more.
    assert statuses == [200, 200, 429] and free == [200, 429]


def test_included_routers_are_followed_and_policies_named_after_routes() -> None:
    router = APIRouter(prefix="/v1")

    @router.get("/orders/{order_id}", name="order")
    @limit("5/minute", cost=2)
    async def order(order_id: int) -> dict[str, int]:
        return {"id": order_id}

    app = FastAPI()
    app.include_router(router, prefix="/api")
    (policy,) = route_policies(app)
    assert policy.name == "route.order"
    assert tuple(policy.match) == ("GET /api/v1/orders/{p}",)
    assert policy.cost == 2 and policy.source == "@limit"


def test_a_bad_rate_fails_where_it_is_written() -> None:
    with pytest.raises(PolicyError):
        limit("5 per fortnight")


def test_a_route_policy_whose_name_is_taken_fails_start_up() -> None:
    runs: list[str] = []
    taken = Policy(name="route.login", match=["GET /other"], limits=["3/minute"])
    app = _fastapi(runs, policies=(taken,))
    with pytest.raises(PolicyError) as failed, TestClient(app):
        pass
    assert "route.login" in str(failed.value)


@pytest.mark.process
@pytest.mark.parametrize("server", ["admission-serve", "uvicorn"])
def test_a_declared_limit_holds_under_real_servers(server: str, tmp_path: object) -> None:
    import httpx

    from tests.support import admission_serve, plain_uvicorn, run_server

    runs = tmp_path / "runs"  # type: ignore[operator]
    argv = (
        admission_serve("tests.apps.declared:app")
        if server == "admission-serve"
        else plain_uvicorn("tests.apps.declared:app")
    )
    with run_server(argv, {"DECLARED_RUNS": str(runs)}) as running:
        statuses = [httpx.post(running.url + "/login", timeout=5).status_code for _ in range(5)]
    assert statuses == [200, 200, 429, 429, 429]
    assert runs.read_text().splitlines() == ["login", "login"]

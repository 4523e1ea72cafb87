"""tests.test_trust: every rate decision is keyed by the client the service can believe and
counted on the route the app really serves, whichever path decides it (the single rate, route
policies, or both): HEAD against GET policies, the forwarded header on every path, class and
priority headers only from trusted proxies and never when repeated, the settings that would
silently do nothing or hang, and exempt paths by whole segments."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from admission import AdmissionMiddleware, Policy, Settings
from admission.concurrency.priority import priority_from
from admission.concurrency.window import CRITICAL, DEFAULT
from admission.errors import ConfigError

PROXY = "10.0.0.9"


def _client(app: object, peer: str = "127.0.0.1") -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=(peer, 4321))  # type: ignore[arg-type]
    return httpx.AsyncClient(transport=transport, base_url="http://svc")


def _starlette(settings: Settings, runs: list[str]) -> AdmissionMiddleware:
    async def export(request: Request) -> PlainTextResponse:
        runs.append(request.method)
        return PlainTextResponse("data")

    async def other(request: Request) -> PlainTextResponse:
        return PlainTextResponse("ok")

    app = Starlette(
        routes=[
            Route("/export", export, methods=["GET"]),
            Route("/{rest:path}", other, methods=["GET", "POST"]),
        ]
    )
    return AdmissionMiddleware(app, settings=settings, handle_signals=False)


def _fastapi(settings: Settings, runs: list[str]) -> AdmissionMiddleware:
    app = FastAPI()

    @app.api_route("/export", methods=["GET", "HEAD"])
    async def export(request: Request) -> PlainTextResponse:
        runs.append(request.method)
        return PlainTextResponse("data")

    return AdmissionMiddleware(app, settings=settings, handle_signals=False)


EXPORT = Policy(name="export", match=["GET /export"], limits=["2/minute"])


@pytest.mark.parametrize("build", [_starlette, _fastapi], ids=["starlette", "fastapi"])
async def test_head_is_counted_by_a_get_policy(build: object) -> None:
    runs: list[str] = []
    app = build(Settings(policies=(EXPORT,)), runs)  # type: ignore[operator]
    async with _client(app) as client:
        statuses = [(await client.head("/export")).status_code for _ in range(6)]
        statuses.append((await client.get("/export")).status_code)
    assert statuses == [200, 200, 429, 429, 429, 429, 429]
    assert runs == ["HEAD", "HEAD"]


async def test_a_head_pattern_does_not_match_get() -> None:
    policy = Policy(name="probe", match=["HEAD /export"], limits=["1/minute"])
    runs: list[str] = []
    async with _client(_starlette(Settings(policies=(policy,)), runs)) as client:
        assert [(await client.get("/export")).status_code for _ in range(3)] == [200] * 3
        assert (await client.head("/export")).status_code == 200
        assert (await client.head("/export")).status_code == 429


UNRELATED = Policy(name="login", match=["POST /login"], limits=["100/minute"])
# Each forwarded header a proxy may write, with the other one, which the client writes.
HEADERS = {
    "x-forwarded-for": (
        lambda ip: {"x-forwarded-for": ip},
        lambda n: {"forwarded": f"for=9.9.9.{n}"},
    ),
    "forwarded": (
        lambda ip: {"forwarded": f"for={ip}"},
        lambda n: {"x-forwarded-for": f"9.9.9.{n}"},
    ),
}
PATHS = {
    "single rate": dict(rate="2/minute"),
    "policy": dict(policies=(Policy(name="all", match=["*"], limits=["2/minute"]),)),
    "default beside policies": dict(rate="2/minute", policies=(UNRELATED,)),
}


@pytest.mark.parametrize("path", list(PATHS))
@pytest.mark.parametrize("header", list(HEADERS))
async def test_the_forwarded_header_keys_every_path(header: str, path: str) -> None:
    proxy_writes, client_writes = HEADERS[header]
    settings = Settings(trusted_proxies=PROXY, forwarded_header=header, **PATHS[path])
    app = _starlette(settings, [])
    async with _client(app, peer=PROXY) as client:
        # One client behind the proxy, changing the header the proxy doesn't write.
        statuses = [
            (
                await client.get("/x", headers={**proxy_writes("1.2.3.4"), **client_writes(n)})
            ).status_code
            for n in range(6)
        ]
        assert statuses == [200, 200, 429, 429, 429, 429]
        # Another client behind the same proxy has its own bucket.
        assert (await client.get("/x", headers=proxy_writes("5.6.7.8"))).status_code == 200


@pytest.mark.parametrize(
    "with_policies",
    [False, True],
    ids=["rate", "rate+policies"],
)
async def test_a_key_flood_does_not_reset_an_abuser(with_policies: bool) -> None:
    settings = Settings(
        rate="1/minute",
        key="header:X-API-Key",
        max_keys=10,
        policies=(UNRELATED,) if with_policies else None,
    )
    app = _starlette(settings, [])
    admitted = 0
    fresh = 0
    async with _client(app) as client:
        for _ in range(40):
            response = await client.get("/x", headers={"x-api-key": "abuser"})
            admitted += response.status_code == 200
            for _ in range(5):
                fresh += 1
                await client.get("/x", headers={"x-api-key": f"flood-{fresh}"})
    assert admitted == 1


async def test_a_repeated_header_key_is_keyed_by_address() -> None:
    app = _starlette(Settings(rate="1/minute", key="header:X-API-Key"), [])
    async with _client(app) as client:
        two = [("x-api-key", "a"), ("x-api-key", "b")]
        assert (await client.get("/x", headers=two)).status_code == 200
        # Same peer, other pair of values: still that address's bucket.
        two = [("x-api-key", "c"), ("x-api-key", "d")]
        assert (await client.get("/x", headers=two)).status_code == 429
        # A single value is its own client.
        assert (await client.get("/x", headers={"x-api-key": "c"})).status_code == 200


PLANS = Policy(
    name="plans",
    match=["*"],
    limits=["2/minute"],
    key="global",
    class_header="X-Plan",
    classes={"pro": ["100/minute"]},
)


async def _admitted(app: object, peer: str, headers: list[tuple[str, str]], n: int = 6) -> int:
    admitted = 0
    async with _client(app, peer=peer) as client:
        for _ in range(n):
            admitted += (await client.get("/x", headers=headers)).status_code == 200
    return admitted


async def test_a_repeated_class_header_is_no_class() -> None:
    app = _starlette(Settings(policies=(PLANS,)), [])
    # The client's own "pro" before the gateway's "free": ambiguous, so the policy's limits.
    assert await _admitted(app, "127.0.0.1", [("x-plan", "pro"), ("x-plan", "free")]) == 2


@pytest.mark.parametrize(
    ("peer", "expected"), [(PROXY, 6), ("203.0.113.7", 2)], ids=["from proxy", "from client"]
)
async def test_a_class_header_counts_only_from_a_trusted_proxy(peer: str, expected: int) -> None:
    app = _starlette(Settings(policies=(PLANS,), trusted_proxies=PROXY), [])
    assert await _admitted(app, peer, [("x-plan", "pro")]) == expected


def test_a_priority_header_counts_only_once_and_only_from_a_trusted_proxy() -> None:
    def scope(peer: str, *values: bytes) -> dict[str, object]:
        return {"client": (peer, 1), "headers": [(b"x-priority", v) for v in values]}

    anyone = priority_from("header:X-Priority")
    gated = priority_from("header:X-Priority", Settings(trusted_proxies=PROXY).trusted_networks)
    assert anyone is not None and gated is not None
    assert anyone(scope("203.0.113.7", b"critical")) == CRITICAL
    assert anyone(scope("203.0.113.7", b"critical", b"sheddable")) == DEFAULT
    assert gated(scope("203.0.113.7", b"critical")) == DEFAULT
    assert gated(scope(PROXY, b"critical")) == CRITICAL
    assert gated(scope(PROXY, b"critical", b"critical")) == DEFAULT
    assert gated({"client": None, "headers": [(b"x-priority", b"critical")]}) == DEFAULT


async def test_critical_slots_are_not_for_untrusted_clients() -> None:
    settings = Settings(
        window=2,
        priority="header:X-Priority",
        shed_at="sheddable:0.5,default:0.5",
        trusted_proxies=PROXY,
        # One client for the window's shares: here only the classes decide who gets a slot.
        key="global",
    )
    assert settings.client_chosen() == []
    app = AdmissionMiddleware(_held_app(), settings=settings, handle_signals=False)
    # A window of 2 keeps 1 slot for critical work: a client's "critical" is default work.
    scopes = [_scope("203.0.113.7", b"critical"), _scope("203.0.113.8", b"critical")]
    statuses = await _concurrent(app, scopes)
    assert sorted(statuses) == [200, 429]
    statuses = await _concurrent(app, [_scope(PROXY, b"critical"), _scope(PROXY, b"critical")])
    assert statuses == [200, 200]


def _scope(peer: str, priority: bytes) -> dict[str, object]:
    from tests.asgi import http_scope

    scope = http_scope("/x", headers=[(b"x-priority", priority)])
    scope["client"] = (peer, 1)
    return scope


def _held_app() -> object:
    async def app(scope: dict, receive: object, send: object) -> None:  # type: ignore[type-arg]
        gate = scope["state"]["gate"]
        gate.arrived += 1
        await gate.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})  # type: ignore[operator]
        await send({"type": "http.response.body", "body": b""})  # type: ignore[operator]

    return app


async def _concurrent(app: AdmissionMiddleware, scopes: list[dict[str, object]]) -> list[int]:
    import asyncio
    import types

    from tests.asgi import Client, finish, no_body, until

    gate = types.SimpleNamespace(arrived=0, release=asyncio.Event())
    clients = [Client(no_body()) for _ in scopes]
    tasks = []
    for scope, client in zip(scopes, clients, strict=True):
        scope["state"] = {"gate": gate}
        tasks.append(asyncio.ensure_future(app(scope, client.receive, client.send)))
    await until(lambda: gate.arrived + sum(c.status is not None for c in clients) == len(scopes))
    gate.release.set()
    for task in tasks:
        await finish(task)
    return [int(c.status or 0) for c in clients]


def test_start_up_says_once_that_clients_choose_their_class_and_priority(
    caplog: pytest.LogCaptureFixture,
) -> None:
    from admission.config.report import announce

    settings = Settings(window=4, priority="header:X-Priority", policies=(PLANS,))
    log = logging.getLogger("admission.test")
    with caplog.at_level(logging.INFO, logger="admission.test"):
        announce(settings, in_code=True, log=log)
    lines = [r.getMessage() for r in caplog.records if "choose" in r.getMessage()]
    assert len(lines) == 1
    assert "priority and class" in lines[0] and "X-Priority" in lines[0] and "X-Plan" in lines[0]
    assert (
        Settings(window=4, priority="header:X-Priority", trusted_proxies=PROXY).client_chosen()
        == []
    )


def test_a_file_policy_named_default_beside_the_rate_is_refused(tmp_path: Path) -> None:
    file = tmp_path / "policies.toml"
    file.write_text(
        '[[policy]]\nname = "default"\nmatch = ["POST /login"]\nlimits = ["3/minute"]\n'
    )
    env = {"ADMISSION_RATE": "10/minute", "ADMISSION_POLICIES": str(file)}
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    message = str(caught.value)
    assert len(message.splitlines()) == 1
    assert str(file) in message and "'default'" in message and "ADMISSION_POLICIES" in message
    # Without the rate, a policy may be called anything.
    Settings.from_env({"ADMISSION_POLICIES": str(file)})


@pytest.mark.timeout(20)
@pytest.mark.parametrize("kind", ["fifo", "directory", "device"])
def test_policies_must_name_a_regular_file(tmp_path: Path, kind: str) -> None:
    if kind == "fifo":
        path = tmp_path / "policies.toml"
        os.mkfifo(path)
    elif kind == "directory":
        path = tmp_path
    else:
        path = Path("/dev/zero")
    with pytest.raises(ConfigError) as caught:
        Settings.from_env({"ADMISSION_POLICIES": str(path)})
    assert "ADMISSION_POLICIES" in str(caught.value)
    assert len(str(caught.value).splitlines()) == 1


@pytest.mark.timeout(30)
def test_admission_config_with_a_fifo_fails_at_once(tmp_path: Path) -> None:
    fifo = tmp_path / "policies.toml"
    os.mkfifo(fifo)
    env = {**os.environ, "ADMISSION_POLICIES": str(fifo)}
    done = subprocess.run(
        [sys.executable, "-m", "admission", "config"],
        env=env,
        capture_output=True,
        text=True,
        timeout=20,
    )
    assert done.returncode != 0
    assert "not a regular file" in done.stderr


@pytest.mark.parametrize(
    "env",
    [
        {"ADMISSION_SHED_AT": "sheddable:0.5"},
        {"ADMISSION_SHED_AT": "sheddable:0.5", "ADMISSION_WINDOW": "8"},
        {"ADMISSION_SHED_AT": "sheddable:0.5", "ADMISSION_PRIORITY": "header:X-P"},
    ],
    ids=["alone", "no priority", "no window"],
)
def test_shed_at_that_does_nothing_is_refused(env: dict[str, str]) -> None:
    with pytest.raises(ConfigError) as caught:
        Settings.from_env(env)
    assert str(caught.value).startswith("ADMISSION_SHED_AT=")


async def test_exempt_paths_are_whole_segments() -> None:
    app = _starlette(Settings(rate="1/minute", exempt="/health,/static/"), [])
    async with _client(app) as client:
        for path in ["/health", "/health/live", "/health/", "/static/app.js"] * 2:
            assert (await client.get(path)).status_code == 200, path
        assert (await client.get("/healthcare")).status_code == 200
        assert (await client.get("/healthcare")).status_code == 429
        assert (await client.get("/static")).status_code == 429

"""Fair shares of the window and ADMISSION_CLIENT_WINDOW through the middleware in process:
the answers a client sees, the metric labels, each client's count coming back exactly once on
every path a request can end by, and a scripted load of one heavy client beside light ones.

Held requests wait on events; the one load test runs for 5 s of wall time.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterable
from typing import Any

import pytest

from admission import AdmissionMiddleware, Settings
from admission.concurrency.window import Window
from tests.asgi import Client, finish, http_scope, no_body, until, ws_scope

Message = dict[str, Any]


class App:
    """App answers 200; /hold waits until `release` is set (or the client goes away, on
    /hold-listen), /boom raises, /ws accepts and echoes until the client goes away."""

    def __init__(self) -> None:
        self.release = asyncio.Event()
        self.holding = 0
        self.sockets = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] == "websocket":
            assert (await receive())["type"] == "websocket.connect"
            await send({"type": "websocket.accept"})
            self.sockets += 1
            try:
                while (await receive())["type"] != "websocket.disconnect":
                    pass
            finally:
                self.sockets -= 1
            return
        path = scope["path"]
        if path == "/boom":
            raise RuntimeError("boom")
        if path.startswith("/hold"):
            self.holding += 1
            try:
                if path == "/hold-listen":
                    # Waits for the client's disconnect, as a streaming handler would notice it.
                    while (await receive())["type"] != "http.disconnect":
                        pass
                    return
                await self.release.wait()
            finally:
                self.holding -= 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def middleware(app: Any, **settings: Any) -> AdmissionMiddleware:
    mw = AdmissionMiddleware(app, settings=Settings(**settings), handle_signals=False)
    mw._start()
    return mw


def as_client(name: str, path: str = "/hold") -> dict[str, Any]:
    return http_scope(path, headers=[(b"x-client", name.encode())])


def start(
    mw: AdmissionMiddleware, scope: dict[str, Any], messages: Iterable[Message] = ()
) -> tuple[Client, asyncio.Task[None]]:
    client = Client(list(messages) or no_body())
    return client, asyncio.create_task(mw(scope, client.receive, client.send))


def problem(client: Client) -> dict[str, Any]:
    assert client.headers[b"content-type"] == b"application/problem+json"
    return dict(json.loads(client.body))


def assert_nothing_held(window: Window | None) -> None:
    assert window is not None
    assert window.used == 0
    assert window.clients.held == {}
    assert window._owners == {}


# --- ADMISSION_CLIENT_WINDOW -------------------------------------------------------------------


@pytest.mark.parametrize("window", [None, 32])
async def test_a_client_window_of_two_refuses_the_third_request_while_another_client_is_admitted(
    window: int | None,
) -> None:
    app = App()
    mw = middleware(app, window=window, client_window=2, key="header:X-Client")
    held = [start(mw, as_client("a")) for _ in range(2)]
    await until(lambda: app.holding == 2, what="a's two requests in the app")
    third, task = start(mw, as_client("a"))
    await finish(task)
    assert third.status == 429
    assert third.headers[b"retry-after"] == b"1"
    assert problem(third)["reason"] == "client_window"
    other = start(mw, as_client("b"))
    await until(lambda: app.holding == 3, what="b's request in the app")
    app.release.set()
    for client, task in [*held, other]:
        await finish(task)
        assert client.status == 200
    assert mw.stats.rejected["client_window"] == 1
    metrics = await metrics_text(mw)
    assert 'admission_rejected_total{policy="",reason="client_window"} 1.0' in metrics
    assert_nothing_held(mw.window)
    # Without ADMISSION_WINDOW the cap is the only limit: no window to show or report.
    assert (mw.concurrency.http is None) == (window is None)


async def metrics_text(mw: AdmissionMiddleware) -> str:
    client = Client(no_body())
    await mw(http_scope("/metrics"), client.receive, client.send)
    return client.body.decode()


async def test_one_client_sending_many_concurrent_requests_gets_its_cap_and_no_more() -> None:
    app = App()
    mw = middleware(app, window=64, client_window=4, key="header:X-Client")
    started = [start(mw, as_client("greedy")) for _ in range(40)]
    await until(lambda: sum(task.done() for _, task in started) == 36, what="36 refusals")
    assert app.holding == 4
    assert mw.window is not None and mw.window.clients.held == {"h:greedy": 4}
    app.release.set()
    for _, task in started:
        await finish(task)
    assert sorted(client.status or 0 for client, _ in started) == [200] * 4 + [429] * 36
    assert_nothing_held(mw.window)


async def test_at_a_full_window_the_client_over_its_share_is_told_fair_share_the_other_window() -> (
    None
):
    app = App()
    mw = middleware(app, window=4, key="header:X-Client")
    held = [start(mw, as_client("light"))]
    await until(lambda: app.holding == 1, what="light's request in the app")
    held += [start(mw, as_client("heavy")) for _ in range(3)]
    await until(lambda: app.holding == 4, what="a full window")
    refused = {}
    for name in ("heavy", "light"):
        client, task = start(mw, as_client(name))
        await finish(task)
        assert client.status == 429
        refused[name] = problem(client)["reason"]
    assert refused == {"heavy": "fair_share", "light": "window"}
    app.release.set()
    for _, task in held:
        await finish(task)
    assert mw.stats.rejected["fair_share"] == 1 and mw.stats.rejected["window"] == 1
    assert 'admission_rejected_total{policy="",reason="fair_share"} 1.0' in await metrics_text(mw)
    assert_nothing_held(mw.window)


# --- each count back exactly once ------------------------------------------------------------


async def test_the_client_count_comes_back_once_on_success_error_cancel_and_disconnect() -> None:
    app = App()
    # A cap of one: any count not given back would refuse the client's next request.
    mw = middleware(app, window=8, client_window=1, key="header:X-Client")
    # success
    app.release.set()
    ok, task = start(mw, as_client("a"))
    await finish(task)
    assert ok.status == 200
    assert_nothing_held(mw.window)
    # error in the application
    _, task = start(mw, as_client("a", "/boom"))
    with pytest.raises(RuntimeError):
        await finish(task)
    assert_nothing_held(mw.window)
    # cancelled from outside (the server's task, on a lost connection)
    app.release.clear()
    _, task = start(mw, as_client("a"))
    await until(lambda: app.holding == 1, what="the held request")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert_nothing_held(mw.window)
    # the client hangs up
    gone, task = start(mw, as_client("a", "/hold-listen"))
    await until(lambda: app.holding == 1, what="the listening request")
    gone.hang_up()
    await finish(task)
    assert_nothing_held(mw.window)
    # and the client is still served
    app.release.set()
    last, task = start(mw, as_client("a"))
    await finish(task)
    assert last.status == 200
    assert_nothing_held(mw.window)


async def test_the_client_count_comes_back_when_a_later_gate_refuses_after_the_slot() -> None:
    app = App()
    app.release.set()
    mw = middleware(app, window=8, client_window=1, key="header:X-Client", rate="1/minute")
    first, task = start(mw, as_client("a"))
    await finish(task)
    assert first.status == 200
    # The slot is taken, then the rate limit refuses: the slot and the count go back.
    refused, task = start(mw, as_client("a"))
    await finish(task)
    assert refused.status == 429 and problem(refused)["reason"] == "rate"
    assert_nothing_held(mw.window)


async def test_a_waiter_that_gives_up_leaves_no_count_behind() -> None:
    app = App()
    mw = middleware(app, window=1, queue_timeout=0.01, key="header:X-Client")
    holder, held = start(mw, as_client("a"))
    await until(lambda: app.holding == 1, what="the held request")
    waited, task = start(mw, as_client("b"))
    await finish(task)  # timed out waiting
    assert waited.status == 429 and problem(waited)["reason"] == "window"
    _, task = start(mw, http_scope("/", headers=[(b"x-client", b"c")]))
    mw_window = mw.window
    assert mw_window is not None
    await until(lambda: mw_window.waiting == 1, what="c waiting")
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    app.release.set()
    await finish(held)
    assert holder.status == 200
    assert_nothing_held(mw.window)


async def test_rotating_keys_leave_no_count_and_never_more_clients_than_slots() -> None:
    app = App()
    mw = middleware(app, window=16, key="header:X-Client")
    window = mw.window
    assert window is not None
    started = [start(mw, as_client(f"k{n}")) for n in range(200)]
    await until(lambda: sum(task.done() for _, task in started) == 184, what="184 refusals")
    assert len(window.clients.held) == 16 and len(window.clients.away) <= 16
    app.release.set()
    for _, task in started:
        await finish(task)
    assert_nothing_held(window)


def open_socket(mw: AdmissionMiddleware, name: str) -> tuple[Client, asyncio.Task[None]]:
    scope = ws_scope()
    scope["headers"].append((b"x-client", name.encode()))
    client = Client([{"type": "websocket.connect"}])
    client.websocket = True
    return client, asyncio.create_task(mw(scope, client.receive, client.send))


@pytest.mark.parametrize("window", [8, None])
async def test_a_client_window_caps_each_client_s_open_sockets_apart_from_its_requests(
    window: int | None,
) -> None:
    app = App()
    mw = middleware(app, window=window, client_window=2, key="header:X-Client")
    sockets = [open_socket(mw, "a") for _ in range(2)]
    await until(lambda: app.sockets == 2, what="two open websockets of one client")
    # Its third is closed at the handshake, "try again later", counted as client_window...
    third, task = open_socket(mw, "a")
    await finish(task)
    assert third.sent == [{"type": "websocket.close", "code": 1013, "reason": "client_window"}]
    assert mw.stats.rejected["client_window"] == 1
    # ...while another client opens one, and the first still has its HTTP requests: the
    # sockets are not counted against them, nor they against the sockets.
    sockets.append(open_socket(mw, "b"))
    await until(lambda: app.sockets == 3, what="the other client's socket")
    app.release.set()
    oks = [start(mw, as_client("a")) for _ in range(2)]
    for ok, task in oks:
        await finish(task)
        assert ok.status == 200
    # A socket closed gives its place back.
    client, task = sockets.pop(0)
    client.hang_up()
    await finish(task)
    sockets.append(open_socket(mw, "a"))
    await until(lambda: app.sockets == 3, what="a's socket again")
    for client, task in sockets:
        client.hang_up()
        await finish(task)
    assert mw.websocket_window is not None and mw.websocket_window.used == 0
    assert mw.websocket_window.clients.held == {}
    if mw.window is not None:
        assert_nothing_held(mw.window)


async def test_without_a_client_window_sockets_are_not_counted_per_client() -> None:
    app = App()
    mw = middleware(app, window=8, key="header:X-Client")
    sockets = [open_socket(mw, "a") for _ in range(3)]
    await until(lambda: app.sockets == 3, what="three open websockets of one client")
    assert mw.websocket_window is not None and mw.websocket_window.clients.held == {}
    for client, task in sockets:
        client.hang_up()
        await finish(task)


# --- one heavy client beside light ones ----------------------------------------------------------


async def slow_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] != "http":
        return
    await asyncio.sleep(0.1)
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})


async def scripted_load(settings: Settings, heavy: int, seconds: float) -> tuple[float, float, int]:
    """scripted_load runs 16 light clients (one connection each: a 100 ms request, then 0.1 s
    of thought) beside one client on `heavy` connections (a request as soon as the last is
    answered, 1 ms after a refusal) for `seconds`: the share of the light clients' requests
    served, their p99 latency in seconds, and the heavy client's refusals for fairness."""
    mw = AdmissionMiddleware(slow_app, settings=settings, handle_signals=False)
    mw._start()
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    light: list[tuple[bool, float]] = []

    async def one(name: str) -> int | None:
        client = Client(no_body())
        await mw(as_client(name, "/"), client.receive, client.send)
        return client.status

    async def heavy_connection() -> None:
        while loop.time() < end:
            if await one("heavy") != 200:
                await asyncio.sleep(0.001)

    async def light_client(n: int) -> None:
        await asyncio.sleep(n * 0.1 / 16)
        while loop.time() < end:
            began = loop.time()
            status = await one(f"light{n}")
            light.append((status == 200, loop.time() - began))
            await asyncio.sleep(0.1)

    tasks = [asyncio.create_task(heavy_connection()) for _ in range(heavy)]
    # The heavy client first, so that it holds the whole window when the light ones arrive.
    window = mw.window
    assert window is not None
    held = min(heavy, window.size)
    await until(lambda: window.used >= held, what="the heavy client holding the window")
    tasks += [asyncio.create_task(light_client(n)) for n in range(16)]
    await asyncio.wait_for(asyncio.gather(*tasks), seconds + 5)
    served = sorted(latency for ok, latency in light if ok)
    p99 = served[int(0.99 * (len(served) - 1))] if served else float("inf")
    assert mw.window is not None and mw.window.used == 0 and mw.window.clients.held == {}
    return len(served) / len(light), p99, mw.stats.rejected["fair_share"]


async def test_a_client_on_48_connections_no_longer_keeps_16_light_clients_out() -> None:
    settings = Settings(window=32, key="header:X-Client")
    _, alone_p99, _ = await scripted_load(settings, heavy=0, seconds=1.0)
    served, p99, unfair = await scripted_load(settings, heavy=48, seconds=4.0)
    assert served >= 0.9, f"light clients served {served:.0%}"
    assert p99 <= 2 * alone_p99, (p99, alone_p99)
    assert unfair > 0


async def test_the_window_and_the_rate_limit_walk_the_forwarded_header_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import admission.ratelimit.keys as keys

    walked: list[str] = []
    walk = keys.client_address

    def counting(scope: Any, trusted: Any, forwarded_header: str = keys.XFF) -> str:
        walked.append(str(scope["path"]))
        return walk(scope, trusted, forwarded_header)

    monkeypatch.setattr(keys, "client_address", counting)
    app = App()
    app.release.set()
    mw = middleware(app, window=8, rate="100/second", trusted_proxies="127.0.0.0/8")
    statuses = []
    for n, hop in enumerate((b"203.0.113.7", b"203.0.113.8")):
        scope = http_scope(f"/{n}", headers=[(b"x-forwarded-for", hop)])
        client = Client(no_body())
        await finish(mw(scope, client.receive, client.send))
        statuses.append(client.status)
    assert statuses == [200, 200]
    # Once per request, and each request its own key.
    assert walked == ["/0", "/1"]
    assert mw.window is not None and list(mw.window.clients.away) == [
        "ip:203.0.113.7",
        "ip:203.0.113.8",
    ]


async def test_without_proxies_the_window_and_the_rate_limit_key_a_request_once() -> None:
    # The rate limit's key function is the window's: the second reads the first's key.
    app = App()
    app.release.set()
    mw = middleware(app, window=8, rate="100/second")
    gate = mw.gate
    assert gate is not None and mw._client is not None
    assert gate.key is mw._client  # type: ignore[attr-defined]
    for n, peer in enumerate(("203.0.113.7", "203.0.113.8")):
        scope = http_scope(f"/{n}")
        scope["client"] = (peer, 40000)
        client = Client(no_body())
        await finish(mw(scope, client.receive, client.send))
        assert client.status == 200
        assert client.headers[b"ratelimit"] == b'"default";r=99;t=1'
    assert mw.window is not None and list(mw.window.clients.away) == [
        "ip:203.0.113.7",
        "ip:203.0.113.8",
    ]

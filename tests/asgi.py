"""tests.asgi: the in-process harness every test of the request path shares: a scripted
ASGI client, scope builders, a manual clock, and waits that fail instead of hanging."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

Message = dict[str, Any]

# How long a test waits for a request it has cut short to finish, before it fails.
FINISH_S = 5.0


class Client:
    """Client is one scripted ASGI connection: `receive` hands out `messages` in order and then
    blocks until `hang_up()`; `send` records what the application sent, and, while `stalled`
    (a client that stopped reading), blocks on every part of a streaming body: a short whole
    response still fits in the server's buffers."""

    def __init__(self, messages: Iterable[Message] = ()) -> None:
        self.inbox: asyncio.Queue[Message] = asyncio.Queue()
        for message in messages:
            self.inbox.put_nowait(message)
        self.sent: list[Message] = []
        self.stalled = False
        self.websocket = False

    async def receive(self) -> Message:
        return await self.inbox.get()

    async def send(self, message: Message) -> None:
        if self.stalled and message["type"] == "http.response.body" and message.get("more_body"):
            await asyncio.Event().wait()
        self.sent.append(message)

    def hang_up(self) -> None:
        kind = "websocket.disconnect" if self.websocket else "http.disconnect"
        self.inbox.put_nowait({"type": kind, "code": 1006} if self.websocket else {"type": kind})

    @property
    def status(self) -> int | None:
        for message in self.sent:
            if message["type"] == "http.response.start":
                return int(message["status"])
        return None

    @property
    def headers(self) -> dict[bytes, bytes]:
        for message in self.sent:
            if message["type"] == "http.response.start":
                return {k.lower(): v for k, v in message["headers"]}
        return {}

    @property
    def body(self) -> bytes:
        return b"".join(m.get("body", b"") for m in self.sent if m["type"] == "http.response.body")

    @property
    def complete(self) -> bool:
        return any(
            m["type"] == "http.response.body" and not m.get("more_body", False) for m in self.sent
        )


def http_scope(
    path: str = "/", method: str = "GET", headers: Iterable[tuple[bytes, bytes]] = ()
) -> dict[str, Any]:
    """http_scope is the scope a server builds for one HTTP/1.1 request."""
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": [(b"host", b"test"), *headers],
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }


def ws_scope(path: str = "/ws") -> dict[str, Any]:
    """ws_scope is the scope of a websocket handshake (no HTTP-response extension)."""
    scope = http_scope(path)
    scope["type"] = "websocket"
    scope["scheme"] = "ws"
    del scope["method"]
    return scope


def no_body() -> list[Message]:
    return [{"type": "http.request", "body": b"", "more_body": False}]


async def finish(call: Awaitable[None]) -> None:
    """finish waits for a request that should end soon, failing instead of hanging."""
    await asyncio.wait_for(call, FINISH_S)


async def until(
    predicate: Callable[[], bool], timeout_s: float = FINISH_S, what: str = "condition"
) -> None:
    """until lets the loop run until `predicate` holds, failing after `timeout_s`."""
    deadline = asyncio.get_running_loop().time() + timeout_s
    while not predicate():
        assert asyncio.get_running_loop().time() < deadline, f"{what} never held"
        await asyncio.sleep(0.001)


class ManualClock:
    """ManualClock answers `time()`, or a call, with whatever the test set; `advance` moves it
    on."""

    def __init__(self, now: float) -> None:
        self.now = now

    def time(self) -> float:
        return self.now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class CountingApp:
    """CountingApp answers 200 with a header of its own and counts the requests it sees;
    requests to /hold wait until `release` is set."""

    def __init__(self) -> None:
        self.calls = 0
        self.paths: list[str] = []
        self.release = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        self.calls += 1
        self.paths.append(scope["path"])
        if scope["path"] == "/hold":
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": [(b"x-app", b"yes")]})
        await send({"type": "http.response.body", "body": b"app"})


# What `echo_text` received, in order, for tests to check (cleared by each test that reads it).
ECHOED: list[str] = []


async def echo_text(websocket: Any) -> None:
    """echo_text is a Starlette websocket endpoint that accepts, then sends back each text
    message it receives (noting it in ECHOED) until the client goes away."""
    from starlette.websockets import WebSocketDisconnect

    await websocket.accept()
    try:
        while True:
            text = await websocket.receive_text()
            ECHOED.append(text)
            await websocket.send_text(text)
    except WebSocketDisconnect:
        pass

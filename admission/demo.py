"""admission.demo: the plain demo application, without the middleware.

`admission serve` wraps it in `AdmissionMiddleware`; `uvicorn admission.demo:app` runs it bare,
which is the baseline the benchmarks compare against.
"""

from __future__ import annotations

import asyncio

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import PlainTextResponse, Response, StreamingResponse
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocket, WebSocketDisconnect

from admission.concurrency.window import CRITICAL, Window
from admission.lifecycle.context import draining

MAX_SLOW_MS = 600_000
MAX_CHUNKS = 100_000
MAX_BACKEND_CAPACITY = 10_000
# Calls that may queue for the simulated downstream: beyond it, 503 (a bounded pool queue).
MAX_BACKEND_WAITERS = 100_000


def _strict_param(request: Request, name: str, default: int, upper: int) -> int:
    """_strict_param reads a whole-number query parameter from 0 to `upper`, or `default` when
    it is absent; anything else (`abc`, `-5`, `1e3`, a number above `upper`) is a 400 that says
    what was expected, rather than a silent default."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    if not (raw.isascii() and raw.isdigit() and len(raw) <= 12 and int(raw) <= upper):
        raise HTTPException(400, f"{name} must be a whole number from 0 to {upper}, got {raw!r}")
    return int(raw)


def _int_param(request: Request, name: str, default: int, upper: int) -> int:
    """_int_param reads a non-negative integer query parameter, clamped to `upper`; `default`
    when absent or not an integer (the `/backend` simulation's documented leniency)."""
    raw = request.query_params.get(name)
    if raw is None:
        return default
    try:
        value = int(raw)
    except ValueError:
        return default
    return max(0, min(value, upper))


async def index(request: Request) -> Response:
    """index answers at once: the cheapest request there is."""
    return PlainTextResponse("ok\n")


async def slow(request: Request) -> Response:
    """slow sleeps `ms` milliseconds (default 100) before answering."""
    ms = _strict_param(request, "ms", 100, MAX_SLOW_MS)
    await asyncio.sleep(ms / 1000)
    return PlainTextResponse(f"slept {ms} ms\n")


async def stream(request: Request) -> Response:
    """stream sends `chunks` chunks `gap_ms` apart; it stops early once a drain has begun."""
    chunks = _strict_param(request, "chunks", 10, MAX_CHUNKS)
    gap_ms = _strict_param(request, "gap_ms", 100, MAX_SLOW_MS)

    async def body() -> object:
        for i in range(chunks):
            if i:
                await asyncio.sleep(gap_ms / 1000)
            if draining(request.scope):
                yield b"draining: stream ended early\n"
                return
            yield f"chunk {i}\n".encode()

    return StreamingResponse(body(), media_type="text/plain")  # type: ignore[arg-type]


class Downstream:
    """Downstream is a simulated dependency (a database pool): `capacity` calls at once, the
    rest wait their turn in arrival order. One per process, shared by every request; each call
    sets the capacity (so a load can change it halfway), and a larger one lets waiters in."""

    def __init__(self) -> None:
        self.pool: Window | None = None

    async def call(self, hold_s: float, capacity: int) -> bool:
        """call holds one slot for `hold_s` seconds; False when the queue is full."""
        pool = self.pool
        if pool is None:
            # Created on first use, on the loop that serves requests; no shedding classes.
            self.pool = pool = Window(capacity, max_waiters=MAX_BACKEND_WAITERS, shed_at={})
        pool.resize(capacity)
        if not await pool.take(float(MAX_SLOW_MS), CRITICAL):
            return False
        try:
            await asyncio.sleep(hold_s)
        finally:
            pool.give()
        return True


downstream = Downstream()


async def backend(request: Request) -> Response:
    """backend calls a simulated downstream of `capacity` slots (default 16), each call holding
    one for `ms` milliseconds (default 20): past `capacity` in flight, calls queue for a slot
    and latency grows. The latest call's `capacity` is the downstream's."""
    ms = _int_param(request, "ms", 20, MAX_SLOW_MS)
    capacity = max(1, _int_param(request, "capacity", 16, MAX_BACKEND_CAPACITY))
    if not await downstream.call(ms / 1000, capacity):
        return PlainTextResponse("downstream queue full\n", status_code=503)
    return PlainTextResponse(f"held a slot of {capacity} for {ms} ms\n")


async def echo(request: Request) -> Response:
    """echo answers with the request body it received; a client that hangs up before its body
    is all there gets nothing (there is nobody to answer), not a traceback in the log."""
    try:
        body = await request.body()
    except ClientDisconnect:
        return Response(status_code=499)
    return Response(
        body, media_type=request.headers.get("content-type", "application/octet-stream")
    )


async def boom(request: Request) -> Response:
    """boom raises, to show that a failing handler answers 500 and leaks nothing."""
    raise RuntimeError("boom: the demo handler failed on purpose")


async def ws_echo(websocket: WebSocket) -> None:
    """ws_echo sends every message back until the client closes."""
    await websocket.accept()
    try:
        while True:
            message = await websocket.receive()
            if message["type"] == "websocket.disconnect":
                return
            if message.get("text") is not None:
                await websocket.send_text(message["text"])
            elif message.get("bytes") is not None:
                await websocket.send_bytes(message["bytes"])
    except WebSocketDisconnect:
        return


app = Starlette(
    routes=[
        Route("/", index),
        Route("/slow", slow),
        Route("/stream", stream),
        Route("/echo", echo, methods=["POST"]),
        Route("/boom", boom),
        Route("/backend", backend),
        WebSocketRoute("/ws", ws_echo),
    ]
)

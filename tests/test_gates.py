"""The gates together: drain, window and rate limit, in that order, and a refusal by any one of
them holds nothing of the others (no window slot, no token).

The store records every decision asked of it, so "took a token" is "the store was asked".
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest

from admission import AdmissionMiddleware, Settings
from admission.bucket import Bucket, Decision
from admission.stores.memory import MemoryStore
from tests.asgi import until


class RecordingStore(MemoryStore):
    """RecordingStore is a memory store that remembers which keys it was asked about."""

    def __init__(self, bucket: Bucket) -> None:
        super().__init__(bucket)
        self.asked: list[str] = []

    async def decide(self, key: str, cost: int = 1) -> Decision:
        self.asked.append(key)
        return await super().decide(key, cost)


class HoldingApp:
    """HoldingApp answers `/` at once and holds `/hold` until `release` is set."""

    def __init__(self) -> None:
        self.held = asyncio.Event()
        self.release = asyncio.Event()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        if scope["path"] == "/hold":
            self.held.set()
            await self.release.wait()
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def gated(app: HoldingApp, window: int) -> tuple[AdmissionMiddleware, RecordingStore]:
    """gated is the middleware with a window and one token a minute per X-Client."""
    store = RecordingStore(Bucket(interval_s=60.0, capacity=1))
    settings = Settings(rate="1/minute", key="header:X-Client", window=window, drain_delay=0)
    return AdmissionMiddleware(app, settings=settings, store=store, handle_signals=False), store


def client_for(middleware: AdmissionMiddleware) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=middleware, client=("192.0.2.1", 4000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver", timeout=10)


async def get(client: httpx.AsyncClient, who: str, path: str = "/") -> httpx.Response:
    return await client.get(path, headers={"X-Client": who})


async def test_a_request_refused_by_the_rate_limit_gives_its_window_slot_back() -> None:
    app = HoldingApp()
    middleware, _ = gated(app, window=1)
    async with client_for(middleware) as client:
        assert (await get(client, "alice")).status_code == 200
        for _ in range(3):
            refused = await get(client, "alice")
            assert refused.status_code == 429
            assert "ratelimit" in refused.headers  # the rate limit's refusal, not the window's
        # The one slot is free: the refusals held none of it.
        assert (await get(client, "bob")).status_code == 200
        assert middleware.ledger.in_flight == 0


async def test_a_request_refused_by_the_window_takes_no_token() -> None:
    app = HoldingApp()
    middleware, store = gated(app, window=1)
    async with client_for(middleware) as client:
        holder = asyncio.create_task(get(client, "carol", "/hold"))
        await asyncio.wait_for(app.held.wait(), 5)
        asked = len(store.asked)
        for _ in range(3):
            refused = await get(client, "dave")
            assert refused.status_code == 429
            assert "ratelimit" not in refused.headers  # the window's refusal
        assert len(store.asked) == asked, "a request refused by the window took a token"
        app.release.set()
        assert (await holder).status_code == 200
        # dave's one token is still there.
        assert (await get(client, "dave")).status_code == 200


@pytest.mark.parametrize("window", [1, 2])
async def test_a_draining_refusal_takes_neither_slot_nor_token(window: int) -> None:
    app = HoldingApp()
    middleware, store = gated(app, window=window)
    async with client_for(middleware) as client:
        # One request in flight keeps the drain in its draining phase.
        holder = asyncio.create_task(get(client, "carol", "/hold"))
        await asyncio.wait_for(app.held.wait(), 5)
        asked = len(store.asked)
        drained = middleware.drain_state.begin()
        await until(lambda: not middleware.drain_state.accepting, 5, "draining")
        for _ in range(3):
            refused = await get(client, "dave")
            # 503 for draining, whether or not the window had room: with a window of 1, a
            # refusal that had to pass the window first would get the window's 429.
            assert refused.status_code == 503, refused.text
            assert "ratelimit" not in refused.headers
        assert len(store.asked) == asked, "a draining refusal took a token"
        assert middleware.ledger.in_flight == 1
        app.release.set()
        assert (await holder).status_code == 200
        await asyncio.wait_for(drained, 5)

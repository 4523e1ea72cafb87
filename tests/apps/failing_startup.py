"""tests.apps.failing_startup: an ASGI app whose lifespan start-up fails, every time."""

from __future__ import annotations

from typing import Any


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """app refuses to start; it would answer 500 to any request."""
    if scope["type"] == "lifespan":
        while (await receive())["type"] != "lifespan.startup":
            pass
        await send({"type": "lifespan.startup.failed", "message": "no database"})
        return
    await send({"type": "http.response.start", "status": 500, "headers": []})
    await send({"type": "http.response.body", "body": b""})

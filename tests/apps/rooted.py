"""tests.apps.rooted: a plain ASGI app that answers every request with the `root_path` and
`path` of its scope, as JSON, so a test can see what the server handed on."""

from __future__ import annotations

import json

from admission.types import Receive, Scope, Send


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    """app answers 200 with {"root_path": ..., "path": ...}; other scope types are ignored."""
    if scope["type"] != "http":
        return
    body = json.dumps({"root_path": scope.get("root_path", ""), "path": scope["path"]}).encode()
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})

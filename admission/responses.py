"""admission.responses: what the middleware itself answers, written straight to ASGI `send`."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, MutableMapping, Sequence
from http import HTTPStatus
from typing import Any

Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]
RawHeaders = list[tuple[bytes, bytes]]

DETAILS = {
    "rate": "Too many requests from this client; retry after the indicated delay.",
    "window": "The service is at capacity; retry after the indicated delay.",
    "draining": "The service is shutting down; retry on another instance.",
    "read_timeout": "The request body did not arrive in time.",
    "idle_timeout": "The request body stalled for too long between two chunks.",
    "deadline": "The request did not complete within its deadline.",
    "drain_deadline": "The service shut down before the request completed.",
}

# Websocket close codes: 1013 "try again later" for refusals, 1001 "going away" for drains.
WS_CLOSE = {"rate": 1013, "window": 1013, "draining": 1001}


def problem_body(status: int, reason: str, **extra: Any) -> bytes:
    """problem_body is an RFC 9457 problem document for `status`, with `reason` as an extension
    member naming why admission refused (rate, window, draining, read_timeout, ...)."""
    doc = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": DETAILS.get(reason, HTTPStatus(status).description),
        "reason": reason,
        **extra,
    }
    return json.dumps(doc, separators=(",", ":")).encode()


async def send_problem(
    send: Send, status: int, reason: str, headers: Sequence[tuple[bytes, bytes]] = (), **extra: Any
) -> None:
    """send_problem sends a whole problem+json response."""
    body = problem_body(status, reason, **extra)
    await send_bytes(send, status, body, b"application/problem+json", headers)


async def send_json(
    send: Send, status: int, doc: Any, headers: Sequence[tuple[bytes, bytes]] = ()
) -> None:
    """send_json sends a whole application/json response."""
    await send_bytes(send, status, json.dumps(doc).encode(), b"application/json", headers)


async def send_bytes(
    send: Send,
    status: int,
    body: bytes,
    content_type: bytes,
    headers: Sequence[tuple[bytes, bytes]] = (),
    *,
    kind: str = "http.response",
) -> None:
    """send_bytes sends a whole response with `body`; `kind` is the message prefix, which is
    "websocket.http.response" for a response to a websocket handshake."""
    await send(
        {
            "type": kind + ".start",
            "status": status,
            "headers": [
                (b"content-type", content_type),
                (b"content-length", str(len(body)).encode()),
                *headers,
            ],
        }
    )
    await send({"type": kind + ".body", "body": body})


async def refuse_websocket(
    scope: Message, receive: Receive, send: Send, status: int, reason: str, headers: RawHeaders
) -> None:
    """refuse_websocket turns a websocket handshake down before it is accepted: with an HTTP
    problem response where the server supports the `websocket.http.response` extension, else
    by closing with 1013 (try again later) or 1001 (going away)."""
    message = await receive()
    if message.get("type") != "websocket.connect":
        return
    if "websocket.http.response" in (scope.get("extensions") or {}):
        body = problem_body(status, reason)
        kind = "websocket.http.response"
        await send_bytes(send, status, body, b"application/problem+json", headers, kind=kind)
        return
    await send({"type": "websocket.close", "code": WS_CLOSE.get(reason, 1013), "reason": reason})

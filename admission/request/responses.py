"""admission.request.responses: what the middleware itself answers, written straight to ASGI
`send`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from http import HTTPStatus
from typing import Any

from admission.reasons import Reason
from admission.refusal import REFUSAL_STATE_KEY, Refusal
from admission.types import ASGIApp, Message, Receive, Scope, Send


def problem_body(
    reason: Reason, status: int, detail: str | None = None, policy: str | None = None
) -> bytes:
    """problem_body is an RFC 9457 problem document for `status`, with the reason's label as
    an extension member naming why admission refused (rate, window, draining, read_timeout,
    ...), and its detail unless `detail` is given."""
    doc = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": status,
        "detail": reason.detail if detail is None else detail,
        "reason": reason.label,
    }
    if policy is not None:
        # The route policy that refused (docs/policies.md).
        doc["policy"] = policy
    return json.dumps(doc, separators=(",", ":")).encode()


async def send_problem(
    send: Send,
    reason: Reason,
    headers: Sequence[tuple[bytes, bytes]] = (),
    *,
    status: int | None = None,
    detail: str | None = None,
    policy: str | None = None,
) -> None:
    """send_problem sends a whole problem+json response for `reason`, with its status (or
    `status`), its fixed header fields and then `headers`; `policy` names the route policy
    that refused, if one did."""
    status = reason.status if status is None else status
    assert status is not None, f"{reason.label} has no HTTP answer"
    body = problem_body(reason, status, detail, policy)
    fields = (*reason.headers, *headers)
    await send_bytes(send, status, body, b"application/problem+json", fields)


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


async def answer_refusal(
    scope: Scope,
    receive: Receive,
    send: Send,
    refusal: Refusal,
    on_refuse: ASGIApp | None = None,
) -> None:
    """answer_refusal answers a request admission turned down: through `on_refuse` when one is
    set (it finds `refusal` in the scope's state, see `admission.refusal`), else with the
    default answer, problem+json (or the websocket refusal) naming the reason and the policy
    if one refused, with every field of `refusal.headers`."""
    if on_refuse is not None:
        state = scope.get("state")
        if state is None:
            scope["state"] = state = {}
        state[REFUSAL_STATE_KEY] = refusal
        await on_refuse(scope, receive, send)
        return
    cause = refusal.cause
    policy = refusal.policy or None
    if scope["type"] == "websocket":
        await refuse_websocket(scope, receive, send, cause, refusal.headers, policy=policy)
        return
    body = problem_body(cause, refusal.status, policy=policy)
    await send_bytes(send, refusal.status, body, b"application/problem+json", refusal.headers)


async def refuse_websocket(
    scope: Message,
    receive: Receive,
    send: Send,
    reason: Reason,
    fields: Sequence[tuple[bytes, bytes]],
    policy: str | None = None,
) -> None:
    """refuse_websocket turns a websocket handshake down before it is accepted: with an HTTP
    problem response carrying `fields` where the server supports the `websocket.http.response`
    extension, else by closing with the reason's close code (1013 try again later, 1001 going
    away)."""
    message = await receive()
    if message.get("type") != "websocket.connect":
        return
    if "websocket.http.response" in (scope.get("extensions") or {}):
        assert reason.status is not None
        body = problem_body(reason, reason.status, policy=policy)
        kind = "websocket.http.response"
        await send_bytes(send, reason.status, body, b"application/problem+json", fields, kind=kind)
        return
    await send({"type": "websocket.close", "code": reason.ws_close, "reason": reason.label})

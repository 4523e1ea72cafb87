"""admission.refusal: why admission turned a request down, as an `on_refuse` app sees it.

Every refusal admission answers (a rate or storage refusal, a full window, a shed, the drain,
a body that doesn't fit, a timeout before the response began) goes through the one
`on_refuse` app when `Settings(on_refuse=app)` is set, which finds its `Refusal` in the scope
(`refusal(scope)`), so a service gives its clients one error shape.
"""

from __future__ import annotations

from typing import Any, NamedTuple

from admission.bucket import Decision
from admission.reasons import Reason
from admission.types import RawHeaders

__all__ = ["REFUSAL_STATE_KEY", "Refusal", "refusal"]

REFUSAL_STATE_KEY = "admission_refusal"


class Refusal(NamedTuple):
    """Refusal is why admission turned a request down.

    `reason`: the metric label and problem `reason` ("rate", "storage", "window", "shed",
    "draining", "buffers_full", "read_timeout", ...). `status`: the HTTP status of the default
    answer. `policy`: the name of the route policy that refused ("default" for
    `ADMISSION_RATE`), "" for refusals no policy made. `decision`: the refusing limit's
    decision, None for refusals no limit made. `headers`: every header field the default
    answer carries (Retry-After, RateLimit, Connection). `cause`: the `Reason` itself.
    """

    reason: str
    status: int
    policy: str
    decision: Decision | None
    headers: RawHeaders
    cause: Reason

    @classmethod
    def of(cls, cause: Reason, headers: RawHeaders | None = None) -> Refusal:
        """Refusal.of is the refusal for `cause` that no limit made, with the reason's own
        header fields unless `headers` are given."""
        assert cause.status is not None, f"{cause.label} has no HTTP answer"
        fields = list(cause.headers) if headers is None else headers
        return cls(cause.label, cause.status, "", None, fields, cause)


def refusal(request: Any) -> Refusal | None:
    """refusal is the Refusal an `on_refuse` app is answering for: pass it the ASGI scope or
    anything with a `.scope` (Starlette's Request and WebSocket); None elsewhere."""
    scope = request if isinstance(request, dict) else getattr(request, "scope", {})
    state = scope.get("state") or {}
    found = state.get(REFUSAL_STATE_KEY)
    return found if isinstance(found, Refusal) else None

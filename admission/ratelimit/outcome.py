"""admission.ratelimit.outcome: what the rate gate answers for a request: an `Outcome`, and
on a refusal the `Refusal` an `on_refuse` app finds in the scope (`refusal`)."""

from __future__ import annotations

from typing import Any, NamedTuple

from admission.bucket import Decision
from admission.types import RawHeaders

__all__ = ["REFUSAL_STATE_KEY", "Outcome", "RawHeaders", "Refusal", "refusal"]

REFUSAL_STATE_KEY = "admission_refusal"


class Refusal(NamedTuple):
    """Refusal is why admission turned a request down, as the `on_refuse` app sees it.

    `reason`: "rate" (the metric label and problem `reason`). `status`: 429. `policy`: the name
    of the policy that refused. `decision`: the refusing limit's decision. `headers`: the
    Retry-After and RateLimit fields the default answer carries.
    """

    reason: str
    status: int
    policy: str
    decision: Decision
    headers: RawHeaders


def refusal(request: Any) -> Refusal | None:
    """refusal is the Refusal an `on_refuse` app is answering for: pass it the ASGI scope or
    anything with a `.scope` (Starlette's Request and WebSocket); None elsewhere."""
    scope = request if isinstance(request, dict) else getattr(request, "scope", {})
    state = scope.get("state") or {}
    found = state.get(REFUSAL_STATE_KEY)
    return found if isinstance(found, Refusal) else None


class Outcome(NamedTuple):
    """Outcome is a request's answer from the policies: `refusal` is None when admitted;
    `headers` are the RateLimit fields for an admitted response."""

    refusal: Refusal | None
    headers: RawHeaders

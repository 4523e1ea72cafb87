"""admission.ratelimit.outcome: what the rate gate answers for a request: an `Outcome`, with
the `Refusal` (admission.refusal) when it refused."""

from __future__ import annotations

from typing import NamedTuple

from admission.refusal import Refusal
from admission.types import RawHeaders

__all__ = ["Outcome"]


class Outcome(NamedTuple):
    """Outcome is a request's answer from the policies: `refusal` is None when admitted;
    `headers` are the RateLimit fields for an admitted response."""

    refusal: Refusal | None
    headers: RawHeaders

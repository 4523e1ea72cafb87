"""admission.ratelimit.outcome: what the rate gate answers for a request: an `Outcome`, with
the `Refusal` (admission.refusal) when it refused."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import NamedTuple

from admission.bucket import Decision
from admission.reasons import RATE, STORAGE
from admission.refusal import Refusal
from admission.stores.guard import StorageDenial
from admission.types import RawHeaders, Send

__all__ = ["Outcome", "refused"]


class Outcome(NamedTuple):
    """Outcome is a request's answer from the policies: `refusal` is None when admitted;
    `headers` are the RateLimit fields for an admitted response. `after`, for a request that
    a policy's `charge_when` may charge once its response starts, wraps the response's `send`
    to do so (`admission.ratelimit.charge_when`); None for every other request. An outcome
    may be handed out again for another request: never changed once made. On the request
    path it is unpacked rather than read by field name, which Python 3.11 doesn't
    specialise."""

    refusal: Refusal | None
    headers: Sequence[tuple[bytes, bytes]]
    after: Callable[[Send], Send] | None


def refused(
    decision: Decision, policy: str, retry_s: int, fields: Sequence[tuple[bytes, bytes]]
) -> Outcome:
    """refused is the Outcome of a request the limit of `policy` refused with `decision`,
    `retry_s` seconds its Retry-After: the one storage-failure answer of every rate limit
    when the store failed (`StorageDenial`: 503, Retry-After alone, since nothing is known of
    the client's buckets to tell it), else a rate refusal (429) with Retry-After first, then
    the RateLimit `fields`."""
    retry = (b"retry-after", str(retry_s).encode())
    if type(decision) is StorageDenial:
        headers: RawHeaders = [retry]
        return Outcome(Refusal("storage", 503, policy, decision, headers, STORAGE), headers, None)
    headers = [retry, *fields]
    return Outcome(Refusal("rate", 429, policy, decision, headers, RATE), headers, None)

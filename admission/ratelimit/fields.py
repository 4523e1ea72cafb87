"""admission.ratelimit.fields: the RateLimit and RateLimit-Policy fields of the IETF draft.

draft-ietf-httpapi-ratelimit-headers: `RateLimit-Policy: "<name>";q=<quota>;w=<window s>`
and `RateLimit: "<name>";r=<remaining>;t=<seconds until full>`, both Structured Field lists.
The policy states the bucket: its quota `q` is the burst (the most a rested client may send at
once) and `w` the seconds an empty bucket takes to fill again, so `q / w` is the sustained rate
(exactly when `w` is whole; `w` is rounded up otherwise). `r` counts whole tokens left, never
more than `q`, so a client's "used = q - r" is never negative; `t` is the seconds until the
bucket is full again.
"""

from __future__ import annotations

import math

from admission.bucket import Decision

POLICY_NAME = "default"
RawHeaders = list[tuple[bytes, bytes]]


def policy_item(name: str, capacity: int, fill_time_s: float) -> str:
    """policy_item is one item of a RateLimit-Policy field, the bucket `name` of `capacity`
    tokens that fills in `fill_time_s`: quota `q` = the capacity (the burst), `w` = the fill
    time in whole seconds, rounded up, at least 1."""
    window = max(1, math.ceil(fill_time_s - 1e-9))
    return f'"{name}";q={capacity};w={window}'


def policy_header(capacity: int, fill_time_s: float) -> tuple[bytes, bytes]:
    """policy_header is the RateLimit-Policy field of the one bucket "default" (`policy_item`)."""
    return (b"ratelimit-policy", policy_item(POLICY_NAME, capacity, fill_time_s).encode())


# Formatted RateLimit fields by (name, remaining, seconds): a handful recur for every client,
# and formatting one costs more than the rest of the header work. Bounded: cleared when full.
_RATELIMIT_CACHE: dict[tuple[str, int, int], tuple[bytes, bytes]] = {}
_RATELIMIT_CACHE_MAX = 4096
_INF = math.inf


def ratelimit_header(decision: Decision, name: str = POLICY_NAME) -> tuple[bytes, bytes]:
    """ratelimit_header is the RateLimit field for `decision` of the limit called `name` (a
    route policy's limit, or `ADMISSION_RATE`'s "default")."""
    reset = decision.reset_after_s
    # Whole seconds, rounded up; 0 for a full bucket (and for an infinite or NaN reset).
    seconds = math.ceil(reset) if 0.0 < reset < _INF else 0
    key = (name, decision.remaining, seconds)
    field = _RATELIMIT_CACHE.get(key)
    if field is None:
        if len(_RATELIMIT_CACHE) >= _RATELIMIT_CACHE_MAX:
            _RATELIMIT_CACHE.clear()
        field = (b"ratelimit", f'"{name}";r={decision.remaining};t={seconds}'.encode())
        _RATELIMIT_CACHE[key] = field
    return field


def retry_after_seconds(delay_s: float, fallback_s: float = 1.0) -> int:
    """retry_after_seconds is a Retry-After value: whole seconds, rounded up, at least 1;
    `fallback_s` stands in for an infinite delay."""
    if not math.isfinite(delay_s):
        delay_s = fallback_s
    return max(1, math.ceil(delay_s - 1e-9))

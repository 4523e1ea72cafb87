"""admission.charges: what one request costs in each bucket it touches, decided all at once.

A request matching several limits is a list of charges, one per bucket. Charges come in
groups: group 0 holds every limit that is enforced, and each shadow policy has a group of its
own. A group admits only if every bucket in it admits, and tokens are
taken from a group only if it admits and group 0 admits too: a refused request takes nothing
from any bucket, and a shadow policy counts only the requests that really went through.
The Redis store runs the same rule in one Lua script (`stores/gcra_many.lua`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

from admission.bucket import _EPSILON_S, Bucket, Decision

ENFORCED = 0
NONE_REFUSED: frozenset[int] = frozenset()
# Named tuples built directly, skipping their Python-level __new__ (as in admission.bucket): a
# few are built per request.
_new_tuple = tuple.__new__


class Charge(NamedTuple):
    """Charge is `cost` tokens from the bucket `bucket` keeps for `client` under `name`.

    `client` is the client key (in Redis Cluster, the hash tag: all of one client's buckets
    live in one slot); `name` tells that client's buckets apart (policy, class, limit), so the
    store key is the pair. `group` is 0 for an enforced limit, else its shadow policy's number.
    """

    client: str
    name: str
    bucket: Bucket
    cost: int
    group: int = ENFORCED


class Verdict(NamedTuple):
    """Verdict is the answer for one request's charges.

    `admitted`: every enforced charge admitted (true with none). `decisions`: one per charge, in
    order; each one's `allowed` is its own bucket's verdict, and its remaining tokens are what
    the bucket holds after the request (nothing taken unless its group was charged).
    `refused_groups`: the groups, shadow ones included, that some bucket refused.
    """

    admitted: bool
    decisions: list[Decision]
    refused_groups: frozenset[int]


def decide_charges(
    charges: Sequence[Charge], tats: Sequence[float | None], now: float
) -> tuple[Verdict, list[float | None]]:
    """decide_charges decides `charges` whose buckets hold `tats` at `now`.

    Returns the verdict and the TATs to keep, one per charge (unchanged for every charge that
    took nothing). Each bucket's arithmetic is `Bucket.decide`; this adds only the rule of
    which groups are charged. Pure: the memory store keeps the TATs, tests pass a manual `now`.
    """
    taken = take_all(charges, tats, now)
    if taken is not None:
        # Every bucket admits: the common case, and all of it is charged.
        return _new_tuple(Verdict, (True, taken[1], NONE_REFUSED)), taken[0]  # type: ignore[return-value]
    decisions: list[Decision] = []
    new_tats: list[float | None] = []
    refused: set[int] | None = None
    for charge, tat in zip(charges, tats, strict=True):
        new_tat, decision = charge.bucket.decide(tat, now, charge.cost)
        decisions.append(decision)
        new_tats.append(new_tat)
        if not decision.allowed:
            if refused is None:
                refused = set()
            refused.add(charge.group)
    if refused is None:  # pragma: no cover - take_all admitted these
        return Verdict(True, decisions, NONE_REFUSED), new_tats
    enforced = ENFORCED not in refused
    for i, charge in enumerate(charges):
        if enforced and charge.group not in refused:
            continue
        # Not charged: its group, or the enforced group, refused.
        new_tats[i] = tats[i]
        if decisions[i].allowed:
            # What it holds now, not what it would have held: nothing was taken.
            decisions[i] = charge.bucket.decide(tats[i], now, 0)[1]
    return Verdict(enforced, decisions, frozenset(refused)), new_tats


def take_all(
    charges: Sequence[Charge], tats: Sequence[float | None], now: float
) -> tuple[list[float], list[Decision]] | None:
    """take_all is `Bucket.decide` for every charge at once when every bucket admits: the new
    TATs and the decisions, expression for expression what `decide` returns (tests hold them
    equal); None as soon as one would refuse, and `decide_charges` then asks `decide` for the
    details. It exists for speed: one call for a request's buckets instead of one `decide`
    each (benchmarks/policy_instructions.py, variant 3x2, measured before the memory store's
    `take_all_at` took that variant's requests; it serves the general path and Redis's
    local fallback)."""
    new_tats: list[float] = []
    decisions: list[Decision] = []
    for charge, tat in zip(charges, tats, strict=True):
        bucket = charge.bucket
        cost = charge.cost
        interval = bucket.interval_s
        capacity = bucket.capacity
        limit = capacity * interval
        base = now if tat is None or tat < now else tat
        new_tat = base + cost * interval
        if cost > capacity or cost < 0 or new_tat - now > limit + _EPSILON_S:
            return None
        remaining = math.floor((limit - (new_tat - now)) / interval + _EPSILON_S)
        if remaining > capacity:
            remaining = capacity
        elif remaining < 0:
            remaining = 0
        new_tats.append(new_tat)
        decisions.append(_new_tuple(Decision, (True, remaining, 0.0, new_tat - now)))
    return new_tats, decisions

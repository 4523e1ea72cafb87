"""admission.charges: what one request costs in each bucket it touches, decided all at once.

A request matching several limits is a list of charges, one per bucket. Charges come in
groups: group 0 holds every limit that is enforced, and each shadow policy has a group of its
own. A group admits only if every bucket in it admits, and tokens are
taken from a group only if it admits and group 0 admits too: a refused request takes nothing
from any bucket, and a shadow policy counts only the requests that really went through.
The Redis store runs the same rule in one Lua script (`stores/gcra_many.lua`).

A charge may be a peek (a policy's `charge_when`): its bucket must hold the cost for the
request to be admitted, as any other, but nothing is taken from it then; the request's
outcome decides later whether it is charged (`charge_after`, and a store's `charge`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from admission.bucket import Bucket, Decision

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
    `peek`: the bucket is only asked whether it holds `cost` now; nothing is taken (see the
    module's docstring).
    """

    client: str
    name: str
    bucket: Bucket
    cost: int
    group: int = ENFORCED
    peek: bool = False


class Verdict(NamedTuple):
    """Verdict is the answer for one request's charges.

    `admitted`: every enforced charge admitted (true with none). `decisions`: one per charge, in
    order; each one's `allowed` is its own bucket's verdict, and its remaining tokens are what
    the bucket holds after the request (nothing taken unless its group was charged; a peek
    whose group was charged reports what its bucket would hold were it charged).
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
    took nothing). Each bucket's arithmetic is `Bucket.decide`, the one place it is written;
    this adds only the rule of which groups are charged. Pure: the memory store keeps the
    TATs, tests pass a manual `now`. A peek's TAT is always kept unchanged.
    """
    decisions: list[Decision] = []
    new_tats: list[float | None] = []
    refused: set[int] | None = None
    for charge, tat in zip(charges, tats, strict=True):
        new_tat, decision = charge.bucket.decide(tat, now, charge.cost)
        decisions.append(decision)
        new_tats.append(tat if charge.peek else new_tat)
        if not decision.allowed:
            if refused is None:
                refused = set()
            refused.add(charge.group)
    if refused is None:
        # Every bucket admits: the common case, and all of it is charged.
        return _new_tuple(Verdict, (True, decisions, NONE_REFUSED)), new_tats
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


def charge_after(
    charges: Sequence[Charge], tats: Sequence[float | None], now: float
) -> list[float]:
    """charge_after is the TATs of `charges`' buckets, holding `tats`, once each is charged its
    cost at `now` after the response (`Bucket.charge`: in full, below empty if need be), in
    order: a bucket charged twice takes both costs. Pure, like `decide_charges`; the Redis
    store runs the same in `stores/charge.lua`."""
    latest: dict[tuple[str, str], float] = {}
    out = []
    for charge, tat in zip(charges, tats, strict=True):
        key = (charge.client, charge.name)
        new = charge.bucket.charge(latest.get(key, tat), now, charge.cost)
        latest[key] = new
        out.append(new)
    return out

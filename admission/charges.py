"""admission.charges: what one request costs in each bucket it touches, decided all at once.

A request matching several limits is a list of charges, one per bucket. Charges come in
groups: group 0 holds every limit that is enforced, and each shadow policy has a group of its
own. A group admits only if every bucket in it admits (`bucket.decide_all`), and tokens are
taken from a group only if it admits and group 0 admits too: a refused request takes nothing
from any bucket, and a shadow policy counts only the requests that really went through.
The Redis store runs the same rule in one Lua script (`stores/gcra_many.lua`).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

from admission.bucket import Bucket, Decision, decide_all

ENFORCED = 0


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
    took nothing). Pure: the memory store keeps the TATs, tests pass a manual `now`.
    """
    groups: dict[int, list[int]] = {}
    for i, charge in enumerate(charges):
        groups.setdefault(charge.group, []).append(i)
    decisions: list[Decision] = [None] * len(charges)  # type: ignore[list-item]
    new_tats: list[float | None] = list(tats)
    verdicts: dict[int, bool] = {}
    taken: dict[int, list[float | None]] = {}
    for group, members in groups.items():
        admitted, group_tats, group_decisions = decide_all(
            [charges[i].bucket for i in members],
            [tats[i] for i in members],
            [charges[i].cost for i in members],
            now,
        )
        verdicts[group] = admitted
        taken[group] = group_tats
        for i, decision in zip(members, group_decisions, strict=True):
            decisions[i] = decision
    enforced = verdicts.get(ENFORCED, True)
    for group, members in groups.items():
        if not verdicts[group]:
            continue
        if enforced:
            for i, tat in zip(members, taken[group], strict=True):
                new_tats[i] = tat
        else:
            # It would have gone through, but the request did not: report, don't take.
            for i in members:
                decisions[i] = charges[i].bucket.decide(tats[i], now, 0)[1]
    refused = frozenset(group for group, ok in verdicts.items() if not ok)
    return Verdict(enforced, decisions, refused), new_tats

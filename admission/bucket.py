"""admission.bucket: token-bucket arithmetic as GCRA, pure and synchronous.

GCRA (the generic cell rate algorithm) keeps one number per key, the theoretical arrival
time (TAT): the moment at which the bucket would be full again. With an emission interval
`T` (seconds per token) and a capacity of `B` tokens, a request of cost `c` at time `now` is
admitted iff `max(TAT, now) + c*T - now <= B*T`, and then TAT becomes `max(TAT, now) + c*T`.
Time is an argument: nothing here reads a clock, sleeps or starts a task.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import NamedTuple

_new_tuple = tuple.__new__
# A global, not an attribute of `math`: one lookup fewer per admitted decision.
_floor = math.floor

# Tolerance for float rounding at the admission boundary, far below any useful rate.
_EPSILON_S = 1e-9


class Decision(NamedTuple):
    """Decision is the answer for one request.

    `allowed`: whether it is admitted. `remaining`: whole tokens left after it.
    `retry_after_s`: seconds until the same request could be admitted (0 when allowed; inf when
    its cost exceeds the capacity). `reset_after_s`: seconds until the bucket is full again.
    Immutable; a named tuple because one is built per request and that is cheapest.
    """

    allowed: bool
    remaining: int
    retry_after_s: float
    reset_after_s: float


@dataclass(frozen=True, slots=True)
class Bucket:
    """Bucket is a rate (`interval_s` seconds per token) and a `capacity` in tokens.

    `decide` is the whole algorithm; stores keep the TAT it returns per key. A TAT of None (or
    one in the past) is a full bucket, so a store may forget a key once `now >= TAT`.
    """

    interval_s: float
    capacity: int
    # Worked out once here rather than in every `decide` (what it buys: benchmarks/
    # policy_instructions.py, every variant, one multiplication and one addition per bucket
    # and request): the capacity in seconds, and that plus the rounding tolerance.
    _limit_s: float = field(init=False, repr=False, compare=False)
    _most_s: float = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if not (self.interval_s > 0 and math.isfinite(self.interval_s)):
            raise ValueError(
                f"Bucket.interval_s must be a finite number > 0, got {self.interval_s}"
            )
        if self.capacity < 1:
            raise ValueError(f"Bucket.capacity must be >= 1, got {self.capacity}")
        limit = self.capacity * self.interval_s
        object.__setattr__(self, "_limit_s", limit)
        object.__setattr__(self, "_most_s", limit + _EPSILON_S)

    def constants(self) -> tuple[float, float]:
        """constants is what `decide` compares with: the capacity in seconds, and that plus
        the rounding tolerance (for a caller that runs `decide`'s admitted branch inline,
        `MemoryStore.take_all_at`)."""
        return self._limit_s, self._most_s

    @property
    def fill_time_s(self) -> float:
        """fill_time_s is how long an empty bucket takes to fill: capacity times interval."""
        return self.capacity * self.interval_s

    def decide(self, tat: float | None, now: float, cost: int = 1) -> tuple[float | None, Decision]:
        """decide admits or refuses a request of `cost` tokens at `now` given the key's `tat`.

        Returns the new TAT (unchanged when refused; None when the key can be forgotten) and the
        decision. A clock that goes backwards never grants tokens: the TAT never decreases, and
        tokens are counted from the earlier `now`. A cost of 0 only reports the state.
        """
        if cost < 0:
            raise ValueError(f"cost must be >= 0, got {cost}")
        # Locals, the constants of `__post_init__` and the inlined `_remaining` keep this hot
        # path cheap; the arithmetic is the same expression for expression, so the floats are
        # identical. It is the one place the arithmetic is written: every store path and
        # `admission.charges` call it.
        interval = self.interval_s
        capacity = self.capacity
        base = now if tat is None or tat < now else tat
        new_tat = base + cost * interval
        if cost > capacity:
            return tat, Decision(False, self._remaining(base, now), math.inf, max(0.0, base - now))
        ahead = new_tat - now
        if ahead <= self._most_s:
            remaining = _floor((self._limit_s - ahead) / interval + _EPSILON_S)
            if remaining > capacity:
                remaining = capacity
            elif remaining < 0:
                remaining = 0
            # Built directly, skipping the named tuple's Python-level __new__: this line runs
            # once per admitted request.
            return new_tat, _new_tuple(Decision, (True, remaining, 0.0, ahead))
        retry = new_tat - self._limit_s - now
        return tat, Decision(False, self._remaining(base, now), retry, max(0.0, base - now))

    def charge(self, tat: float | None, now: float, cost: int = 1) -> float:
        """charge is the TAT after taking `cost` tokens at `now` whether or not the bucket
        holds them: a response's outcome, already served, is counted in full (a policy's
        `charge_when`). The bucket may go below empty, by at most what the requests admitted
        before the charge cost; it is then refused until it is paid back. A cost of 0 leaves
        the TAT as it is (or `now`, for a full bucket)."""
        if cost < 0:
            raise ValueError(f"cost must be >= 0, got {cost}")
        base = now if tat is None or tat < now else tat
        return base + cost * self.interval_s

    def outcome(self, allowed: bool, ahead_s: float, cost: int = 1) -> Decision:
        """outcome is the decision `decide` returns when, at `now`, the key's TAT stood `ahead_s`
        seconds ahead of `now` (0 for a full bucket) and the request was `allowed` or not.

        For a store that runs the admission test elsewhere (Redis's script) and reports only
        that and `ahead_s`: the numbers are `decide`'s own expressions at `now = 0`, so
        `decide(tat, 0.0, cost)[1] == outcome(allowed, max(tat, 0.0), cost)` exactly.
        """
        interval = self.interval_s
        capacity = self.capacity
        if allowed:
            held = ahead_s + cost * interval
            remaining = math.floor((capacity * interval - held) / interval + _EPSILON_S)
            if remaining > capacity:
                remaining = capacity
            elif remaining < 0:
                remaining = 0
            return _new_tuple(Decision, (True, remaining, 0.0, held))
        retry = math.inf if cost > capacity else ahead_s + cost * interval - capacity * interval
        return Decision(False, self._remaining(ahead_s, 0.0), retry, ahead_s)

    def _remaining(self, tat: float, now: float) -> int:
        # Whole tokens only, so headers never promise a token that is not there yet.
        tokens = (self.fill_time_s - (tat - now)) / self.interval_s
        return max(0, min(self.capacity, math.floor(tokens + _EPSILON_S)))

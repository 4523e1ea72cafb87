"""admission.stores.memory: token buckets in process memory, bounded and self-forgetting."""

from __future__ import annotations

import logging
import time
from collections.abc import Callable

from admission.bucket import Bucket, Decision

log = logging.getLogger("admission.store")


class MemoryStore:
    """MemoryStore keeps one TAT per key in two generations of plain dicts.

    A key written during a generation has a TAT at most one fill time after the write, so once a
    whole generation (one fill time long) has passed after it, every key in it has a full bucket
    again and the generation is dropped in one step: forgetting costs O(1) per decision, and a
    full bucket is the same as no entry. At most `max_keys` keys are kept; past that the oldest
    generation loses keys first (those clients get a full bucket back early, which errs on the
    side of serving them), and a warning is logged once per episode.

    Decisions are synchronous under the event loop, so concurrent coroutines can't interleave
    inside one. `clock` is only read here, at the edge; tests pass a manual one.
    """

    def __init__(
        self,
        bucket: Bucket,
        *,
        max_keys: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.bucket = bucket
        self.max_keys = max_keys
        self.clock = clock
        self._generation_s = bucket.fill_time_s
        self._current: dict[str, float] = {}
        self._previous: dict[str, float] = {}
        self._rotate_at = clock() + self._generation_s
        self._overflowing = False

    def __len__(self) -> int:
        """len is the number of keys held (some of them may already be full again)."""
        return len(self._current) + len(self._previous)

    def decide_at(self, key: str, now: float, cost: int = 1) -> Decision:
        """decide_at is `decide` at a given `now`, without awaiting: the whole store logic."""
        if now >= self._rotate_at:
            self._rotate(now)
        current = self._current
        tat = current.get(key)
        if tat is None:
            tat = self._previous.pop(key, None)
        new_tat, decision = self.bucket.decide(tat, now, cost)
        if new_tat is None or new_tat <= now:
            current.pop(key, None)
        elif key in current:
            current[key] = new_tat
        else:
            if len(current) + len(self._previous) >= self.max_keys:
                self._evict()
            current[key] = new_tat
        return decision

    async def decide(self, key: str, cost: int = 1) -> Decision:
        """decide takes `cost` tokens from `key` now, if it can. (The middleware calls
        `decide_at(key, store.clock())` directly: no coroutine per request.)"""
        return self.decide_at(key, self.clock(), cost)

    async def check(self) -> None:
        """check always succeeds: memory is always there."""

    async def close(self) -> None:
        """close forgets every key."""
        self._current = {}
        self._previous = {}

    def _rotate(self, now: float) -> None:
        if now >= self._rotate_at + self._generation_s:
            # Idle for two generations: everything held is full again.
            self._previous = {}
            self._current = {}
        else:
            self._previous = self._current
            self._current = {}
        self._rotate_at = now + self._generation_s
        if self._overflowing and len(self) < self.max_keys:
            self._overflowing = False

    def _evict(self) -> None:
        if not self._overflowing:
            self._overflowing = True
            log.warning(
                "memory store holds max_keys=%d active keys; evicting the oldest "
                "(raise ADMISSION_MAX_KEYS or use Redis)",
                self.max_keys,
            )
        victim = self._previous if self._previous else self._current
        victim.popitem()

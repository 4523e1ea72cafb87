"""admission.stores.memory: token buckets in process memory, bounded and self-forgetting."""

from __future__ import annotations

import hashlib
import logging
import os
import sys
import time
from collections.abc import Callable

from admission.bucket import Bucket, Decision

log = logging.getLogger("admission.store")

# A key longer than SHORT_KEY characters is held as a 60-bit digest, an int: the smallest
# object Python has (32 bytes as allocated, like the TAT's float), where a 200-byte key string
# would cost 256. So a long key costs what a short one does, about 100 bytes with its TAT and
# dict slot (docs/performance.md). Short keys, such as `ip:` and an IPv4 address, stay as they
# are: digesting them too would cost every decision a fifth more time for a third less
# memory. Two long keys share a bucket only if their digests collide: about 1 in 2,300,000
# for some pair among a million keys, and never by a client's choice, since the digest is
# keyed by a secret the client never sees. (A digest, an int, never equals a string key.)
#
# Python's own `hash` of a string is SipHash keyed by a per-process secret, so it serves.
# With hash randomisation turned off (PYTHONHASHSEED=0) that secret is public and collisions
# could be chosen, so the digest is then a BLAKE2b keyed by a secret of our own.
SHORT_KEY = 32
_SLOT_MASK = (1 << 60) - 1
_SECRET = os.urandom(16)
_HASH_IS_KEYED = bool(sys.flags.hash_randomization)


def slot_of(key: str) -> str | int:
    """slot_of is what `MemoryStore` holds for `key`: the key itself when it is at most
    SHORT_KEY characters long, else its 60-bit keyed digest (see above)."""
    if len(key) <= SHORT_KEY:
        return key
    if _HASH_IS_KEYED:
        return hash(key) & _SLOT_MASK
    digest = hashlib.blake2b(
        key.encode("utf-8", "surrogatepass"), digest_size=8, key=_SECRET
    ).digest()
    return int.from_bytes(digest, "little") & _SLOT_MASK


class MemoryStore:
    """MemoryStore keeps one TAT per key in two generations of plain dicts.

    Forgetting full buckets: a key written during a generation has a TAT at most one fill
    time after the write, so once a whole generation (one fill time) has passed after it,
    every key in it has a full bucket again and the generation is dropped in one step. A full
    bucket is the same as no entry, so forgetting never changes a decision.

    Forgetting under pressure: at most `max_keys` keys are held, and past that the least
    recently used key is forgotten first. Every decision moves its key to the end of the
    current generation, so the current generation is in order of last use and the older one
    holds exactly the keys not used since, in order of their last use: together, one LRU
    list. (A new generation also begins, dropping nothing, once the older one is empty and the
    current one holds half of `max_keys`.) A forgotten client gets a full bucket back early,
    which errs on the side of serving it; a warning is logged once per episode.

    Each decision is O(1), amortized: the first eviction from a generation turns it around,
    once, so that `dict.popitem` takes its least recently used key. Long keys are held as
    digests (`slot_of`), so a long key costs what a short one does. Decisions are synchronous
    under the event loop, so concurrent coroutines can't interleave inside one. `clock` is
    only read here, at the edge; tests pass a manual one.
    """

    def __init__(
        self,
        bucket: Bucket,
        *,
        max_keys: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {max_keys}")
        self.bucket = bucket
        self.max_keys = max_keys
        self.clock = clock
        self._generation_s = bucket.fill_time_s
        # Generations of about half the cap keep each dict (and the copy turned around for
        # eviction) half the size: a flood at a cap of a million costs 141 MiB with them, 181
        # MiB with generations as large as the cap (benchmarks/memory_store.py).
        self._half = max(1, max_keys // 2)
        self._current: dict[str | int, float] = {}
        # The older generation; once eviction has started on it, in reverse (newest first).
        self._previous: dict[str | int, float] = {}
        self._previous_reversed = False
        self._rotate_at = clock() + self._generation_s
        self._overflowing = False

    def __len__(self) -> int:
        """len is the number of keys held (some of them may already be full again)."""
        return len(self._current) + len(self._previous)

    def __contains__(self, key: object) -> bool:
        """`key in store` is whether `key` is held (its bucket may already be full again)."""
        if not isinstance(key, str):
            return False
        slot = slot_of(key)
        return slot in self._current or slot in self._previous

    def decide_at(self, key: str, now: float, cost: int = 1) -> Decision:
        """decide_at is `decide` at a given `now`, without awaiting: the whole store logic."""
        if now >= self._rotate_at:
            self._rotate(now)
        # slot_of(key), with its common case inlined: a call costs a tenth of a decision.
        slot: str | int = key if len(key) <= SHORT_KEY else slot_of(key)
        current = self._current
        # Popped and put back at the end: the current generation stays in order of last use.
        tat = current.pop(slot, None)
        if tat is None:
            previous = self._previous
            tat = previous.pop(slot, None)
            if tat is None:
                new_tat, decision = self.bucket.decide(None, now, cost)
                if new_tat is not None and new_tat > now:
                    self._make_room(now)
                    self._current[slot] = new_tat
                return decision
        new_tat, decision = self.bucket.decide(tat, now, cost)
        if new_tat is not None and new_tat > now:
            current[slot] = new_tat
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
        self._previous_reversed = False

    def _rotate(self, now: float) -> None:
        if now >= self._rotate_at + self._generation_s:
            # Idle for two generations: everything held is full again.
            self._current = {}
        self._previous = {}
        self._start_generation(now)

    def _start_generation(self, now: float) -> None:
        """_start_generation makes the current generation the older one (which must be
        empty or due to be dropped) and starts a new one, one fill time long."""
        self._previous = self._current
        self._previous_reversed = False
        self._current = {}
        self._rotate_at = now + self._generation_s
        if self._overflowing and len(self) < self.max_keys:
            self._overflowing = False

    def _make_room(self, now: float) -> None:
        """_make_room keeps one place free for a new key: it starts a new generation once the
        older one is empty and the current one holds half of `max_keys`, and at `max_keys`
        forgets the least recently used key."""
        previous = self._previous
        if not previous and len(self._current) >= self._half:
            self._start_generation(now)
            previous = self._previous
        if len(self._current) + len(previous) < self.max_keys:
            return
        if not self._overflowing:
            self._overflowing = True
            log.warning(
                "memory store holds max_keys=%d active keys; forgetting the least recently "
                "used (raise ADMISSION_MAX_KEYS or use Redis)",
                self.max_keys,
            )
        # Never empty here: a generation starts above when it is and the store is full.
        if not self._previous_reversed:
            # Once a generation: `popitem` takes the last entry in O(1) (amortized, skipping
            # the holes other keys left), so turned around it takes the least recently used.
            previous = self._previous = dict(reversed(previous.items()))
            self._previous_reversed = True
        previous.popitem()

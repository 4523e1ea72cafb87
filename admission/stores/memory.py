"""admission.stores.memory: token buckets in process memory, bounded and self-forgetting."""

from __future__ import annotations

import hashlib
import logging
import math
import mmap
import os
import sys
import time
from collections.abc import Callable, Sequence
from typing import TypeVar

from admission.bucket import _EPSILON_S, Bucket, Decision, _floor
from admission.charges import Charge, Verdict, charge_after, decide_charges

log = logging.getLogger("admission.store")

# Every key is held as its 64-bit keyed digest, whatever its length, so a 200-byte header
# value costs what an address does. Two keys share a bucket only if their digests collide:
# about 1 in 37 million for some pair among a million keys held at once, and never by a
# client's choice, since the digest is keyed by a secret the client never sees.
#
# Python's own `hash` of a string is SipHash keyed by a per-process secret, so it serves (and
# is what a dict lookup would compute anyway). With hash randomisation turned off
# (PYTHONHASHSEED=0) that secret is public and collisions could be chosen, so the digest is
# then a BLAKE2b keyed by a secret of our own (about 0.4 µs more per decision). A fixed
# non-zero PYTHONHASHSEED is a secret only as long as the deployment keeps it one.
_SECRET = os.urandom(16)
_HASH_IS_KEYED = bool(sys.flags.hash_randomization)

# What one key costs at most, in bytes: its digest (8), TAT (8), two LRU links (4 + 4), and
# two to four index slots of 4 bytes (the index has a power of two of slots, at least twice
# max_keys). benchmarks/memory_store.py measures it; docs/configuration.md states it.
BYTES_PER_KEY = 40


def digest_of(key: str) -> int:
    """digest_of is what `MemoryStore` holds for `key`: its 64-bit keyed digest (see above),
    a signed int as the store's arrays hold it."""
    if _HASH_IS_KEYED:
        return hash(key)
    digest = hashlib.blake2b(
        key.encode("utf-8", "surrogatepass"), digest_size=8, key=_SECRET
    ).digest()
    return int.from_bytes(digest, "little", signed=True)


def _name_digest(name: str) -> int:
    """_name_digest is the 64-bit keyed digest of a bucket name (a charge's `name`) that
    `MemoryStore.decide_charges_at` XORs with its client's digest to get the bucket's: one
    keyed digest per client and request rather than one per bucket (benchmarks/
    policy_instructions.py, variant 3x2). A BLAKE2b personalised apart from `digest_of`, so
    no client key can mirror a name; two buckets collide only if the XORs of their client and
    name digests meet, which no client can aim for without the secret. Names come from the
    configuration, so the cache stays small; it is cleared should it ever grow large (the
    digests are recomputed identically)."""
    digest = _NAME_DIGESTS.get(name)
    if digest is None:
        raw = hashlib.blake2b(
            name.encode("utf-8", "surrogatepass"), digest_size=8, key=_SECRET, person=b"name"
        ).digest()
        digest = int.from_bytes(raw, "little", signed=True)
        if len(_NAME_DIGESTS) >= _NAME_DIGESTS_MAX:
            _NAME_DIGESTS.clear()
        _NAME_DIGESTS[name] = digest
    return digest


_NAME_DIGESTS: dict[str, int] = {}
_NAME_DIGESTS_MAX = 4096

# BucketSpec is one bucket as `MemoryStore.take_all_at` takes it (see `bucket_spec`): its
# name's digest, the TAT step of its cost, its capacity in seconds, that plus the rounding
# tolerance, its interval, its capacity in tokens, and a tag of the caller's.
T = TypeVar("T")
BucketSpec = tuple[int, float, float, float, float, int, T]
_new_tuple = tuple.__new__
# More tokens than any bucket holds (capacities are at most 1e9): fewer than it is the first.
_NO_TOKENS = 1 << 62


def bucket_spec(name: str, bucket: Bucket, cost: int, tag: T) -> BucketSpec[T]:
    """bucket_spec is what `MemoryStore.take_all_at` needs of the bucket `name` (a charge's
    name) charged a fixed `cost`, computed once when the configuration is read rather than per
    request: `_name_digest(name)`, the TAT step of the cost (`cost * interval`, as `decide`
    computes it) and the bucket's own constants, so the floats are identical.
    `tag` is handed back for the bucket closest to refusing. A cost above the capacity (which
    no request could pay) or below 0 is a ValueError: `take_all_at` never refuses for it."""
    if not 0 <= cost <= bucket.capacity:
        raise ValueError(f"cost must be from 0 to the capacity {bucket.capacity}, not {cost}")
    interval = bucket.interval_s
    limit, most = bucket.constants()
    return (_name_digest(name), cost * interval, limit, most, interval, bucket.capacity, tag)


def _zeros(size: int) -> memoryview:
    """_zeros is `size` writable zero bytes (to be cast to an array type) in anonymous memory:
    a page is committed only once it is written, so a store costs only what it holds, and
    the memory goes back to the system when the array is dropped. Private, so a process forked
    after the store was made gets its own copy, not a shared one."""
    if hasattr(mmap, "MAP_PRIVATE"):
        memory = mmap.mmap(-1, size, flags=mmap.MAP_PRIVATE)
    else:  # pragma: no cover - Windows: anonymous memory is private to the process there
        memory = mmap.mmap(-1, size)
    return memoryview(memory)


class MemoryStore:
    """MemoryStore keeps one TAT per key in flat arrays: no Python object per key.

    Layout: entries 1..`max_keys` each hold a key's digest (`digest_of`), its TAT, and two
    links of a circular list in order of last use (entry 0 is the list's head: its `newer`
    link is the least recently used entry, its `older` link the most recently used). An
    open-addressing index (linear probing, at most half full, deletion by backward shift)
    maps a digest to its entry. Arrays are made once, at full size, in memory committed only
    as it is written (`_zeros`), so a store holding few keys costs little and the cost of
    one key never exceeds BYTES_PER_KEY: no dict growth, no allocator slack.

    Forgetting under pressure: at most `max_keys` keys are held, and past that the least
    recently used key is forgotten first. Every decision, admitted or refused, moves its key
    to the most recent end. A forgotten client gets a full bucket back early, which errs on
    the side of serving it; a warning is logged once per episode.

    Forgetting full buckets: a key whose bucket is full again stays held until the cap needs
    its place (then it goes without a warning), and once the store has been idle long enough
    for every bucket to be full (checked once a fill time), it forgets everything at once. A
    full bucket is the same as no entry, so forgetting never changes a decision.

    Each decision is O(1) (amortized over index probes). Decisions are synchronous under the
    event loop, so concurrent coroutines can't interleave inside one. `clock` is only read
    here, at the edge; tests pass a manual one.
    """

    def __init__(
        self,
        bucket: Bucket,
        *,
        max_keys: int = 1_000_000,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 1 <= max_keys < 2**30:
            raise ValueError(f"max_keys must be from 1 to {2**30 - 1}, not {max_keys}")
        self.bucket = bucket
        self.max_keys = max_keys
        self.clock = clock
        # Everything is full again once the most recent key's TAT is a fill time past (its
        # last use came before its TAT, every other key's before that); the microsecond is
        # room for the bucket's rounding tolerance.
        self._idle_s = bucket.fill_time_s + 1e-6
        slots = 8
        while slots < 2 * max_keys:
            slots *= 2
        self._mask = slots - 1
        self._check_at = clock() + bucket.fill_time_s
        self._reset()

    def _reset(self) -> None:
        """_reset forgets every key: fresh arrays, the old ones' memory given back."""
        n = self.max_keys + 1
        self._index = _zeros(4 * (self._mask + 1)).cast("i")  # slot -> entry; 0: free
        self._digests = _zeros(8 * n).cast("q")
        self._tats = _zeros(8 * n).cast("d")
        self._newer = _zeros(4 * n).cast("i")
        self._older = _zeros(4 * n).cast("i")
        self._count = 0
        self._overflowing = False
        # The latest TAT a charge after a response left (`charge_at`): it may lie further
        # ahead than a fill time, so the idle check waits for it too.
        self._charged_until = -math.inf
        # One tuple unpacked per decision: cheaper than five attribute reads.
        self._arrays = (self._index, self._digests, self._tats, self._newer, self._older)

    def __len__(self) -> int:
        """len is the number of keys held (some of them may already be full again)."""
        return self._count

    def __contains__(self, key: object) -> bool:
        """`key in store` is whether `key` is held (its bucket may already be full again)."""
        return isinstance(key, str) and self._find(digest_of(key)) != 0

    def _find(self, digest: int) -> int:
        """_find is the entry holding `digest`, or 0."""
        index, digests = self._index, self._digests
        mask = self._mask
        i = digest & mask
        entry = index[i]
        while entry and digests[entry] != digest:
            i = (i + 1) & mask
            entry = index[i]
        return entry

    def decide_at(self, key: str, now: float, cost: int = 1) -> Decision:
        """decide_at is `decide` at a given `now`, without awaiting: the whole store logic."""
        if now >= self._check_at:
            self._check(now)
        digest = hash(key) if _HASH_IS_KEYED else digest_of(key)
        index, digests, tats, newer, older = self._arrays
        mask = self._mask
        i = digest & mask
        entry = index[i]
        while entry:
            if digests[entry] == digest:
                break
            i = (i + 1) & mask
            entry = index[i]
        else:
            new_tat, decision = self.bucket.decide(None, now, cost)
            if new_tat is not None and new_tat > now:
                self._insert(digest, new_tat, now)
            return decision
        new_tat, decision = self.bucket.decide(tats[entry], now, cost)
        # A cost-0 probe of a full bucket stores a TAT of `now` at most: full, forgettable.
        tats[entry] = new_tat  # type: ignore[assignment]  # never None, given a TAT
        last = older[0]
        if entry != last:
            # Unlinked and linked again as the most recent: the list stays in order of use.
            # `_touch`, inline: this is the single rate's path, every rate-limited request.
            before = older[entry]
            after = newer[entry]
            newer[before] = after
            older[after] = before
            older[entry] = last
            newer[entry] = 0
            newer[last] = entry
            older[0] = entry
        return decision

    def decide_charges_at(self, charges: Sequence[Charge], now: float) -> Verdict:
        """decide_charges_at decides a request's charges at `now`, all or nothing (see
        `admission.charges`): each charge's bucket, not the store's, does the arithmetic, and
        is held under its client's digest XOR its name's (`_name_digest`). The store's own
        bucket must fill no faster than the slowest of theirs, since its fill time is how long
        the store waits idle before forgetting everything (`policies.generation_bucket`). Every
        bucket held is moved to the most recent end, in order, whether it took or not: a
        refusal counts as a use, as in `decide_at`, so a client refused again and again keeps
        its place however many fresh keys arrive between its requests."""
        if now >= self._check_at:
            self._check(now)
        # The general path: refusals, shadow policies, cost callables (`take_all_at` decides
        # the rest in one pass, inline).
        keys, found, tats = self._held(charges)
        verdict, new_tats = decide_charges(charges, tats, now)
        self._keep(keys, found, new_tats, now)
        return verdict

    def _held(self, charges: Sequence[Charge]) -> tuple[list[int], list[int], list[float | None]]:
        """_held is, for each charge's bucket, its digest, its entry (0 when not held) and its
        TAT (None when not held)."""
        held = self._tats
        keys: list[int] = []
        found: list[int] = []
        tats: list[float | None] = []
        client = None
        client_digest = 0
        for charge in charges:
            if charge.client != client:
                # One keyed digest per client, not per bucket: a request's charges share it.
                client = charge.client
                client_digest = hash(client) if _HASH_IS_KEYED else digest_of(client)
            name_digest = _NAME_DIGESTS.get(charge.name)
            if name_digest is None:
                name_digest = _name_digest(charge.name)
            digest = client_digest ^ name_digest
            entry = self._find(digest)
            keys.append(digest)
            found.append(entry)
            tats.append(held[entry] if entry else None)
        return keys, found, tats

    def charge_at(self, charges: Sequence[Charge], now: float) -> None:
        """charge_at takes each charge's cost from its bucket at `now`, in full, whether or not
        the bucket holds it (`admission.charges.charge_after`): the charge of a response whose
        status a policy's `charge_when` names, after the request was admitted by a peek. Each
        bucket is moved to the most recent end, as a decision's are."""
        if now >= self._check_at:
            self._check(now)
        keys, found, tats = self._held(charges)
        new_tats = charge_after(charges, tats, now)
        self._keep(keys, found, new_tats, now)
        self._charged_until = max([self._charged_until, *new_tats])

    async def charge(self, charges: Sequence[Charge]) -> None:
        """charge takes the charges after a response, now (see `charge_at`)."""
        self.charge_at(charges, self.clock())

    def take_all_at(
        self, runs: Sequence[tuple[str, Sequence[BucketSpec[T]]]], now: float
    ) -> tuple[Decision, T] | None:
        """take_all_at is `decide_charges_at` for a request whose buckets all admit, in one
        pass and without a Charge or a Decision per bucket: `runs` pairs each client key with
        the specs of its buckets (`bucket_spec`), all enforced. If every bucket admits, each
        is charged and moved to the most recent end exactly as `decide_charges_at` would, and
        the answer is the decision of the bucket closest to refusing (fewest tokens left, then
        the later reset; the first of equals) with its spec's tag. If one refuses (or there is
        no bucket), nothing is changed and the answer is None: the caller asks
        `decide_charges_at` for the details. Tests hold the two equal, bucket for bucket and
        float for float (tests/test_take_all.py)."""
        if now >= self._check_at:
            self._check(now)
        index, digests, held, _, older = self._arrays
        mask = self._mask
        # What to write back once every bucket has admitted: nothing is written before.
        entries: list[int] = []
        new_tats: list[float] = []
        best: T | None = None
        best_remaining = _NO_TOKENS
        best_ahead = 0.0
        missing = False
        for client, specs in runs:
            client_digest = hash(client) if _HASH_IS_KEYED else digest_of(client)
            for name_digest, step, limit, most, interval, capacity, tag in specs:
                digest = client_digest ^ name_digest
                i = digest & mask
                entry = index[i]
                while entry and digests[entry] != digest:
                    i = (i + 1) & mask
                    entry = index[i]
                # `Bucket.decide`'s admitted branch, expression for expression (see
                # `bucket_spec`), inlined: calling `decide` per bucket instead costs about
                # 19,000 instructions more per request of 3 policies of 2 limits
                # (benchmarks/policy_instructions.py, 3x2), which would bring that variant
                # past twice what ADMISSION_RATE adds. tests/test_take_all.py holds the two
                # equal, float for float.
                if entry:
                    tat = held[entry]
                    new_tat = (now if tat < now else tat) + step
                else:
                    new_tat = now + step
                    missing = True
                ahead = new_tat - now
                if ahead > most:
                    return None
                remaining = _floor((limit - ahead) / interval + _EPSILON_S)
                if remaining > capacity:
                    remaining = capacity
                elif remaining < 0:
                    remaining = 0
                if remaining < best_remaining or (
                    remaining == best_remaining and ahead > best_ahead
                ):
                    best = tag
                    best_remaining = remaining
                    best_ahead = ahead
                entries.append(entry)
                new_tats.append(new_tat)
        if not entries:
            return None
        if missing:
            # A bucket not held yet: inserted, which may reuse an entry found above.
            self._write_back(runs, entries, new_tats, now)
            return _new_tuple(Decision, (True, best_remaining, 0.0, best_ahead)), best  # type: ignore[return-value]  # set: a bucket
        # Written from the most recent end back, while the buckets are the most recent
        # already, in this order (a client's requests one after another): moving each to the
        # most recent end in turn would leave the list as it is, so one read per bucket does
        # instead of eight reads and writes.
        last = older[0]
        k = len(entries)
        while k:
            k -= 1
            entry = entries[k]
            if entry != last:
                # Not so: each is written (again) and moved, in order, as `decide_at` does.
                touch = self._touch
                for k, entry in enumerate(entries):
                    held[entry] = new_tats[k]
                    touch(entry)
                break
            held[entry] = new_tats[k]
            last = older[entry]
        return _new_tuple(Decision, (True, best_remaining, 0.0, best_ahead)), best  # type: ignore[return-value]  # set: a bucket

    def _write_back(
        self,
        runs: Sequence[tuple[str, Sequence[BucketSpec[T]]]],
        entries: list[int],
        new_tats: list[float],
        now: float,
    ) -> None:
        """_write_back is `take_all_at`'s writing when some bucket is new (`_keep`)."""
        keys: list[int] = []
        for client, specs in runs:
            client_digest = hash(client) if _HASH_IS_KEYED else digest_of(client)
            keys += [client_digest ^ spec[0] for spec in specs]
        self._keep(keys, entries, new_tats, now)

    def _keep(
        self, keys: list[int], found: list[int], new_tats: Sequence[float | None], now: float
    ) -> None:
        """_keep writes each key's new TAT (unchanged for a bucket that took nothing) and moves
        it to the most recent end, in order, or holds it anew; a key not held whose TAT is
        None or not ahead of `now` (a full bucket) stays unheld, as in `decide_at`. `found`
        are the keys' entries (0: not held) as found before any was inserted: inserting may
        reuse the least recently used entry, so after one a key is found afresh."""
        held = self._tats
        inserted = False
        for k, new in enumerate(new_tats):
            entry = self._find(keys[k]) if inserted else found[k]
            if entry:
                if new is not None:
                    held[entry] = new
                self._touch(entry)
            elif new is not None and new > now:
                self._insert(keys[k], new, now)
                inserted = True

    def _touch(self, entry: int) -> None:
        """_touch moves `entry` to the most recent end of the list of use."""
        newer, older = self._newer, self._older
        last = older[0]
        if entry != last:
            before = older[entry]
            after = newer[entry]
            newer[before] = after
            older[after] = before
            older[entry] = last
            newer[entry] = 0
            newer[last] = entry
            older[0] = entry

    async def decide_charges(self, charges: Sequence[Charge]) -> Verdict:
        """decide_charges decides a request's charges now (see `decide_charges_at`)."""
        return self.decide_charges_at(charges, self.clock())

    async def decide(self, key: str, cost: int = 1) -> Decision:
        """decide takes `cost` tokens from `key` now, if it can. (The middleware calls
        `decide_at(key, store.clock())` directly: no coroutine per request.)"""
        return self.decide_at(key, self.clock(), cost)

    async def check(self) -> None:
        """check always succeeds: memory is always there."""

    def clear(self) -> None:
        """clear forgets every key at once: every bucket is full again (`admission.testing`)."""
        self._check_at = self.clock() + self.bucket.fill_time_s
        self._reset()

    def reopen(self) -> None:
        """reopen needs to do nothing: a closed memory store has forgotten its keys and decides
        on at once."""

    async def close(self) -> None:
        """close forgets every key."""
        self._reset()

    def _check(self, now: float) -> None:
        """_check, once a fill time, forgets every key if every bucket is full again."""
        self._check_at = now + self.bucket.fill_time_s
        if (
            self._count
            and now >= self._tats[self._older[0]] + self._idle_s
            and now >= self._charged_until
        ):
            self._reset()

    def _insert(self, digest: int, tat: float, now: float) -> None:
        """_insert holds a new key as the most recent, in the place of the least recently
        used key once the store holds `max_keys` keys.

        Below the cap a key whose bucket is full again is held on (it decides as no entry
        would) rather than forgotten to make room: a client that comes back after its bucket
        filled is then found and moved, where forgetting it made every such request pay a
        removal and an insertion (about three times the move, in instructions). With requests
        spread over 1,000 clients at a rate whose buckets refill between their requests, that
        was 1.3 to 1.5 µs per request over one client's cost (benchmarks/overhead.py,
        admission-1000c). Memory stays bounded by the cap, and an idle store still forgets
        everything (`_check`)."""
        index, digests, tats, newer, older = self._arrays
        if self._count >= self.max_keys:
            oldest = newer[0]
            if tats[oldest] <= now:
                # Its bucket was full again: nothing live is forgotten, no pressure now.
                self._overflowing = False
            elif not self._overflowing:
                self._overflowing = True
                log.warning(
                    "memory store holds max_keys=%d active keys; forgetting the least "
                    "recently used (raise ADMISSION_MAX_KEYS or use Redis)",
                    self.max_keys,
                )
            entry = self._remove(oldest)
        else:
            # Entries 1..count are the ones in use: a removal above is refilled at once.
            entry = self._count + 1
        self._count += 1
        mask = self._mask
        i = digest & mask
        while index[i]:
            i = (i + 1) & mask
        index[i] = entry
        digests[entry] = digest
        tats[entry] = tat
        last = older[0]
        older[entry] = last
        newer[entry] = 0
        newer[last] = entry
        older[0] = entry

    def _remove(self, entry: int) -> int:
        """_remove forgets the key of `entry` (unlinked, out of the index) and returns the
        entry, free to be used again."""
        index, digests, _, newer, older = self._arrays
        before, after = older[entry], newer[entry]
        newer[before] = after
        older[after] = before
        self._count -= 1
        mask = self._mask
        hole = digests[entry] & mask
        while index[hole] != entry:
            hole = (hole + 1) & mask
        # Backward shift: each later entry of the probe run that may sit in the hole moves
        # into it, so every lookup still finds its key before a free slot.
        i = hole
        while True:
            i = (i + 1) & mask
            moved = index[i]
            if not moved:
                break
            home = digests[moved] & mask
            # `moved` may fill the hole unless its home lies cyclically in (hole, i].
            if (home <= hole or home > i) if hole < i else (home <= hole and home > i):
                index[hole] = moved
                hole = i
        index[hole] = 0
        return entry

"""admission.stores.guard: what a decision is when the shared store fails."""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Literal, cast

from admission.bucket import Bucket, Decision
from admission.charges import ENFORCED, Charge, Verdict
from admission.errors import StorageError
from admission.stores.base import ChargeAfterStore, ChargesStore, ReopenableStore, Store
from admission.stores.memory import MemoryStore

log = logging.getLogger("admission.store")


class StorageDenial(Decision):
    """StorageDenial is a refusal by the `deny` policy while the store fails: it says nothing
    about the client's bucket, so it is answered and counted as a storage refusal, not a rate
    one."""

    __slots__ = ()


Policy = Literal["local", "allow", "deny"]


class GuardedStore:
    """GuardedStore answers every decision, whether or not the store behind it can.

    On a `StorageError` the policy decides: `local`, a per-process bucket at the same rate;
    `allow`, admit; `deny`, refuse (retry after one token interval). An outage is logged once
    when it starts and once when it ends, never per request. While the store is failing it is
    only retried every `retry_interval_s`, so requests don't each pay the storage timeout.
    `errors` counts the store's failures (the `admission_storage_errors` metric).
    """

    def __init__(
        self,
        store: Store,
        bucket: Bucket,
        policy: Policy,
        *,
        max_keys: int = 1_000_000,
        retry_interval_s: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self._reopen = store.reopen if isinstance(store, ReopenableStore) else None
        self.bucket = bucket
        self.policy = policy
        self.retry_interval_s = retry_interval_s
        self._clock = clock
        self._local = MemoryStore(bucket, max_keys=max_keys, clock=clock)
        self._down_since: float | None = None
        self._retry_at = -math.inf
        self._fallback_count = 0
        self.errors = 0

    @property
    def degraded(self) -> bool:
        """degraded is True while the store behind is failing."""
        return self._down_since is not None

    async def decide(self, key: str, cost: int = 1) -> Decision:
        """decide asks the store, or answers by the policy while the store fails."""
        now = self._clock()
        if now >= self._retry_at:
            try:
                decision = await self.store.decide(key, cost)
            except StorageError as exc:
                self._outage(exc)
            else:
                if self._down_since is not None:
                    self._recovered()
                return decision
        return self._fallback(key, cost)

    async def decide_charges(self, charges: Sequence[Charge]) -> Verdict:
        """decide_charges asks the store for a request's charges, all or nothing, or answers by
        the policy while it fails: `local` decides them in process memory, `allow` admits,
        `deny` refuses whatever is enforced (shadow charges alone still pass)."""
        now = self._clock()
        if now >= self._retry_at:
            try:
                # Only a ChargesStore is ever asked (PolicyLimiter checks when it is built).
                verdict = await cast(ChargesStore, self.store).decide_charges(charges)
            except StorageError as exc:
                self._outage(exc)
            else:
                if self._down_since is not None:
                    self._recovered()
                return verdict
        self._fallback_count += 1
        if self.policy == "local":
            return self._local.decide_charges_at(charges, self._clock())
        if self.policy == "allow":
            return Verdict(
                True, [Decision(True, c.bucket.capacity, 0.0, 0.0) for c in charges], frozenset()
            )
        enforced = [c for c in charges if c.group == ENFORCED]
        decisions = [
            StorageDenial(False, 0, c.bucket.interval_s * max(c.cost, 1), c.bucket.fill_time_s)
            if c.group == ENFORCED
            else Decision(True, c.bucket.capacity, 0.0, 0.0)
            for c in charges
        ]
        return Verdict(not enforced, decisions, frozenset({ENFORCED}) if enforced else frozenset())

    async def charge(self, charges: Sequence[Charge]) -> None:
        """charge takes charges after a response (a policy's `charge_when`) from the store, or,
        while it fails, by the policy: `local` charges the per-process buckets that decide
        meanwhile; `allow` and `deny` drop the charge (`deny` refuses every request anyway
        while the store fails). Never raises a StorageError: the response is already going
        out, and a failure here counts as an outage as a decision's would."""
        if self._clock() >= self._retry_at:
            try:
                await cast(ChargeAfterStore, self.store).charge(charges)
            except StorageError as exc:
                self._outage(exc)
            else:
                if self._down_since is not None:
                    self._recovered()
                return
        if self.policy == "local":
            self._local.charge_at(charges, self._clock())

    def _fallback(self, key: str, cost: int) -> Decision:
        self._fallback_count += 1
        if self.policy == "local":
            return self._local.decide_at(key, self._clock(), cost)
        if self.policy == "allow":
            return Decision(True, self.bucket.capacity, 0.0, 0.0)
        return StorageDenial(
            False, 0, self.bucket.interval_s * max(cost, 1), self.bucket.fill_time_s
        )

    def _outage(self, exc: StorageError) -> None:
        now = self._clock()
        self._retry_at = now + self.retry_interval_s
        self.errors += 1
        if self._down_since is None:
            self._down_since = now
            self._fallback_count = 0
            log.warning(
                "rate-limit storage failed (%s); deciding by ADMISSION_ON_STORAGE_ERROR=%s "
                "until it answers again",
                exc,
                self.policy,
            )

    def _recovered(self) -> None:
        assert self._down_since is not None
        log.warning(
            "rate-limit storage answers again after %.1fs; %d decisions were made by the %r policy",
            self._clock() - self._down_since,
            self._fallback_count,
            self.policy,
        )
        self._down_since = None
        self._retry_at = -math.inf

    async def check(self) -> None:
        """check passes the store's health check through, and counts a failure as an outage
        (or a success as the end of one) as a decision would."""
        try:
            await self.store.check()
        except StorageError as exc:
            self._outage(exc)
            raise
        if self._down_since is not None:
            self._recovered()

    async def answers(self) -> bool:
        """answers: does the store answer now? Asked of the store itself only while it is
        failing (`degraded`), and then at most once a `retry_interval_s`, like decisions."""
        if self._down_since is None:
            return True
        if self._clock() < self._retry_at:
            return False
        try:
            await self.check()
        except StorageError:
            return False
        return True

    def reopen(self) -> None:
        """reopen reopens the store behind, if it can be (see `RedisStore.reopen`), for the
        service's next lifespan; the local fallback forgot its keys at close and needs nothing."""
        if self._reopen is not None:
            self._reopen()

    async def close(self) -> None:
        """close closes the store behind and the local fallback."""
        try:
            await self.store.close()
        finally:
            await self._local.close()

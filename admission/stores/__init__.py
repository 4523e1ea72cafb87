"""admission.stores: where token buckets live: process memory or a shared Redis."""

from __future__ import annotations

from admission.bucket import Bucket
from admission.config.fields import PolicySet
from admission.config.policies import generation_bucket
from admission.config.settings import Settings
from admission.stores.base import ReopenableStore, Store
from admission.stores.guard import GuardedStore
from admission.stores.memory import MemoryStore
from admission.stores.naming import naming_secret
from admission.stores.redis import RedisStore

__all__ = ["GuardedStore", "MemoryStore", "RedisStore", "ReopenableStore", "Store", "open_store"]


def bucket_for(settings: Settings) -> Bucket | None:
    """bucket_for is the bucket the settings describe, or None without a rate limit. With
    route policies, it is one that fills as slowly as their slowest limit, `ADMISSION_RATE`'s
    included: a store keeps keys that long (the policies' own buckets decide, see
    `admission.ratelimit.limiter`)."""
    rate = (
        None if settings.rate is None else Bucket(settings.emission_interval_s, settings.capacity)
    )
    if isinstance(settings.policies, PolicySet) and len(settings.policies):
        slowest = generation_bucket(tuple(settings.policies))
        if rate is not None and rate.fill_time_s > slowest.fill_time_s:
            return Bucket(rate.fill_time_s, 1)
        return slowest
    return rate


def open_store(settings: Settings, store: Store | None = None) -> Store | None:
    """open_store is the store the middleware decides with: `store` if given, else the one
    `ADMISSION_STORAGE` names; None without a rate limit (a given store is then returned as
    it is).

    A store that can fail (any but the memory store, unless it is already guarded) comes
    wrapped in the `ADMISSION_ON_STORAGE_ERROR` policy. Nothing connects here: redis-py
    connects on first use, so a Redis that is down at start-up is an outage like any other,
    not a crash.
    """
    bucket = bucket_for(settings)
    if bucket is None:
        return store
    if store is None:
        if settings.storage == "memory://":
            return MemoryStore(bucket, max_keys=settings.max_keys)
        store = RedisStore.from_uri(
            settings.storage,
            bucket,
            timeout_s=settings.storage_timeout,
            prefix=settings.key_prefix,
            secret=naming_secret(settings.key_prefix, settings.key_secret),
        )
    if isinstance(store, MemoryStore | GuardedStore):
        return store
    return GuardedStore(store, bucket, settings.on_storage_error, max_keys=settings.max_keys)

"""admission.stores: where token buckets live: process memory or a shared Redis."""

from __future__ import annotations

from admission.bucket import Bucket
from admission.settings import Settings
from admission.stores.base import Store
from admission.stores.guard import GuardedStore
from admission.stores.memory import MemoryStore
from admission.stores.redis import RedisStore

__all__ = ["GuardedStore", "MemoryStore", "RedisStore", "Store", "open_store"]


def bucket_for(settings: Settings) -> Bucket | None:
    """bucket_for is the bucket the settings describe, or None without a rate limit."""
    if settings.rate is None:
        return None
    return Bucket(settings.emission_interval_s, settings.capacity)


def open_store(settings: Settings) -> Store | None:
    """open_store builds the store `ADMISSION_STORAGE` names; None without a rate limit.

    A Redis store comes wrapped in the `ADMISSION_ON_STORAGE_ERROR` policy. Nothing connects
    here: redis-py connects on first use, so a Redis that is down at start-up is an outage like
    any other, not a crash.
    """
    bucket = bucket_for(settings)
    if bucket is None:
        return None
    if settings.storage == "memory://":
        return MemoryStore(bucket, max_keys=settings.max_keys)
    redis_store = RedisStore.from_uri(
        settings.storage, bucket, timeout_s=settings.storage_timeout, prefix=settings.key_prefix
    )
    return GuardedStore(redis_store, bucket, settings.on_storage_error, max_keys=settings.max_keys)

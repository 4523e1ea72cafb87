"""admission.stores.reset: emptying one client's buckets in a shared Redis, for an operator
unblocking a customer (`admission reset`).

The memory store has nothing to reset from outside: its buckets live in the memory of each
serving process. In Redis, a client's buckets are found by the names the store gives them
(`admission.stores.naming`): the `ADMISSION_RATE` bucket by its name, the route policies'
buckets by a `SCAN` for the client's digest, all of them or one policy's.
"""

from __future__ import annotations

from admission.errors import StorageError
from admission.stores.naming import bucket_key, client_pattern
from admission.stores.redis import RedisStore


async def reset_client(store: RedisStore, key: str, policy: str | None) -> int:
    """reset_client deletes the buckets of client key `key` (only those of route policy
    `policy` when given) from `store`'s Redis and returns how many it deleted; 0 when none
    was there (a full bucket has no key). Raises StorageError when Redis fails."""
    client = store.client
    deleted = 0
    names: list[bytes] = []
    if policy is None:
        names.append(bucket_key(store.prefix, store.secret, key))
    bucket_prefix = "" if policy is None else policy + ":"
    pattern = client_pattern(store.prefix, store.secret, key, bucket_prefix)
    try:
        names.extend([name async for name in client.scan_iter(match=pattern, count=1000)])
        # One DEL per key: a client's keys share a Cluster slot, but nothing is lost by not
        # relying on it, and an operator's reset is no hot path.
        for name in names:
            deleted += int(await client.delete(name))
    except Exception as exc:
        raise StorageError(f"resetting in Redis failed: {exc!r}") from exc
    return deleted

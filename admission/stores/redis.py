"""admission.stores.redis: token buckets shared through Redis, one Lua script per round trip.

The script (gcra.lua) decides at Redis's own `TIME`, so the clocks of the processes sharing it
don't matter, and answers with one integer per key; `Bucket.outcome` turns that into the
decision with the same arithmetic as the memory store. A lone decision is one `EVALSHA` on a
connection of the store's own (redis_wire). Decisions that arrive while a round trip is under
way are sent together in the next one (group commit), on a second connection: under load many
decisions share one script call. In Redis Cluster, a batch only holds keys of one hash slot.
"""

from __future__ import annotations

import asyncio
import logging
import math
import urllib.parse
from collections import defaultdict
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.sentinel import Sentinel
from redis.crc import key_slot
from redis.exceptions import RedisError

from admission.bucket import Bucket, Decision
from admission.charges import ENFORCED, Charge, Verdict
from admission.errors import StorageError, StorageTimeout
from admission.stores.naming import bucket_key, naming_secret
from admission.stores.redis_wire import ClientLine, ConnectionLine, Line, Script, bounded

log = logging.getLogger("admission.store")

GCRA = Script.load("gcra.lua")
# One request's charges against several buckets, all or nothing (admission.charges).
GCRA_MANY = Script.load("gcra_many.lua")
# Charges after a response, in full (a policy's charge_when).
CHARGE = Script.load("charge.lua")
# Bounds how long one script call holds Redis's single thread.
MAX_BATCH = 256

_Pending = tuple[bytes, int, "asyncio.Future[Decision]"]


def client_from_uri(uri: str, *, timeout_s: float) -> Any:
    """client_from_uri opens a redis-py asyncio client for any of the storage URI schemes.

    redis://, rediss:// and redis+unix:// give a `Redis`; redis+cluster://h:p[,h:p] a
    `RedisCluster`; redis+sentinel://h:p[,h:p]/service[/db] the master of `service`. Retries
    are off: a failing call must fail within the storage timeout so the fallback can answer.
    """
    scheme, _, rest = uri.partition("://")
    socket_timeout = max(timeout_s * 4, 0.25)
    # No `retry_on_timeout`: off is redis-py's default, RedisCluster refuses the argument and the
    # other clients warn that it is deprecated.
    common: dict[str, Any] = {
        "socket_timeout": socket_timeout,
        "socket_connect_timeout": socket_timeout,
    }
    if scheme in ("redis", "rediss"):
        return aioredis.Redis.from_url(uri, retry=None, **common)
    if scheme == "redis+unix":
        return aioredis.Redis.from_url("unix://" + rest, retry=None, **common)
    parts = urllib.parse.urlsplit(uri)
    userinfo, _, hosts = parts.netloc.rpartition("@")
    username, _, password = userinfo.partition(":") if userinfo else ("", "", "")
    auth: dict[str, Any] = {
        "username": username or None,
        "password": urllib.parse.unquote(password) or None,
    }
    nodes: list[tuple[str, int]] = []
    for loc in hosts.split(","):
        sub = urllib.parse.urlsplit("fake://" + loc.strip())
        nodes.append((sub.hostname or "localhost", sub.port or 6379))
    if scheme == "redis+cluster":
        return RedisCluster(
            startup_nodes=[ClusterNode(h, p) for h, p in nodes],
            **auth,
            **common,
        )
    if scheme == "redis+sentinel":
        path = [p for p in parts.path.split("/") if p]
        service = path[0]
        db = int(path[1]) if len(path) > 1 else 0
        sentinel = Sentinel(nodes, sentinel_kwargs=dict(auth, **common), **auth, **common)
        return sentinel.master_for(service, db=db)
    raise ValueError(f"not a Redis storage URI: {uri}")


class RedisStore:
    """RedisStore decides through one Lua script on a shared Redis, batching concurrent calls.

    Every `decide` is bounded by `timeout_s` and raises `StorageError`/`StorageTimeout` on
    failure (the guard around it decides what that means). After a Redis restart the script
    cache is empty: the `NOSCRIPT` reply is answered by one `EVAL`, which caches it again.
    Keys are named by `admission.stores.naming.bucket_key`: `<prefix>:{<digest of the client
    key>}`, never the client key itself; the braces make each client its own Cluster hash slot.
    `secret` keys the digest (None: derived from the prefix, see `naming_secret`).

    Lines carry the calls: `_lone_line` a lone caller's own round trip, `_batch_line` the
    sender's batches, each one call at a time (`_direct`, one `_sender`); in Cluster both go
    through the client, which routes each call to its slot's node. `_client_line` goes through
    the client too and takes any number of calls at once.
    """

    def __init__(
        self,
        client: Any,
        bucket: Bucket,
        *,
        timeout_s: float,
        prefix: str = "admission",
        secret: bytes | None = None,
        cluster: bool = False,
        batching: bool = True,
    ) -> None:
        self.client = client
        self.bucket = bucket
        self.timeout_s = timeout_s
        self.prefix = prefix
        self.secret = naming_secret(prefix, None) if secret is None else secret
        self.cluster = cluster
        self.batching = batching
        self._args = (repr(bucket.interval_s * 1e6).encode(), b"%d" % bucket.capacity)
        self._lone_line = _line_for(client, cluster)
        self._batch_line = _line_for(client, cluster)
        self._client_line = ClientLine(client)
        self._queue: list[_Pending] = []
        self._sender: asyncio.Task[None] | None = None
        # True while a caller makes its own round trip (see `decide`).
        self._direct = False
        self._closed = False

    @classmethod
    def from_uri(
        cls,
        uri: str,
        bucket: Bucket,
        *,
        timeout_s: float,
        prefix: str = "admission",
        secret: bytes | None = None,
    ) -> RedisStore:
        """RedisStore.from_uri builds a store and its client from a storage URI."""
        client = client_from_uri(uri, timeout_s=timeout_s)
        return cls(
            client,
            bucket,
            timeout_s=timeout_s,
            prefix=prefix,
            secret=secret,
            cluster=uri.startswith("redis+cluster://"),
        )

    def redis_key(self, key: str) -> bytes:
        """redis_key is the Redis key holding `key`'s bucket."""
        return bucket_key(self.prefix, self.secret, key)

    async def decide(self, key: str, cost: int = 1) -> Decision:
        """decide takes `cost` tokens from `key` in Redis, within `timeout_s` or StorageError."""
        if self._closed:
            raise StorageError("the Redis store is closed")
        if self._sender is None and not self._direct:
            # Nothing in flight: this caller makes the round trip itself, with no hop through a
            # sender task. What arrives meanwhile goes in one batch, sent at once alongside.
            self._direct = True
            try:
                ahead = await self._run(
                    self._lone_line, GCRA, [self.redis_key(key)], [*self._args, b"%d" % cost]
                )
            finally:
                self._direct = False
            return _decision(self.bucket, ahead, cost)
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Decision] = loop.create_future()
        self._queue.append((self.redis_key(key), cost, future))
        if self._sender is None:
            self._sender = loop.create_task(self._send_all())
        timer = loop.call_later(self.timeout_s, _expire, future, self.timeout_s)
        try:
            return await future
        finally:
            timer.cancel()

    async def _run(
        self, line: Line, script: Script, keys: Sequence[bytes], args: Sequence[bytes]
    ) -> Any:
        """_run runs `script` once on `line` within `timeout_s`; failures come out as
        StorageError. Other scripts than GCRA go on `_client_line`, which takes any number of
        calls at once."""
        try:
            return await bounded(line.run(script, keys, args), self.timeout_s)
        except asyncio.TimeoutError as exc:
            raise StorageTimeout(f"Redis did not answer within {self.timeout_s}s") from exc
        except (RedisError, OSError) as exc:
            raise StorageError(f"Redis call failed: {exc}") from exc
        except Exception as exc:
            # redis-py's own faults (an AttributeError on a connection torn down under a
            # concurrent call was seen in Cluster) are storage failures too: the guard answers.
            raise StorageError(f"Redis client failed: {exc!r}") from exc

    async def _send_all(self) -> None:
        # One sender at a time: whatever queued up during a round trip goes in the next one.
        try:
            while self._queue:
                if self.batching:
                    batch, self._queue = self._queue[:MAX_BATCH], self._queue[MAX_BATCH:]
                else:
                    batch, self._queue = self._queue[:1], self._queue[1:]
                batch = [item for item in batch if not item[2].done()]
                if not batch:
                    continue
                if self.cluster:
                    by_slot: dict[int, list[_Pending]] = defaultdict(list)
                    for item in batch:
                        by_slot[key_slot(item[0])].append(item)
                    await asyncio.gather(*(self._send(group) for group in by_slot.values()))
                else:
                    await self._send(batch)
        finally:
            self._sender = None

    async def _send(self, batch: list[_Pending]) -> None:
        keys = [item[0] for item in batch]
        args = [*self._args, *(b"%d" % item[1] for item in batch)]
        try:
            reply = await self._run(self._batch_line, GCRA, keys, args)
        except StorageError as exc:
            _fail_all(batch, exc)
            return
        aheads = reply if isinstance(reply, list) else [reply]
        for (_, cost, future), ahead in zip(batch, aheads, strict=True):
            if not future.done():
                future.set_result(_decision(self.bucket, ahead, cost))

    async def decide_charges(self, charges: Sequence[Charge]) -> Verdict:
        """decide_charges decides one request's charges in one round trip, all or nothing (see
        `admission.charges`), within `timeout_s` or StorageError.

        Each bucket is `<prefix>:{<digest>}:<name>`: a client's buckets share a hash tag. In
        Redis Cluster, charges of distinct clients land in distinct slots and go in one round
        trip per slot, concurrently; all or nothing then holds per client key.
        """
        if self._closed:
            raise StorageError("the Redis store is closed")
        keys = [bucket_key(self.prefix, self.secret, c.client, c.name) for c in charges]
        if self.cluster:
            slots: dict[int, list[int]] = defaultdict(list)
            for i, key in enumerate(keys):
                slots[key_slot(key)].append(i)
            if len(slots) > 1:
                parts = await asyncio.gather(
                    *(
                        self._charge([charges[i] for i in m], [keys[i] for i in m])
                        for m in slots.values()
                    )
                )
                decisions: list[Decision] = [None] * len(charges)  # type: ignore[list-item]
                refused: set[int] = set()
                for members, part in zip(slots.values(), parts, strict=True):
                    refused |= part.refused_groups
                    for i, decision in zip(members, part.decisions, strict=True):
                        decisions[i] = decision
                return Verdict(ENFORCED not in refused, decisions, frozenset(refused))
        return await self._charge(charges, keys)

    async def _charge(self, charges: Sequence[Charge], keys: list[bytes]) -> Verdict:
        args: list[bytes] = []
        for c in charges:
            bucket = c.bucket
            args += (
                repr(bucket.interval_s * 1e6).encode(),
                b"%d" % bucket.capacity,
                b"%d" % c.cost,
                b"%d" % c.group,
                b"1" if c.peek else b"0",
            )
        reply = await self._eval_many(keys, args)
        decisions = [_parse_many(reply, i) for i in range(len(charges))]
        refused = frozenset(
            c.group for c, d in zip(charges, decisions, strict=True) if not d.allowed
        )
        return Verdict(ENFORCED not in refused, decisions, refused)

    async def _eval_many(self, keys: list[bytes], args: list[bytes]) -> list[Any]:
        """_eval_many runs gcra_many.lua once, within `timeout_s` or StorageError. It goes
        through the client's pool (`_client_line`), which takes any number of calls at once:
        each request's charges are their own call."""
        reply = await self._run(self._client_line, GCRA_MANY, keys, args)
        return reply  # type: ignore[no-any-return]

    async def charge(self, charges: Sequence[Charge]) -> None:
        """charge takes each charge's cost from its bucket after a response, in full, whether or
        not the bucket holds it (charge.lua; `admission.charges.charge_after`), in one round
        trip (one per slot in Redis Cluster), within `timeout_s` or StorageError."""
        if self._closed:
            raise StorageError("the Redis store is closed")
        keys = [bucket_key(self.prefix, self.secret, c.client, c.name) for c in charges]
        args = [
            arg
            for c in charges
            for arg in (repr(c.bucket.interval_s * 1e6).encode(), b"%d" % c.cost)
        ]
        if not self.cluster:
            await self._run(self._client_line, CHARGE, keys, args)
            return
        slots: dict[int, list[int]] = defaultdict(list)
        for i, key in enumerate(keys):
            slots[key_slot(key)].append(i)
        await asyncio.gather(
            *(
                self._run(
                    self._client_line,
                    CHARGE,
                    [keys[i] for i in m],
                    [a for i in m for a in args[2 * i : 2 * i + 2]],
                )
                for m in slots.values()
            )
        )

    async def check(self) -> None:
        """check pings Redis within `timeout_s`, raising StorageError if it can't."""
        try:
            await bounded(self.client.ping(), self.timeout_s)
        except asyncio.TimeoutError as exc:
            raise StorageTimeout(f"Redis did not answer PING within {self.timeout_s}s") from exc
        except (RedisError, OSError) as exc:
            raise StorageError(f"Redis PING failed: {exc}") from exc

    async def clear(self) -> None:
        """clear deletes every bucket under the store's prefix (`<prefix>:*`; a prefix has no
        glob characters, see `ADMISSION_KEY_PREFIX`), on every node: every client's buckets
        are full again (`admission.testing`). A store shared with a running service empties
        that service's buckets too."""
        try:
            keys = [key async for key in self.client.scan_iter(match=self.prefix + ":*")]
            for start in range(0, len(keys), 500):
                chunk = keys[start : start + 500]
                if self.cluster:
                    # A multi-key DEL must stay within one slot: one key at a time.
                    for key in chunk:
                        await self.client.delete(key)
                else:
                    await self.client.delete(*chunk)
        except (RedisError, OSError) as exc:
            raise StorageError(f"clearing the Redis store failed: {exc}") from exc

    def reopen(self) -> None:
        """reopen makes a closed store decide again, on fresh connections of the same client:
        for the service's next lifespan. An open store is left as it is."""
        if not self._closed:
            return
        self._lone_line = _line_for(self.client, self.cluster)
        self._batch_line = _line_for(self.client, self.cluster)
        self._client_line = ClientLine(self.client)
        self._queue = []
        self._sender = None
        self._direct = False
        self._closed = False

    async def close(self) -> None:
        """close releases the connections; later calls are no-ops (until `reopen`)."""
        if self._closed:
            return
        self._closed = True
        for _, _, future in self._queue:
            if not future.done():
                future.set_exception(StorageError("the Redis store was closed"))
        self._queue = []
        try:
            await self._lone_line.close()
            await self._batch_line.close()
        finally:
            close = getattr(self.client, "aclose", None) or self.client.close
            await close()


def _parse_many(reply: list[Any], i: int) -> Decision:
    """_parse_many reads the i-th decision of a gcra_many.lua reply: four integers (allowed,
    remaining, retry-after and reset-after in µs, retry -1 for a cost above the capacity)."""
    allowed, remaining, retry_us, reset_us = (int(v) for v in reply[4 * i : 4 * i + 4])
    return Decision(
        allowed=bool(allowed),
        remaining=remaining,
        retry_after_s=math.inf if retry_us < 0 else retry_us / 1e6,
        reset_after_s=reset_us / 1e6,
    )


def _line_for(client: Any, cluster: bool) -> Line:
    """_line_for is a connection of the store's own, or the client itself for Cluster (and any
    client that is not a plain redis-py `Redis`)."""
    if cluster or not isinstance(client, aioredis.Redis):
        return ClientLine(client)
    return ConnectionLine(client.connection_pool)


def _decision(bucket: Bucket, ahead_us: int, cost: int) -> Decision:
    """_decision reads one integer of the script's reply: how far (in µs) the TAT stood ahead
    of Redis's now, negated minus one when refused."""
    if ahead_us >= 0:
        return bucket.outcome(True, ahead_us / 1e6, cost)
    return bucket.outcome(False, (-1 - ahead_us) / 1e6, cost)


def _expire(future: asyncio.Future[Decision], timeout_s: float) -> None:
    if not future.done():
        future.set_exception(StorageTimeout(f"Redis did not answer within {timeout_s}s"))


def _fail_all(batch: list[_Pending], error: StorageError) -> None:
    for _, _, future in batch:
        if not future.done():
            future.set_exception(error)

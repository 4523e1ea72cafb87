"""admission.stores.redis_wire: one Lua script call to Redis and back, at the least cost.

On loopback, redis-py's generic command path (a pool checkout and release under a lock, a
retry wrapper, observability hooks, the argument encoder, and with a socket timeout an
`asyncio.wait_for` task around every write) costs the client several times the round trip
itself; see docs/performance.md. A `ConnectionLine` keeps one connection of its own and sends
pre-packed commands on it with redis-py's connection and reply parser, nothing else. A
`ClientLine` goes through the client, for Redis Cluster, which routes by key. `bounded` puts
the storage timeout on a call with one timer rather than a timeout context or a task.
"""

from __future__ import annotations

import asyncio
import hashlib
import sys
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any, Protocol, TypeVar

from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import NoScriptError

T = TypeVar("T")
_HAS_UNCANCEL = sys.version_info >= (3, 11)


@dataclass(frozen=True)
class Script:
    """Script is a Lua script that Redis runs by its SHA1, and its text for when Redis lacks it."""

    text: bytes
    sha: bytes

    @classmethod
    def load(cls, name: str) -> Script:
        """Script.load reads `name` from the admission.stores package."""
        text = resources.files("admission.stores").joinpath(name).read_bytes()
        return cls(text, hashlib.sha1(text).hexdigest().encode())


class Line(Protocol):
    """Line runs a script and returns Redis's reply, raising redis-py's errors on failure."""

    async def run(self, script: Script, keys: Sequence[bytes], args: Sequence[bytes]) -> Any: ...

    async def close(self) -> None: ...


def _bulk(value: bytes) -> bytes:
    return b"$%d\r\n%s\r\n" % (len(value), value)


def pack_script_call(
    script: Script, keys: Sequence[bytes], args: Sequence[bytes], *, cached: bool = True
) -> bytes:
    """pack_script_call is `EVALSHA sha n keys... args...` (or `EVAL text ...`) in RESP."""
    parts = [
        b"*%d\r\n" % (3 + len(keys) + len(args)),
        b"$7\r\nEVALSHA\r\n$40\r\n%s\r\n" % script.sha if cached else b"$4\r\nEVAL\r\n",
    ]
    if not cached:
        parts.append(_bulk(script.text))
    parts.append(_bulk(b"%d" % len(keys)))
    parts.extend(map(_bulk, keys))
    parts.extend(map(_bulk, args))
    return b"".join(parts)


class ConnectionLine:
    """ConnectionLine runs scripts on one connection of its own, made by a redis-py pool.

    One call at a time: its owner sees to that. The connection is the pool's kind (a Sentinel
    pool's finds the current master when it connects) but stays out of the pool, and has no
    socket timeout: the caller bounds every call (`bounded`), and a call cut short, like any
    failed read or write, disconnects it (redis-py does so on any exception while reading or
    writing), so the next call starts on a fresh connection rather than read a stale reply.
    """

    def __init__(self, pool: Any) -> None:
        self._pool = pool
        self._conn: Any = None
        self._closed = False

    async def run(self, script: Script, keys: Sequence[bytes], args: Sequence[bytes]) -> Any:
        """run sends EVALSHA (EVAL after NOSCRIPT) and returns the reply."""
        try:
            return await self._run_once(script, keys, args)
        except RedisConnectionError:
            # A connection the server closed (a restart, a failover) fails once; the retry
            # connects afresh. Should the first attempt have run after all, its tokens are taken
            # twice: that errs on the strict side.
            return await self._run_once(script, keys, args)

    async def _run_once(self, script: Script, keys: Sequence[bytes], args: Sequence[bytes]) -> Any:
        try:
            return await self._round_trip(pack_script_call(script, keys, args))
        except NoScriptError:
            # The script cache was flushed (a restart, SCRIPT FLUSH): EVAL runs and caches it.
            return await self._round_trip(pack_script_call(script, keys, args, cached=False))

    async def _round_trip(self, command: bytes) -> Any:
        conn = self._conn
        if conn is None:
            if self._closed:
                raise RedisConnectionError("the connection line is closed")
            conn = self._conn = self._pool.make_connection()
            conn.socket_timeout = None
        if not conn.is_connected:
            await conn.connect()
        await conn.send_packed_command(command, check_health=False)
        return await conn.read_response()

    async def close(self) -> None:
        """close disconnects the connection; later calls fail."""
        self._closed = True
        conn, self._conn = self._conn, None
        if conn is not None:
            await conn.disconnect()


class ClientLine:
    """ClientLine runs scripts through a redis-py client's own command path (Redis Cluster),
    any number at once.

    A `RedisCluster` is initialized (its slot table read) before the first call goes out:
    calls racing its lazy initialization were seen going to the wrong node, and the recovery
    from the MOVED replies re-sent calls that had already run, taking their tokens twice.
    """

    def __init__(self, client: Any) -> None:
        self.client = client
        self._fresh = True

    async def run(self, script: Script, keys: Sequence[bytes], args: Sequence[bytes]) -> Any:
        """run sends EVALSHA (EVAL after NOSCRIPT) and returns the reply."""
        if self._fresh:
            initialize = getattr(self.client, "initialize", None)
            if initialize is not None:
                # Idempotent and locked inside redis-py: concurrent first callers all wait.
                await initialize()
            self._fresh = False
        try:
            return await self._run_once(script, keys, args)
        except RedisConnectionError:
            # As in ConnectionLine.run: a pooled connection the server closed fails once.
            return await self._run_once(script, keys, args)

    async def _run_once(self, script: Script, keys: Sequence[bytes], args: Sequence[bytes]) -> Any:
        try:
            return await self.client.evalsha(script.sha, len(keys), *keys, *args)
        except NoScriptError:
            return await self.client.eval(script.text, len(keys), *keys, *args)

    async def close(self) -> None:
        """close leaves the client to its owner."""


class _Alarm:
    """_Alarm cancels a task when it rings, and remembers that it did."""

    __slots__ = ("rang", "task")

    def __init__(self, task: asyncio.Task[Any]) -> None:
        self.task = task
        self.rang = False

    def ring(self) -> None:
        self.rang = True
        self.task.cancel()


async def bounded(awaitable: Awaitable[T], timeout_s: float) -> T:
    """bounded awaits `awaitable` for at most `timeout_s`, then raises asyncio.TimeoutError.

    One timer that cancels the running task: what `asyncio.timeout` does, for about half of
    what it adds to a call (benchmarks/redis_store.py), and no task per call as
    `asyncio.wait_for` has before 3.12. A cancellation from elsewhere stays a cancellation (on
    Python 3.10, one that lands while the timer's own is under way is taken for the timeout:
    no `Task.uncancel` there).
    """
    task = asyncio.current_task()
    if task is None:  # Not in a task (a coroutine driven by hand): the standard way.
        return await asyncio.wait_for(awaitable, timeout_s)
    cancelling = task.cancelling() if _HAS_UNCANCEL else 0  # type: ignore[attr-defined,unused-ignore]
    alarm = _Alarm(task)
    timer = asyncio.get_running_loop().call_later(timeout_s, alarm.ring)
    try:
        return await awaitable
    except asyncio.CancelledError:
        if not alarm.rang:
            raise
        if _HAS_UNCANCEL and task.uncancel() > cancelling:  # type: ignore[attr-defined,unused-ignore]
            raise  # cancelled from elsewhere too
        raise asyncio.TimeoutError from None
    finally:
        timer.cancel()

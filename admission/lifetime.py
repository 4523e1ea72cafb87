"""admission.lifetime: work tied to the life of the service or of one request.

A `Lifetime` owns background tasks, child processes and cleanup functions, and ends them all,
exactly once, when it closes: tasks are cancelled and awaited, children get SIGTERM and then
SIGKILL after a grace period, and cleanup functions run highest priority first (ties
last-registered first), each bounded in time, one that raises or hangs not stopping the rest.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import os
import signal
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, TypeVar, overload

log = logging.getLogger("admission.lifetime")

T = TypeVar("T")
Cleanup = Callable[[], Awaitable[None] | None]
C = TypeVar("C", bound=Cleanup)


class Lifetime:
    """Lifetime is a scope for tasks, child processes and cleanups, closed once.

    `spawn(coro)` starts a task; `start_process(*argv)` starts a child (in its own process
    group, so its own children go with it); `on_close(fn, priority=...)` registers a cleanup
    (usable as a decorator). `close()` may be called any number of times, concurrently: the
    first call does the work, the others wait for it. After closing, new work is refused with
    RuntimeError.
    """

    def __init__(self, name: str, *, cleanup_timeout_s: float = 5.0, grace_s: float = 5.0) -> None:
        self.name = name
        self.cleanup_timeout_s = cleanup_timeout_s
        self.grace_s = grace_s
        self._tasks: set[asyncio.Task[Any]] = set()
        self._processes: list[asyncio.subprocess.Process] = []
        # (priority, registration number, fn, timeout): sorted, the last entry runs first.
        self._cleanups: list[tuple[int, int, Cleanup, float]] = []
        self._registered = 0
        self._closing: asyncio.Future[None] | None = None

    @property
    def closed(self) -> bool:
        """closed is True once `close()` has begun."""
        return self._closing is not None

    @overload
    def on_close(self, fn: C, *, timeout_s: float | None = None, priority: int = 0) -> C: ...

    @overload
    def on_close(
        self, fn: None = None, *, timeout_s: float | None = None, priority: int = 0
    ) -> Callable[[C], C]: ...

    def on_close(
        self, fn: C | None = None, *, timeout_s: float | None = None, priority: int = 0
    ) -> C | Callable[[C], C]:
        """on_close registers `fn` (sync or async) to run at close, bounded by `timeout_s`
        (default: the lifetime's cleanup timeout). Cleanups run highest `priority` first, those
        of equal priority last-registered first: a data flush registered with priority 10 runs
        before the pool it writes to closes at 0, health reporting at -10 runs after both.
        Returns `fn`, so it works as a decorator, also with arguments:
        `@life.on_close(priority=10)`."""
        if fn is None:

            def register(f: C) -> C:
                return self.on_close(f, timeout_s=timeout_s, priority=priority)

            return register
        self._refuse_if_closed()
        self._registered += 1
        timeout = self.cleanup_timeout_s if timeout_s is None else timeout_s
        self._cleanups.append((priority, self._registered, fn, timeout))
        self._cleanups.sort(key=_order)
        return fn

    def spawn(self, coro: Coroutine[Any, Any, T], *, name: str | None = None) -> asyncio.Task[T]:
        """spawn runs `coro` as a task that close() cancels and awaits if it is still running.
        A task that fails is logged, not lost."""
        if self.closed:
            coro.close()
            self._refuse_if_closed()
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    async def start_process(self, *argv: str, **kwargs: Any) -> asyncio.subprocess.Process:
        """start_process starts `argv` as a child process (keyword arguments go to
        `asyncio.create_subprocess_exec`); close() terminates it if it is still running."""
        self._refuse_if_closed()
        kwargs.setdefault("start_new_session", True)
        process = await asyncio.create_subprocess_exec(*argv, **kwargs)
        self._processes.append(process)
        return process

    async def close(self) -> None:
        """close ends everything this lifetime owns, once; concurrent callers wait for it."""
        if self._closing is not None:
            await asyncio.shield(self._closing)
            return
        self._closing = asyncio.get_running_loop().create_future()
        try:
            await self._cancel_tasks()
            await self._stop_processes()
            await self._run_cleanups()
        finally:
            self._closing.set_result(None)

    async def _cancel_tasks(self) -> None:
        tasks = [t for t in self._tasks if not t.done()]
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks)
            log.info("%s: cancelled %d background task(s)", self.name, len(tasks))

    async def _stop_processes(self) -> None:
        running = [p for p in self._processes if p.returncode is None]
        if not running:
            return
        for process in running:
            _signal_group(process, signal.SIGTERM)
        waits = [asyncio.ensure_future(p.wait()) for p in running]
        _, pending = await asyncio.wait(waits, timeout=self.grace_s)
        for process in running:
            if process.returncode is None:
                _signal_group(process, signal.SIGKILL)
        if pending:
            await asyncio.wait(pending)
        log.info(
            "%s: stopped %d child process(es), %d of them killed after %.1fs",
            self.name,
            len(running),
            len(pending),
            self.grace_s,
        )

    async def _run_cleanups(self) -> None:
        while self._cleanups:
            _, _, fn, timeout_s = self._cleanups.pop()
            try:
                result = fn()
                if inspect.isawaitable(result):
                    await asyncio.wait_for(_awaitable(result), timeout_s)
            except asyncio.TimeoutError:
                log.error("%s: cleanup %r did not finish within %.1fs", self.name, fn, timeout_s)
            except Exception:
                log.exception("%s: cleanup %r failed", self.name, fn)

    def _task_done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error(
                "%s: background task %s failed",
                self.name,
                task.get_name(),
                exc_info=task.exception(),
            )

    def _refuse_if_closed(self) -> None:
        if self.closed:
            raise RuntimeError(f"{self.name} is closed; no new work can start")


def _order(entry: tuple[int, int, Cleanup, float]) -> tuple[int, int]:
    return entry[0], entry[1]


async def _awaitable(result: Awaitable[None]) -> None:
    await result


def _signal_group(process: asyncio.subprocess.Process, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        try:
            os.killpg(process.pid, sig)
        except (ProcessLookupError, PermissionError):
            # Not a group leader (start_new_session=False): signal the child alone.
            os.kill(process.pid, sig)

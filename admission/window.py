"""admission.window: a fixed number of slots for requests in flight, with a bounded wait."""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque


class Window:
    """Window holds `size` slots; a request takes one before it runs and gives it back after.

    `try_take()` takes a free slot at once or says no. `take(timeout_s)` waits at most
    `timeout_s` for one, in arrival order, but only while fewer than `max_waiters` are already
    waiting: beyond that it says no at once, so a full window can never pile up unbounded
    waiters (each holds a connection and memory). `give()` hands the slot straight to the
    oldest waiter, so a newcomer can't overtake someone who waited. A size of None is no window.
    """

    def __init__(self, size: int, *, max_waiters: int = 0) -> None:
        if size < 1:
            raise ValueError(f"Window size must be >= 1, got {size}")
        self.size = size
        self.max_waiters = max_waiters
        self.used = 0
        self._waiters: deque[asyncio.Future[None]] = deque()

    @property
    def waiting(self) -> int:
        """waiting is how many requests wait for a slot now."""
        return sum(1 for w in self._waiters if not w.done())

    def try_take(self) -> bool:
        """try_take takes a slot if one is free (and nobody waits ahead), without waiting."""
        if self.used < self.size and not self._waiters:
            self.used += 1
            return True
        return False

    async def take(self, timeout_s: float) -> bool:
        """take takes a slot, waiting at most `timeout_s`; False if none came in time."""
        if self.try_take():
            return True
        if timeout_s <= 0 or len(self._waiters) >= self.max_waiters:
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        self._waiters.append(waiter)
        timer = loop.call_later(timeout_s, _time_out, waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            # Granted and cancelled in the same instant: the slot is ours, pass it on. A waiter
            # that timed out in that instant holds nothing and must give nothing back.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.give()
            raise
        except TimeoutError:
            return False
        finally:
            timer.cancel()
            if not waiter.done() or waiter.cancelled() or waiter.exception() is not None:
                _remove(self._waiters, waiter)
        return True

    def give(self) -> None:
        """give returns a slot: to the oldest live waiter if any, else to the pool."""
        while self._waiters:
            waiter = self._waiters.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        if self.used <= 0:
            raise RuntimeError("a window slot was given back more often than taken")
        self.used -= 1


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())


def _remove(waiters: deque[asyncio.Future[None]], waiter: asyncio.Future[None]) -> None:
    with contextlib.suppress(ValueError):
        waiters.remove(waiter)

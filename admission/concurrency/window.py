"""admission.concurrency.window: slots for requests in flight, shared by priority, with a
bounded wait."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Mapping

# Priority classes, most important first; a class is its index into per-class tables.
CRITICAL = 0
DEFAULT = 1
SHEDDABLE = 2
CLASSES = ("critical", "default", "sheddable")
# The share of the window each class may fill: sheddable work stops at 80 % in flight and
# default work at 90 %, so the last slots are kept for what must not fail.
SHED_AT = {"sheddable": 0.8, "default": 0.9}


def shed_limits(size: int, shed_at: Mapping[str, float]) -> tuple[int, ...]:
    """shed_limits is, per class (critical, default, sheddable), how many may be in flight
    before that class is refused: a class is admitted while in flight < fraction x size, so its
    limit is the smallest integer not below fraction x size. `critical`, and any class missing
    from `shed_at`, has the whole window. With size 10 and the default fractions: (10, 9, 8).
    A fraction so small that its limit would be 0 still admits into an empty window."""
    limits = []
    for name in CLASSES:
        fraction = shed_at.get(name, 1.0) if name != "critical" else 1.0
        # 0.9 x 10 is 9.000000000000002 in floating point: a hair below keeps it 9.
        limits.append(max(1, min(size, math.ceil(fraction * size - 1e-9))))
    return tuple(limits)


class Window:
    """Window holds `size` slots; a request takes one before it runs and gives it back after.

    Each request has a priority class (CRITICAL, DEFAULT, SHEDDABLE). A class may take a slot
    only while the slots in use are below its share of the window (`shed_at`, fractions by
    class name; critical always has the whole window), so as the window fills, sheddable work
    is refused first, then default work, and critical work gets the last slots.

    `try_take(priority)` takes a free slot at once or says no. `take(timeout_s, priority)`
    waits at most `timeout_s` for one, but only while fewer than `max_waiters` are already
    waiting: beyond that it says no at once, unless a less important waiter is queued, which
    is then refused to make room. `give()` hands the slot straight to the most important waiter
    its class's share allows, the oldest of its class (`lifo=False`) or the newest
    (`lifo=True`: under overload the newest waiter's client is the likeliest still to be
    there), so a newcomer can't overtake someone who waited. `resize(size)` changes the size
    (the adaptive window); slots in use beyond a smaller size are given back as usual.
    """

    def __init__(
        self,
        size: int,
        *,
        max_waiters: int = 0,
        shed_at: Mapping[str, float] | None = None,
        lifo: bool = False,
    ) -> None:
        if size < 1:
            raise ValueError(f"Window size must be >= 1, got {size}")
        self.max_waiters = max_waiters
        self.shed_at = dict(SHED_AT if shed_at is None else shed_at)
        self.lifo = lifo
        self.used = 0
        # Per class: the waiters, and their number with entries not yet removed (a waiter that
        # timed out or was cancelled leaves its deque when it runs again).
        self._queues: tuple[deque[asyncio.Future[None]], ...] = (deque(), deque(), deque())
        self._queued = 0
        self.size = size
        self._limits = shed_limits(size, self.shed_at)

    @property
    def limits(self) -> tuple[int, ...]:
        """limits is how many may be in flight before each class is refused, critical first."""
        return self._limits

    @property
    def waiting(self) -> int:
        """waiting is how many requests wait for a slot now."""
        return sum(1 for q in self._queues for w in q if not w.done())

    def try_take(self, priority: int = DEFAULT) -> bool:
        """try_take takes a slot if one is free to `priority`, without waiting. It never
        overtakes a live waiter of its own or a more important class: `give` and `resize` hand
        every slot such a waiter may use straight to it, so while one waits, `used` is at or
        above that class's limit, and so at or above this one's."""
        if self.used < self._limits[priority]:
            self.used += 1
            return True
        return False

    async def take(self, timeout_s: float, priority: int = DEFAULT) -> bool:
        """take takes a slot, waiting at most `timeout_s`; False if none came in time."""
        if self.try_take(priority):
            return True
        if timeout_s <= 0 or not self._make_room(priority):
            return False
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        queue = self._queues[priority]
        queue.append(waiter)
        self._queued += 1
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
                self._remove(queue, waiter)
        return True

    def _make_room(self, priority: int) -> bool:
        """_make_room says whether a waiter of `priority` may queue: below the cap, or by
        refusing the waiter served last of a less important class."""
        if self._queued < self.max_waiters:
            return True
        for p in range(len(self._queues) - 1, priority, -1):
            queue = self._queues[p]
            while queue:
                # The one served last: the newest under FIFO, the oldest under LIFO.
                victim = queue.popleft() if self.lifo else queue.pop()
                self._queued -= 1
                if not victim.done():
                    victim.set_exception(TimeoutError())
                    return True
        return False

    def give(self) -> None:
        """give returns a slot: to the most important live waiter whose class may have it,
        else to the pool."""
        if self.used <= 0:
            raise RuntimeError("a window slot was given back more often than taken")
        self.used -= 1
        if self._queued:
            # Taken again at once by a waiter if one may have it: `used` is back where it was.
            self._grant_one()

    def resize(self, size: int) -> None:
        """resize makes the window `size` slots (at least 1) and hands slots a larger window
        frees to waiters. A smaller window refuses newcomers until enough slots come back."""
        size = max(1, size)
        if size == self.size:
            return
        self.size = size
        self._limits = shed_limits(size, self.shed_at)
        while self._queued and self._grant_one():
            pass

    def _grant_one(self) -> bool:
        for limit, queue in zip(self._limits, self._queues, strict=True):
            if self.used >= limit:
                continue
            while queue:
                waiter = queue.pop() if self.lifo else queue.popleft()
                self._queued -= 1
                if not waiter.done():
                    waiter.set_result(None)
                    self.used += 1
                    return True
        return False

    def _remove(self, queue: deque[asyncio.Future[None]], waiter: asyncio.Future[None]) -> None:
        with contextlib.suppress(ValueError):
            queue.remove(waiter)
            self._queued -= 1


def _time_out(waiter: asyncio.Future[None]) -> None:
    if not waiter.done():
        waiter.set_exception(TimeoutError())

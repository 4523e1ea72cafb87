"""admission.concurrency.window: slots for requests in flight, shared by priority, with a
bounded wait."""

from __future__ import annotations

import asyncio
import contextlib
import math
from collections import deque
from collections.abc import Mapping

from admission.concurrency.fairness import Clients, heaviest, pick

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

    Each call may name the request's `client` (see admission.concurrency.fairness): its slots
    are then counted in `clients`, a client at `client_cap` is refused at once, and with
    `fair` the slots are shared: a client holding its equal share or more takes another only
    while a free slot stays for each other client, a freed slot goes to the waiter, within the
    most important class that may have it, whose client holds the fewest slots, and a newcomer
    refused a place among the waiters takes the place of a waiter of a client holding more
    than its own. Without clients (None), the window is first come, first served.
    """

    def __init__(
        self,
        size: int,
        *,
        max_waiters: int = 0,
        shed_at: Mapping[str, float] | None = None,
        lifo: bool = False,
        client_cap: int | None = None,
        fair: bool = True,
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
        # The client of each waiter that has one, while it waits.
        self._owners: dict[asyncio.Future[None], str] = {}
        self.clients = Clients(client_cap, size if fair else None)
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

    def try_take(self, priority: int = DEFAULT, client: str | None = None) -> bool:
        """try_take takes a slot if one is free to `priority`, without waiting, and counts it
        for `client` (refused at the client's cap). It never overtakes a live waiter of its
        own or a more important class: `give` and `resize` hand every slot such a waiter may
        use straight to it, so while one waits, `used` is at or above that class's limit, and
        so at or above this one's."""
        limit = self._limits[priority]
        if self.used < limit:
            if client is not None:
                # Clients.take, inline: this is every request's path.
                clients = self.clients
                held = clients.held.get(client, 0)
                if held:
                    # `_more`'s first tests inline: below the cap, with more free slots than
                    # clients away, a client may take another whatever its share.
                    if (
                        held >= clients.cap or limit - self.used <= len(clients.away)
                    ) and not clients._more(held, self.used, limit):
                        return False
                elif clients.away:
                    clients.away.pop(client, None)
                clients.held[client] = held + 1
                clients.taken += 1
            self.used += 1
            return True
        return False

    async def take(
        self, timeout_s: float, priority: int = DEFAULT, client: str | None = None
    ) -> bool:
        """take takes a slot for `client`, waiting at most `timeout_s`; False if none came in
        time. A client at its cap is refused at once: only its own requests can free it."""
        if self.try_take(priority, client):
            return True
        if timeout_s <= 0 or (client is not None and self.clients.capped(client)):
            return self._refused(client)
        if not self._make_room(priority, client):
            return self._refused(client)
        loop = asyncio.get_running_loop()
        waiter: asyncio.Future[None] = loop.create_future()
        queue = self._queues[priority]
        queue.append(waiter)
        self._queued += 1
        if client is not None:
            self._owners[waiter] = client
        timer = loop.call_later(timeout_s, _time_out, waiter)
        try:
            await waiter
        except asyncio.CancelledError:
            # Granted and cancelled in the same instant: the slot is ours, pass it on. A waiter
            # that timed out in that instant holds nothing and must give nothing back.
            if waiter.done() and not waiter.cancelled() and waiter.exception() is None:
                self.give(client)
            raise
        except TimeoutError:
            return self._refused(client)
        finally:
            timer.cancel()
            if client is not None:
                del self._owners[waiter]
            if not waiter.done() or waiter.cancelled() or waiter.exception() is not None:
                self._remove(queue, waiter)
        return True

    def _refused(self, client: str | None) -> bool:
        """_refused notes that `client` got no slot (see `Clients.turned_away`); False."""
        if client is not None:
            self.clients.turned_away(client)
        return False

    def _make_room(self, priority: int, client: str | None) -> bool:
        """_make_room says whether a waiter of `priority` may queue: below the cap, or by
        refusing the waiter served last of a less important class, or else of its own class
        the waiter served last of the client holding the most slots, if that is more than
        `client` holds."""
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
        if client is None:
            return False
        queue = self._queues[priority]
        index = heaviest(
            queue, self._owners, self.clients, self.clients.held.get(client, 0), self.lifo
        )
        if index is None:
            return False
        victim = queue[index]
        del queue[index]
        self._queued -= 1
        victim.set_exception(TimeoutError())
        return True

    def give(self, client: str | None = None) -> None:
        """give returns a slot `client` held: to the live waiter that may have it (see the
        class's docstring), else to the pool."""
        if self.used <= 0:
            raise RuntimeError("a window slot was given back more often than taken")
        if client is not None:
            # The client's count, given back here and only here: this is every request's path
            # (a call to a method of Clients more costs about 500 instructions).
            clients = self.clients
            held = clients.held.pop(client, 0)
            if held > 1:
                clients.held[client] = held - 1
            elif held == 0:
                raise RuntimeError("a client's slot was given back more often than taken")
            elif clients.memory:
                # Never in `away` while it held a slot: in at the newest end.
                away = clients.away
                away[client] = clients.taken
                if len(away) > clients.keep:
                    del away[next(iter(away))]
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
        if self.clients.memory:
            self.clients.resize(size)
        while self._queued and self._grant_one():
            pass

    def _grant_one(self) -> bool:
        for limit, queue in zip(self._limits, self._queues, strict=True):
            if self.used >= limit:
                continue
            # Waiters that timed out or were refused, at the end served next: dropped here.
            while queue and (queue[-1] if self.lifo else queue[0]).done():
                queue.pop() if self.lifo else queue.popleft()
                self._queued -= 1
            if not queue:
                continue
            index = pick(queue, self._owners, self.clients, self.used, limit, self.lifo)
            if index is None:
                # Every live waiter of this class is of a client at its cap.
                continue
            waiter = queue[index]
            del queue[index]
            self._queued -= 1
            client = self._owners.get(waiter)
            if client is not None:
                self.clients.take(client, self.used, limit)
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

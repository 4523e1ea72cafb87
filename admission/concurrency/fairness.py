"""admission.concurrency.fairness: each client's slots in flight, so that one client can't take
the whole window from the rest.

A client is the request's key under `ADMISSION_KEY` (the rate limit's key function, with the
trusted proxies and the forwarded header). Three rules use the counts:

- a cap (`ADMISSION_CLIENT_WINDOW`, nginx's `limit_conn`): a client holding `cap` slots is
  refused its next request at once, whether or not the window has room;
- a fair share: the clients taking part are those holding slots and those holding none now
  that held one or were turned away lately (a light client between two requests); a client
  holding its equal share of the window or more (`held x active >= size`) may take another
  slot only while a free slot stays for each client taking part that holds none, so a light
  client finds its slot again beside a heavy one even without a queue, and a client alone
  still has the whole window;
- fair service of the waiters: a freed slot goes to the waiting client holding the fewest
  slots, and when the waiters are at their cap a newcomer takes the place of a waiter of a
  client holding more than its own (Kubernetes' API Priority and Fairness queues per flow and
  serves the least served one; this is that rule with the slots in flight as the measure).

Memory is bounded by the window, never by the number of clients a process has seen: `held`
has only clients with a slot in flight, and `away` at most half as many clients as the window
has slots, each forgotten once it takes a slot again or after `2 x size` slots were taken
since (a client that left keeps a slot free for a turn or two of the window, no longer).
"""

from __future__ import annotations

import asyncio
import sys
from collections import deque

NO_CAP = sys.maxsize


class Clients:
    """Clients counts the slots each client holds: `held` maps a client to its count and holds
    no client at zero. `cap` is the most one client may hold (NO_CAP for none). With a window
    `size`, it also remembers in `away` the clients holding nothing now that held a slot or
    were turned away lately, which take part in the shares; with `size` None (a cap without a
    window) there are no shares."""

    __slots__ = ("away", "cap", "held", "keep", "memory", "taken")

    def __init__(self, cap: int | None = None, size: int | None = None) -> None:
        self.cap = NO_CAP if cap is None else cap
        self.held: dict[str, int] = {}
        # Client -> the value of `taken` when it last gave back its last slot or was turned
        # away; oldest first.
        self.away: dict[str, int] = {}
        self.memory = 0
        self.keep = 0
        self.taken = 0
        if size is not None:
            self.resize(size)

    def resize(self, size: int) -> None:
        """resize follows a window of `size` slots: clients that left are remembered for
        `2 x size` slots taken, at most `size / 2` of them."""
        self.memory = 2 * size
        self.keep = max(1, size // 2)

    def capped(self, client: str) -> bool:
        """capped: does `client` hold as many slots as the cap allows?"""
        return self.held.get(client, 0) >= self.cap

    def active(self) -> int:
        """active is how many clients take part in the shares: holding slots, or holding none
        since fewer than `memory` slots were taken."""
        away = self.away
        if away:
            horizon = self.taken - self.memory
            while away:
                oldest = next(iter(away))
                if away[oldest] >= horizon:
                    break
                del away[oldest]
        return len(self.held) + len(away)

    def allowed(self, client: str, used: int, limit: int) -> bool:
        """allowed: may `client` take one of `limit` slots, `used` of them taken? Below its cap,
        and holding nothing, or less than its equal share, or leaving a free slot for each
        client taking part that holds none."""
        held = self.held.get(client, 0)
        return held == 0 or self._more(held, used, limit)

    def _more(self, held: int, used: int, limit: int) -> bool:
        """_more: may a client holding `held` slots, one or more, take another (see
        `allowed`)?"""
        if held >= self.cap:
            return False
        # The second rule's test first, on `away` before `active` forgets the clients that
        # left long ago: it can only be longer then, so a yes is the rule's yes. While the
        # window has more free slots than clients away (most of the time), no share is
        # counted at all.
        if not self.memory or limit - used > len(self.away):
            return True
        return held * self.active() < limit or limit - used > len(self.away)

    def take(self, client: str, used: int, limit: int) -> bool:
        """take counts one more slot for `client` if it is `allowed`; False (nothing counted)
        otherwise."""
        held = self.held.get(client, 0)
        if held:
            if not self._more(held, used, limit):
                return False
        elif self.away:
            # It takes part as a holder now.
            self.away.pop(client, None)
        self.held[client] = held + 1
        self.taken += 1
        return True

    def turned_away(self, client: str) -> None:
        """turned_away remembers that `client` was refused a slot while holding none, so that
        it takes part in the shares for a while (its last refusal counts)."""
        if self.memory and client not in self.held:
            self._remember(client)

    def _remember(self, client: str) -> None:
        """_remember has `client`, holding nothing now, take part in the shares a while. Beyond
        half the window's size (`keep`) such clients, the oldest is forgotten: they keep a free
        slot each, and the other half is always the busy clients'."""
        away = self.away
        away.pop(client, None)
        away[client] = self.taken
        if len(away) > self.keep:
            del away[next(iter(away))]

    def over_share(self, client: str, size: int) -> bool:
        """over_share: does `client` hold more than its equal share of a window of `size`, the
        size divided among the clients taking part? A client holding nothing never does, nor a
        client alone: its share is the whole window."""
        held = self.held.get(client, 0)
        return held > 0 and bool(self.memory) and held * self.active() > size


def pick(
    queue: deque[asyncio.Future[None]],
    owners: dict[asyncio.Future[None], str],
    clients: Clients,
    used: int,
    limit: int,
    lifo: bool,
) -> int | None:
    """pick is the index in `queue` of the live waiter to serve next: of the clients `allowed`
    a slot, the one holding the fewest slots, and its waiter served first by the queue's order
    (the oldest, or the newest with `lifo`). A waiter without a client (`owners` has none for
    it) counts as holding nothing. None when no waiter may be served. The scan stops at the
    first waiter whose client holds nothing, so an uncontended queue costs one step."""
    held = clients.held
    best: int | None = None
    fewest = NO_CAP
    order = range(len(queue) - 1, -1, -1) if lifo else range(len(queue))
    for index in order:
        waiter = queue[index]
        if waiter.done():
            continue
        client = owners.get(waiter)
        if client is None:
            return index
        count = held.get(client, 0)
        if count < fewest and clients.allowed(client, used, limit):
            best, fewest = index, count
            if count == 0:
                break
    return best


def heaviest(
    queue: deque[asyncio.Future[None]],
    owners: dict[asyncio.Future[None], str],
    clients: Clients,
    than: int,
    lifo: bool,
) -> int | None:
    """heaviest is the index in `queue` of the live waiter to refuse so that a client holding
    `than` slots may wait instead: the one served last of the client holding the most slots,
    if that is more than `than`; else None."""
    held = clients.held
    worst: int | None = None
    most = than
    # Served last first: the newest under FIFO, the oldest under LIFO.
    order = range(len(queue)) if lifo else range(len(queue) - 1, -1, -1)
    for index in order:
        waiter = queue[index]
        if waiter.done():
            continue
        client = owners.get(waiter)
        count = 0 if client is None else held.get(client, 0)
        if count > most:
            worst, most = index, count
    return worst

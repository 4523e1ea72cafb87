"""admission.ledger: how many requests are in flight, and an event when there are none."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from admission.reasons import Reason


class Abortable(Protocol):
    """Abortable is anything in flight that the drain can stop: one request's exchange."""

    websocket: bool

    def abort(self, reason: Reason) -> None: ...


class Ledger:
    """Ledger counts admitted requests (HTTP and websocket) until each one has finished.

    `enter` and `leave` are called exactly once per admitted request, `leave` in a `finally`.
    `wait_empty()` returns when the count is zero (at once if it already is); the window, the
    drain and `/readyz` all read this one object.

    Every request pays for `enter` and `leave`, so they are the live set's own `add` and
    `remove` (no Python call) until something waits for the count to reach zero; from then on
    `leave` also wakes the waiters. Leaving what never entered, or leaving twice, raises
    KeyError.
    """

    enter: Callable[[Abortable], None]
    leave: Callable[[Abortable], None]

    def __init__(self) -> None:
        self._live: set[Abortable] = set()
        self._empty: asyncio.Event | None = None
        self.enter = self._live.add
        self.leave = self._live.remove

    @property
    def in_flight(self) -> int:
        """in_flight is the number of admitted requests that have not finished."""
        return len(self._live)

    @property
    def websockets(self) -> int:
        """websockets is how many of those are websocket connections."""
        return sum(1 for item in self._live if item.websocket)

    def live(self) -> list[Abortable]:
        """live is a snapshot of what is in flight."""
        return list(self._live)

    def _leave_and_wake(self, item: Abortable) -> None:
        self._live.remove(item)
        if not self._live and self._empty is not None:
            self._empty.set()

    async def wait_empty(self) -> None:
        """wait_empty returns once nothing is in flight."""
        if not self._live:
            return
        # A zero that already passed (the event is set) is not this one: wait for the next.
        # A waiter woken at zero stays woken even if a request enters before it runs.
        if self._empty is None or self._empty.is_set():
            self._empty = asyncio.Event()
        self.leave = self._leave_and_wake
        await self._empty.wait()

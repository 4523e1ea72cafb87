"""admission.ledger: how many requests are in flight, and an event when there are none."""

from __future__ import annotations

import asyncio
from typing import Protocol


class Abortable(Protocol):
    """Abortable is anything in flight that the drain can stop: one request's exchange."""

    websocket: bool

    def abort(self, reason: str) -> None: ...


class Ledger:
    """Ledger counts admitted requests (HTTP and websocket) until each one has finished.

    `enter` and `leave` are called exactly once per admitted request, `leave` in a `finally`.
    `wait_empty()` returns when the count is zero (at once if it already is); the window, the
    drain and `/readyz` all read this one object.
    """

    def __init__(self) -> None:
        self._live: set[Abortable] = set()
        self._empty: asyncio.Event | None = None

    @property
    def in_flight(self) -> int:
        """in_flight is the number of admitted requests that have not finished."""
        return len(self._live)

    @property
    def websockets(self) -> int:
        """websockets is how many of those are websocket connections."""
        return sum(1 for item in self._live if item.websocket)

    def enter(self, item: Abortable) -> None:
        """enter counts `item` as in flight."""
        if item in self._live:
            raise RuntimeError("a request entered the ledger twice")
        self._live.add(item)
        if self._empty is not None:
            self._empty.clear()

    def leave(self, item: Abortable) -> None:
        """leave stops counting `item`; at zero it wakes `wait_empty`."""
        self._live.remove(item)
        if not self._live and self._empty is not None:
            self._empty.set()

    def live(self) -> list[Abortable]:
        """live is a snapshot of what is in flight."""
        return list(self._live)

    async def wait_empty(self) -> None:
        """wait_empty returns once nothing is in flight."""
        if not self._live:
            return
        if self._empty is None:
            self._empty = asyncio.Event()
        await self._empty.wait()

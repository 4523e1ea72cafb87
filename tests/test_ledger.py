"""Tests of `Ledger`: the in-flight count and the event at zero that the drain waits on."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

import pytest

from admission.ledger import Ledger


@dataclass(eq=False)
class Item:
    """Item stands in for one request's exchange."""

    websocket: bool = False
    reasons: list[str] = field(default_factory=list)

    def abort(self, reason: str) -> None:
        self.reasons.append(reason)


async def settle() -> None:
    """settle lets every ready task run until all of them are blocked again."""
    for _ in range(5):
        await asyncio.sleep(0)


def test_in_flight_counts_entries_until_they_leave() -> None:
    ledger = Ledger()
    a, b = Item(), Item()
    ledger.enter(a)
    ledger.enter(b)
    assert ledger.in_flight == 2
    ledger.leave(a)
    assert ledger.in_flight == 1
    assert ledger.live() == [b]
    ledger.leave(b)
    assert ledger.in_flight == 0


def test_websockets_are_counted_among_the_in_flight_and_apart() -> None:
    ledger = Ledger()
    ledger.enter(Item(websocket=True))
    ledger.enter(Item())
    assert ledger.in_flight == 2
    assert ledger.websockets == 1


def test_entering_twice_counts_once_so_leaving_once_empties_the_ledger() -> None:
    ledger = Ledger()
    item = Item()
    ledger.enter(item)
    ledger.enter(item)
    assert ledger.in_flight == 1
    ledger.leave(item)
    assert ledger.in_flight == 0


def test_leaving_without_entering_is_refused() -> None:
    ledger = Ledger()
    with pytest.raises(KeyError):
        ledger.leave(Item())
    assert ledger.in_flight == 0


def test_leaving_twice_is_refused_and_the_count_never_goes_negative() -> None:
    ledger = Ledger()
    item = Item()
    ledger.enter(item)
    ledger.leave(item)
    with pytest.raises(KeyError):
        ledger.leave(item)
    assert ledger.in_flight == 0


async def test_wait_empty_returns_at_once_when_nothing_is_in_flight() -> None:
    ledger = Ledger()
    task = asyncio.create_task(ledger.wait_empty())
    await asyncio.sleep(0)
    assert task.done()


async def test_wait_empty_wakes_on_the_last_leave_and_not_before() -> None:
    ledger = Ledger()
    a, b = Item(), Item()
    ledger.enter(a)
    ledger.enter(b)
    task = asyncio.create_task(ledger.wait_empty())
    await settle()
    assert not task.done()
    ledger.leave(a)
    await settle()
    assert not task.done()
    ledger.leave(b)
    # Woken by the event within a couple of loop iterations, with no time passing: a poll
    # on a timer would still be asleep here.
    await asyncio.sleep(0)
    await asyncio.sleep(0)
    assert task.done()


async def test_wait_empty_waits_again_after_a_new_entry() -> None:
    ledger = Ledger()
    first = Item()
    ledger.enter(first)
    early = asyncio.create_task(ledger.wait_empty())
    await settle()
    ledger.leave(first)
    await settle()
    assert early.done()
    second = Item()
    ledger.enter(second)
    late = asyncio.create_task(ledger.wait_empty())
    await settle()
    assert not late.done()
    ledger.leave(second)
    await settle()
    assert late.done()


async def test_every_waiter_wakes_when_the_count_reaches_zero() -> None:
    ledger = Ledger()
    item = Item()
    ledger.enter(item)
    waiters = [asyncio.create_task(ledger.wait_empty()) for _ in range(3)]
    await settle()
    assert not any(w.done() for w in waiters)
    ledger.leave(item)
    await settle()
    assert all(w.done() for w in waiters)


async def test_a_waiter_woken_at_zero_stays_woken_when_a_request_enters_at_once() -> None:
    # The drain must not miss the moment of zero because a new request slipped in before it
    # ran: the zero it waited for did happen.
    ledger = Ledger()
    item = Item()
    ledger.enter(item)
    task = asyncio.create_task(ledger.wait_empty())
    await settle()
    ledger.leave(item)
    ledger.enter(Item())
    await settle()
    assert task.done()

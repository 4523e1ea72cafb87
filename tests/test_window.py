"""Tests of `Window`: slots, the FIFO handoff to waiters, the waiter cap and cancellation.

Nothing here waits on wall time except the one timeout test, which uses a 10 ms timer; every
other wait is on a task observed after a few loop iterations.
"""

from __future__ import annotations

import asyncio

import pytest

from admission.concurrency.window import DEFAULT, Window

# Long enough that no test here ever reaches it: a waiter that is served or refused is
# served or refused by the window, not by its timer.
LONG_S = 60.0


async def settle() -> None:
    """settle lets every ready task run until all of them are blocked again."""
    for _ in range(5):
        await asyncio.sleep(0)


def waiter(window: Window, name: str, order: list[str]) -> asyncio.Task[bool]:
    async def take() -> bool:
        got = await window.take(LONG_S)
        if got:
            order.append(name)
        return got

    return asyncio.create_task(take(), name=name)


def test_try_take_takes_free_slots_then_refuses() -> None:
    window = Window(2)
    assert window.try_take()
    assert window.try_take()
    assert not window.try_take()
    assert window.used == 2


def test_window_of_size_zero_is_refused() -> None:
    with pytest.raises(ValueError, match="size"):
        Window(0)


def test_giving_back_more_slots_than_taken_raises() -> None:
    window = Window(1)
    assert window.try_take()
    window.give()
    with pytest.raises(RuntimeError, match="more often than taken"):
        window.give()
    assert window.used == 0


async def test_freed_slot_goes_to_waiters_in_arrival_order() -> None:
    window = Window(1, max_waiters=3)
    assert window.try_take()
    order: list[str] = []
    tasks = [waiter(window, name, order) for name in ("a", "b", "c")]
    await settle()
    assert window.waiting == 3
    for expected in (["a"], ["a", "b"], ["a", "b", "c"]):
        window.give()
        await settle()
        assert order == expected
        assert window.used == 1
    assert all(task.result() for task in tasks)
    window.give()
    assert window.used == 0
    assert window.waiting == 0


async def test_newcomer_cannot_overtake_a_waiter_that_was_handed_the_slot() -> None:
    window = Window(1, max_waiters=1)
    assert window.try_take()
    order: list[str] = []
    first = waiter(window, "first", order)
    await settle()
    window.give()
    # The slot went to the waiter, not back to the pool, even before the waiter ran.
    assert window.used == 1
    assert not window.try_take()
    await settle()
    assert first.result() is True
    assert order == ["first"]


async def test_waiters_beyond_the_cap_are_refused_at_once() -> None:
    window = Window(1, max_waiters=2)
    assert window.try_take()
    order: list[str] = []
    queued = [waiter(window, name, order) for name in ("a", "b")]
    await settle()
    extra = asyncio.create_task(window.take(LONG_S))
    await asyncio.sleep(0)
    # Refused on its first step, while the two within the cap still wait.
    assert extra.done() and extra.result() is False
    assert window.waiting == 2
    assert not any(task.done() for task in queued)
    for _ in queued:
        window.give()
    await settle()
    assert order == ["a", "b"]


async def test_no_waiting_at_all_when_the_cap_is_zero() -> None:
    window = Window(1)  # max_waiters defaults to 0
    assert window.try_take()
    task = asyncio.create_task(window.take(LONG_S))
    await asyncio.sleep(0)
    assert task.done() and task.result() is False
    assert window.waiting == 0


async def test_zero_timeout_refuses_without_waiting() -> None:
    window = Window(1, max_waiters=5)
    assert window.try_take()
    assert await window.take(0) is False
    assert window.waiting == 0


async def test_take_succeeds_at_once_when_a_slot_is_free() -> None:
    window = Window(1)
    assert await window.take(LONG_S) is True
    assert window.used == 1


async def test_waiter_that_times_out_gets_no_slot_and_leaves_the_queue() -> None:
    window = Window(1, max_waiters=1)
    assert window.try_take()
    assert await window.take(0.01) is False
    assert window.waiting == 0
    assert window.used == 1
    # The queue is free again: the next waiter is served by the next give().
    order: list[str] = []
    task = waiter(window, "next", order)
    await settle()
    window.give()
    await settle()
    assert task.result() is True
    assert window.used == 1


async def test_cancelled_waiter_leaves_the_queue_without_a_slot() -> None:
    window = Window(1, max_waiters=2)
    assert window.try_take()
    order: list[str] = []
    first = waiter(window, "first", order)
    second = waiter(window, "second", order)
    await settle()
    first.cancel()
    await settle()
    assert first.cancelled()
    assert window.waiting == 1
    window.give()
    await settle()
    assert order == ["second"]
    assert second.result() is True
    assert window.used == 1


async def test_waiter_cancelled_just_after_being_granted_passes_the_slot_on() -> None:
    window = Window(1, max_waiters=2)
    assert window.try_take()
    order: list[str] = []
    granted = waiter(window, "granted", order)
    next_in_line = waiter(window, "next", order)
    await settle()
    window.give()  # hands the slot to "granted", which has not run yet
    granted.cancel()  # ...and is cancelled in the same instant
    await settle()
    assert granted.cancelled()
    assert order == ["next"]
    assert next_in_line.result() is True
    assert window.used == 1
    window.give()
    assert window.used == 0


async def test_waiter_cancelled_just_after_being_granted_returns_the_slot_to_the_pool() -> None:
    window = Window(1, max_waiters=1)
    assert window.try_take()
    order: list[str] = []
    granted = waiter(window, "granted", order)
    await settle()
    window.give()
    granted.cancel()
    await settle()
    assert granted.cancelled()
    assert window.used == 0
    assert window.try_take()


async def test_waiter_timed_out_and_cancelled_in_the_same_instant_gives_back_nothing() -> None:
    # The timer's expiry and a cancellation can land before the waiter runs again; the waiter
    # never held a slot, so it must not give one back (that would over-admit the window).
    window = Window(2, max_waiters=1)
    assert window.try_take()
    assert window.try_take()
    task = asyncio.create_task(window.take(LONG_S))
    await settle()
    assert window.waiting == 1
    window._queues[DEFAULT][0].set_exception(TimeoutError())  # what the timer does on expiry
    task.cancel()
    await settle()
    assert task.cancelled()
    assert window.used == 2
    assert window.waiting == 0
    assert not window.try_take()


async def test_waiting_counts_only_live_waiters() -> None:
    window = Window(1, max_waiters=3)
    assert window.try_take()
    order: list[str] = []
    tasks = [waiter(window, name, order) for name in ("a", "b")]
    await settle()
    assert window.waiting == 2
    window.give()
    assert window.waiting == 1  # "a" was handed the slot; only "b" still waits
    await settle()
    tasks[1].cancel()
    await settle()
    assert window.waiting == 0

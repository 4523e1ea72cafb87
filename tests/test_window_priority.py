"""Tests of the window's priority classes: shedding thresholds, the order waiters are served in,
and resizing (the adaptive window).

As in test_window.py, waits are on tasks observed after a few loop iterations, never on time.
"""

from __future__ import annotations

import asyncio

import pytest

from admission.concurrency.window import CRITICAL, DEFAULT, SHEDDABLE, Window, shed_limits

LONG_S = 60.0


async def settle() -> None:
    """settle lets every ready task run until all of them are blocked again."""
    for _ in range(5):
        await asyncio.sleep(0)


def waiter(window: Window, name: str, priority: int, order: list[str]) -> asyncio.Task[bool]:
    async def take() -> bool:
        got = await window.take(LONG_S, priority)
        if got:
            order.append(name)
        return got

    return asyncio.create_task(take(), name=name)


def fill(window: Window, n: int) -> None:
    for _ in range(n):
        assert window.try_take(CRITICAL)


def test_window_of_ten_sheds_sheddable_at_eight_default_at_nine_critical_gets_the_tenth() -> None:
    window = Window(10)
    for _ in range(8):
        assert window.try_take(SHEDDABLE)
    assert not window.try_take(SHEDDABLE)  # 8 in flight: sheddable refused
    assert window.try_take(DEFAULT)  # the 9th
    assert not window.try_take(DEFAULT)  # 9 in flight: default refused
    assert not window.try_take(SHEDDABLE)
    assert window.try_take(CRITICAL)  # the 10th
    assert not window.try_take(CRITICAL)
    assert window.used == 10


@pytest.mark.parametrize(
    ("size", "expected"),
    [
        (1, (1, 1, 1)),
        (2, (2, 2, 2)),
        (5, (5, 5, 4)),
        (10, (10, 9, 8)),
        (11, (11, 10, 9)),
        (20, (20, 18, 16)),
        (100, (100, 90, 80)),
        (200, (200, 180, 160)),
        (1000, (1000, 900, 800)),
    ],
)
def test_shed_limits_follow_in_flight_below_fraction_of_the_window(
    size: int, expected: tuple[int, int, int]
) -> None:
    assert shed_limits(size, {"sheddable": 0.8, "default": 0.9}) == expected


def test_every_size_and_fraction_admits_exactly_while_in_flight_is_below_the_fraction() -> None:
    # The rule itself, for every window up to 300 and fractions in steps of 0.05: a class is
    # admitted at n in flight exactly when n < fraction x size (or the window is empty).
    for size in range(1, 301):
        for step in range(1, 21):
            fraction = step / 20
            limit = shed_limits(size, {"sheddable": fraction, "default": 1.0})[SHEDDABLE]
            for n in (limit - 1, limit):
                admitted = n < limit
                assert admitted == (n < fraction * size - 1e-9 or n == 0), (size, fraction, n)


def test_critical_always_has_the_whole_window_and_missing_classes_default_to_it() -> None:
    assert shed_limits(10, {"critical": 0.5}) == (10, 10, 10)
    assert shed_limits(10, {}) == (10, 10, 10)
    assert shed_limits(10, {"sheddable": 0.0}) == (10, 10, 1)


async def test_freed_slot_goes_to_the_most_important_waiter_first() -> None:
    window = Window(10, max_waiters=10, shed_at={})  # no shedding: only the queue order counts
    fill(window, 10)
    order: list[str] = []
    tasks = [
        waiter(window, "s1", SHEDDABLE, order),
        waiter(window, "d1", DEFAULT, order),
        waiter(window, "c1", CRITICAL, order),
        waiter(window, "d2", DEFAULT, order),
    ]
    await settle()
    for _ in tasks:
        window.give()
        await settle()
    assert order == ["c1", "d1", "d2", "s1"]
    assert window.used == 10


async def test_lifo_serves_the_newest_waiter_of_a_class_first() -> None:
    window = Window(1, max_waiters=10, lifo=True)
    fill(window, 1)
    order: list[str] = []
    tasks = [waiter(window, name, DEFAULT, order) for name in ("a", "b", "c")]
    tasks.append(waiter(window, "crit", CRITICAL, order))
    await settle()
    for _ in tasks:
        window.give()
        await settle()
    assert order == ["crit", "c", "b", "a"]


async def test_freed_slot_skips_a_waiter_whose_class_is_over_its_share() -> None:
    window = Window(10, max_waiters=5)
    fill(window, 10)
    order: list[str] = []
    shed = waiter(window, "shed", SHEDDABLE, order)
    await settle()
    window.give()  # 9 in flight: a sheddable request may not have the slot
    await settle()
    assert order == [] and window.used == 9
    window.give()  # 8: still not
    await settle()
    assert order == [] and window.used == 8
    window.give()  # 7 in flight, so the 8th slot is the sheddable waiter's
    await settle()
    assert order == ["shed"] and window.used == 8
    assert shed.result() is True


async def test_a_more_important_newcomer_passes_waiters_of_a_lesser_class() -> None:
    window = Window(10, max_waiters=5)
    fill(window, 8)
    order: list[str] = []
    shed = waiter(window, "shed", SHEDDABLE, order)
    await settle()
    assert window.waiting == 1
    assert window.try_take(DEFAULT)  # the sheddable waiter can't use it; default can
    assert not window.try_take(DEFAULT)
    shed.cancel()
    await settle()


async def test_a_newcomer_does_not_pass_a_waiter_of_its_own_class() -> None:
    window = Window(2, max_waiters=5)
    fill(window, 2)
    order: list[str] = []
    first = waiter(window, "first", DEFAULT, order)
    await settle()
    window.give()
    assert not window.try_take(DEFAULT)
    await settle()
    assert first.result() is True


async def test_full_queue_refuses_a_lesser_waiter_to_make_room_for_a_more_important_one() -> None:
    window = Window(1, max_waiters=2)
    fill(window, 1)
    order: list[str] = []
    s1 = waiter(window, "s1", SHEDDABLE, order)
    s2 = waiter(window, "s2", SHEDDABLE, order)
    await settle()
    # The queue is full of sheddable waiters: a default newcomer takes the place of the one
    # that would be served last (FIFO: the newest), which is refused at once.
    d = waiter(window, "d", DEFAULT, order)
    await settle()
    assert s2.done() and s2.result() is False
    assert not s1.done()
    # Another sheddable newcomer finds no one less important to replace: refused.
    assert await window.take(LONG_S, SHEDDABLE) is False
    window.give()
    await settle()
    window.give()
    await settle()
    assert order == ["d", "s1"]
    assert d.result() and s1.result()
    assert window.waiting == 0


async def test_full_queue_under_lifo_refuses_the_oldest_lesser_waiter() -> None:
    window = Window(1, max_waiters=2, lifo=True)
    fill(window, 1)
    order: list[str] = []
    s1 = waiter(window, "s1", SHEDDABLE, order)
    s2 = waiter(window, "s2", SHEDDABLE, order)
    await settle()
    c = waiter(window, "c", CRITICAL, order)
    await settle()
    assert s1.done() and s1.result() is False
    window.give()
    await settle()
    window.give()
    await settle()
    assert order == ["c", "s2"]
    assert c.result() and s2.result()


async def test_growing_the_window_hands_the_new_slots_to_waiters() -> None:
    window = Window(2, max_waiters=5)
    fill(window, 2)
    order: list[str] = []
    tasks = [waiter(window, name, DEFAULT, order) for name in ("a", "b", "c")]
    await settle()
    window.resize(4)
    await settle()
    assert order == ["a", "b"]
    assert window.used == 4
    assert not tasks[2].done()
    window.resize(10)
    await settle()
    assert order == ["a", "b", "c"]
    assert window.used == 5


async def test_growing_the_window_respects_each_class_share() -> None:
    window = Window(5, max_waiters=5)
    fill(window, 5)
    order: list[str] = []
    waiter(window, "shed", SHEDDABLE, order)
    await settle()
    window.resize(6)  # sheddable may have ceil(4.8) = 5: still none for it
    await settle()
    assert order == []
    window.resize(8)  # ceil(6.4) = 7 > 5 in flight
    await settle()
    assert order == ["shed"]
    assert window.used == 6


def test_shrinking_the_window_refuses_newcomers_until_slots_come_back() -> None:
    window = Window(10)
    fill(window, 6)
    window.resize(4)
    assert window.limits == (4, 4, 4)
    assert not window.try_take(CRITICAL)
    for _ in range(3):
        window.give()
    assert window.used == 3
    assert window.try_take(CRITICAL)
    assert not window.try_take(CRITICAL)


def test_resize_below_one_keeps_one_slot() -> None:
    window = Window(3)
    window.resize(0)
    assert window.size == 1
    assert window.try_take(SHEDDABLE)


async def test_timed_out_and_cancelled_waiters_keep_the_queue_count_exact() -> None:
    window = Window(1, max_waiters=3)
    fill(window, 1)
    order: list[str] = []
    a = waiter(window, "a", SHEDDABLE, order)
    b = waiter(window, "b", DEFAULT, order)
    await settle()
    window._queues[SHEDDABLE][0].set_exception(TimeoutError())  # a's timer fired
    b.cancel()
    await settle()
    assert a.result() is False
    assert window._queued == 0
    assert window.waiting == 0
    window.give()
    assert window.used == 0
    assert window.try_take(SHEDDABLE)

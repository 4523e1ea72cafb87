"""Tests of fair shares on the window alone (`Window` with clients, admission.concurrency.fairness):
the cap, the share kept for other clients, which waiter a freed slot goes to, which waiter a
full queue gives up, and that each client's count comes back exactly once and is forgotten.

No test waits on wall time: waiters are observed after a few loop iterations.
"""

from __future__ import annotations

import asyncio

import pytest

from admission.concurrency.window import CRITICAL, DEFAULT, Window

LONG_S = 60.0


async def settle() -> None:
    """settle lets every ready task run until all of them are blocked again."""
    for _ in range(5):
        await asyncio.sleep(0)


def waiter(
    window: Window, client: str, order: list[str], priority: int = DEFAULT
) -> asyncio.Task[bool]:
    async def take() -> bool:
        got = await window.take(LONG_S, priority, client)
        if got:
            order.append(client)
        return got

    return asyncio.create_task(take(), name=client)


def fill(window: Window, client: str, slots: int) -> None:
    for _ in range(slots):
        assert window.try_take(DEFAULT, client)


# --- the cap (ADMISSION_CLIENT_WINDOW) ---------------------------------------------------------


async def test_a_client_at_its_cap_is_refused_at_once_while_another_is_admitted() -> None:
    window = Window(10, max_waiters=10, client_cap=2)
    fill(window, "a", 2)
    assert not window.try_take(DEFAULT, "a")
    # Not even queued: only its own requests can free it, and the window has room anyway.
    assert await window.take(LONG_S, DEFAULT, "a") is False
    assert window.waiting == 0
    assert window.try_take(DEFAULT, "b")
    assert window.clients.held == {"a": 2, "b": 1}
    window.give("a")
    assert window.try_take(DEFAULT, "a")


async def test_a_waiter_whose_client_reached_its_cap_meanwhile_is_passed_over() -> None:
    # Without shares: b's freed slot would otherwise be kept for b a while.
    window = Window(2, max_waiters=10, client_cap=2, fair=False)
    fill(window, "a", 1)
    fill(window, "b", 1)
    order: list[str] = []
    first, second = waiter(window, "a", order), waiter(window, "a", order)
    await settle()
    window.give("b")
    await settle()
    assert first.done() and not second.done()  # a holds 2 now: its cap
    window.give("a")  # a's own slot: its second waiter may have it
    await settle()
    assert second.done() and order == ["a", "a"]
    assert window.clients.held == {"a": 2} and window.used == 2


def test_a_cap_alone_counts_no_shares() -> None:
    window = Window(1 << 40, client_cap=3, fair=False)
    fill(window, "heavy", 3)
    assert not window.try_take(DEFAULT, "heavy")
    assert window.try_take(DEFAULT, "light")
    assert not window.clients.over_share("heavy", window.size)


# --- the share kept for other clients, without a queue -----------------------------------------


def test_a_client_alone_has_the_whole_window() -> None:
    window = Window(8)
    fill(window, "a", 8)
    assert not window.try_take(DEFAULT, "a")
    assert not window.clients.over_share("a", 8)


def test_a_heavy_client_keeps_a_free_slot_for_a_light_client_between_two_requests() -> None:
    window = Window(8)
    fill(window, "light", 1)
    window.give("light")  # light thinks before its next request
    # heavy may fill up to its share (4 of 8 between two), then only while a slot stays free
    # for light: 7 in all, leaving one.
    fill(window, "heavy", 7)
    assert not window.try_take(DEFAULT, "heavy")
    assert window.clients.over_share("heavy", 8)
    assert window.try_take(DEFAULT, "light")
    window.give("light")
    assert not window.try_take(DEFAULT, "heavy")


def test_a_client_busy_beside_a_heavy_one_needs_no_free_slot_kept() -> None:
    window = Window(8)
    fill(window, "light", 1)
    # light holds its slot already: heavy may have the rest.
    fill(window, "heavy", 7)
    assert window.used == 8


def test_a_client_turned_away_holding_nothing_takes_part_in_the_shares() -> None:
    window = Window(8)
    fill(window, "heavy", 8)
    assert not window.try_take(DEFAULT, "light")
    assert window._refused("light") is False  # what `take` notes of every refusal
    # heavy's share is now 4 and it holds 8: a slot it frees stays free for light.
    window.give("heavy")
    assert not window.try_take(DEFAULT, "heavy")
    window.give("heavy")  # 6 held, 2 free: heavy may take one, leaving one for light
    assert window.try_take(DEFAULT, "heavy")
    assert not window.try_take(DEFAULT, "heavy")
    assert window.try_take(DEFAULT, "light")
    assert "light" not in window.clients.away


def test_clients_that_left_are_forgotten_after_two_windows_of_slots() -> None:
    window = Window(4)
    clients = window.clients
    clients.turned_away("gone")
    assert clients.active() == 1
    for _ in range(8):
        assert window.try_take(DEFAULT, "other")
        window.give("other")
    clients.active()
    assert "gone" in clients.away  # taken 8 = 2 x 4 since: still remembered
    assert window.try_take(DEFAULT, "other")
    window.give("other")
    assert clients.active() == 1 and list(clients.away) == ["other"]


def test_at_most_half_the_window_of_clients_that_left_is_remembered() -> None:
    window = Window(8)
    for n in range(100):
        assert window.try_take(DEFAULT, f"k{n}")
        window.give(f"k{n}")
    assert list(window.clients.away) == [f"k{n}" for n in range(96, 100)]


# --- which waiter a freed slot goes to ---------------------------------------------------------


async def test_a_freed_slot_goes_to_the_waiting_client_holding_fewest() -> None:
    window = Window(4, max_waiters=10)
    fill(window, "heavy", 3)
    fill(window, "light", 1)
    order: list[str] = []
    tasks = [waiter(window, "heavy", order), waiter(window, "light", order)]
    await settle()
    window.give("heavy")
    await settle()
    # heavy waited first, but light holds fewer.
    assert order == ["light"]
    window.give("heavy")
    await settle()
    assert order == ["light", "heavy"]
    await asyncio.gather(*tasks)


async def test_waiters_of_one_client_are_served_in_queue_order() -> None:
    for lifo, expected in ((False, ["a1", "a2"]), (True, ["a2", "a1"])):
        window = Window(1, max_waiters=10, lifo=lifo)
        fill(window, "b", 1)
        order: list[str] = []

        async def take(name: str, order: list[str] = order, window: Window = window) -> None:
            assert await window.take(LONG_S, DEFAULT, "a")
            order.append(name)

        tasks = [asyncio.create_task(take("a1"))]
        await settle()
        tasks.append(asyncio.create_task(take("a2")))
        await settle()
        window.give("b")
        await settle()
        window.give("a")
        await settle()
        assert order == expected
        await asyncio.gather(*tasks)


async def test_priority_still_wins_over_fewer_slots() -> None:
    window = Window(9, max_waiters=10, shed_at={"sheddable": 0.8, "default": 0.9})
    for _ in range(9):
        assert window.try_take(CRITICAL, "heavy")
    order: list[str] = []
    tasks = [
        waiter(window, "light", order, DEFAULT),
        waiter(window, "heavy", order, CRITICAL),
    ]
    await settle()
    window.resize(10)
    await settle()
    # 9 in flight: only critical may have the 10th, whatever its client holds.
    assert order == ["heavy"]
    window.give("heavy")
    window.give("heavy")
    await settle()
    assert order == ["heavy", "light"]
    await asyncio.gather(*tasks)


# --- which waiter a full queue gives up ----------------------------------------------------------


async def test_a_full_queue_refuses_the_heavier_clients_newest_waiter_for_a_lighter_one() -> None:
    window = Window(4, max_waiters=2)
    fill(window, "heavy", 3)
    fill(window, "mid", 1)
    order: list[str] = []
    old, new = waiter(window, "heavy", order), waiter(window, "heavy", order)
    await settle()
    light = waiter(window, "light", order)
    await settle()
    assert new.done() and new.result() is False  # heavy's newest made room
    assert not old.done()
    # heavy's refusal is fairness, and says so.
    assert window.clients.over_share("heavy", 4)
    window.give("mid")
    await settle()
    assert order == ["light"]
    window.give("heavy")
    await settle()
    # heavy holds 2 of 4 beside light and mid: the free slot stays mid's a while.
    assert order == ["light"]
    old.cancel()
    await asyncio.gather(old, light, return_exceptions=True)
    assert window._owners == {} and window.waiting == 0


async def test_a_full_queue_refuses_a_newcomer_holding_as_much_as_every_waiter() -> None:
    window = Window(2, max_waiters=1)
    fill(window, "a", 1)
    fill(window, "b", 1)
    order: list[str] = []
    queued = waiter(window, "a", order)
    await settle()
    assert await window.take(LONG_S, DEFAULT, "b") is False
    assert not queued.done()
    window.give("a")
    await settle()
    assert order == ["a"]
    await queued


# --- each count back exactly once, and forgotten -----------------------------------------------


async def test_a_waiter_that_times_out_or_is_cancelled_holds_nothing() -> None:
    window = Window(1, max_waiters=10)
    fill(window, "a", 1)
    assert await window.take(0.001, DEFAULT, "b") is False
    task = asyncio.create_task(window.take(LONG_S, DEFAULT, "c"))
    await settle()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert window.clients.held == {"a": 1} and window._owners == {}
    window.give("a")
    assert window.clients.held == {} and window.used == 0


async def test_a_slot_granted_and_cancelled_in_the_same_instant_is_given_back_once() -> None:
    window = Window(1, max_waiters=10)
    fill(window, "a", 1)
    task = asyncio.create_task(window.take(LONG_S, DEFAULT, "b"))
    await settle()
    window.give("a")  # granted to b...
    task.cancel()  # ...and b cancelled before it ran
    with pytest.raises(asyncio.CancelledError):
        await task
    assert window.clients.held == {} and window.used == 0 and window._owners == {}


def test_a_client_giving_back_more_than_it_took_is_a_bug() -> None:
    window = Window(4)
    fill(window, "a", 1)
    window.give("a")
    assert window.try_take(DEFAULT, "b")
    with pytest.raises(RuntimeError):
        window.give("a")


def test_rotating_keys_leave_nothing_behind_and_never_hold_more_than_the_window() -> None:
    window = Window(16)
    taken: list[str] = []
    for n in range(10_000):
        client = f"k{n}"
        if window.try_take(DEFAULT, client):
            taken.append(client)
        else:
            window._refused(client)
        assert len(window.clients.held) <= 16 and len(window.clients.away) <= 16
        if len(taken) == 16:
            for done in taken:
                window.give(done)
            taken.clear()
    for done in taken:
        window.give(done)
    assert window.clients.held == {} and window.used == 0

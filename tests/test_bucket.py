"""GCRA arithmetic (`Bucket.decide`) and the memory store, on a manual clock."""

from __future__ import annotations

import asyncio
import logging
import math

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from admission.bucket import Bucket
from admission.stores.memory import MemoryStore


class ManualClock:
    """ManualClock is a clock that moves only when the test moves it."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Key:
    """Key holds one key's TAT and applies `Bucket.decide` to it, as a store would."""

    def __init__(self, bucket: Bucket) -> None:
        self.bucket = bucket
        self.tat: float | None = None

    def decide(self, now: float, cost: int = 1):  # type: ignore[no-untyped-def]
        self.tat, decision = self.bucket.decide(self.tat, now, cost)
        return decision


# --- Bucket.decide ------------------------------------------------------------------------


def test_full_bucket_admits_its_capacity_at_once_then_refuses() -> None:
    key = Key(Bucket(interval_s=0.5, capacity=4))
    decisions = [key.decide(10.0) for _ in range(5)]
    assert [d.allowed for d in decisions] == [True, True, True, True, False]
    assert [d.remaining for d in decisions] == [3, 2, 1, 0, 0]
    assert [d.reset_after_s for d in decisions] == [0.5, 1.0, 1.5, 2.0, 2.0]
    assert [d.retry_after_s for d in decisions[:4]] == [0.0] * 4
    assert decisions[4].retry_after_s == pytest.approx(0.5)


def test_empty_bucket_refills_one_token_per_interval_exactly() -> None:
    key = Key(Bucket(interval_s=0.25, capacity=4))
    for _ in range(4):
        assert key.decide(0.0).allowed
    # Just before the first token is back: refused; at the interval: admitted, once.
    assert not key.decide(0.25 - 1e-6).allowed
    assert key.decide(0.25).allowed
    assert not key.decide(0.25).allowed
    # After 3 more intervals, exactly 3 more tokens.
    admitted = sum(key.decide(1.0).allowed for _ in range(10))
    assert admitted == 3


def test_bucket_refills_to_capacity_and_no_further() -> None:
    key = Key(Bucket(interval_s=1.0, capacity=3))
    assert key.decide(0.0).allowed
    # A long idle time refills the bucket to its capacity, never beyond.
    admitted = sum(key.decide(1000.0).allowed for _ in range(10))
    assert admitted == 3


def test_retry_after_is_exactly_when_the_next_request_succeeds() -> None:
    key = Key(Bucket(interval_s=0.3, capacity=2))
    key.decide(5.0)
    key.decide(5.0)
    refused = key.decide(5.1)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(0.2)
    just_before = 5.1 + refused.retry_after_s - 1e-6
    assert not key.decide(just_before).allowed
    assert key.decide(5.1 + refused.retry_after_s).allowed


def test_retry_after_for_a_costly_request_waits_for_all_its_tokens() -> None:
    key = Key(Bucket(interval_s=1.0, capacity=5))
    assert key.decide(0.0, cost=5).allowed
    refused = key.decide(0.0, cost=3)
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(3.0)
    # A refusal takes nothing, so asking early does not push the answer back.
    assert not key.decide(2.0, cost=3).allowed
    assert key.decide(3.0, cost=3).allowed


def test_cost_above_one_takes_that_many_tokens() -> None:
    key = Key(Bucket(interval_s=1.0, capacity=10))
    decision = key.decide(0.0, cost=4)
    assert decision.allowed
    assert decision.remaining == 6
    assert decision.reset_after_s == pytest.approx(4.0)
    assert key.decide(0.0, cost=6).allowed
    assert not key.decide(0.0, cost=1).allowed


def test_cost_above_capacity_is_never_allowed_and_retry_is_infinite() -> None:
    bucket = Bucket(interval_s=1.0, capacity=3)
    tat, decision = bucket.decide(None, 0.0, cost=4)
    assert not decision.allowed
    assert decision.retry_after_s == math.inf
    assert decision.remaining == 3
    assert tat is None
    # Even after any amount of refill, and without touching the key's tokens.
    key = Key(bucket)
    key.decide(0.0)
    assert not key.decide(1e9, cost=4).allowed
    assert key.decide(1e9, cost=3).allowed


def test_cost_zero_reports_without_taking_a_token() -> None:
    key = Key(Bucket(interval_s=1.0, capacity=2))
    key.decide(0.0)
    report = key.decide(0.0, cost=0)
    assert report.allowed
    assert report.remaining == 1
    assert key.decide(0.0).allowed
    assert not key.decide(0.0).allowed


def test_negative_cost_is_an_error() -> None:
    with pytest.raises(ValueError):
        Bucket(1.0, 1).decide(None, 0.0, cost=-1)


@pytest.mark.parametrize(("interval_s", "capacity"), [(0, 1), (-1.0, 1), (math.inf, 1), (1.0, 0)])
def test_bucket_refuses_a_meaningless_rate(interval_s: float, capacity: int) -> None:
    with pytest.raises(ValueError):
        Bucket(interval_s, capacity)


def test_remaining_counts_whole_tokens_and_reset_is_the_time_to_full() -> None:
    key = Key(Bucket(interval_s=2.0, capacity=5))
    for _ in range(5):
        key.decide(0.0)
    # 3 s later 1.5 tokens are back: one whole token is promised, full in 7 s.
    state = key.decide(3.0, cost=0)
    assert state.remaining == 1
    assert state.reset_after_s == pytest.approx(7.0)
    taken = key.decide(3.0)
    assert taken.allowed
    assert taken.remaining == 0
    assert taken.reset_after_s == pytest.approx(9.0)


def test_clock_going_backwards_grants_no_tokens() -> None:
    key = Key(Bucket(interval_s=1.0, capacity=2))
    assert key.decide(100.0).allowed
    assert key.decide(100.0).allowed
    # The clock jumps back: the bucket is still empty, not refilled.
    back = key.decide(96.4)
    assert not back.allowed
    assert back.remaining == 0
    # Forward again to where it was: still no token until one interval after 100.
    assert not key.decide(100.5).allowed
    assert key.decide(101.0).allowed


steps = st.lists(
    st.tuples(
        st.floats(min_value=-5.0, max_value=3.0, allow_nan=False, allow_infinity=False),
        st.integers(min_value=0, max_value=6),
    ),
    min_size=1,
    max_size=60,
)


@settings(max_examples=300, deadline=None)
@given(
    steps=steps,
    interval_s=st.sampled_from([0.01, 0.1, 0.25, 1.0, 3.0]),
    capacity=st.integers(min_value=1, max_value=8),
)
def test_admitted_tokens_never_exceed_capacity_plus_forward_time(
    steps: list[tuple[float, int]], interval_s: float, capacity: int
) -> None:
    """Whatever the clock does, a key never gets more than a full bucket plus what the
    clock's forward movement refilled; backward jumps grant nothing."""
    key = Key(Bucket(interval_s, capacity))
    now = 0.0
    forward = 0.0
    admitted = 0
    first_admitted_at: float | None = None
    latest = -math.inf
    for dt, cost in steps:
        now += dt
        forward += max(dt, 0.0)
        latest = max(latest, now)
        decision = key.decide(now, cost)
        if decision.allowed and cost:
            admitted += cost
            if first_admitted_at is None:
                first_admitted_at = now
        assert admitted <= capacity + forward / interval_s + 1e-6
        if first_admitted_at is not None:
            # Stronger: counted from the first admission, only the latest time ever seen
            # matters, as with a clock that never goes back.
            assert admitted <= capacity + (latest - first_admitted_at) / interval_s + 1e-6
        assert 0 <= decision.remaining <= capacity
        assert decision.retry_after_s >= 0


@settings(max_examples=200, deadline=None)
@given(
    gaps=st.lists(st.floats(min_value=0.0, max_value=2.0), min_size=1, max_size=40),
    interval_s=st.sampled_from([0.1, 0.5, 1.0]),
    capacity=st.integers(min_value=1, max_value=5),
)
def test_refused_request_succeeds_exactly_at_its_retry_after(
    gaps: list[float], interval_s: float, capacity: int
) -> None:
    key = Key(Bucket(interval_s, capacity))
    now = 0.0
    for gap in gaps:
        now += gap
        decision = key.decide(now)
        if not decision.allowed:
            tat = key.tat
            assert not key.bucket.decide(tat, now + decision.retry_after_s - 1e-6)[1].allowed
            assert key.bucket.decide(tat, now + decision.retry_after_s)[1].allowed


# --- MemoryStore --------------------------------------------------------------------------


def test_memory_store_decides_like_the_bucket() -> None:
    clock = ManualClock()
    store = MemoryStore(Bucket(interval_s=1.0, capacity=3), clock=clock)
    assert [store.decide_at("a", clock.now).allowed for _ in range(4)] == [True] * 3 + [False]
    assert store.decide_at("b", clock.now).allowed
    clock.advance(1.0)
    assert store.decide_at("a", clock.now).allowed
    assert not store.decide_at("a", clock.now).allowed


async def test_memory_store_decide_reads_its_clock() -> None:
    clock = ManualClock()
    store = MemoryStore(Bucket(interval_s=10.0, capacity=1), clock=clock)
    assert (await store.decide("a")).allowed
    refused = await store.decide("a")
    assert not refused.allowed
    assert refused.retry_after_s == pytest.approx(10.0)
    clock.advance(10.0)
    assert (await store.decide("a")).allowed


def test_memory_store_forgets_keys_once_their_buckets_are_full_again() -> None:
    clock = ManualClock()
    bucket = Bucket(interval_s=0.5, capacity=4)
    store = MemoryStore(bucket, clock=clock)
    for i in range(100):
        store.decide_at(f"client-{i}", clock.now)
    assert len(store) == 100
    # A cost-0 probe only reports, so it adds no key of its own while moving time on.
    clock.advance(bucket.fill_time_s + 0.01)
    store.decide_at("probe", clock.now, cost=0)
    clock.advance(bucket.fill_time_s)
    store.decide_at("probe", clock.now, cost=0)
    assert len(store) == 0


def test_memory_store_forgets_everything_after_two_idle_fill_times() -> None:
    clock = ManualClock()
    bucket = Bucket(interval_s=1.0, capacity=2)
    store = MemoryStore(bucket, clock=clock)
    for i in range(10):
        store.decide_at(str(i), clock.now)
    clock.advance(2 * bucket.fill_time_s)
    store.decide_at("probe", clock.now, cost=0)
    assert len(store) == 0


def test_memory_store_keeps_a_key_whose_bucket_is_still_refilling() -> None:
    clock = ManualClock()
    bucket = Bucket(interval_s=1.0, capacity=2)
    store = MemoryStore(bucket, clock=clock)
    store.decide_at("busy", clock.now)
    store.decide_at("busy", clock.now)
    for _ in range(6):
        # The key keeps spending, so its bucket is never full and forgetting it would be a gift.
        clock.advance(1.0)
        assert store.decide_at("busy", clock.now).allowed
        assert not store.decide_at("busy", clock.now).allowed
    assert len(store) == 1


@settings(max_examples=200, deadline=None)
@given(
    events=st.lists(
        st.tuples(
            st.floats(min_value=0.0, max_value=3.0),
            st.integers(min_value=0, max_value=4),
            st.integers(min_value=0, max_value=3),
        ),
        min_size=1,
        max_size=80,
    )
)
def test_forgetting_never_changes_a_decision(events: list[tuple[float, int, int]]) -> None:
    """The memory store decides exactly as a plain dict of TATs that never forgets."""
    bucket = Bucket(interval_s=0.5, capacity=3)
    clock = ManualClock(0.0)
    store = MemoryStore(bucket, clock=clock)
    reference: dict[str, float | None] = {}
    for dt, who, cost in events:
        clock.advance(dt)
        key = f"k{who}"
        tat, expected = bucket.decide(reference.get(key), clock.now, cost)
        reference[key] = tat
        got = store.decide_at(key, clock.now, cost)
        assert got == expected


def test_memory_store_holds_at_most_max_keys_and_warns_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    store = MemoryStore(Bucket(interval_s=60.0, capacity=1), max_keys=10, clock=clock)
    with caplog.at_level(logging.WARNING, logger="admission.store"):
        for i in range(50):
            store.decide_at(f"client-{i}", clock.now)
            assert len(store) <= 10
    warnings = [r for r in caplog.records if "max_keys" in r.getMessage()]
    assert len(warnings) == 1
    assert "max_keys=10" in warnings[0].getMessage()


async def test_memory_store_admits_exactly_the_capacity_under_concurrency() -> None:
    clock = ManualClock()
    store = MemoryStore(Bucket(interval_s=36.0, capacity=100), clock=clock)
    decisions = await asyncio.gather(*(store.decide("shared") for _ in range(250)))
    assert sum(d.allowed for d in decisions) == 100
    remaining = sorted(d.remaining for d in decisions if d.allowed)
    assert remaining == list(range(100))


async def test_memory_store_close_forgets_every_key() -> None:
    clock = ManualClock()
    store = MemoryStore(Bucket(interval_s=60.0, capacity=1), clock=clock)
    store.decide_at("a", clock.now)
    await store.close()
    assert len(store) == 0
    assert store.decide_at("a", clock.now).allowed

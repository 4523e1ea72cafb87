"""Tests of the adaptive limit's arithmetic (`next_estimate`) and its sampling edge
(`AdaptiveLimit`), all on a manual clock: times are arguments, nothing sleeps."""

from __future__ import annotations

import logging
import math

import pytest

from admission.adaptive import AdaptiveLimit, Estimate, LimitParams, Samples, next_estimate

BASE_S = 0.020
P = LimitParams(minimum=1, maximum=1000, initial=10)


def interval(rtt_s: float, load: float, count: int = 100, drops: int = 0) -> Samples:
    return Samples(count, rtt_s * count, round(load * count), drops)


def known(limit: float, baseline_s: float = BASE_S, since: float = 0.0) -> Estimate:
    return Estimate(limit, current_min_s=baseline_s, since=since)


def test_an_interval_without_samples_changes_nothing() -> None:
    est = known(16.0)
    assert next_estimate(est, Samples(), 1.0, P).limit == 16.0


def test_full_window_without_queueing_grows_by_the_tolerance() -> None:
    est = known(16.0)
    after = next_estimate(est, interval(BASE_S, load=16), 1.0, P)
    assert after.limit == pytest.approx(16 * 1.25)


def test_growth_slows_as_latency_rises_towards_the_tolerance() -> None:
    est = known(16.0)
    after = next_estimate(est, interval(BASE_S * 1.2, load=16), 1.0, P)
    assert after.limit == pytest.approx(16 * 1.25 / 1.2)
    at_tolerance = next_estimate(est, interval(BASE_S * 1.25, load=16), 1.0, P)
    assert at_tolerance.limit == pytest.approx(16.0)


def test_a_window_less_than_half_used_does_not_grow() -> None:
    est = known(100.0)
    after = next_estimate(est, interval(BASE_S, load=49), 1.0, P)
    assert after.limit == 100.0
    busy = next_estimate(est, interval(BASE_S, load=50), 1.0, P)
    assert busy.limit > 100.0


def test_queueing_shrinks_the_limit_to_the_measured_capacity_times_the_tolerance() -> None:
    # 16 in flight on 4 slots of 20 ms: each request takes 80 ms, 4x the baseline. The service
    # serves 16 / 4 = 4 at a time: 4 x 1.25 = 5 is the aim, halving at most per interval.
    est = known(16.0)
    after = next_estimate(est, interval(4 * BASE_S, load=16), 1.0, P)
    assert after.limit == pytest.approx(8.0)
    # 8 in flight on 4 slots: 2x the baseline; the same capacity, now reached.
    after = next_estimate(after, interval(2 * BASE_S, load=8), 1.05, P)
    assert after.limit == pytest.approx(5.0)


def test_one_interval_shrinks_the_limit_by_at_most_half() -> None:
    est = known(100.0)
    after = next_estimate(est, interval(50 * BASE_S, load=100), 1.0, P)
    assert after.limit == pytest.approx(50.0)


def test_a_deadline_hit_backs_off_whatever_the_latency() -> None:
    est = known(20.0)
    after = next_estimate(est, interval(BASE_S, load=20, drops=1), 1.0, P)
    assert after.limit == pytest.approx(18.0)


@pytest.mark.parametrize(
    "samples",
    [
        interval(BASE_S, load=1000),  # growth
        interval(100 * BASE_S, load=1),  # shrink
        interval(BASE_S, load=5, drops=3),  # back-off
    ],
)
def test_the_limit_stays_within_its_bounds(samples: Samples) -> None:
    params = LimitParams(minimum=4, maximum=64, initial=4)
    for start in (4.0, 5.0, 63.0, 64.0):
        est = known(start)
        for step in range(20):
            est = next_estimate(est, samples, step * 0.05, params)
            assert 4 <= est.limit <= 64


def test_the_first_interval_sets_the_baseline() -> None:
    est = Estimate(10.0)
    after = next_estimate(est, interval(0.030, load=10), 5.0, P)
    assert after.baseline_s == pytest.approx(0.030)
    assert after.since == 5.0
    assert after.limit == pytest.approx(12.5)  # no queueing seen: it grows


def test_the_baseline_is_the_lowest_interval_average_and_forgets_it_after_a_while() -> None:
    params = LimitParams(baseline_s=10.0)
    est = next_estimate(Estimate(10.0), interval(0.020, load=1), 0.0, params)
    est = next_estimate(est, interval(0.030, load=1), 1.0, params)
    assert est.baseline_s == pytest.approx(0.020)
    # The service became slower for good: 20 ms is still remembered until the second period
    # ends (between baseline_s and twice that after it was seen), then 30 ms is the baseline.
    for t in (5.0, 10.0, 15.0, 19.9):
        est = next_estimate(est, interval(0.030, load=1), t, params)
        assert est.baseline_s == pytest.approx(0.020), t
    est = next_estimate(est, interval(0.030, load=1), 20.0, params)
    assert est.baseline_s == pytest.approx(0.030)


def test_a_limit_stuck_at_its_minimum_while_queueing_takes_its_latency_as_the_baseline() -> None:
    params = LimitParams(minimum=2, floor_intervals=5)
    est = known(2.0)
    slow = interval(3 * BASE_S, load=2)
    for step in range(4):
        est = next_estimate(est, slow, 0.05 * step, params)
        assert est.limit == 2.0 and est.baseline_s == BASE_S
    est = next_estimate(est, slow, 0.2, params)
    assert est.baseline_s == pytest.approx(3 * BASE_S)
    # From the new baseline, the full window grows again.
    est = next_estimate(est, slow, 0.25, params)
    assert est.limit == pytest.approx(2.5)


def fluid(limit: float, clients: int, capacity: int, hold_s: float) -> Samples:
    """fluid is one 50 ms interval of a closed loop on a pool of `capacity` slots held
    `hold_s` each: min(limit, clients) in flight, waiting their turn beyond the capacity."""
    in_flight = min(int(limit), clients)
    rtt = hold_s * max(1.0, in_flight / capacity)
    count = max(1, round(in_flight * 0.05 / rtt))
    return Samples(count, rtt * count, in_flight * count, 0)


def test_against_a_pool_the_limit_follows_a_capacity_drop_within_a_second() -> None:
    params = LimitParams(minimum=1, maximum=1000)
    est = Estimate(float(params.start))
    now = 0.0
    trace = []
    for capacity in (16, 4):
        for _ in range(100):  # 5 s of 50 ms intervals
            now += 0.05
            est = next_estimate(est, fluid(est.limit, 128, capacity, 0.020), now, params)
            trace.append((capacity, int(est.limit)))
    first, second = trace[:100], trace[100:]
    # Settled: the pool is kept full (limit >= capacity) with at most 25 % more queued.
    assert all(16 <= limit <= 20 for _, limit in first[20:])
    assert all(4 <= limit <= 5 for _, limit in second[20:])
    # The drop is followed within a second.
    assert all(4 <= limit <= 5 for _, limit in second[2:])


def test_record_waits_for_the_interval_and_the_samples_before_resizing() -> None:
    sizes: list[int] = []
    limit = AdaptiveLimit(LimitParams(initial=10, interval_s=0.05, min_samples=10), sizes.append)
    assert sizes == [10]
    for i in range(9):
        limit.record(BASE_S, 10, i * 0.01)  # 9 samples over 80 ms: too few
    assert sizes == [10]
    limit.record(BASE_S, 10, 0.09)
    assert sizes == [10, 12]  # baseline measured, window full, no queueing: x1.25
    for i in range(20):
        limit.record(BASE_S, 12, 0.09 + i * 0.001)  # enough samples, only 19 ms
    assert sizes == [10, 12]


def test_drops_end_an_interval_without_enough_samples() -> None:
    sizes: list[int] = []
    limit = AdaptiveLimit(LimitParams(initial=20, interval_s=0.05), sizes.append)
    limit.record(BASE_S, 20, 0.0)
    limit.drop(0.01)
    assert sizes == [20]
    limit.drop(0.06)
    assert sizes == [20, 18]


def test_a_move_of_more_than_a_fifth_is_logged(caplog: pytest.LogCaptureFixture) -> None:
    sizes: list[int] = []
    limit = AdaptiveLimit(LimitParams(initial=16, min_samples=1), sizes.append)
    with caplog.at_level(logging.INFO, logger="admission"):
        limit.record(BASE_S, 16, 0.0)
        limit.record(BASE_S, 16, 0.1)  # 16 -> 20: +25 %
        limit.record(BASE_S * 1.25, 20, 0.2)  # stays at 20
        limit.record(4 * BASE_S, 20, 0.3)  # 20 -> 10
    messages = [r.getMessage() for r in caplog.records]
    assert len(messages) == 2
    assert messages[0].startswith("adaptive window 16 -> 20")
    assert messages[1].startswith("adaptive window 20 -> 10")
    assert sizes[-1] == limit.limit == 10


@pytest.mark.parametrize(
    "kwargs",
    [
        {"minimum": 0},
        {"minimum": 5, "maximum": 4},
        {"initial": 2000},
        {"tolerance": 1.0},
        {"backoff": 1.0},
        {"backoff": 0.0},
        {"min_samples": 0},
        {"baseline_s": 0.0},
        {"interval_s": -1.0},
    ],
)
def test_bad_params_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LimitParams(**kwargs)  # type: ignore[arg-type]


def test_estimate_before_any_sample_has_no_baseline() -> None:
    assert math.isinf(Estimate(10.0).baseline_s)

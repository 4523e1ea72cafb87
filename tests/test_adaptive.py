"""Tests of the adaptive limit's arithmetic (`next_estimate`) and its sampling edge
(`AdaptiveLimit`), all on a manual clock: times are arguments, nothing sleeps."""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest

from admission import adaptive
from admission.adaptive import AdaptiveLimit, Estimate, LimitParams, Samples, next_estimate

BASE_S = 0.020
STEP_S = 0.1
P = LimitParams(minimum=1, maximum=1000, initial=10)


def interval(rtt_s: float, load: float, drops: int = 0, elapsed_s: float = STEP_S) -> Samples:
    """interval is one interval in which `load` requests were in flight on average, each
    taking `rtt_s` (so load x elapsed / rtt of them ended)."""
    count = max(1, round(load * elapsed_s / rtt_s))
    return Samples(count, rtt_s * count, elapsed_s, drops)


def known(limit: float, **fields: object) -> Estimate:
    """known is an estimate past its slow start, with a 20 ms baseline measured at time 0."""
    est = Estimate(limit, current_min_s=BASE_S, since=0.0, slow_start=False)
    return dataclasses.replace(est, **fields)


def test_it_starts_at_the_minimum_and_doubles_until_the_first_queueing() -> None:
    params = LimitParams(minimum=2, maximum=1000)
    assert params.start == 2
    est = Estimate(float(params.start))
    limits = []
    for step in range(5):
        est = next_estimate(est, pool(est.limit, 128, 16, BASE_S), STEP_S * step, params)
        limits.append(est.limit)
    # 2, 4, 8, 16 in flight do not queue on 16 slots; 32 does, twice the baseline: back to
    # 16, the window before the step, and from then on growth is gentle.
    assert limits == [4.0, 8.0, 16.0, 32.0, 16.0]
    assert not est.slow_start
    # No hold after the slow start: the next interval of 16 in flight grows it, gently.
    est = dataclasses.replace(est, limit=16.0)
    est = next_estimate(est, pool(16, 128, 16, BASE_S), 0.5, params)
    assert est.limit == pytest.approx(17.6)


def test_an_interval_without_samples_changes_nothing() -> None:
    est = known(16.0)
    assert next_estimate(est, Samples(elapsed_s=STEP_S), 1.0, P) == est


def test_full_window_without_queueing_grows() -> None:
    after = next_estimate(known(16.0), interval(BASE_S, load=16), 1.0, P)
    assert after.limit == pytest.approx(16 * 1.1)
    assert after.growing


def test_a_small_window_grows_by_at_least_half_a_request() -> None:
    after = next_estimate(known(2.0), interval(BASE_S, load=2), 1.0, P)
    assert after.limit == pytest.approx(2.5)


def test_latency_within_the_tolerance_still_grows() -> None:
    after = next_estimate(known(16.0), interval(BASE_S * 1.19, load=16), 1.0, P)
    assert after.limit > 16.0


def test_a_window_less_than_half_used_does_not_grow() -> None:
    assert next_estimate(known(100.0), interval(BASE_S, load=49), 1.0, P).limit == 100.0
    assert next_estimate(known(100.0), interval(BASE_S, load=50), 1.0, P).limit > 100.0


def test_one_slow_interval_after_growth_within_the_same_window_is_not_believed() -> None:
    est = next_estimate(known(4.0), interval(BASE_S, load=4), 1.0, P)
    assert est.limit == pytest.approx(4.5) and not est.growing
    after = next_estimate(est, interval(2 * BASE_S, load=4), 1.1, P)
    assert after.limit == pytest.approx(4.5)


def test_one_slow_interval_alone_holds_the_limit() -> None:
    # A pause of the machine slows every request in one interval: not the service's doing.
    after = next_estimate(known(16.0), interval(4 * BASE_S, load=16), 1.0, P)
    assert after.limit == 16.0
    assert after.queued


def test_two_slow_intervals_shrink_the_limit_towards_the_measured_capacity() -> None:
    # 16 in flight on 4 slots of 20 ms: each request takes 80 ms; the service serves
    # 16 / 4 = 4 at once. The limit goes half the way there (at most halving), then again.
    est = next_estimate(known(16.0), interval(4 * BASE_S, load=16), 1.0, P)
    est = next_estimate(est, interval(4 * BASE_S, load=16), 1.1, P)
    assert est.limit == pytest.approx(10.0)  # 16 + 0.5 x (4 - 16)
    est = next_estimate(est, interval(10 / 4 * BASE_S, load=10), 1.2, P)
    assert est.limit == pytest.approx(7.0)  # 10 + 0.5 x (4 - 10)
    # No hold: at a steady limit this was the capacity falling (or a long pause), and the
    # limit must be free to find its level again.
    assert est.hold_until == -math.inf
    est = next_estimate(est, interval(BASE_S, load=7), 1.3, P)
    assert est.limit == pytest.approx(7.7)


def test_one_slow_interval_right_after_growing_is_believed() -> None:
    est = next_estimate(known(4.0), interval(BASE_S, load=4), 1.0, P)
    assert not est.growing and est.limit == pytest.approx(4.5)  # still a window of 4
    est = next_estimate(est, interval(BASE_S, load=4), 1.05, P)
    assert est.growing and est.limit == pytest.approx(5.0)  # a window of 5: a step up
    after = next_estimate(est, interval(1.25 * BASE_S, load=5), 1.1, P)
    assert after.limit == pytest.approx(4.5)  # back to before the step: a window of 4
    assert after.hold_until == pytest.approx(1.1 + P.hold_s)


def test_one_interval_shrinks_the_limit_by_at_most_half() -> None:
    params = dataclasses.replace(P, smoothing=1.0)
    est = known(100.0, queued=True)
    after = next_estimate(est, interval(50 * BASE_S, load=100), 1.0, params)
    assert after.limit == pytest.approx(50.0)


def test_after_a_shrink_the_limit_holds_before_it_grows_again() -> None:
    est = known(4.0, hold_until=3.0)
    for t in (1.0, 2.0, 2.99):
        est = next_estimate(est, interval(BASE_S, load=4), t, P)
        assert est.limit == 4.0, t
    est = next_estimate(est, interval(BASE_S, load=4), 3.0, P)
    assert est.limit == pytest.approx(4.5)


def test_a_deadline_hit_backs_off_and_holds() -> None:
    after = next_estimate(known(20.0), interval(BASE_S, load=20, drops=1), 1.0, P)
    assert after.limit == pytest.approx(18.0)
    assert after.hold_until == pytest.approx(1.0 + P.hold_s)


@pytest.mark.parametrize(
    "samples",
    [
        interval(BASE_S, load=1000),  # growth
        interval(100 * BASE_S, load=1),  # shrink
        interval(BASE_S, load=5, drops=3),  # back-off
        Samples(5, 5.0, 0.0, 0),  # an interval of no length
    ],
)
def test_the_limit_stays_within_its_bounds(samples: Samples) -> None:
    params = LimitParams(minimum=4, maximum=64, initial=4, hold_s=0.0)
    for start in (4.0, 5.0, 63.0, 64.0):
        est = known(start)
        for step in range(30):
            est = next_estimate(est, samples, step * STEP_S, params)
            assert 4 <= est.limit <= 64


def test_the_first_interval_sets_the_baseline() -> None:
    after = next_estimate(Estimate(10.0), interval(0.030, load=10), 5.0, P)
    assert after.baseline_s == pytest.approx(0.030)
    assert after.since == 5.0
    assert after.limit == pytest.approx(20.0)  # no queueing seen: the slow start doubles it


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
    est = known(2.0, queued=True)
    slow = interval(3 * BASE_S, load=2)
    for step in range(4):
        est = next_estimate(est, slow, STEP_S * step, params)
        assert est.limit == 2.0 and est.baseline_s == BASE_S
    est = next_estimate(est, slow, 0.4, params)
    assert est.baseline_s == pytest.approx(3 * BASE_S)
    # From the new baseline, the full window grows again at once.
    est = next_estimate(est, slow, 0.5, params)
    assert est.limit == pytest.approx(2.5)


def pool(limit: float, clients: int, capacity: int, hold_s: float) -> Samples:
    """pool is one interval of a closed loop on a pool of `capacity` slots held `hold_s`
    each: min(limit, clients) in flight, waiting their turn beyond the capacity."""
    in_flight = min(int(limit), clients)
    rtt = hold_s * max(1.0, in_flight / capacity)
    return interval(rtt, load=in_flight)


def test_against_a_pool_the_limit_follows_a_capacity_drop_and_probes_rarely() -> None:
    est = Estimate(float(P.start))
    now = 0.0
    trace: list[tuple[int, int]] = []
    for capacity in (16, 4):
        for _ in range(100):  # 10 s of 100 ms intervals
            now += STEP_S
            est = next_estimate(est, pool(est.limit, 128, capacity, BASE_S), now, P)
            trace.append((capacity, int(est.limit)))
    first, second = [w for _, w in trace[:100]], [w for _, w in trace[100:]]
    # Settled, the pool is kept full, with at most `tolerance` x its capacity in flight but
    # for a probe now and then...
    assert all(16 <= w <= 21 for w in first[20:])
    assert sum(w > 19 for w in first[20:]) <= 8
    # ...and within a second of the drop, too, where the probes are one request above the
    # capacity, at most 1 interval in 10.
    assert all(4 <= w <= 5 for w in second[10:])
    assert sum(w > 4 for w in second[10:]) <= 9


def test_record_waits_for_the_interval_and_the_samples_before_resizing() -> None:
    sizes: list[int] = []
    params = LimitParams(initial=10, interval_s=0.1, min_samples=10)
    limit = AdaptiveLimit(params, sizes.append)
    assert sizes == [10]
    for i in range(9):
        limit.record(0.2, i * 0.02)  # 9 samples over 160 ms: too few
    assert sizes == [10]
    limit.record(0.2, 0.18)
    assert sizes == [10, 20]  # baseline measured, window full (Little: 10 x 200 ms / 180 ms)
    for i in range(20):
        limit.record(0.2, 0.18 + i * 0.001)  # enough samples, only 19 ms
    assert sizes == [10, 20]


def test_a_small_window_needs_two_samples_per_slot_not_min_samples() -> None:
    sizes: list[int] = []
    limit = AdaptiveLimit(LimitParams(minimum=1, interval_s=0.1, min_samples=20), sizes.append)
    assert sizes == [1]
    limit.record(0.05, 0.0)
    limit.record(0.05, 0.1)  # 2 samples of a window of 1 over 100 ms: enough
    assert sizes == [1, 2]
    for t in (0.12, 0.14, 0.16):
        limit.record(0.05, t)
    assert sizes == [1, 2]  # 3 samples for a window of 2: not yet
    limit.record(0.05, 0.2)
    assert sizes == [1, 2, 4]


def test_drops_end_an_interval_without_enough_samples() -> None:
    sizes: list[int] = []
    limit = AdaptiveLimit(LimitParams(initial=20, interval_s=0.1), sizes.append)
    limit.record(BASE_S, 0.0)
    limit.drop(0.05)
    assert sizes == [20]
    limit.drop(0.1)
    assert sizes == [20, 18]


def test_a_move_of_more_than_a_fifth_since_the_last_logged_one_is_logged(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    script = iter([19.0, 20.0, 17.0, 16.9, 15.0, 15.0])  # the limits next_estimate returns
    monkeypatch.setattr(
        adaptive,
        "next_estimate",
        lambda est, s, now, p: dataclasses.replace(est, limit=next(script)),
    )
    sizes: list[int] = []
    limit = AdaptiveLimit(LimitParams(initial=16, min_samples=1, interval_s=0.1), sizes.append)
    with caplog.at_level(logging.INFO, logger="admission"):
        for step in range(7):
            limit.record(BASE_S, step * 0.1)
    messages = [r.getMessage().split(" (")[0] for r in caplog.records]
    # 16 -> 19 is 19 %; 16 -> 20 is 25 %; 20 -> 17 and 16 are 15 and 20 %; 20 -> 15 is 25 %.
    assert messages == ["adaptive window 16 -> 20", "adaptive window 20 -> 15"]
    assert sizes == [16, 19, 20, 17, 16, 15]


@pytest.mark.parametrize(
    "kwargs",
    [
        {"minimum": 0},
        {"minimum": 5, "maximum": 4},
        {"initial": 2000},
        {"tolerance": 1.0},
        {"growth": 1.0},
        {"smoothing": 0.0},
        {"backoff": 1.0},
        {"backoff": 0.0},
        {"min_samples": 0},
        {"baseline_s": 0.0},
        {"interval_s": -1.0},
        {"hold_s": -1.0},
    ],
)
def test_bad_params_are_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError):
        LimitParams(**kwargs)  # type: ignore[arg-type]


def test_estimate_before_any_sample_has_no_baseline() -> None:
    assert math.isinf(Estimate(10.0).baseline_s)

"""Tests of the adaptive limit's arithmetic (`next_estimate`) and its sampling edge
(`AdaptiveLimit`), all on a manual clock: times are arguments, nothing sleeps."""

from __future__ import annotations

import dataclasses
import logging
import math

import pytest

from admission.concurrency import adaptive
from admission.concurrency.adaptive import (
    START,
    AdaptiveLimit,
    Estimate,
    LimitParams,
    Samples,
    next_estimate,
)
from admission.concurrency.baselines import CAP, MAX_CLASSES, OTHER, Baselines, class_of

BASE_S = 0.020
STEP_S = 0.1
P = LimitParams(minimum=1, maximum=1000, initial=10)


def interval(rtt_s: float, load: float, drops: int = 0, elapsed_s: float = STEP_S) -> Samples:
    """interval is one interval in which `load` requests were in flight on average, each
    taking `rtt_s` (so load x elapsed / rtt of them ended), all of one class whose baseline
    is BASE_S."""
    count = max(1, round(load * elapsed_s / rtt_s))
    weighted = min(rtt_s, CAP * BASE_S) * count
    return Samples(count, elapsed_s, drops, weighted, BASE_S * count, rtt_s * count, rtt_s * count)


def known(limit: float, **fields: object) -> Estimate:
    """known is an estimate past its slow start, due to re-measure the baselines at time
    30."""
    est = Estimate(limit, probe_at=30.0, slow_start=False)
    return dataclasses.replace(est, **fields)


def test_it_starts_at_four_and_doubles_until_it_queues_twice() -> None:
    params = LimitParams(minimum=2, maximum=1000, initial=2)
    assert LimitParams(minimum=2).start == START == 4
    assert LimitParams(minimum=6).start == 6 and LimitParams(maximum=3).start == 3
    est = Estimate(float(params.start))
    limits = []
    for step in range(6):
        est = next_estimate(est, pool(est.limit, 128, 16, BASE_S), STEP_S * step, params)
        limits.append(est.limit)
    # 2, 4, 8, 16 in flight do not queue on 16 slots; 32 does, twice the baseline: back to
    # 16, and on to 32 again, which queues again: the slow start ends at what that interval
    # measured, the rate served (32 / 40 ms) x the baseline (20 ms) x the tolerance (1.2).
    assert limits[:6] == [4.0, 8.0, 16.0, 32.0, 16.0, 32.0]
    assert est.slow_start
    est = next_estimate(est, pool(est.limit, 128, 16, BASE_S), 0.7, params)
    assert est.limit == pytest.approx(32 / 0.040 * 0.020 * 1.2)
    assert not est.slow_start
    est = next_estimate(est, pool(est.limit, 128, 16, BASE_S), 0.8, params)
    assert est.limit > 19.2  # 19 in flight on 16 slots: within the tolerance


def test_one_slow_interval_at_a_small_window_does_not_end_the_slow_start() -> None:
    est = next_estimate(Estimate(1.0), interval(BASE_S, load=1), 0.0, P)
    est = next_estimate(est, interval(BASE_S, load=2), 0.1, P)
    est = next_estimate(est, interval(3 * BASE_S, load=4), 0.2, P)  # a pause at 4
    assert est.limit == 2.0 and est.slow_start
    for t in (0.3, 0.4, 0.5):
        est = next_estimate(est, interval(BASE_S, load=est.limit), t, P)
    assert est.limit == 16.0 and est.slow_start


def test_the_slow_start_ends_at_what_the_clients_in_flight_measured() -> None:
    # The window doubled to 512 while refused clients waited; 128 came back at once and
    # queued on 16 slots, for the second time: the window goes to 16 x the tolerance.
    est = Estimate(512.0, strikes=1)
    after = next_estimate(est, pool(512, 128, 16, BASE_S), 1.0, P)
    assert after.limit == pytest.approx(16 * 1.2)
    assert not after.slow_start


def test_the_slow_start_doubles_a_window_it_does_not_fill() -> None:
    # At first the window is small, most clients were refused and wait out Retry-After: the
    # window must be open when they come back.
    after = next_estimate(Estimate(2.0), interval(BASE_S, load=0.9), 1.0, P)
    assert after.limit == 4.0
    # Past the slow start, a window used less than half does not grow.
    assert next_estimate(known(2.0), interval(BASE_S, load=0.9), 1.0, P).limit == 2.0


def test_an_interval_without_samples_changes_nothing() -> None:
    est = known(16.0)
    assert next_estimate(est, Samples(elapsed_s=STEP_S), 1.0, P) == est


def test_full_window_without_queueing_grows_by_a_fifth_of_its_square_root() -> None:
    after = next_estimate(known(16.0), interval(BASE_S, load=16), 1.0, P)
    assert after.limit == pytest.approx(16 + 0.2 * 4)
    after = next_estimate(known(100.0), interval(BASE_S, load=100), 1.0, P)
    assert after.limit == pytest.approx(100 + 0.2 * 10)


def test_latency_within_the_tolerance_still_grows() -> None:
    after = next_estimate(known(16.0), interval(BASE_S * 1.19, load=16), 1.0, P)
    assert after.limit > 16.0
    after = next_estimate(known(16.0), interval(BASE_S * 1.21, load=16), 1.0, P)
    assert after.limit < 16.0


def test_a_window_less_than_half_used_does_not_grow() -> None:
    assert next_estimate(known(100.0), interval(BASE_S, load=49), 1.0, P).limit == 100.0
    assert next_estimate(known(100.0), interval(BASE_S, load=50), 1.0, P).limit > 100.0


def test_queueing_moves_the_limit_a_fifth_of_the_way_to_limit_x_gradient() -> None:
    # Twice the baseline: the gradient is 1.2 x 20 / 40 = 0.6, the target 9.6.
    after = next_estimate(known(16.0), interval(2 * BASE_S, load=16), 1.0, P)
    assert after.limit == pytest.approx(16 - 0.2 * 6.4)


def test_queueing_just_above_the_tolerance_aims_at_least_a_slot_lower() -> None:
    # 6 in flight at 1.25 x the baseline: the gradient 0.96 would aim 0.24
    # lower; the target is a whole slot lower, so the window leaves 6 in 5 intervals.
    after = next_estimate(known(6.0), interval(1.25 * BASE_S, load=6), 1.0, P)
    assert after.limit == pytest.approx(6 - 0.2)


def test_a_step_up_that_queued_goes_back_and_holds_below_that_step() -> None:
    est = next_estimate(known(4.9, last_rtt=1.0), interval(BASE_S, load=4), 1.0, P)
    assert int(est.limit) == 5 and est.stepped_from == 4.9  # a step: a window of 5
    # 5 in flight on 4 slots: latency up 25 %, more than half the step's share (12.5 %).
    est = next_estimate(est, interval(1.25 * BASE_S, load=5), 1.1, P)
    assert est.limit == 4.9 and est.hold_until == pytest.approx(1.1 + P.hold_s)
    # Until the hold ends, growth stops below the window of 5...
    for t in (1.2, 1.3, 3.0, 1.1 + P.hold_s - 0.01):
        est = next_estimate(est, interval(BASE_S, load=4), t, P)
        assert 4.9 <= est.limit < 5.0, t
    # ...and afterwards it tries again.
    est = next_estimate(est, interval(BASE_S, load=4), 1.1 + P.hold_s, P)
    assert est.limit >= 5.0


def test_a_step_up_past_the_tolerance_goes_back_even_after_a_slow_interval() -> None:
    # The interval before the step was slow (a pause), so latency fell after it; but 5 in
    # flight on 4 slots is past the tolerance: the step queued all the same.
    est = known(4.9, last_rtt=3.0, stepped_from=4.5)
    est = next_estimate(est, interval(1.25 * BASE_S, load=5), 1.0, P)
    assert est.limit == 4.5 and est.hold_until == pytest.approx(1.0 + P.hold_s)


def test_a_step_up_whose_latency_rose_more_than_half_its_share_goes_back() -> None:
    # 3 -> 4 in flight (a third more), latency up 18 %: within the tolerance, but more than
    # half the step's share: the step bought too little throughput for what it cost.
    est = known(4.1, last_rtt=1.0, stepped_from=3.5)
    est = next_estimate(est, interval(1.18 * BASE_S, load=4), 1.0, P)
    assert est.limit == 3.5 and est.ceiling == pytest.approx(3.999)


def test_a_step_up_that_bought_throughput_is_kept() -> None:
    # 16 -> 17 in flight, latency up 5 %: less than half the tolerance (10 %).
    est = known(17.2, last_rtt=1.0, stepped_from=16.5)
    after = next_estimate(est, interval(1.05 * BASE_S, load=17), 1.0, P)
    assert after.limit > 17.2 and after.hold_until == -math.inf


def test_under_a_hold_a_pause_is_recovered_up_to_below_the_step() -> None:
    est = known(10.5, hold_until=5.0, ceiling=10.999)
    est = next_estimate(est, interval(10 * BASE_S, load=10), 1.0, P)  # a pause: -10 %
    assert est.limit == pytest.approx(9.45)
    for step in range(30):
        est = next_estimate(est, interval(BASE_S, load=10), 1.1 + step * 0.1, P)
        assert est.limit < 11.0
    assert int(est.limit) == 10


def test_one_slow_interval_costs_at_most_a_tenth_of_the_limit() -> None:
    # A pause of the machine slows every request in one interval, here 10 times: the
    # gradient stops at 0.5, and the limit moves a fifth of the way to half of it.
    after = next_estimate(known(20.0), interval(10 * BASE_S, load=20), 1.0, P)
    assert after.limit == pytest.approx(18.0)


def test_one_interval_shrinks_the_limit_by_at_most_half() -> None:
    params = dataclasses.replace(P, smoothing=1.0)
    after = next_estimate(known(100.0), interval(50 * BASE_S, load=100), 1.0, params)
    assert after.limit == pytest.approx(50.0)


def test_a_deadline_hit_backs_off() -> None:
    after = next_estimate(known(20.0), interval(BASE_S, load=20, drops=1), 1.0, P)
    assert after.limit == pytest.approx(18.0)


@pytest.mark.parametrize(
    "samples",
    [
        interval(BASE_S, load=1000),  # growth
        interval(100 * BASE_S, load=1),  # shrink
        interval(BASE_S, load=5, drops=3),  # back-off
        Samples(count=5, elapsed_s=0.0, in_flight_s=5.0),  # an interval of no length
    ],
)
def test_the_limit_stays_within_its_bounds(samples: Samples) -> None:
    params = LimitParams(minimum=4, maximum=64, initial=4, baseline_s=1.0)
    for start in (4.0, 5.0, 63.0, 64.0):
        est = known(start)
        for step in range(60):  # past re-measurements of the baseline too
            est = next_estimate(est, samples, step * STEP_S, params)
            assert 4 <= est.limit <= 64


def pool(limit: float, clients: int, capacity: int, hold_s: float, pause: float = 1.0) -> Samples:
    """pool is one interval of a closed loop on a pool of `capacity` slots held `hold_s`
    each: min(limit, clients) in flight, waiting their turn beyond the capacity; `pause`
    stretches every request (the machine paused)."""
    in_flight = min(int(limit), clients)
    rtt = hold_s * max(1.0, in_flight / capacity) * pause
    return interval(rtt, load=in_flight)


def test_against_a_pool_the_limit_follows_a_capacity_drop_and_rides_out_pauses() -> None:
    est = Estimate(float(P.start))
    now = 0.0
    trace: list[int] = []
    for capacity in (16, 4):
        for step in range(100):  # 10 s of 100 ms intervals
            now += STEP_S
            # The machine pauses for 2 intervals, every 1.3 s: every request 4 times slower.
            pause = 4.0 if step % 13 in (5, 6) else 1.0
            est = next_estimate(est, pool(est.limit, 128, capacity, BASE_S, pause), now, P)
            trace.append(int(est.limit))
    first, second = trace[:100], trace[100:]
    # Settled, the pool is kept full, with up to `tolerance` x its capacity in flight; a
    # pause (two intervals) costs the window less than a fifth, for a few intervals...
    assert all(15 <= w <= 20 for w in first[10:]), first
    assert sum(w >= 16 for w in first[10:]) >= 80, first
    # ...and within 2 s of the drop, at the capacity, but for a step above it now and then,
    # and a slot below after a pause.
    assert all(3 <= w <= 5 for w in second[20:]), second
    assert sum(w == 4 for w in second[20:]) >= 70, second


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
        {"smoothing": 0.0},
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


def test_the_first_interval_sets_when_to_measure_the_baselines_again() -> None:
    after = next_estimate(Estimate(10.0), interval(BASE_S, load=10), 5.0, P)
    assert after.probe_at == 5.0 + P.baseline_s
    assert after.limit == pytest.approx(20.0)  # no queueing seen: the slow start doubles it


def test_the_baselines_are_measured_again_at_the_minimum_window_and_the_limit_restored() -> None:
    params = LimitParams(minimum=2, baseline_s=30.0)
    est = next_estimate(known(20.0), interval(BASE_S, load=20), 29.9, params)
    assert est.limit > 20.0 and not est.probing and not est.rebase
    grown = est.limit
    # Due: the window drops to its minimum...
    est = next_estimate(est, interval(BASE_S, load=20), 30.0, params)
    assert est.limit == 2.0 and est.probing and est.resume == grown and not est.rebase
    # ...and the next interval with samples (of requests admitted at the minimum: the
    # AdaptiveLimit leaves out the rest) is the new baselines, whatever it measured.
    est = next_estimate(est, interval(3 * BASE_S, load=2), 30.4, params)
    assert est.rebase and est.limit == grown and not est.probing
    assert est.probe_at == pytest.approx(60.4)
    # The rebase holds for that interval only.
    assert not next_estimate(est, interval(BASE_S, load=20), 30.5, params).rebase


def test_a_limit_at_its_minimum_that_still_queues_takes_its_latency_as_the_baselines() -> None:
    params = LimitParams(minimum=2)
    est = next_estimate(known(2.0), interval(3 * BASE_S, load=2), 1.0, params)
    assert est.rebase and est.limit == 2.0


# The AdaptiveLimit on a manual clock: classes, service times, intervals, the probe.

A, B, C = ("a", 200), ("b", 404), ("c", 200)


def test_each_class_is_measured_against_its_own_baseline() -> None:
    sizes: list[int] = []
    limit = AdaptiveLimit(LimitParams(initial=10, interval_s=0.1, min_samples=4), sizes.append)
    now = 0.0
    for _ in range(5):  # the first interval: 20 ms requests, the baselines of A
        limit.record(0.020, now, A)
        now += 0.025
    assert limit.baselines.baseline(A) == pytest.approx(0.020)
    assert sizes == [10, 20]
    # A burst of cheap requests of another class, among A's: each measured against its own
    # baseline, nothing queues, and A's baseline stays where it was.
    for _ in range(3):
        for _ in range(4):
            limit.record(0.0003, now, B)
            limit.record(0.020, now, A)
            now += 0.01
        now += 0.1
    assert limit.baselines.baseline(A) == pytest.approx(0.020)
    assert limit.baselines.baseline(B) == pytest.approx(0.0003)
    assert limit.estimate.last_rtt == pytest.approx(1.0)


def test_a_class_of_one_sample_does_not_lower_its_baseline_until_it_has_three() -> None:
    limit = AdaptiveLimit(LimitParams(initial=10, interval_s=0.1, min_samples=1), lambda n: None)
    limit.record(0.030, 0.2, A, admitted_at=0.0)  # the first interval: 30 ms
    limit.record(0.010, 0.4, A)  # one fast outlier
    limit.record(0.030, 0.6, A)
    assert limit.baselines.baseline(A) == pytest.approx(0.030)
    for t in (0.65, 0.66, 0.67, 0.8):
        limit.record(0.015, t, A)  # an interval of four at 15 ms: the class is faster
    assert limit.baselines.baseline(A) == pytest.approx(0.015)


def test_a_cheap_burst_among_honest_requests_does_not_shrink_the_window() -> None:
    # Honest 20 ms requests keep 16 in flight; every 3 s, 100 random paths answered 404 in
    # 0.3 ms get in among them. One baseline for both would take the burst interval's average
    # (9 ms) as what a request costs, and every 20 ms request after it as queued twice over.
    limit = AdaptiveLimit(LimitParams(initial=16, interval_s=0.1), lambda n: None)
    limit.estimate = known(16.0, probe_at=1000.0)
    now, sizes = 0.0, []
    for step in range(100):
        for i in range(80):  # 80 x 20 ms per 100 ms: 16 in flight
            limit.record(BASE_S, now + i * 0.00125, A, admitted_at=now + i * 0.00125 - BASE_S)
        if step % 30 == 10:
            for _ in range(100):
                limit.record(0.0003, now + 0.05, B, admitted_at=now + 0.05 - 0.0003)
        now += 0.1
        sizes.append(limit.limit)
    assert min(sizes) >= 16, sizes


def test_slow_uploads_among_honest_requests_do_not_shrink_the_window() -> None:
    # 10 uploads a second trickled over 1 s each to a fast endpoint: the service answers each
    # in 0.3 ms once its body is in, so its sample is 0.3 ms (the exchange's service time);
    # the slot it held for the whole second counts in the mean in flight only.
    limit = AdaptiveLimit(LimitParams(initial=16, interval_s=0.1), lambda n: None)
    limit.estimate = known(16.0, probe_at=1000.0)
    now, sizes = 0.0, []
    for _ in range(100):
        for i in range(80):
            limit.record(BASE_S, now + i * 0.00125, A, admitted_at=now + i * 0.00125 - BASE_S)
        limit.record(0.0003, now + 0.05, C, admitted_at=now + 0.05 - 1.0)
        now += 0.1
        sizes.append(limit.limit)
    assert min(sizes) >= 16, sizes
    assert limit.baselines.baseline(C) == pytest.approx(0.0003)


def test_slow_requests_of_their_own_route_do_not_shrink_the_window() -> None:
    sim = Simulation(LimitParams(initial=16), capacity=16, hold_s=0.020, slow=(4.0, 1.0, C))
    sim.run(until=20.0)
    assert min(sim.windows[-500:]) >= 15


def test_a_cold_start_of_a_500_ms_service_reaches_its_capacity_within_a_few_service_times() -> None:
    sim = Simulation(LimitParams(), capacity=16, hold_s=0.5, clients=32)
    sim.run(until=6.0)
    # 4, 8, 16 in flight by 1 s (every 500 ms round of a full window doubles it).
    assert min(t for t, size in sim.trace if size >= 16) <= 1.5
    static = Simulation(None, capacity=16, hold_s=0.5, clients=32, static=16)
    static.run(until=6.0)
    # (The figure, for a real server: at least 70 % of a static window of 16.)
    assert sim.served >= 0.75 * static.served, (sim.served, static.served)


@pytest.mark.parametrize("hold_s", [0.020, 0.3, 0.5])
def test_the_probe_costs_at_most_three_percent_of_throughput(hold_s: float) -> None:
    params = LimitParams()
    sim = Simulation(params, capacity=16, hold_s=hold_s, clients=64)
    sim.run(until=10.0)  # settled
    static = Simulation(None, capacity=16, hold_s=hold_s, clients=64, static=16)
    static.run(until=10.0)
    before, before_static = sim.served, static.served
    sim.run(until=10.0 + 2 * params.baseline_s)
    static.run(until=10.0 + 2 * params.baseline_s)
    probes = sum(1 for w in sim.windows if w == params.minimum)
    assert probes >= 1  # the baselines were measured again, at least once a period
    ratio = (sim.served - before) / (static.served - before_static)
    assert ratio >= 0.97, ratio


def test_samples_admitted_before_a_probe_are_not_its_measurement() -> None:
    params = LimitParams(initial=20, interval_s=0.1, min_samples=4, baseline_s=1.0)
    limit = AdaptiveLimit(params, lambda n: None)
    limit.estimate = known(20.0, probe_at=1.0)
    for t in (0.9, 0.95, 0.97, 0.99, 1.0):
        limit.record(BASE_S, t, A, admitted_at=t - BASE_S)
    limit.record(BASE_S, 1.01, A, admitted_at=0.99)
    limit.record(BASE_S, 1.11, A, admitted_at=0.99)
    assert limit.estimate.probing and limit.limit == 1
    # The larger window's requests end slowly, queued behind each other: not samples.
    for t in (1.2, 1.3, 1.4):
        limit.record(5 * BASE_S, t, A, admitted_at=1.0)
    assert limit.estimate.probing and limit.baselines.baseline(A) == pytest.approx(BASE_S)
    # Requests admitted at the minimum window are: a service 50 % slower for good.
    for t in (1.5, 1.53, 1.56, 1.59, 1.62):
        limit.record(1.5 * BASE_S, t, A, admitted_at=t - 1.5 * BASE_S)
    assert not limit.estimate.probing and limit.limit == 20
    assert limit.baselines.baseline(A) == pytest.approx(1.5 * BASE_S)


def test_an_interval_ends_after_the_window_s_worth_of_samples_or_two_service_times() -> None:
    sizes: list[int] = []
    limit = AdaptiveLimit(LimitParams(initial=4, interval_s=0.1, min_samples=20), sizes.append)
    for _ in range(3):
        limit.record(0.5, 0.5, A, admitted_at=0.0)
    assert sizes == [4]  # 3 samples of a window of 4, over less than two service times
    limit.record(0.5, 0.5, A, admitted_at=0.0)
    assert sizes == [4, 8]  # a window's worth: one round of 500 ms requests is a decision
    # A window that clients do not fill: two service times.
    limit.record(0.5, 0.9, A)
    assert sizes == [4, 8]
    limit.record(0.5, 1.5, A)
    assert sizes == [4, 8, 16]


def test_classes_are_bounded_whatever_the_routes_and_statuses() -> None:
    baselines = Baselines()
    for status in range(1000):
        baselines.weigh(class_of(None, status), 0.001)
    assert len(baselines) == MAX_CLASSES
    baselines.end_interval(rebase=False)
    assert baselines.baseline(OTHER) == pytest.approx(0.001)


def test_one_sample_moves_the_signal_by_at_most_cap_times_its_baseline() -> None:
    baselines = Baselines()
    baselines.weigh(A, 0.010)
    baselines.end_interval(rebase=False)
    assert baselines.weigh(A, 10.0) == (pytest.approx(CAP * 0.010), pytest.approx(0.010))
    assert baselines.weigh(C, 10.0) == (0.0, 0.0)  # no baseline yet: no signal


def test_an_endpoint_need_not_be_hashable() -> None:
    class Unhashable:
        __hash__ = None  # type: ignore[assignment]

    endpoint = Unhashable()
    assert class_of(endpoint, 200) == class_of(endpoint, 200) != class_of(None, 200)


class Simulation:
    """Simulation is a closed loop of `clients` on a pool of `capacity` slots, each call
    holding one for `hold_s`, FIFO beyond it, under a window sized by an AdaptiveLimit of
    `params` (or `static`), on a manual clock. A refused client comes back after 1 s
    (Retry-After). `slow` = (per second, seconds, class): an extra client's requests of
    another route that hold a window slot, not the pool, for that long. Every admitted
    request's completion is recorded as the middleware records it."""

    def __init__(
        self,
        params: LimitParams | None,
        capacity: int,
        hold_s: float,
        clients: int = 64,
        static: int = 0,
        slow: tuple[float, float, object] | None = None,
    ) -> None:
        import heapq

        self.heapq = heapq
        self.size = static
        self.now = 0.0
        self.trace: list[tuple[float, int]] = []
        self.limit = AdaptiveLimit(params, self._resize) if params is not None else None
        self.capacity, self.hold_s = capacity, hold_s
        self.events: list[tuple[float, int, str, object]] = []
        self.seq = 0
        self.in_window = 0
        self.pool_busy = 0
        self.pool_queue: list[float] = []  # admission times of calls waiting for a slot
        self.served = 0
        self.windows: list[int] = []
        for _ in range(clients):
            self._at(0.0, "arrive", None)
        if slow is not None:
            rate, self.slow_s, self.slow_key = slow
            self.slow_gap = 1.0 / rate
            self._at(0.0, "slow", None)

    def _resize(self, size: int) -> None:
        self.size = size
        self.trace.append((self.now, size))

    def _at(self, t: float, kind: str, data: object) -> None:
        self.seq += 1
        self.heapq.heappush(self.events, (t, self.seq, kind, data))

    def burst(self, count: int, service_s: float, key: object) -> None:
        """burst admits up to `count` cheap requests at once, as far as the window has room:
        each takes a slot for `service_s`."""
        for _ in range(count):
            if self.in_window >= self.size:
                break
            self.in_window += 1
            self._at(self.now + service_s, "cheap", (self.now, key))

    def run(self, until: float) -> None:
        while self.events and self.events[0][0] <= until:
            t, _, kind, data = self.heapq.heappop(self.events)
            self.now = t
            if kind == "arrive":
                if self.in_window < self.size:
                    self.in_window += 1
                    self._call(t)
                else:
                    self._at(t + 1.0, "arrive", None)
            elif kind == "done":
                admitted = float(data)  # type: ignore[arg-type]
                self.pool_busy -= 1
                if self.pool_queue:
                    self.pool_busy += 1
                    self._at(t + self.hold_s, "done", self.pool_queue.pop(0))
                self._finish(t, admitted, A)
                self._at(t, "arrive", None)
            elif kind == "cheap":
                admitted, key = data  # type: ignore[misc]
                self._finish(t, admitted, key)
            elif kind == "slow":
                if self.in_window < self.size:
                    self.in_window += 1
                    self._at(t + self.slow_s, "cheap", (t, self.slow_key))
                self._at(t + self.slow_gap, "slow", None)
            self.windows.append(self.size)
        self.now = until

    def _call(self, t: float) -> None:
        if self.pool_busy < self.capacity:
            self.pool_busy += 1
            self._at(t + self.hold_s, "done", t)
        else:
            self.pool_queue.append(t)

    def _finish(self, t: float, admitted: float, key: object) -> None:
        self.in_window -= 1
        self.served += key == A
        if self.limit is not None:
            self.limit.record(t - admitted, t, key, admitted_at=admitted)

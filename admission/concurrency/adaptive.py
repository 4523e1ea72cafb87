"""admission.concurrency.adaptive: a window size that follows the service's measured capacity.

The arithmetic is `next_estimate`, a pure function of the previous estimate, the samples of
one sampling interval and the time; `AdaptiveLimit` only collects samples (a few additions
per request) and calls it at most once per interval. docs/overload.md argues the choice.

The rule is Netflix concurrency-limits' gradient limit (GradientLimit, Gradient2Limit), with
Envoy's way of keeping the baselines honest and a guard for small windows:

- The signal is the interval's service time against what its requests cost when nothing
  queues, class by class (admission.concurrency.baselines): 1.0 while nothing queues,
  whatever the mix of cheap and slow routes. Service time runs from admission, or from the
  end of the request's body when that comes later, to the start of the response, so a
  client's slow upload or slow reading is not the service's latency.
- Each interval, the gradient is tolerance / the signal, clamped to 0.5..1. Below 1
  (requests queue) the target is limit x gradient, and at least a slot less; at 1, with the
  window at least half used, it is limit + sqrt(limit) (Gradient2's queue allowance as the
  growth: a large step for a large window, a small one for a small window). A window used
  less than half says nothing about more capacity.
- The limit moves `smoothing` (0.2) of the way to the target. So one slow interval (a pause
  of the machine, a GC, a noisy neighbour: every request in flight slows at once) costs at
  most a tenth of the limit, while a capacity that fell for good keeps the gradient low
  interval after interval and the limit follows it down geometrically.
- A step up (the window grew by a slot or more) whose next interval went past the
  tolerance, or whose latency rose by more than half the step's share and more than half
  the tolerance, bought too little throughput for what it cost: the limit goes back to
  before the step, and does not take that step again for `hold_s`. On a small window one
  slot is a large share of the latency (25 % on 4 slots), and the smoothed gradient alone
  would settle a slot above the capacity.
- It starts at a small window (4, or the minimum if larger), where nothing queues on most
  services, so the first interval measures the baselines, and doubles per interval, used or
  not (the clients the small starting window refused may be waiting out their Retry-After),
  until it queues twice (the first time it halves: a fresh process or a pause can slow a few
  requests); each step is judged on the requests admitted at its size. Then the limit is
  what that interval measured: the mean in flight x the tolerance / the signal. An interval
  lasts at least `interval_s` and ends once it holds
  `min_samples` samples, or as many as the window, or two of its own average service times
  have passed: one round of a small window of slow requests is a decision, so a 500 ms
  service doubles its window every half second, not every 20 samples.
- Every `baseline_s` (60 s, Envoy's default), and once a sixth of that after the slow start
  (the first baselines were measured at 4 in flight), the baselines are re-measured, as Envoy's
  adaptive-concurrency filter re-measures its minimum RTT: the window drops to its minimum,
  and the first interval of requests admitted at that size (the larger window's still in
  flight are not samples) gives the new baselines; then it goes back. A baseline that only
  ever took the lowest latency seen would miss a service that became slower for good; one
  that followed the load (Gradient2's long-term average) drifts up under sustained load, and
  the limit and latency with it. A limit at its minimum that still queues takes the latencies
  there as the baselines at once: it is the best the service does now.
- A deadline hit multiplies the limit by `backoff`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Hashable
from dataclasses import dataclass, replace

from admission.concurrency.baselines import Baselines

log = logging.getLogger("admission")

INF = math.inf

# The window a fresh process starts at: TCP's initial window is 10 segments, Envoy's minimum
# concurrency 3; 4 in flight queues on few services, and one round of 4 is a measurement.
START = 4

# After the slow start, the baselines are measured again after baseline_s / this (10 s).
FIRST_PROBE_SHARE = 6

# The gradient's floor: one interval shrinks the target to at most half the limit, so one
# outlier interval cannot empty the window.
MIN_GRADIENT = 0.5


@dataclass(frozen=True)
class LimitParams:
    """LimitParams configures the adaptive limit.

    `minimum`/`maximum` bound the limit; it starts at `initial` (None: START, or the minimum
    if larger, where the first interval sees the service unloaded: the baselines) and doubles
    per interval until it first queues (a slow start, as TCP's).
    `tolerance` (> 1) is the latency, as a multiple of the baseline, still taken for no
    queueing (1.2: Gradient2's 1.5 would let a downstream of 4 slots keep 6 in flight, and
    every third request wait a round); `smoothing` (0..1] the share of the way to the
    target the limit moves per interval; `hold_s` how long a step up that queued is not
    taken again (a failed step every `hold_s` puts interval_s / hold_s of the requests, 2 %,
    through a window one slot too large); `backoff` (0..1) multiplies the limit after a
    deadline hit. An interval ends at the first sample at least `interval_s` after it began,
    once it holds `min_samples` samples or as many as the window, or two of its average
    service times after it began; or at one drop. Every `baseline_s` the baselines are
    re-measured at the minimum window.
    """

    minimum: int = 1
    maximum: int = 1000
    initial: int | None = None
    tolerance: float = 1.2
    smoothing: float = 0.2
    hold_s: float = 5.0
    backoff: float = 0.9
    interval_s: float = 0.1
    min_samples: int = 20
    baseline_s: float = 60.0

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum:
            raise ValueError(f"need 1 <= minimum <= maximum, got {self.minimum}, {self.maximum}")
        if self.initial is not None and not self.minimum <= self.initial <= self.maximum:
            raise ValueError(f"initial {self.initial} is outside {self.minimum}..{self.maximum}")
        if not self.tolerance > 1:
            raise ValueError("tolerance must be > 1")
        if not (0 < self.smoothing <= 1 and 0 < self.backoff < 1):
            raise ValueError("smoothing must be in (0, 1], backoff in (0, 1)")
        if self.hold_s < 0:
            raise ValueError("hold_s must be >= 0")
        if self.interval_s < 0 or self.min_samples < 1 or self.baseline_s <= 0:
            raise ValueError("interval_s >= 0, min_samples >= 1 and baseline_s > 0 needed")

    @property
    def start(self) -> int:
        """start is the limit before any sample: `initial`, else START within the bounds."""
        if self.initial is not None:
            return self.initial
        return max(self.minimum, min(START, self.maximum))


@dataclass(frozen=True)
class Samples:
    """Samples sums up one interval of `elapsed_s` seconds: `count` samples, and `drops`
    (deadline hits). `weighted_s` and `expected_s` are the signal's sums over the samples of
    classes with a baseline (admission.concurrency.baselines): their capped service times and
    their baselines; `raw_s` their service times. `in_flight_s` sums the time in the window of
    every request that ended in the interval, the samples and those admitted at another window
    (which the samples leave out)."""

    count: int = 0
    elapsed_s: float = 0.0
    drops: int = 0
    weighted_s: float = 0.0
    expected_s: float = 0.0
    raw_s: float = 0.0
    in_flight_s: float = 0.0

    @property
    def load(self) -> float:
        """load is the mean in flight over the interval (Little's law); 0 without elapsed
        time."""
        return self.in_flight_s / self.elapsed_s if self.elapsed_s > 0 else 0.0

    @property
    def uncapped(self) -> float:
        """uncapped is `ratio` without the cap on each sample: what Little's law needs."""
        return self.raw_s / self.expected_s if self.expected_s > 0 else self.ratio

    @property
    def ratio(self) -> float:
        """ratio is the interval's service time against its baselines: 1.0 while nothing
        queues (also when no sample's class has a baseline yet: nothing says otherwise), INF
        without samples."""
        if self.expected_s > 0:
            return self.weighted_s / self.expected_s
        return 1.0 if self.count else INF


# Under a hold, growth stops just below the window of the step that queued.
CEILING = 0.999


@dataclass(frozen=True)
class Estimate:
    """Estimate is the adaptive limit's state: the limit (a float; the window is its integer
    part), when the baselines are next re-measured (`probe_at`; None before the first
    interval), whether they are being re-measured (`probing`) and the limit to go back to
    after it (`resume`), whether the interval that just ended measured the baselines
    (`rebase`: its means replace them), whether nothing has queued yet (`slow_start`), the
    last interval's signal (`last_rtt`, relative to the baselines), the limit before a step up
    in the last interval (`stepped_from`, 0 when none), until when growth stops at `ceiling`
    after a step that queued, and how many slow intervals the slow start has seen
    (`strikes`)."""

    limit: float
    probe_at: float | None = None
    probing: bool = False
    resume: float = 0.0
    rebase: bool = False
    slow_start: bool = True
    last_rtt: float = INF
    stepped_from: float = 0.0
    hold_until: float = -INF
    ceiling: float = INF
    strikes: int = 0


def next_estimate(est: Estimate, s: Samples, now: float, p: LimitParams) -> Estimate:
    """next_estimate is the estimate after the interval `s`, ending at `now`. No samples and
    no drops change nothing. Every latency here is relative to the baselines (1.0: nothing
    queues)."""
    if est.rebase:
        est = replace(est, rebase=False)
    if est.probe_at is None:
        est = replace(est, probe_at=now + p.baseline_s)
    if s.count == 0 and not s.drops:
        return est
    rtt = s.ratio
    if est.probing:
        if not s.count:
            return est
        # The first interval of requests admitted at the minimum: the new baselines.
        return replace(
            est, limit=est.resume, probe_at=now + p.baseline_s, probing=False, rebase=True
        )
    if s.drops:
        return replace(
            est, limit=_clamp(est.limit * p.backoff, p), slow_start=False, stepped_from=0.0
        )
    gradient = max(MIN_GRADIENT, min(1.0, p.tolerance / rtt))
    limit = est.limit
    if gradient < 1.0 and limit <= p.minimum:
        # The smallest window still queues: what it sees is the best the service does now.
        return replace(est, rebase=True, last_rtt=1.0, slow_start=False)
    assert est.probe_at is not None
    if now >= est.probe_at and not est.slow_start:
        # Time to re-measure: at the minimum window, from the requests admitted at that size.
        return replace(est, limit=float(p.minimum), probing=True, resume=limit, stepped_from=0.0)
    # Little's law: the mean in flight. (Counting in flight as each request ends reads half
    # of it when requests end in bursts, as they do when they start together.)
    load = s.load if s.elapsed_s > 0 else limit
    window, before = math.floor(limit), math.floor(est.stepped_from)
    if est.slow_start:
        if gradient < 1.0 and not est.strikes:
            # A first slow interval halves the window and the slow start goes on: a fresh
            # process, or a pause, can slow a few requests at a small window.
            return replace(_next(est, _clamp(limit / 2, p), rtt), strikes=1)
        if gradient < 1.0:
            # The second: the window goes to what this interval measured, the rate served x
            # the baseline x the tolerance (uncapped: Little's law). Not smoothed: it is a
            # measurement, and the doubling may have gone far past it while clients waited
            # out a refusal.
            target = load * p.tolerance / s.uncapped
            # The first baselines were measured at the starting window, which queues on a
            # service that takes fewer at once: measured again soon, at the minimum.
            probe_at = min(est.probe_at, now + p.baseline_s / FIRST_PROBE_SHARE)
            est = replace(est, probe_at=probe_at)
            return _next(est, _clamp(target, p), rtt, slow=False)
        # Doubling even when the window is not half used: nothing is known yet, and the
        # clients the small starting window refused may be waiting out their Retry-After.
        return _next(est, _clamp(2 * limit, p), rtt, stepped_from=limit)
    rise = max(p.tolerance - 1, (window - before) / before) / 2 if before else INF
    if before and (gradient < 1.0 or rtt > est.last_rtt * (1 + rise)):
        # The interval after a step up: latency went past the tolerance, or rose by more
        # than half the step's share (the step bought less than half its share of
        # throughput: the slots above it queued) and by more than half the tolerance (above
        # noise). Back to the window before the step, and no step again for `hold_s`. This
        # keeps a small window at the capacity, where one slot more is a large share of the
        # latency (on 4 slots, 25 %).
        held = replace(est, hold_until=now + p.hold_s, ceiling=before + CEILING)
        return _next(held, est.stepped_from, rtt)
    if gradient < 1.0:
        # At least a slot less: near the tolerance the gradient is close to 1, and a window
        # one slot above it would take many intervals to leave.
        target = min(limit * gradient, limit - 1)
    elif load < limit / 2:
        # A window used less than half says nothing about more capacity.
        target = limit
    else:
        target = limit + math.sqrt(limit)
        if now < est.hold_until:
            # Back up to the window below the step that queued (after a pause shrank it),
            # but not to that step again until the hold ends.
            target = min(target, max(limit, est.ceiling))
    grown = _clamp(limit + p.smoothing * (target - limit), p)
    if math.floor(grown) > window:
        return _next(est, grown, rtt, stepped_from=limit)
    return _next(est, grown, rtt)


def _next(
    est: Estimate,
    limit: float,
    rtt: float,
    stepped_from: float = 0.0,
    slow: bool | None = None,
) -> Estimate:
    """_next is `est` after an ordinary interval: the new limit and latency, the step taken
    in it if any, and whether the slow start goes on (None: as before)."""
    return replace(
        est,
        limit=limit,
        last_rtt=max(rtt, 1.0),
        stepped_from=stepped_from,
        slow_start=est.slow_start if slow is None else slow,
    )


def _clamp(limit: float, p: LimitParams) -> float:
    return max(float(p.minimum), min(float(p.maximum), limit))


class AdaptiveLimit:
    """AdaptiveLimit sizes a window from the service times of the requests it admits.

    `record(service_s, now, key, admitted_at)` adds one admitted request's service time, of
    the class `key` (admission.concurrency.baselines.class_of), admitted at `admitted_at` on
    the clock of `now`; `drop(now)` a request that hit its deadline. Client hang-ups and
    failures are neither: they say nothing about capacity. At the end of each interval the new
    size goes to `resize` (the window's), and a move of more than 20 % since the last one
    logged is logged.
    """

    def __init__(self, params: LimitParams, resize: Callable[[int], None]) -> None:
        self.params = params
        self._resize = resize
        self.restart()

    def restart(self) -> None:
        """restart forgets every sample and baseline and sizes the window at its first size
        again, as when it was made (`admission.testing.reset`)."""
        self.estimate = Estimate(float(self.params.start))
        self.baselines = Baselines()
        self._logged = self.params.start
        self._count = 0
        self._latency_s = 0.0
        self._weighted_s = 0.0
        self._expected_s = 0.0
        self._raw_s = 0.0
        self._in_flight_s = 0.0
        self._drops = 0
        self._began: float | None = None
        # While re-measuring: requests admitted before this time are not samples.
        self._admitted_from = -INF
        self._resize(self.params.start)

    @property
    def limit(self) -> int:
        """limit is the window size now."""
        return int(self.estimate.limit)

    def record(
        self, service_s: float, now: float, key: Hashable = None, admitted_at: float = INF
    ) -> None:
        """record adds one service-time sample; it ends the interval when it is due."""
        # Little's law counts the slot for all of its time (a slow upload holds one too); the
        # signal, only the service's.
        self._in_flight_s += now - admitted_at if admitted_at < now else service_s
        if admitted_at >= self._admitted_from:
            weighted, expected = self.baselines.weigh(key, service_s)
            if expected:
                self._weighted_s += weighted
                self._expected_s += expected
                self._raw_s += service_s
            self._count += 1
            self._latency_s += service_s
        began = self._began
        if began is None:
            # The first interval begins with its first request's admission.
            self._began = began = min(now, admitted_at)
        elapsed = now - began
        p = self.params
        count = self._count
        if elapsed >= p.interval_s and (
            count >= min(p.min_samples, self.limit)
            or (count and elapsed * count >= 2 * self._latency_s)
        ):
            self._update(now)

    def drop(self, now: float) -> None:
        """drop counts a request that hit its deadline; it ends the interval when it is due."""
        self._drops += 1
        began = self._began
        if began is None:
            self._began = now
        elif now - began >= self.params.interval_s:
            self._update(now)

    def _update(self, now: float) -> None:
        assert self._began is not None
        samples = Samples(
            self._count,
            now - self._began,
            self._drops,
            self._weighted_s,
            self._expected_s,
            self._raw_s,
            self._in_flight_s,
        )
        self._count, self._latency_s, self._drops = 0, 0.0, 0
        self._weighted_s = self._expected_s = self._raw_s = self._in_flight_s = 0.0
        self._began = now
        before = self.limit
        was_probing = self.estimate.probing
        self.estimate = est = next_estimate(self.estimate, samples, now, self.params)
        self.baselines.end_interval(rebase=est.rebase)
        if (est.probing and not was_probing) or (est.slow_start and self.limit != before):
            # What the next interval judges is the new window: requests admitted at the old
            # one (the larger window's before a re-measurement; the smaller one's in the slow
            # start, which would double it again unqueued) are not its samples.
            self._admitted_from = now
        elif not est.probing and not est.slow_start:
            self._admitted_from = -INF
        if log.isEnabledFor(logging.DEBUG):
            log.debug(
                "adaptive window: %d samples, %.2f x baseline, %d classes, limit %.2f",
                samples.count,
                samples.ratio,
                len(self.baselines),
                est.limit,
            )
        after = self.limit
        if after != before:
            self._resize(after)
            if abs(after - self._logged) > 0.2 * self._logged:
                log.info(
                    "adaptive window %d -> %d (latency %.2f x baseline)",
                    self._logged,
                    after,
                    samples.ratio,
                )
                self._logged = after

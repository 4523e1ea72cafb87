"""admission.concurrency.adaptive: a window size that follows the service's measured capacity.

The arithmetic is `next_estimate`, a pure function of the previous estimate, the samples of
one sampling interval and the time; `AdaptiveLimit` only collects samples (a few additions
per request) and calls it at most once per interval. docs/overload.md argues the choice.

The rule is Netflix concurrency-limits' gradient limit (GradientLimit, Gradient2Limit), with
Envoy's way of keeping the baseline honest and a guard for small windows:

- The baseline is what a request costs when nothing queues: the lowest interval-average
  latency since the window last measured it at its minimum (below).
- Each interval, the gradient is tolerance x baseline / the interval's average latency,
  clamped to 0.5..1. Below 1 (requests queue) the target is limit x gradient, and at least
  a slot less; at 1, with the window at least half used, it is limit + sqrt(limit)
  (Gradient2's queue allowance as the growth: a large step for a large window, a small one
  for a small window). A window used less than half says nothing about more capacity.
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
- It starts at the minimum, where nothing queues, so the first intervals measure the
  baseline, and doubles per interval, used or not (the clients the small starting window
  refused may be waiting out their Retry-After), until it queues twice (the first time it
  halves: a fresh process or a pause can slow a few requests). Then the limit is what that
  interval measured: the rate served x the baseline x the tolerance.
- Every `baseline_s` the baseline is re-measured, as Envoy's adaptive-concurrency filter
  re-measures its minimum RTT: the window drops to its minimum for one interval to let the
  larger window's requests finish and one more to measure, then goes back. A baseline that
  only ever took the lowest latency seen would miss a service that became slower for good;
  one that followed the load (Gradient2's long-term average) drifts up under sustained
  load, and the limit and latency with it. A limit at its minimum that still queues takes
  the latency there as the baseline at once: it is the best the service does now.
- A deadline hit multiplies the limit by `backoff`.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

log = logging.getLogger("admission")

INF = math.inf

# The gradient's floor: one interval shrinks the target to at most half the limit, so one
# outlier interval cannot empty the window.
MIN_GRADIENT = 0.5


@dataclass(frozen=True)
class LimitParams:
    """LimitParams configures the adaptive limit.

    `minimum`/`maximum` bound the limit; it starts at `initial` (None: the minimum, so the
    first intervals see the service unloaded: the baseline) and doubles per interval until it
    first queues (a slow start, as TCP's).
    `tolerance` (> 1) is the latency, as a multiple of the baseline, still taken for no
    queueing (1.2: Gradient2's 1.5 would let a downstream of 4 slots keep 6 in flight, and
    every third request wait a round); `smoothing` (0..1] the share of the way to the
    target the limit moves per interval; `hold_s` how long a step up that queued is not
    taken again (a failed step every `hold_s` puts interval_s / hold_s of the requests, 2 %,
    through a window one slot too large); `backoff` (0..1) multiplies the limit after a
    deadline hit. An interval ends at the first sample at least `interval_s` after it began,
    once it holds `min_samples` samples, or one drop. (Also at a small window: the slow
    start from a window of 1 takes longer, 0.4 s to gather 20 samples of 20 ms, but a
    decision on 2 samples, at a fresh process's first requests, is noise, and ended the slow
    start at a window of 1 while the service could take 16.) Every `baseline_s` the
    baseline is re-measured at the minimum window.
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
    baseline_s: float = 30.0

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
        """start is the limit before any sample: `initial`, else the minimum."""
        return self.initial if self.initial is not None else self.minimum


@dataclass(frozen=True)
class Samples:
    """Samples sums up one interval of `elapsed_s` seconds: `count` latency samples adding
    up to `latency_s`, and `drops` (deadline hits)."""

    count: int = 0
    latency_s: float = 0.0
    elapsed_s: float = 0.0
    drops: int = 0


# Under a hold, growth stops just below the window of the step that queued.
CEILING = 0.999

# Estimate.probing: the baseline's re-measurement, in two intervals at the minimum window.
DRAINING, MEASURING = 2, 1


@dataclass(frozen=True)
class Estimate:
    """Estimate is the adaptive limit's state: the limit (a float; the window is its integer
    part), the baseline (inf before any sample), when the baseline is next re-measured
    (`probe_at`; None before the first interval), where a re-measurement is (`probing`: 0
    none, DRAINING, MEASURING) and the limit to go back to after it (`resume`), whether
    nothing has queued yet (`slow_start`), the last interval's average latency
    (`last_rtt`), the limit before a step up in the last interval (`stepped_from`, 0 when
    none), until when growth stops at `ceiling` after a step that queued, and how many slow
    intervals the slow start has seen (`strikes`)."""

    limit: float
    baseline_s: float = INF
    probe_at: float | None = None
    probing: int = 0
    resume: float = 0.0
    slow_start: bool = True
    last_rtt: float = INF
    stepped_from: float = 0.0
    hold_until: float = -INF
    ceiling: float = INF
    strikes: int = 0


def next_estimate(est: Estimate, s: Samples, now: float, p: LimitParams) -> Estimate:
    """next_estimate is the estimate after the interval `s`, ending at `now`. No samples and
    no drops change nothing."""
    if est.probe_at is None:
        est = replace(est, probe_at=now + p.baseline_s)
    if est.probing == DRAINING:
        # What ended in this interval was admitted by the larger window: not a measurement.
        return replace(est, probing=MEASURING)
    if s.count == 0 and not s.drops:
        return est
    rtt = s.latency_s / s.count if s.count else INF
    if est.probing == MEASURING:
        if not s.count:
            return est
        return replace(
            est, limit=est.resume, baseline_s=rtt, probe_at=now + p.baseline_s, probing=0
        )
    if s.drops:
        return replace(
            est, limit=_clamp(est.limit * p.backoff, p), slow_start=False, stepped_from=0.0
        )
    baseline = min(est.baseline_s, rtt)
    gradient = max(MIN_GRADIENT, min(1.0, p.tolerance * baseline / rtt))
    limit = est.limit
    if gradient < 1.0 and limit <= p.minimum:
        # The smallest window still queues: what it sees is the best the service does now.
        return replace(est, baseline_s=rtt, slow_start=False)
    assert est.probe_at is not None
    if now >= est.probe_at and not est.slow_start:
        # Time to re-measure: at the minimum window, after the larger one's requests drained.
        return replace(
            est,
            limit=float(p.minimum),
            baseline_s=baseline,
            probing=DRAINING,
            resume=limit,
            stepped_from=0.0,
        )
    # Little's law: the mean in flight. (Counting in flight as each request ends reads half
    # of it when requests end in bursts, as they do when they start together.)
    load = s.latency_s / s.elapsed_s if s.elapsed_s > 0 else limit
    window, before = math.floor(limit), math.floor(est.stepped_from)
    if est.slow_start:
        if gradient < 1.0 and not est.strikes:
            # A first slow interval halves the window and the slow start goes on: a fresh
            # process, or a pause, can slow a few requests at a small window.
            return replace(
                _next(est, _clamp(limit / 2, p), rtt, baseline), strikes=1, baseline_s=baseline
            )
        if gradient < 1.0:
            # The second: the window goes to what this interval measured, the rate served x
            # the baseline x the tolerance. Not smoothed: it is a measurement, and the
            # doubling may have gone far past it while clients waited out a refusal.
            target = load * p.tolerance * baseline / rtt
            return _next(est, _clamp(target, p), rtt, baseline, slow=False)
        # Doubling even when the window is not half used: nothing is known yet, and the
        # clients the small starting window refused may be waiting out their Retry-After.
        return _next(est, _clamp(2 * limit, p), rtt, baseline, stepped_from=limit)
    rise = max(p.tolerance - 1, (window - before) / before) / 2 if before else INF
    if before and (gradient < 1.0 or rtt > est.last_rtt * (1 + rise)):
        # The interval after a step up: latency went past the tolerance, or rose by more
        # than half the step's share (the step bought less than half its share of
        # throughput: the slots above it queued) and by more than half the tolerance (above
        # noise). Back to the window before the step, and no step again for `hold_s`. This
        # keeps a small window at the capacity, where one slot more is a large share of the
        # latency (on 4 slots, 25 %).
        held = replace(est, hold_until=now + p.hold_s, ceiling=before + CEILING)
        return _next(held, est.stepped_from, rtt, baseline)
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
        return _next(est, grown, rtt, baseline, stepped_from=limit)
    return _next(est, grown, rtt, baseline)


def _next(
    est: Estimate,
    limit: float,
    rtt: float,
    baseline: float,
    stepped_from: float = 0.0,
    slow: bool | None = None,
) -> Estimate:
    """_next is `est` after an ordinary interval: the new limit, baseline and latency, the
    step taken in it if any, and whether the slow start goes on (None: as before)."""
    return replace(
        est,
        limit=limit,
        baseline_s=baseline,
        last_rtt=rtt,
        stepped_from=stepped_from,
        slow_start=est.slow_start if slow is None else slow,
    )


def _clamp(limit: float, p: LimitParams) -> float:
    return max(float(p.minimum), min(float(p.maximum), limit))


class AdaptiveLimit:
    """AdaptiveLimit sizes a window from the latency of the requests it admits.

    `record(latency_s, now)` adds one admitted request's latency; `drop(now)` a request that
    hit its deadline. Client hang-ups and failures are neither: they say nothing about
    capacity. At the end of each interval the new size goes to `resize` (the window's), and a
    move of more than 20 % since the last one logged is logged.
    """

    def __init__(self, params: LimitParams, resize: Callable[[int], None]) -> None:
        self.params = params
        self._resize = resize
        self.restart()

    def restart(self) -> None:
        """restart forgets every sample and sizes the window at its first size again, as when
        it was made (`admission.testing.reset`)."""
        self.estimate = Estimate(float(self.params.start))
        self._logged = self.params.start
        self._count = 0
        self._latency_s = 0.0
        self._drops = 0
        self._began: float | None = None
        self._resize(self.params.start)

    @property
    def limit(self) -> int:
        """limit is the window size now."""
        return int(self.estimate.limit)

    def record(self, latency_s: float, now: float) -> None:
        """record adds one latency sample; it ends the interval when it is due."""
        self._count += 1
        self._latency_s += latency_s
        began = self._began
        if began is None:
            self._began = now
        elif now - began >= self.params.interval_s and self._count >= self.params.min_samples:
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
        samples = Samples(self._count, self._latency_s, now - self._began, self._drops)
        self._count, self._latency_s, self._drops = 0, 0.0, 0
        self._began = now
        before = self.limit
        self.estimate = next_estimate(self.estimate, samples, now, self.params)
        if log.isEnabledFor(logging.DEBUG):
            e = self.estimate
            log.debug(
                "adaptive window: %d samples, %.1f ms average, baseline %.1f ms, limit %.2f",
                samples.count,
                1000 * samples.latency_s / samples.count if samples.count else 0.0,
                1000 * e.baseline_s,
                e.limit,
            )
        after = self.limit
        if after != before:
            self._resize(after)
            if abs(after - self._logged) > 0.2 * self._logged:
                log.info(
                    "adaptive window %d -> %d (latency %.1f ms, baseline %.1f ms)",
                    self._logged,
                    after,
                    1000 * samples.latency_s / samples.count if samples.count else 0.0,
                    1000 * self.estimate.baseline_s,
                )
                self._logged = after

"""admission.adaptive: a window size that follows the service's measured capacity.

The arithmetic is `next_estimate`, a pure function of the previous estimate, the samples of
one sampling interval and the time; `AdaptiveLimit` only collects samples (a few additions
per request) and calls it at most once per interval. docs/overload.md argues the choice.

The rule. The baseline is the lowest interval-average latency seen lately (a windowed
minimum, as BBR keeps its minimum RTT): what a request costs when nothing queues. An interval
that completed `count` requests in `elapsed` seconds served them at a rate of count /
elapsed; times the baseline, that is how many the service really serves at once without
queueing, its capacity (Vegas's queue estimate, turned around). By Little's law the requests
in flight averaged `load` = the sum of their latencies / elapsed; above the capacity, they
queued.

- Queueing (ratio > `tolerance`) right after the window grew by a slot or more: a probe
  that failed. The limit goes back to where it was before the step, and holds for `hold_s`.
- Queueing in two intervals in a row at a steady window: the capacity fell. The limit moves
  `smoothing` of the way to the measured capacity (at most halving per interval), and may
  grow again at once to find the level. One slow interval alone is taken for a pause of
  the machine, not of the service: the limit holds.
- No queueing, the window at least half used, no hold: the limit grows by `growth` per
  interval (at least half a request), until it queues. So at a steady capacity the window
  sits at the capacity (up to `tolerance` x it) and, once per `hold_s` and for an interval
  or two, a little above: what finding out whether capacity came back costs.
- It starts at the minimum, where nothing queues, so the first intervals measure the
  baseline; and until the first queueing it doubles per interval (a slow start), which
  ends in a shrink without a hold.
- A deadline hit multiplies the limit by `backoff`, then holds.
- A window used less than half says nothing about more capacity: the limit stays.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass, replace

log = logging.getLogger("admission")

INF = math.inf


@dataclass(frozen=True)
class LimitParams:
    """LimitParams configures the adaptive limit.

    `minimum`/`maximum` bound the limit; it starts at `initial` (None: the minimum, so the
    first intervals see the service unloaded: the baseline) and doubles per interval until it
    first queues (a slow start, as TCP's).
    `tolerance` (> 1) is the latency, as a multiple of the baseline, still taken for no
    queueing; `smoothing` (0..1] the share of the way to the measured capacity a shrink goes;
    `growth` (> 1) the growth per interval; `hold_s` how long the limit holds after a shrink;
    `backoff` (0..1) multiplies the limit after a deadline hit. An interval ends at the first
    sample at least `interval_s` after it began, once it holds `min_samples` samples (or 2
    per slot of a smaller window: a window of 1 needs no 400 ms to gather 20 samples of 20 ms)
    or one drop. The baseline forgets a minimum after between `baseline_s` and twice that, so
    a service that became slower for good is believed within that time; sooner, when the
    limit has sat at its minimum for `floor_intervals` intervals and still saw queueing:
    latency at the smallest limit is the best there is.
    """

    minimum: int = 1
    maximum: int = 1000
    initial: int | None = None
    tolerance: float = 1.2
    smoothing: float = 0.5
    growth: float = 1.1
    hold_s: float = 2.0
    backoff: float = 0.9
    interval_s: float = 0.1
    min_samples: int = 20
    baseline_s: float = 10.0
    floor_intervals: int = 5

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum:
            raise ValueError(f"need 1 <= minimum <= maximum, got {self.minimum}, {self.maximum}")
        if self.initial is not None and not self.minimum <= self.initial <= self.maximum:
            raise ValueError(f"initial {self.initial} is outside {self.minimum}..{self.maximum}")
        if not (self.tolerance > 1 and self.growth > 1):
            raise ValueError("tolerance and growth must be > 1")
        if not (0 < self.smoothing <= 1 and 0 < self.backoff < 1):
            raise ValueError("smoothing must be in (0, 1], backoff in (0, 1)")
        if self.interval_s < 0 or self.min_samples < 1 or self.baseline_s <= 0:
            raise ValueError("interval_s >= 0, min_samples >= 1 and baseline_s > 0 needed")
        if self.hold_s < 0:
            raise ValueError("hold_s must be >= 0")

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


@dataclass(frozen=True)
class Estimate:
    """Estimate is the adaptive limit's state: the limit (a float; the window is its integer
    part); the baseline's current and previous windowed minimum and when the current one began
    (`since`; None before the first interval); how many intervals in a row the limit sat at
    its minimum while queueing; until when it holds after a shrink; whether the last interval
    queued, whether it grew the window (and from which limit, `stepped_from`), and whether
    nothing has queued yet (`slow_start`)."""

    limit: float
    current_min_s: float = INF
    previous_min_s: float = INF
    since: float | None = None
    at_floor: int = 0
    hold_until: float = -INF
    queued: bool = False
    growing: bool = False
    slow_start: bool = True
    stepped_from: float = 0.0

    @property
    def baseline_s(self) -> float:
        """baseline_s is the lowest interval-average latency remembered; inf before any."""
        return min(self.current_min_s, self.previous_min_s)


def next_estimate(est: Estimate, s: Samples, now: float, p: LimitParams) -> Estimate:
    """next_estimate is the estimate after the interval `s`, ending at `now`. No samples and
    no drops change nothing but the baseline's age."""
    current, previous, since = est.current_min_s, est.previous_min_s, est.since
    if since is None:
        since = now
    elif now - since >= p.baseline_s:
        current, previous, since = INF, current, now
    limit = est.limit
    if s.drops:
        limit = _clamp(limit * p.backoff, p)
        return Estimate(limit, current, previous, since, 0, now + p.hold_s, slow_start=False)
    if s.count == 0:
        return replace(est, current_min_s=current, previous_min_s=previous, since=since)
    rtt = s.latency_s / s.count
    current = min(current, rtt)
    baseline = min(current, previous)
    ratio = rtt / baseline if baseline > 0 else 1.0
    # Little's law: the mean in flight. (Counting in flight as each request ends reads half
    # of it when requests end in bursts, as they do when they start together.)
    load = s.latency_s / s.elapsed_s if s.elapsed_s > 0 else limit
    queued = ratio > p.tolerance
    at_floor, hold_until, growing, slow_start = 0, est.hold_until, False, est.slow_start
    stepped_from = est.stepped_from
    if queued and est.growing:
        # A step up that queued, a probe that failed: back to the window that did not, and
        # (past the slow start) no new probe for `hold_s`.
        limit = max(est.stepped_from, limit * 0.5)
        if not slow_start:
            hold_until = now + p.hold_s
        slow_start = False
    elif queued and est.queued:
        # Queueing twice in a row at a steady window: believed. Once alone, it may be a pause
        # of the machine rather than of the service: the limit holds.
        if limit <= p.minimum:
            at_floor = est.at_floor + 1
            if at_floor >= p.floor_intervals:
                # The smallest window still queues: what it sees is the service's best now,
                # the baseline to grow from (at once: holding here would starve the service).
                return Estimate(float(p.minimum), rtt, INF, now, 0, slow_start=False)
        capacity = load / ratio  # = the rate served x the baseline
        limit = max(limit * 0.5, limit + p.smoothing * (capacity - limit))
        # No hold: the capacity fell (or the machine paused for long), and growth must be
        # free to find the level again.
        slow_start = False
    elif not queued and load >= limit / 2 and now >= hold_until:
        # At least half a request per interval: a small window grows a slot in two.
        limit = max(limit * (2.0 if slow_start else p.growth), limit + 0.5)
        # A step up is a window one slot larger or more, not a larger fraction of one.
        growing = math.floor(_clamp(limit, p)) > math.floor(est.limit)
        if growing:
            stepped_from = est.limit
    limit = _clamp(limit, p)
    return Estimate(
        limit,
        current,
        previous,
        since,
        at_floor,
        hold_until,
        queued,
        growing,
        slow_start,
        stepped_from,
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
        self.estimate = Estimate(float(params.start))
        self._resize = resize
        self._logged = params.start
        self._count = 0
        self._latency_s = 0.0
        self._drops = 0
        self._began: float | None = None
        self._need = min(params.min_samples, 2 * params.start)
        resize(params.start)

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
        elif now - began >= self.params.interval_s and self._count >= self._need:
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
            self._need = min(self.params.min_samples, 2 * after)
            if abs(after - self._logged) > 0.2 * self._logged:
                log.info(
                    "adaptive window %d -> %d (latency %.1f ms, baseline %.1f ms)",
                    self._logged,
                    after,
                    1000 * samples.latency_s / samples.count if samples.count else 0.0,
                    1000 * self.estimate.baseline_s,
                )
                self._logged = after

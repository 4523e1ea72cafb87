"""admission.adaptive: a window size that follows the service's measured capacity.

The arithmetic is `next_estimate`, a pure function of the previous estimate, the samples of
one sampling interval and the time; `AdaptiveLimit` only collects samples (a few additions
per request) and calls it at most once per interval. docs/overload.md argues the choice.

The rule, in one paragraph. The baseline is the lowest interval-average latency seen lately
(a windowed minimum, as BBR keeps its minimum RTT): what a request costs when nothing queues.
An interval whose average latency is `ratio` x baseline, with `load` requests in flight on
average, got through `load / ratio` requests' worth of work in the baseline time: by Little's
law that is the concurrency the service really serves, its capacity. Above `tolerance` the
limit goes straight to that capacity x tolerance (at most halving per interval, so one stall
does not collapse it); at or below, and with the window at least half used, it grows by
tolerance / ratio (up to x tolerance per interval while nothing queues). A deadline hit in
the interval multiplies it by `backoff`. In a steady state, latency sits near tolerance x
baseline and the in-flight count near capacity x tolerance.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from dataclasses import dataclass

log = logging.getLogger("admission")

INF = math.inf


@dataclass(frozen=True)
class LimitParams:
    """LimitParams configures the adaptive limit.

    `minimum`/`maximum` bound the limit; it starts at `initial` (None: the minimum, or 10
    if that fits). `tolerance` (> 1) is the latency, as a multiple of the baseline, that is
    not yet queueing. `backoff` (0 < backoff < 1) multiplies the limit after a deadline hit.
    An interval ends at the first sample at least `interval_s` after it began, once it holds
    `min_samples` samples or one drop. The baseline forgets a minimum after between
    `baseline_s` and twice that, so a service that became slower for good is believed within
    that time; sooner, when the limit has sat at its minimum for `floor_intervals` intervals
    and still saw queueing: latency at the smallest limit is the best there is.
    """

    minimum: int = 1
    maximum: int = 1000
    initial: int | None = None
    tolerance: float = 1.25
    backoff: float = 0.9
    interval_s: float = 0.05
    min_samples: int = 10
    baseline_s: float = 10.0
    floor_intervals: int = 5

    def __post_init__(self) -> None:
        if not 1 <= self.minimum <= self.maximum:
            raise ValueError(f"need 1 <= minimum <= maximum, got {self.minimum}, {self.maximum}")
        if self.initial is not None and not self.minimum <= self.initial <= self.maximum:
            raise ValueError(f"initial {self.initial} is outside {self.minimum}..{self.maximum}")
        if not self.tolerance > 1:
            raise ValueError(f"tolerance must be > 1, got {self.tolerance}")
        if not 0 < self.backoff < 1:
            raise ValueError(f"backoff must be between 0 and 1, got {self.backoff}")
        if self.interval_s < 0 or self.min_samples < 1 or self.baseline_s <= 0:
            raise ValueError("interval_s >= 0, min_samples >= 1 and baseline_s > 0 needed")

    @property
    def start(self) -> int:
        """start is the limit before any sample: `initial`, else 10 within the bounds."""
        if self.initial is not None:
            return self.initial
        return max(self.minimum, min(self.maximum, 10))


@dataclass(frozen=True)
class Samples:
    """Samples sums up one interval: `count` latency samples adding up to `latency_s`, the
    in-flight counts seen at each adding up to `in_flight`, and `drops` (deadline hits)."""

    count: int = 0
    latency_s: float = 0.0
    in_flight: int = 0
    drops: int = 0


@dataclass(frozen=True)
class Estimate:
    """Estimate is the adaptive limit's state: the limit (a float; the window is its integer
    part), the baseline's current and previous windowed minimum and when the current one began
    (`since`; None before the first interval), and how many intervals in a row the limit sat
    at its minimum while queueing."""

    limit: float
    current_min_s: float = INF
    previous_min_s: float = INF
    since: float | None = None
    at_floor: int = 0

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
    if s.drops:
        limit = _clamp(est.limit * p.backoff, p)
        return Estimate(limit, current, previous, since, 0)
    if s.count == 0:
        return Estimate(est.limit, current, previous, since, est.at_floor)
    rtt = s.latency_s / s.count
    current = min(current, rtt)
    baseline = min(current, previous)
    ratio = rtt / baseline if baseline > 0 else 1.0
    load = s.in_flight / s.count
    at_floor = 0
    if ratio > p.tolerance:
        limit = max(est.limit * 0.5, load / ratio * p.tolerance)
        if est.limit <= p.minimum:
            at_floor = est.at_floor + 1
            if at_floor >= p.floor_intervals:
                # The smallest window still queues: what it sees is the service's best now.
                return Estimate(p.minimum, rtt, INF, now, 0)
    elif load >= est.limit / 2:
        limit = est.limit * p.tolerance / ratio  # ratio >= 1: the baseline includes this rtt
    else:
        limit = est.limit  # the service is not asked for more: nothing learned about more
    return Estimate(_clamp(limit, p), current, previous, since, at_floor)


def _clamp(limit: float, p: LimitParams) -> float:
    return max(float(p.minimum), min(float(p.maximum), limit))


class AdaptiveLimit:
    """AdaptiveLimit sizes a window from the latency of the requests it admits.

    `record(latency_s, in_flight, now)` adds one admitted request's latency (with the window's
    in-flight count as it ended); `drop(now)` a request that hit its deadline. Client hang-ups
    and failures are neither: they say nothing about capacity. At the end of each interval the
    new size goes to `resize` (the window's), and a move of more than 20 % since the last one
    logged is logged.
    """

    def __init__(self, params: LimitParams, resize: Callable[[int], None]) -> None:
        self.params = params
        self.estimate = Estimate(float(params.start))
        self._resize = resize
        self._logged = params.start
        self._count = 0
        self._latency_s = 0.0
        self._in_flight = 0
        self._drops = 0
        self._began: float | None = None
        resize(params.start)

    @property
    def limit(self) -> int:
        """limit is the window size now."""
        return int(self.estimate.limit)

    def record(self, latency_s: float, in_flight: int, now: float) -> None:
        """record adds one latency sample; it ends the interval when it is due."""
        self._count += 1
        self._latency_s += latency_s
        self._in_flight += in_flight
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
        samples = Samples(self._count, self._latency_s, self._in_flight, self._drops)
        self._count, self._latency_s, self._in_flight, self._drops = 0, 0.0, 0, 0
        self._began = now
        before = self.limit
        self.estimate = next_estimate(self.estimate, samples, now, self.params)
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

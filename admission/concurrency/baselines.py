"""admission.concurrency.baselines: what each kind of request costs when nothing queues, so
that the adaptive window reads queueing the same whatever the mix of requests.

A kind (a class) is the route the application served a request on and the status it answered
with: a random path answered 404 in a fraction of a millisecond is one class, `GET /report`
answered 200 in 300 ms another. Each class has its own baseline, and each interval's signal is
the time its samples took against the time their baselines say they should have taken:
sum(min(service, CAP x baseline)) / sum(baseline), 1.0 when nothing queues. Weighed by their
baselines, cheap requests count for what they cost the service, and no mix of cheap and slow
requests moves the signal while nothing queues: the weakness of one baseline for every request,
which a burst of cheap requests dragged down until honest ones looked queued.

Baselines follow `AdaptiveLimit`'s intervals: a class's first interval sets its baseline; an
interval with at least MIN_CLASS_SAMPLES of a class's samples whose mean is lower lowers it; a
re-measurement at the minimum window (or a minimum window that still queues) replaces it with
what was measured there. Classes are found from the scope: `endpoint` (what Starlette's and
FastAPI's routers put there) and the response's status, so their number is bounded by the
application, not by the paths a client invents; past MAX_CLASSES the rest share one class.
"""

from __future__ import annotations

import math
from collections.abc import Hashable

__all__ = ["Baselines", "class_of"]

INF = math.inf

# A class's sample counts for at most CAP times its baseline: one request whose cost a client
# chose (a query parameter that makes a route slow) moves the signal by a bounded amount, and
# past 2.4 x (the tolerance over the gradient's floor) more says nothing anyway.
CAP = 3.0
# The fewest samples of a class in one interval whose mean may lower its baseline: a single
# fast outlier is not what the class costs.
MIN_CLASS_SAMPLES = 3
# The most classes kept apart; an application whose routers hand out a new endpoint object per
# request fills them once, and the rest share OTHER.
MAX_CLASSES = 64
OTHER = "other"


def class_of(endpoint: object, status: int) -> Hashable:
    """class_of is the class of a request served by `endpoint` (None: no router said) with
    `status`. By identity: an endpoint need not be hashable, and lives as long as the app."""
    return (0 if endpoint is None else id(endpoint), status)


class Baselines:
    """Baselines keeps each class's baseline (seconds, INF until its first interval) and the
    current interval's sums per class. `weigh(key, service_s)` adds a sample and returns what
    it adds to the signal's two sums; `end_interval(rebase)` updates the baselines."""

    __slots__ = ("_classes",)

    def __init__(self) -> None:
        # key -> [baseline, the interval's sum of service times, the interval's count]
        self._classes: dict[Hashable, list[float]] = {}

    def weigh(self, key: Hashable, service_s: float) -> tuple[float, float]:
        """weigh adds a sample of `service_s` to its class and returns (its capped time, its
        baseline), both 0 while the class has no baseline."""
        entry = self._classes.get(key)
        if entry is None:
            if len(self._classes) >= MAX_CLASSES - 1:
                key = OTHER
                entry = self._classes.get(OTHER)
            if entry is None:
                entry = self._classes[key] = [INF, 0.0, 0]
        entry[1] += service_s
        entry[2] += 1
        baseline = entry[0]
        if baseline == INF:
            return 0.0, 0.0
        return min(service_s, CAP * baseline), baseline

    def end_interval(self, rebase: bool) -> None:
        """end_interval takes the interval's means into the baselines: as they are with
        `rebase` (they were measured at the minimum window) or for a class without one yet,
        else where lower (and of enough samples); then starts a new interval."""
        for entry in self._classes.values():
            count = entry[2]
            if not count:
                continue
            mean = entry[1] / count
            if rebase or entry[0] == INF or (count >= MIN_CLASS_SAMPLES and mean < entry[0]):
                entry[0] = mean
            entry[1] = 0.0
            entry[2] = 0

    def forget_interval(self) -> None:
        """forget_interval drops the interval's sums without learning from them."""
        for entry in self._classes.values():
            entry[1] = 0.0
            entry[2] = 0

    def baseline(self, key: Hashable) -> float:
        """baseline is the class `key`'s baseline in seconds (INF while it has none)."""
        entry = self._classes.get(key)
        return INF if entry is None else entry[0]

    def __len__(self) -> int:
        return len(self._classes)

"""admission.stats: what the request path counts, kept as plain integers.

Requests only add to integers and a latency bucket array; nothing takes a lock or formats
text on the request path. `admission.observe.metrics` turns them into metric families when
`/metrics` is read.
"""

from __future__ import annotations

from bisect import bisect_left

from admission import reasons
from admission.reasons import Reason

# Seconds; the upper bounds of the latency histogram, as in prometheus-client's defaults.
LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0)


class Stats:
    """Stats counts admissions, rejections by reason and admitted-request latency."""

    def __init__(self) -> None:
        self.admitted = 0
        self.rejected = dict.fromkeys((reason.label for reason in reasons.ALL), 0)
        # Requests shed, by priority class (CRITICAL, DEFAULT, SHEDDABLE of
        # admission.concurrency.window).
        self.shed = [0, 0, 0]
        self._latency_counts = [0] * (len(LATENCY_BUCKETS) + 1)
        self._latency_sum = 0.0

    def reject(self, reason: Reason) -> None:
        """reject counts one rejection or interruption for `reason`."""
        self.rejected[reason.label] = self.rejected.get(reason.label, 0) + 1

    def observe(self, seconds: float) -> None:
        """observe records the latency of one admitted request."""
        self._latency_counts[bisect_left(LATENCY_BUCKETS, seconds)] += 1
        self._latency_sum += seconds

    def latency_buckets(self) -> list[tuple[str, int]]:
        """latency_buckets is the cumulative histogram, `+Inf` last."""
        out, total = [], 0
        for bound, count in zip(
            (*LATENCY_BUCKETS, float("inf")), self._latency_counts, strict=True
        ):
            total += count
            out.append(("+Inf" if bound == float("inf") else repr(bound), total))
        return out

"""admission.observe.metrics: counters kept as plain integers, exposed as Prometheus text on scrape.

Requests only add to integers and a latency bucket array; nothing takes a lock or formats
text on the request path. A collector turns them into metric families when `/metrics` is read.
"""

from __future__ import annotations

from bisect import bisect_left
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from admission import reasons
from admission.concurrency.window import CLASSES

if TYPE_CHECKING:
    from admission.concurrency.window import Window
    from admission.ledger import Ledger
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


class PolicyCounts(Protocol):
    """PolicyCounts is what the policy limiter counts: refusals and shadow refusals by policy."""

    refusals: dict[str, int]
    shadow_refusals: dict[str, int]


class AdmissionCollector:
    """AdmissionCollector reads `Stats`, the ledger, the windows, the drain and the store's
    failure count (`storage_errors`, a function: the store counts them) when scraped.
    `policies` holds the route policies' own counts (rate refusals and shadow refusals by
    policy); without it, every rate refusal is the implicit policy "default"'s."""

    def __init__(
        self,
        stats: Stats,
        ledger: Ledger,
        windows: dict[str, Window],
        draining: Callable[[], bool],
        storage_errors: Callable[[], int] = lambda: 0,
        policies: PolicyCounts | None = None,
    ) -> None:
        self.stats = stats
        self.ledger = ledger
        self.windows = windows
        self.policies = policies
        self.draining = draining
        self.storage_errors = storage_errors

    def collect(self) -> Iterator[Metric]:
        """collect yields every admission metric family."""
        s = self.stats
        yield GaugeMetricFamily(
            "admission_in_flight",
            "Admitted requests not yet finished.",
            value=self.ledger.in_flight,
        )
        size = GaugeMetricFamily("admission_window_size", "Slots in the window.", labels=["kind"])
        used = GaugeMetricFamily("admission_window_used", "Slots taken.", labels=["kind"])
        waiting = GaugeMetricFamily(
            "admission_window_waiters", "Requests waiting for a slot.", labels=["kind"]
        )
        for kind, window in self.windows.items():
            size.add_metric([kind], window.size)
            used.add_metric([kind], window.used)
            waiting.add_metric([kind], window.waiting)
        yield size
        yield used
        yield waiting
        http = self.windows.get("http")
        if http is not None:
            yield GaugeMetricFamily(
                "admission_window_limit",
                "The HTTP window's size now: fixed, or where ADMISSION_WINDOW=auto has put it.",
                value=http.size,
            )
        yield GaugeMetricFamily(
            "admission_draining", "1 from the start of a drain.", value=int(self.draining())
        )
        yield CounterMetricFamily(
            "admission_admitted", "Requests admitted to the application.", value=s.admitted
        )
        rejected = CounterMetricFamily(
            "admission_rejected",
            "Requests refused or interrupted by admission, by reason, and by policy for the "
            "rate limits (empty for other reasons).",
            labels=["reason", "policy"],
        )
        policies = self.policies
        for reason, count in s.rejected.items():
            if reason != "rate":
                rejected.add_metric([reason, ""], count)
            elif policies is None:
                rejected.add_metric([reason, "default"], count)
            else:
                for policy, refused in policies.refusals.items():
                    rejected.add_metric([reason, policy], refused)
        yield rejected
        shed = CounterMetricFamily(
            "admission_shed",
            "Requests refused to keep the window's last slots for more important classes.",
            labels=["priority"],
        )
        for name, count in zip(CLASSES, s.shed, strict=True):
            shed.add_metric([name], count)
        yield shed
        shadow = CounterMetricFamily(
            "admission_shadow_refusals",
            "Requests a shadow policy (enforce = false) would have refused, by policy.",
            labels=["policy"],
        )
        if policies is not None:
            for policy, refused in policies.shadow_refusals.items():
                shadow.add_metric([policy], refused)
        yield shadow
        yield CounterMetricFamily(
            "admission_storage_errors",
            "Rate-limit store calls that failed.",
            value=self.storage_errors(),
        )
        yield HistogramMetricFamily(
            "admission_request_duration_seconds",
            "Time from admission to the end of the response, admitted requests.",
            buckets=s.latency_buckets(),
            sum_value=s._latency_sum,
        )


def render(collector: AdmissionCollector) -> bytes:
    """render is the Prometheus text exposition of `collector` alone."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(collector)
    return generate_latest(registry)

"""admission.observe.metrics: admission's counters (`admission.stats`) and state as Prometheus
metric families, made when `/metrics` is read."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Protocol

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)

from admission.concurrency.window import CLASSES
from admission.stats import Stats

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

    from admission.concurrency.window import Window
    from admission.ledger import Ledger
    from admission.observe.otel import OtelExport


class PolicyCounts(Protocol):
    """PolicyCounts is what the policy limiter counts: refusals and shadow refusals by policy."""

    refusals: dict[str, int]
    shadow_refusals: dict[str, int]


class MessageCounts(Protocol):
    """MessageCounts is what the message limiter counts: websocket messages refused, and those
    shadow policies would have refused, by policy."""

    refusals: dict[str, int]
    shadow_refusals: dict[str, int]


class AdmissionCollector:
    """AdmissionCollector reads `Stats`, the ledger, the windows, the drain and the store's
    failure count and state (`storage_errors` and `storage_degraded`, functions: the store
    keeps them) when scraped.
    `policies` holds the route policies' own counts (rate refusals and shadow refusals by
    policy); without it, every rate refusal is the implicit policy "default"'s. `messages`
    holds the policies' websocket message refusals (`message_limits`) by policy."""

    def __init__(
        self,
        stats: Stats,
        ledger: Ledger,
        windows: dict[str, Window],
        draining: Callable[[], bool],
        storage_errors: Callable[[], int] = lambda: 0,
        storage_degraded: Callable[[], bool] = lambda: False,
        policies: PolicyCounts | None = None,
        messages: MessageCounts | None = None,
    ) -> None:
        self.stats = stats
        self.ledger = ledger
        self.windows = windows
        self.policies = policies
        self.messages = messages
        self.draining = draining
        self.storage_errors = storage_errors
        self.storage_degraded = storage_degraded

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
            "rate limits and websocket message limits (empty for other reasons).",
            labels=["reason", "policy"],
        )
        policies = self.policies
        messages = self.messages
        for reason, count in s.rejected.items():
            if reason == "ws_message_limit":
                # By policy, as rate refusals are: the policy whose message_limits refused.
                for policy, refused in messages.refusals.items() if messages is not None else ():
                    rejected.add_metric([reason, policy], refused)
            elif reason != "rate":
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
            "Requests and websocket messages a shadow policy (enforce = false) would have "
            "refused, by policy.",
            labels=["policy"],
        )
        shadows = dict(policies.shadow_refusals) if policies is not None else {}
        if messages is not None:
            # A shadow policy's would-be refusals of messages add to its requests'.
            for policy, refused in messages.shadow_refusals.items():
                shadows[policy] = shadows.get(policy, 0) + refused
        for policy, refused in shadows.items():
            shadow.add_metric([policy], refused)
        yield shadow
        yield CounterMetricFamily(
            "admission_storage_errors",
            "Rate-limit store calls that failed.",
            value=self.storage_errors(),
        )
        yield GaugeMetricFamily(
            "admission_storage_degraded",
            "1 while the rate-limit store fails and ADMISSION_ON_STORAGE_ERROR answers instead.",
            value=int(self.storage_degraded()),
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


def otel_export(meter_provider: MeterProvider | None = None) -> OtelExport:
    """otel_export imports OpenTelemetry, the first time it is asked for, and makes admission's
    histogram on `meter_provider` (OpenTelemetry's global one when None); its `observe` then
    exports an `AdmissionCollector` (`ADMISSION_METRICS=otel` or `both`)."""
    from admission.observe.otel import OtelExport

    return OtelExport(meter_provider)

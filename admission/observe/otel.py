"""admission.observe.otel: admission's metrics through the OpenTelemetry metrics API
(`ADMISSION_METRICS=otel` or `both`; needs `admission[otel]`).

Every family the Prometheus collector makes is observed from that same collector when the
reader collects, under its twin in `admission.observe.instruments.TWINS`: the same figures,
read the same way, costing a request nothing. The latency histogram alone is recorded as each
admitted request finishes (OpenTelemetry has no observable histogram), by `RecordedStats`,
which only a service exporting to OpenTelemetry uses.

A periodic reader calls the callbacks on its own thread while the event loop counts: they only
read integers, and the dicts they walk never gain or lose a key after start-up (every reason,
policy and window is there from the start), so no iteration sees one change size.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from typing import TYPE_CHECKING

from opentelemetry import metrics
from opentelemetry.metrics import CallbackOptions, Histogram, Observation

from admission.observe.instruments import TWINS, Twin
from admission.stats import LATENCY_BUCKETS, Stats

if TYPE_CHECKING:
    from admission.observe.metrics import AdmissionCollector

DURATION = "admission_request_duration_seconds"


class RecordedStats(Stats):
    """RecordedStats is `Stats` that also records each admitted request's latency in
    `histogram`."""

    def __init__(self, histogram: Histogram) -> None:
        super().__init__()
        self._histogram = histogram

    def observe(self, seconds: float) -> None:
        """observe records the latency of one admitted request, here and in the histogram."""
        super().observe(seconds)
        self._histogram.record(seconds)


class OtelExport:
    """OtelExport makes admission's instruments on a meter named "admission" of
    `meter_provider` (by default the global one, which OpenTelemetry's SDK or auto-instrumentation
    sets; until one is set, the API's instruments measure nothing). `stats()` is the `Stats`
    the request path counts in; `observe(collector)` makes every observable instrument."""

    def __init__(self, meter_provider: metrics.MeterProvider | None = None) -> None:
        provider = meter_provider if meter_provider is not None else metrics.get_meter_provider()
        self.meter = provider.get_meter("admission", _version())
        twin = TWINS[DURATION]
        self.duration = self.meter.create_histogram(
            twin.name,
            unit=twin.unit,
            description="Time from admission to the end of the response, admitted requests.",
            # Prometheus's buckets, so both exports show the same distribution.
            explicit_bucket_boundaries_advisory=LATENCY_BUCKETS,
        )

    def stats(self) -> Stats:
        """stats is a fresh `Stats` whose latencies also reach the histogram."""
        return RecordedStats(self.duration)

    def observe(self, collector: AdmissionCollector) -> None:
        """observe makes one observable instrument per family of `collector` but the
        histogram, each reading its family from `collector` when the reader collects."""
        meter = self.meter
        makers: dict[str, Callable[..., object]] = {
            "counter": meter.create_observable_counter,
            "updowncounter": meter.create_observable_up_down_counter,
            "gauge": meter.create_observable_gauge,
        }
        for family, twin in TWINS.items():
            if twin.kind == "histogram":
                continue
            makers[twin.kind](
                twin.name,
                callbacks=[partial(_observations, collector, family, twin)],
                unit=twin.unit,
            )


def _observations(
    collector: AdmissionCollector, family: str, twin: Twin, options: CallbackOptions
) -> Sequence[Observation]:
    """_observations is the samples of `collector`'s `family` now, as `twin`'s observations;
    none when the collector doesn't make it (admission_window_limit without an HTTP window)."""
    for made in collector.collect():
        if made.name == family:
            return [
                Observation(sample.value, _attributes(sample.labels, twin))
                for sample in made.samples
            ]
    return []


def _attributes(labels: dict[str, str], twin: Twin) -> dict[str, str]:
    # An empty label (the policy of a refusal that isn't a rate limit's) is no attribute at all.
    return {twin.attributes[label]: value for label, value in labels.items() if value}


def _version() -> str | None:
    try:
        return version("admission")
    except PackageNotFoundError:
        # Run from a checkout that was never installed: a meter without a version.
        return None

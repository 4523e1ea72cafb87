"""admission.observe.instruments: every metric family of `/metrics` with its OpenTelemetry twin,
in one table. `admission.observe.otel` exports through it and docs/observability.md shows it;
neither imports OpenTelemetry from here, so a service that doesn't export to it never loads it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Literal

Kind = Literal["counter", "updowncounter", "gauge", "histogram"]


@dataclass(frozen=True)
class Twin:
    """Twin is how one Prometheus family is exported through OpenTelemetry: its instrument
    `name`, `kind` (every kind but "histogram" is observed from the collector when the reader
    collects; the histogram is recorded as requests finish), UCUM `unit`, and `attributes`
    (each Prometheus label's attribute name; an empty label value is left out)."""

    name: str
    kind: Kind
    unit: str
    attributes: Mapping[str, str] = field(default_factory=dict)


_KIND = {"kind": "admission.window.kind"}

# Keyed by the Prometheus family name (a counter's without `_total`). Semantic conventions where
# one fits (http.server.request.duration); `admission.*` otherwise. Amounts that add up across
# processes (requests, slots) are up-down counters, states (draining, degraded) gauges.
TWINS: Mapping[str, Twin] = {
    "admission_in_flight": Twin("admission.in_flight", "updowncounter", "{request}"),
    "admission_window_size": Twin("admission.window.size", "updowncounter", "{slot}", _KIND),
    "admission_window_used": Twin("admission.window.used", "updowncounter", "{slot}", _KIND),
    "admission_window_waiters": Twin(
        "admission.window.waiters", "updowncounter", "{request}", _KIND
    ),
    "admission_window_limit": Twin("admission.window.limit", "updowncounter", "{slot}"),
    "admission_draining": Twin("admission.draining", "gauge", "1"),
    "admission_admitted": Twin("admission.requests.admitted", "counter", "{request}"),
    "admission_rejected": Twin(
        "admission.requests.refused",
        "counter",
        "{request}",
        {"reason": "admission.reason", "policy": "admission.policy"},
    ),
    "admission_shed": Twin(
        "admission.requests.shed", "counter", "{request}", {"priority": "admission.priority"}
    ),
    "admission_shadow_refusals": Twin(
        "admission.policy.shadow_refusals", "counter", "{request}", {"policy": "admission.policy"}
    ),
    "admission_storage_errors": Twin("admission.storage.errors", "counter", "{error}"),
    "admission_storage_degraded": Twin("admission.storage.degraded", "gauge", "1"),
    "admission_request_duration_seconds": Twin("http.server.request.duration", "histogram", "s"),
}


def twins_markdown() -> str:
    """twins_markdown is the table of docs/observability.md: each Prometheus series with its
    labels beside its OpenTelemetry instrument with its attributes, kind and unit."""
    rows = [
        "| Prometheus | OpenTelemetry | OpenTelemetry kind | unit |",
        "|---|---|---|---|",
    ]
    for family, twin in TWINS.items():
        series = family + ("_total" if twin.kind == "counter" else "")
        labels = ", ".join(twin.attributes)
        attributes = ", ".join(f"`{a}`" for a in twin.attributes.values())
        prometheus = f"`{series}{{{labels}}}`" if labels else f"`{series}`"
        otel = f"`{twin.name}` {{{attributes}}}" if attributes else f"`{twin.name}`"
        rows.append(f"| {prometheus} | {otel} | {twin.kind} | `{twin.unit}` |")
    return "\n".join(rows)

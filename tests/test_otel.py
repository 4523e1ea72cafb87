"""OpenTelemetry export (`ADMISSION_METRICS=otel|both`): every family of `/metrics` reaches an
SDK reader under its documented twin, with the same figures; the default never loads it."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import HistogramDataPoint, InMemoryMetricReader
from prometheus_client.parser import text_string_to_metric_families

from admission import AdmissionMiddleware, Settings
from admission.config.policies import generation_bucket
from admission.observe.instruments import TWINS, twins_markdown
from admission.observe.metrics import render
from admission.ratelimit.gate import resolved_policies
from admission.stats import LATENCY_BUCKETS, Stats
from admission.stores.memory import MemoryStore
from tests.asgi import CountingApp, ManualClock
from tests.support import REPO
from tests.test_store_faults import BrokenStore

EXAMPLE = str(REPO / "tests" / "apps" / "policies.toml")
Attributes = tuple[tuple[str, str], ...]


def exported(reader: InMemoryMetricReader) -> dict[str, dict[Attributes, Any]]:
    """exported is what `reader` collects now: instrument -> attributes -> data point."""
    out: dict[str, dict[Attributes, Any]] = {}
    data = reader.get_metrics_data()
    assert data is not None
    for resource in data.resource_metrics:
        for scope in resource.scope_metrics:
            assert scope.scope.name == "admission"
            for metric in scope.metrics:
                assert metric.unit == TWINS_BY_NAME[metric.name].unit
                points = out.setdefault(metric.name, {})
                for point in metric.data.data_points:
                    points[tuple(sorted(point.attributes.items()))] = point
    return out


TWINS_BY_NAME = {twin.name: twin for twin in TWINS.values()}


def service(reader: InMemoryMetricReader, **settings: Any) -> AdmissionMiddleware:
    s = Settings(**settings)
    store = MemoryStore(generation_bucket(resolved_policies(s)), clock=ManualClock(500.0))
    return AdmissionMiddleware(
        CountingApp(),
        settings=s,
        store=store,
        handle_signals=False,
        meter_provider=MeterProvider(metric_readers=[reader]),
    )


def client(app: AdmissionMiddleware) -> httpx.AsyncClient:
    transport = httpx.ASGITransport(app=app, client=("192.0.2.10", 40000))
    return httpx.AsyncClient(transport=transport, base_url="http://testserver")


async def test_every_metrics_family_reaches_the_reader_under_its_twin_with_the_same_figures() -> (
    None
):
    reader = InMemoryMetricReader()
    # A window (its limit), policies with a shadow one (refusals by policy, shadow refusals),
    # admitted requests (the histogram): every family /metrics shows has samples.
    mw = service(reader, metrics="otel", window=4, policies=EXAMPLE)
    async with client(mw) as c:
        for _ in range(6):
            assert (await c.get("/export")).status_code == 200
        codes = [(await c.post("/login")).status_code for _ in range(7)]
        assert codes.count(429) == 2
    families = list(text_string_to_metric_families(render(mw.collector).decode()))
    # One table for both exports: a family without its twin, or a twin of nothing, fails here.
    assert {family.name for family in families} == set(TWINS)
    got = exported(reader)
    assert set(got) == {twin.name for twin in TWINS.values()}
    for family in families:
        twin = TWINS[family.name]
        points = got[twin.name]
        if twin.kind == "histogram":
            (point,) = points.values()
            assert isinstance(point, HistogramDataPoint)
            assert tuple(point.explicit_bounds) == LATENCY_BUCKETS
            by_name = {s.name: s for s in family.samples}
            assert point.count == by_name[family.name + "_count"].value == 13 - 2
            assert point.sum == pytest.approx(by_name[family.name + "_sum"].value)
            cumulative = [b.value for b in family.samples if b.name.endswith("_bucket")]
            running = [sum(point.bucket_counts[: i + 1]) for i in range(len(point.bucket_counts))]
            assert running == cumulative
            continue
        samples = [s for s in family.samples if not s.name.endswith("_created")]
        assert samples, family.name
        assert len(points) == len(samples), family.name
        for sample in samples:
            attributes = {twin.attributes[k]: v for k, v in sample.labels.items() if v}
            point = points[tuple(sorted(attributes.items()))]
            assert point.value == sample.value, (family.name, sample.labels)
    assert got["admission.policy.shadow_refusals"][(("admission.policy", "export-trial"),)].value
    refused = got["admission.requests.refused"]
    assert refused[(("admission.policy", "login"), ("admission.reason", "rate"))].value == 2
    # Gauges read now, not at start-up: the window's slots are back.
    assert got["admission.window.used"][(("admission.window.kind", "http"),)].value == 0


async def test_the_storage_state_is_a_gauge_in_both_exports() -> None:
    reader = InMemoryMetricReader()
    mw = AdmissionMiddleware(
        CountingApp(),
        settings=Settings(rate="10/second", on_storage_error="local", metrics="both"),
        store=BrokenStore(),  # type: ignore[arg-type]
        handle_signals=False,
        meter_provider=MeterProvider(metric_readers=[reader]),
    )
    got = exported(reader)
    assert got["admission.storage.degraded"][()].value == 0
    async with client(mw) as c:
        assert (await c.get("/")).status_code == 200
        text = (await c.get("/metrics")).text
    assert "admission_storage_degraded 1.0" in text
    assert "admission_storage_errors_total 1.0" in text
    got = exported(reader)
    assert got["admission.storage.degraded"][()].value == 1
    assert got["admission.storage.errors"][()].value == 1


async def test_otel_alone_leaves_the_metrics_path_to_the_application() -> None:
    reader = InMemoryMetricReader()
    mw = service(reader, metrics="otel")
    async with client(mw) as c:
        response = await c.get("/metrics")
    assert response.status_code == 200 and b"admission_" not in response.content
    assert isinstance(mw.app, CountingApp) and mw.app.paths == ["/metrics"]
    assert exported(reader)["admission.requests.admitted"][()].value == 1


async def test_both_serves_the_metrics_path_and_exports() -> None:
    reader = InMemoryMetricReader()
    mw = service(reader, metrics="both")
    async with client(mw) as c:
        await c.get("/")
        text = (await c.get("/metrics")).text
    assert "admission_admitted_total 1.0" in text
    assert exported(reader)["admission.requests.admitted"][()].value == 1


def test_prometheus_alone_counts_in_plain_stats() -> None:
    mw = AdmissionMiddleware(CountingApp(), settings=Settings(), handle_signals=False)
    # The request path's Stats.observe is the one it always was: nothing recorded twice.
    assert type(mw.stats) is Stats


def test_the_default_needs_no_opentelemetry_and_never_loads_the_export(tmp_path: Path) -> None:
    script = """
import asyncio, sys
from admission import AdmissionMiddleware

async def app(scope, receive, send):
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"ok"})

async def main():
    mw = AdmissionMiddleware(app, handle_signals=False)
    for path in ("/", "/metrics"):
        sent = []
        async def receive():
            return {"type": "http.request", "body": b""}
        async def send(message):
            sent.append(message)
        scope = {"type": "http", "method": "GET", "path": path, "headers": [],
                 "client": ("127.0.0.1", 1)}
        await mw(scope, receive, send)
        assert sent[0]["status"] == 200, sent
    assert b"admission_admitted_total 1.0" in sent[1]["body"]

asyncio.run(main())
print("admission.observe.otel" in sys.modules)
"""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADMISSION_")}
    # Installed (redis-py may load the API itself): admission's export stays unloaded.
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"
    # Absent: the default serves and shows its metrics all the same.
    hide_opentelemetry(tmp_path)
    env.update(PYTHONPATH=str(tmp_path))
    done = subprocess.run(
        [sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "False"


def hide_opentelemetry(directory: Path) -> None:
    """hide_opentelemetry puts in `directory` a package that shadows the installed
    OpenTelemetry and fails to import, as if it were absent."""
    hidden = directory / "opentelemetry"
    hidden.mkdir()
    (hidden / "__init__.py").write_text("raise ImportError('not installed')\n")


def test_otel_without_the_package_stops_start_up_with_one_line(tmp_path: Path) -> None:
    hide_opentelemetry(tmp_path)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADMISSION_")}
    env.update(PYTHONPATH=str(tmp_path), ADMISSION_METRICS="otel")
    done = subprocess.run(
        [sys.executable, "-m", "admission", "serve", "--port", "1"],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "ADMISSION_METRICS='otel'" in lines[0]
    assert "pip install 'admission[otel]'" in lines[0]


def test_the_documented_names_are_the_exported_ones() -> None:
    text = (REPO / "docs" / "observability.md").read_text()
    start = text.index("\n", text.index("<!-- twins:start")) + 1
    end = text.index("<!-- twins:end -->")
    # Regenerate with the command in the marker when a metric is added or renamed.
    assert text[start:end].strip() == twins_markdown()

"""docs/grafana-dashboard.json: a dashboard Grafana imports, whose every query asks for series
admission exports, with labels those series carry."""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from admission import AdmissionMiddleware, Settings
from admission.config.policies import generation_bucket
from admission.ratelimit.gate import resolved_policies
from admission.stores.memory import MemoryStore
from tests.asgi import CountingApp, ManualClock
from tests.support import REPO

DASHBOARD = REPO / "docs" / "grafana-dashboard.json"
# Labels Prometheus adds to every scraped series.
TARGET_LABELS = frozenset(("instance", "job"))
PROMQL_WORDS = frozenset(
    [
        "sum",
        "min",
        "max",
        "avg",
        "count",
        "stddev",
        "stdvar",
        "topk",
        "bottomk",
        "quantile",
        "count_values",
        "group",
        "by",
        "without",
        "on",
        "ignoring",
        "group_left",
        "group_right",
        "bool",
        "and",
        "or",
        "unless",
        "offset",
        "rate",
        "irate",
        "increase",
        "delta",
        "idelta",
        "deriv",
        "histogram_quantile",
        "label_values",
        "abs",
        "ceil",
        "floor",
        "round",
        "clamp_min",
        "clamp_max",
        "time",
        "vector",
        "scalar",
    ]
)
_MATCHERS = re.compile(r"\{([^}]*)\}")
_GROUPING = re.compile(r"\b(?:by|without|on|ignoring)\s*\(([^)]*)\)")
_NAME = re.compile(r"[A-Za-z_:][A-Za-z0-9_:]*")


async def exported_series() -> dict[str, set[str]]:
    """exported_series is every series name `/metrics` shows, with its label names, from a
    middleware with everything on that has counted (so every family has its samples)."""
    settings = Settings(window=4, policies=str(REPO / "tests" / "apps" / "policies.toml"))
    store = MemoryStore(generation_bucket(resolved_policies(settings)), clock=ManualClock(500.0))
    mw = AdmissionMiddleware(CountingApp(), settings=settings, store=store, handle_signals=False)
    transport = httpx.ASGITransport(app=mw, client=("192.0.2.10", 40000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        for _ in range(6):
            await client.get("/export")
        text = (await client.get("/metrics")).text
    series: dict[str, set[str]] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            series.setdefault(sample.name, set()).update(sample.labels)
    return series


def queries(dashboard: dict[str, Any]) -> Iterator[tuple[str, str]]:
    """queries yields (where, PromQL) for every panel target and query variable."""
    for panel in dashboard["panels"]:
        for target in panel["targets"]:
            yield f"panel {panel['title']!r} {target['refId']}", target["expr"]
    for variable in dashboard["templating"]["list"]:
        if variable["type"] == "query":
            yield f"variable {variable['name']}", variable["query"]["query"]


def names_and_labels(expr: str) -> tuple[set[str], set[str]]:
    """names_and_labels is the series names `expr` selects and the label names it matches or
    groups by."""
    labels: set[str] = set()
    for matchers in _MATCHERS.findall(expr):
        labels.update(m.split("=")[0].rstrip("!~ ").strip() for m in matchers.split(",") if m)
    for grouping in _GROUPING.findall(expr):
        labels.update(label.strip() for label in grouping.split(",") if label.strip())
    bare = _GROUPING.sub(" ", _MATCHERS.sub(" ", expr))
    # Range selectors, dashboard variables ($__rate_interval), strings, numbers.
    bare = re.sub(r"\[[^\]]*\]|\$\w+|\"[^\"]*\"|\b[0-9.]+\b", " ", bare)
    names = set()
    for match in _NAME.finditer(bare):
        word = match.group()
        if word in PROMQL_WORDS or bare[match.end() :].lstrip().startswith("("):
            continue
        names.add(word)
    # label_values(metric, label): its second argument is a label.
    for metric, label in re.findall(r"label_values\(\s*(\w+)\s*,\s*(\w+)\s*\)", expr):
        names.discard(label)
        names.add(metric)
        labels.add(label)
    return names, labels


async def test_every_query_names_only_series_admission_exports_and_their_labels() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    series = await exported_series()
    seen: set[str] = set()
    for where, expr in queries(dashboard):
        names, labels = names_and_labels(expr)
        assert names, f"{where}: no series in {expr}"
        unknown = names - set(series)
        assert not unknown, f"{where}: {sorted(unknown)} not exported"
        carried = set().union(*(series[name] for name in names)) | TARGET_LABELS
        assert labels <= carried, f"{where}: labels {sorted(labels - carried)} not on {names}"
        seen |= names
    # What the dashboard is for: admitted against refused, in flight against the window,
    # latency, the storage state.
    assert {
        "admission_admitted_total",
        "admission_rejected_total",
        "admission_in_flight",
        "admission_window_limit",
        "admission_request_duration_seconds_bucket",
        "admission_storage_degraded",
    } <= seen


def test_the_query_parser_catches_what_is_not_exported() -> None:
    names, labels = names_and_labels(
        'sum by (reason) (rate(admission_rejected_totl{instance=~"$i"}[$__rate_interval]))'
    )
    assert names == {"admission_rejected_totl"} and labels == {"reason", "instance"}
    names, labels = names_and_labels("histogram_quantile(0.9, sum by (le) (rate(x_bucket[5m])))")
    assert names == {"x_bucket"} and labels == {"le"}


def test_the_dashboard_has_the_shape_grafana_imports() -> None:
    dashboard = json.loads(DASHBOARD.read_text())
    assert isinstance(dashboard["schemaVersion"], int) and dashboard["schemaVersion"] >= 36
    assert dashboard["title"] and re.fullmatch(r"[A-Za-z0-9_-]{1,40}", dashboard["uid"])
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    ids = [panel["id"] for panel in dashboard["panels"]]
    assert len(ids) == len(set(ids))
    for panel in dashboard["panels"]:
        grid = panel["gridPos"]
        assert all(isinstance(grid[k], int) for k in ("h", "w", "x", "y"))
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        assert panel["type"] in {"timeseries", "state-timeline", "stat", "gauge"}
        # Every query through the chosen Prometheus, none through a fixed data source uid.
        assert panel["datasource"]["uid"] == "${datasource}"
        refs = [target["refId"] for target in panel["targets"]]
        assert refs and len(refs) == len(set(refs))
        assert all(t["datasource"]["uid"] == "${datasource}" for t in panel["targets"])
    # No two panels overlap on the grid.
    cells = set()
    for panel in dashboard["panels"]:
        g = panel["gridPos"]
        mine = {
            (x, y) for x in range(g["x"], g["x"] + g["w"]) for y in range(g["y"], g["y"] + g["h"])
        }
        assert not cells & mine, panel["title"]
        cells |= mine

"""Tests of `admission bench --attacks`: the hostile client's two attacks against a real server,
and what the bench reports of the runs under attack."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest

from admission.bench import attacks
from admission.bench.attacks import ATTACKS, Attacked, attacking, format_attacks
from admission.bench.recommend import Row
from admission.bench.report import BenchReport, write_json, write_plot
from admission.bench.sweep import server_env, started
from tests.support import wait_until


def row(window: int | None, rps: float) -> Row:
    return Row(window, rps, 20.0, 30.0, 0.1)


RUNS = [
    Attacked(None, "cheap", row(None, 640.0), row(None, 650.0), 300, 12),
    Attacked(None, "uploads", row(None, 600.0), row(None, 650.0), 120, 90),
    Attacked(19, "cheap", row(19, 700.0), row(19, 700.0), 300, 0),
]


def test_the_report_sets_each_run_beside_the_same_load_without_the_attack() -> None:
    lines = format_attacks(RUNS).splitlines()
    assert lines[0] == "under attack (one hostile client beside the same load):"
    assert lines[1] == (
        "        auto, 100 random-path requests at once every 3 s: 640 req/s, 98% of its "
        "650 req/s without (the attacker: 300 sent, 12 refused)"
    )
    assert lines[3].startswith("   static 19, 100 random-path") and "100% of its 700" in lines[3]


def test_the_json_has_every_run_under_attack(tmp_path: Path) -> None:
    report = BenchReport(RUNS[:1], 19, "why", "admission.demo:app", "/", 64, 5.0, attacks=RUNS)
    write_json(report, tmp_path / "bench.json")
    doc = json.loads((tmp_path / "bench.json").read_text())
    assert [run["window"] for run in doc["attacks"]] == ["auto", "auto", 19]
    first = doc["attacks"][0]
    assert first["attack"] == "cheap" and first["description"] == ATTACKS["cheap"]
    assert first["share"] == pytest.approx(640 / 650)
    assert first["attacker_sent"] == 300 and first["attacker_refused"] == 12
    alone = BenchReport(RUNS[:1], 19, "why", "admission.demo:app", "/", 64, 5.0)
    assert alone.as_dict()["attacks"] == []


@pytest.mark.skipif(importlib.util.find_spec("matplotlib") is None, reason="needs matplotlib")
def test_the_plot_has_a_panel_of_the_runs_under_attack(tmp_path: Path) -> None:
    rows = [row(8, 300.0), row(16, 650.0), row(32, 700.0)]
    report = BenchReport(rows, 16, "why", "admission.demo:app", "/", 64, 5.0, attacks=RUNS)
    figure = __import__("admission.bench.report", fromlist=["plot_figure"]).plot_figure(report)
    assert len(figure.axes) == 4
    assert figure.axes[3].get_title() == "the same load beside one hostile client"
    assert write_plot(report, tmp_path / "bench.png")


@pytest.mark.process
@pytest.mark.parametrize("attack", list(ATTACKS))
def test_each_attack_reaches_a_real_server(attack: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Quicker rounds than the bench's, so that a second sees several.
    monkeypatch.setattr(attacks, "BURST", 20)
    monkeypatch.setattr(attacks, "BURST_EVERY_S", 0.2)
    monkeypatch.setattr(attacks, "UPLOAD_GAP_S", 0.01)
    env = server_env(1)
    with started("admission.demo:app", env) as port:
        with attacking(attack, port, "/echo") as tally:
            wait_until(lambda: tally.sent >= 40, 10.0, f"the {attack} attack's requests")
        # The window of 1 refuses some; the rest were answered by the app: never an error.
        assert tally.refused < tally.sent
    if attack == "cheap":
        assert tally.sent % 20 == 0

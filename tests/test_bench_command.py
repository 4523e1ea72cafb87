"""`admission bench` as a command: what it checks before any load, what it says, what it writes."""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

import pytest

from admission.bench import command
from admission.bench.recommend import Row
from tests.support import REPO


def parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="admission bench")
    command.add_arguments(parser)
    return parser.parse_args(argv)


def no_load(*args: object, **kwargs: object) -> list[Row]:
    raise AssertionError("load was generated")


def test_plot_without_matplotlib_fails_before_any_load_with_the_install_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    real = command.importlib.util.find_spec

    def find_spec(name: str, *args: object) -> object:
        return None if name == "matplotlib" else real(name, *args)  # type: ignore[arg-type]

    monkeypatch.setattr(command.importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(command, "sweep_app", no_load)
    assert command.run(parse(["--plot", str(tmp_path / "bench.png")])) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1, err
    assert "matplotlib is not installed" in err and "pip install 'admission[bench]'" in err


def test_windows_that_can_never_fill_are_refused_before_any_load(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(command, "sweep_app", no_load)
    assert command.run(parse(["--windows", "16,32", "--concurrency", "8"])) == 2
    assert "can fill with --concurrency 8" in capsys.readouterr().err


def url_rows(*args: object, **kwargs: object) -> list[Row]:
    return [Row(8, 1000.0, 2.0, 4.0, 0.0)]


@pytest.mark.parametrize(("argv", "said"), [([], False), (["--windows", "1,2"], True)])
def test_a_url_target_is_not_a_recommendation_and_mentions_windows_only_when_given(
    argv: list[str], said: bool, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(command, "sweep_url", url_rows)
    assert command.run(parse(["http://127.0.0.1:9", *argv])) == 0
    out = capsys.readouterr().out
    assert "recommended window: none" in out
    assert "only one configuration was measured (window 8" in out
    assert ("--windows was not used" in out) is said


@pytest.mark.process
def test_a_short_sweep_writes_json_and_a_png_that_agree_with_what_it_printed(
    tmp_path: Path,
) -> None:
    pytest.importorskip("matplotlib")
    out_json, out_png = tmp_path / "bench.json", tmp_path / "bench.png"
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "admission",
            "bench",
            "--windows",
            "1,4,16",
            "--concurrency",
            "4",
            "--duration",
            "0.4",
            "--refine",
            "0",
            "--no-auto",
            "--path",
            "/slow?ms=5",
            "--json",
            str(out_json),
            "--plot",
            str(out_png),
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    document = json.loads(out_json.read_text())
    assert [r["window"] for r in document["rows"]] == [1, 4, 16]
    assert document["concurrency"] == 4
    # 16 can't fill with 4 clients: never the recommendation, and the notes say why.
    assert document["recommended_window"] in (1, 4, None)
    assert any("can never fill" in note for note in document["notes"])
    shown = document["recommended_window"] or "none"
    assert f"recommended window: {shown}" in done.stdout
    assert document["explanation"] in done.stdout
    assert document["explanation"].endswith(".") and ". " not in document["explanation"]
    assert all(0.0 <= r["rejected_ratio"] <= 1.0 for r in document["rows"])
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    timeout = document["recommended_request_timeout_s"]
    if document["recommended_window"] is not None:
        # Between 1.3 and 1.8 times the p99 measured at the recommended window.
        (row,) = [r for r in document["rows"] if r["window"] == document["recommended_window"]]
        assert 1.3 <= timeout * 1000 / row["p99_ms"] <= 1.8
        assert f"ADMISSION_REQUEST_TIMEOUT={timeout:g}" in done.stdout
        assert document["recommended_timeouts"]["request_s"] == timeout
        assert "ADMISSION_READ_TIMEOUT and ADMISSION_WRITE_TIMEOUT" in done.stdout

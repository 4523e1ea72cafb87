"""Tests of dev.py's set-up on a machine that lacks something: what it installs, and the one
line it says when it can't."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

REPO = Path(__file__).resolve().parent.parent


def dev() -> ModuleType:
    spec = importlib.util.spec_from_file_location("dev", REPO / "dev.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_python_without_ensurepip_gets_its_venv_package(monkeypatch: pytest.MonkeyPatch) -> None:
    module = dev()
    present = {"ensurepip": False}
    asked: list[tuple[str, Any]] = []

    def find_spec(name: str) -> object | None:
        return object() if present.get(name, True) else None

    def install(what: str, managers: Any) -> bool:
        asked.append((what, managers))
        present["ensurepip"] = True
        return True

    monkeypatch.setattr(module.importlib.util, "find_spec", find_spec)
    monkeypatch.setattr(module, "install", install)
    module.venv_support()
    package = f"python3.{sys.version_info.minor}-venv"
    assert [what for what, _ in asked] == [package]
    assert asked[0][1][0][-1] == ("apt-get", "install", "-y", "-qq", package)


def test_where_it_can_t_install_it_says_what_in_one_line(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    module = dev()
    monkeypatch.setattr(module.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(module, "install", lambda what, managers: False)
    with pytest.raises(SystemExit) as exit_:
        module.venv_support()
    assert exit_.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"python3.{sys.version_info.minor}-venv" in lines[0]


def test_a_python_with_ensurepip_installs_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    module = dev()
    monkeypatch.setattr(module, "install", lambda what, managers: pytest.fail("installed"))
    module.venv_support()

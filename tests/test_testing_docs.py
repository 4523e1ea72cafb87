"""docs/testing.md runs: its example app, conftest.py and tests, written out as the page names
them, pass under pytest with the plugin's fixtures."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.support import REPO

PAGE = REPO / "docs" / "testing.md"
FILE_BLOCK = re.compile(r"<!-- file: (\S+) -->\n```python\n(.*?)```", re.DOTALL)


def test_the_testing_page_examples_pass_with_the_plugin(tmp_path: Path) -> None:
    files = FILE_BLOCK.findall(PAGE.read_text())
    assert {name for name, _ in files} == {"conftest.py", "myapp.py", "test_myapp.py"}
    for name, text in files:
        (tmp_path / name).write_text(text)
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADMISSION_")}
    env["PYTHONPATH"] = str(tmp_path)
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-p", "no:randomly", "-p", "no:cacheprovider"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    tests = len(re.findall(r"^(?:async )?def test_", dict(files)["test_myapp.py"], re.MULTILINE))
    assert run.returncode == 0, run.stdout + run.stderr
    assert f"{tests} passed" in run.stdout, run.stdout

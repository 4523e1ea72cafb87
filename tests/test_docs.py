"""The docs do what they say: the quick start shows admission at work, and every page that
runs the commands says where they are."""

from __future__ import annotations

import re
import shlex

import httpx
import pytest

from tests.support import REPO, admission_serve, run_server

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BARE = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(admission|uvicorn|gunicorn)\s", re.MULTILINE)


def quick_start_env() -> dict[str, str]:
    readme = (REPO / "README.md").read_text()
    line = next(x for x in readme.splitlines() if x.rstrip().endswith(".venv/bin/admission serve"))
    words = shlex.split(line)
    return dict(w.split("=", 1) for w in words if "=" in w and w.startswith("ADMISSION_"))


@pytest.mark.process
def test_the_quick_start_shows_admission_at_work_in_the_first_minute() -> None:
    env = quick_start_env()
    assert env, "the quick start sets no ADMISSION_* variable"
    with run_server(admission_serve(), env) as server:
        first = httpx.get(server.url + "/", timeout=5)
        statuses = [httpx.get(server.url + "/", timeout=5).status_code for _ in range(12)]
        metrics = httpx.get(server.url + "/metrics", timeout=5).text
        log = server.log()
    assert first.status_code == 200
    assert first.headers["ratelimit-policy"] == '"default";q=10;w=60'
    assert first.headers["ratelimit"].startswith('"default";r=9;')
    assert statuses == [200] * 9 + [429] * 3
    assert 'admission_rejected_total{policy="default",reason="rate"} 3.0' in metrics
    assert "settings in effect: ADMISSION_RATE='10/minute'" in log


@pytest.mark.parametrize("page", DOCS, ids=lambda p: p.name)
def test_a_page_that_runs_the_commands_says_where_they_are(page: object) -> None:
    text = page.read_text()  # type: ignore[attr-defined]
    if BARE.search(text) is None:
        return
    assert ". .venv/bin/activate" in text or ".venv/bin/admission" in text, page


def test_ci_tests_every_version_the_classifiers_name() -> None:
    pyproject = (REPO / "pyproject.toml").read_text()
    named = re.findall(r'"Programming Language :: Python :: (3\.\d+)"', pyproject)
    ci = (REPO / ".ci" / "run").read_text()
    supported = re.search(r'^SUPPORTED="([^"]+)"', ci, re.MULTILINE)
    assert supported is not None
    assert named == supported.group(1).split() == ["3.10", "3.11", "3.12", "3.13"]
    assert 'requires-python = ">=3.10"' in pyproject
    # The README's test command is what CI runs.
    assert re.search(r"^\.venv/bin/python -m pytest( |$)", ci, re.MULTILINE)
    assert ".venv/bin/python -m pytest\n" in (REPO / "README.md").read_text()

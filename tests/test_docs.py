"""The docs do what they say: the quick start shows admission at work, and every page that
runs the commands says where they are."""

from __future__ import annotations

import re
import shlex
import sys

import httpx
import pytest

from tests.support import REPO, run_server

DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
BARE = re.compile(r"^(?:[A-Z_]+=\S+\s+)*(admission|uvicorn|gunicorn)\s", re.MULTILINE)


def quick_start_serve() -> list[str]:
    """quick_start_serve is the README's first command, as written, listening on a free port."""
    readme = (REPO / "README.md").read_text()
    command = readme.split("## Quick start", 1)[1].split("```sh\n", 1)[1].split("\n", 1)[0]
    assert command == "python3 dev.py serve"
    words = shlex.split(command)
    return [sys.executable, *words[1:], "--host", "127.0.0.1", "--port", "{port}"]


@pytest.mark.process
def test_the_quick_start_shows_admission_at_work_in_the_first_minute() -> None:
    with run_server(quick_start_serve(), {}) as server:
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
    assert re.search(r"^python3 dev\.py test( |$)", ci, re.MULTILINE)
    assert "```sh\npython3 dev.py test\n```" in (REPO / "README.md").read_text()

"""The docs do what they say: every code block of README.md and docs/ runs, or says in the
page why it can't (tests/docs_blocks.py); the quick start shows admission at work; every page
that runs the commands says where they are."""

from __future__ import annotations

import ast
import asyncio
import importlib
import inspect
import json
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from starlette.testclient import TestClient

from admission.config.policies import load_policies
from admission.config.settings import Settings
from admission.lifecycle import context
from tests.docs_blocks import Block, Command, commands, every_block, files_of, lines_match
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


# Every fenced block of README.md and docs/*.md runs, or says in the source why it can't
# (tests/docs_blocks.py lists the marks).

BLOCKS = every_block()
ADMISSION = str(Path(sys.executable).parent / "admission")


@pytest.fixture
def page_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Any:
    """page_dir is a fresh directory holding the page's `file:` blocks, the current directory
    and first on the import path, with no ADMISSION_* variable set, no service lifetime left
    by another test, and every module imported from it forgotten afterwards."""

    def enter(block: Block) -> Path:
        for name, text in files_of(block.page).items():
            (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name).write_text(text)
        importlib.invalidate_caches()
        return tmp_path

    for var in list(os.environ):
        if var.startswith("ADMISSION_"):
            monkeypatch.delenv(var)
    monkeypatch.chdir(tmp_path)
    # Stand-ins for programs a page starts (a `given:` writes them) come first on the PATH.
    monkeypatch.setenv("PATH", f"{tmp_path / 'bin'}{os.pathsep}{os.environ['PATH']}")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.setattr(context, "_service", None)
    yield enter
    for name, module in list(sys.modules.items()):
        if str(getattr(module, "__file__", None) or "").startswith(str(tmp_path)):
            del sys.modules[name]


def _execute(code: str, block: Block, namespace: dict[str, Any], what: str) -> None:
    """_execute runs `code` (top-level `await` allowed) with line numbers of the page."""
    compiled = compile(
        "\n" * block.line + code, f"{block.id} ({what})", "exec", ast.PyCF_ALLOW_TOP_LEVEL_AWAIT
    )
    result = eval(compiled, namespace)
    if inspect.iscoroutine(result):
        asyncio.run(result)


def _check_app(block: Block, namespace: dict[str, Any]) -> None:
    """_check_app starts the block's `app` (its lifespan too), checks that admission answers
    in front of it, and runs the block's `then:` with `client`."""
    app = namespace.get("app")
    if app is None:
        assert "after" not in block.marks, f"{block.id}: an `after:` needs an `app`"
        if "then" in block.marks:
            _execute(block.marks["then"], block, namespace, "then")
        return
    with TestClient(app) as client:
        if "peer" not in block.marks:
            response = client.get("/healthz")
            assert response.status_code == 200, "admission isn't in front of the app"
        if "then" in block.marks:
            _execute(block.marks["then"], block, {**namespace, "client": client}, "then")
    if "after" in block.marks:
        _execute(block.marks["after"], block, namespace, "after")


def _run_python(block: Block) -> None:
    if "peer" in block.marks:
        pytest.importorskip(block.marks["peer"], reason="the `bench` extra isn't installed")
    namespace: dict[str, Any] = {"__name__": "__docs__"}
    if "given" in block.marks:
        _execute(block.marks["given"], block, namespace, "given")
    if "file" in block.marks:
        name = block.marks["file"]
        if not name.endswith(".py") or Path(name).name.startswith(("test_", "conftest")):
            compile(block.text, block.id, "exec")
            return
        module = importlib.import_module(name[: -len(".py")].replace("/", "."))
        namespace.update(vars(module))
    else:
        _execute(block.text, block, namespace, "the block")
    _check_app(block, namespace)


def _environment(env: dict[str, str]) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("ADMISSION_")}
    return {**base, **env}


def _admission(command: Command, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [ADMISSION, *command.argv[1:]],
        env=_environment(command.env),
        cwd=cwd,
        capture_output=True,
        text=True,
        timeout=30,
    )


def _serve_checked(command: Command) -> None:
    """_serve_checked proves an `admission serve` line without serving: its flags parse as the
    command parses them, its variables make valid settings and its app imports. (The quick
    start test and tests/test_server_process.py serve for real.)"""
    from uvicorn.importer import import_from_string

    from admission.cli import build_parser

    args, extra = build_parser().parse_known_args(command.argv[1:])
    assert not extra, extra
    Settings.from_env(command.env)
    if args.app is not None:
        import_from_string(args.app)


def _uvicorn_checked(command: Command) -> None:
    """_uvicorn_checked proves a `uvicorn` line: uvicorn parses its flags, and its app has
    admission in front."""
    import uvicorn.main  # noqa: F401  (puts the module, not its `main`, in sys.modules)
    from uvicorn.importer import import_from_string

    context_ = sys.modules["uvicorn.main"].main.make_context("uvicorn", command.argv[1:])
    Settings.from_env(command.env)
    app = import_from_string(context_.params["app"])
    with TestClient(app) as client:
        assert client.get("/healthz").status_code == 200, "admission isn't in front of the app"


def _run_command(block: Block, command: Command, cwd: Path) -> None:
    if not command.argv:
        Settings.from_env(command.env)  # variables alone: a typo or a bad value fails here
        return
    program, *words = command.argv
    if program == "admission" and words[:1] == ["config"]:
        run = _admission(command, cwd)
        assert run.returncode == 0, run.stdout + run.stderr
    elif program == "admission" and words[:1] == ["serve"] and not command.output:
        _serve_checked(command)
    elif program == "admission" and words[:1] == ["bench"] and not command.output:
        # A sweep takes seconds per window: its command line is checked as it parses
        # (tests/test_bench_command.py runs short sweeps).
        from admission.cli import build_parser

        _, extra = build_parser().parse_known_args(words)
        assert not extra, extra
    elif program == "uvicorn":
        _uvicorn_checked(command)
    elif program == "admission" and command.output:
        run = _admission(command, cwd)
        missing = lines_match("\n".join(command.output), run.stdout + run.stderr)
        assert not missing, f"{block.id}: not printed: {missing}\n{run.stdout}{run.stderr}"
    else:
        raise AssertionError(
            f"{block.id}: no way to run {program!r} here: run it, or mark the block "
            "<!-- not run: why --> or <!-- run by: tests/FILE.py::TEST -->"
        )


def _run_output(block: Block, cwd: Path) -> None:
    line = block.marks["output of"]
    (command,) = commands(Block(block.page, block.line, "sh", line + "\n"))
    assert command.argv[0] == "admission", f"{block.id}: `output of:` runs admission commands"
    run = _admission(command, cwd)
    missing = lines_match(block.text, run.stdout + run.stderr)
    assert not missing, f"{block.id}: not printed: {missing}\n{run.stdout}{run.stderr}"


def _run_by(block: Block) -> None:
    path, _, test = block.marks["run by"].partition("::")
    source = (REPO / path).read_text()
    assert re.search(rf"^(?:async )?def {re.escape(test)}\(", source, re.MULTILINE), (
        f"{block.id}: no test {test} in {path}"
    )


@pytest.mark.parametrize("block", BLOCKS, ids=lambda b: b.id)
def test_every_doc_block_runs_or_says_why_not(block: Block, page_dir: Any) -> None:
    if "not run" in block.marks:
        assert block.marks["not run"], f"{block.id}: `not run:` needs its reason"
        return
    if "run by" in block.marks:
        _run_by(block)
        return
    cwd = page_dir(block)
    if "output of" in block.marks:
        _run_output(block, cwd)
    elif block.lang == "python":
        _run_python(block)
    elif block.lang == "toml":
        path = cwd / block.marks.get("file", "policies.toml")
        path.write_text(block.text)
        assert load_policies(path)
        Settings.from_env({"ADMISSION_POLICIES": str(path)})
    elif block.lang == "json":
        json.loads(block.text)
    elif block.lang in ("sh", "console"):
        found = commands(block)
        assert found, f"{block.id}: no command"
        for command in found:
            _run_command(block, command, cwd)
    else:
        raise AssertionError(
            f"{block.id}: a {block.lang or 'plain'} block: give it a language that runs, or "
            "mark it <!-- not run: why -->, <!-- output of: COMMAND --> or "
            "<!-- run by: tests/FILE.py::TEST -->"
        )


def test_the_docs_have_blocks_and_the_marks_are_read() -> None:
    # A parser that found nothing would pass every block above.
    assert len(BLOCKS) > 60
    marked = [b for b in BLOCKS if b.marks]
    assert any("not run" in b.marks for b in marked)
    assert any(b.marks.get("file") == "myapp.py" for b in marked)


def test_a_shadow_policy_logs_its_would_be_refusals_as_the_policies_page_shows(
    caplog: pytest.LogCaptureFixture,
) -> None:
    import logging

    from starlette.applications import Starlette
    from starlette.responses import PlainTextResponse
    from starlette.routing import Route

    from admission import AdmissionMiddleware, Policy

    async def export(request: Any) -> PlainTextResponse:
        return PlainTextResponse("csv")

    trial = Policy(name="export-trial", match="GET /export", limits=["1/minute"], enforce=False)
    app = Starlette(routes=[Route("/export", export)])
    app.add_middleware(AdmissionMiddleware, settings=Settings(policies=[trial]))
    with caplog.at_level(logging.WARNING, logger="admission"), TestClient(app) as client:
        assert [client.get("/export").status_code for _ in range(3)] == [200] * 3
    page = (REPO / "docs" / "policies.md").read_text()
    shown = re.search(r"^WARNING:  admission: (shadow policy .*)$", page, re.MULTILINE)
    assert shown is not None
    logged = [r.getMessage() for r in caplog.records if "shadow" in r.getMessage()]
    # Once a minute: the first would-be refusal is logged, the second only counted.
    assert logged == [shown.group(1).replace("(41 so far)", "(1 so far)")]

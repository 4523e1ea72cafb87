"""The installed `admission` console script, run the way users run it."""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from admission.bench.process import free_port
from tests.support import run_server

SCRIPT = shutil.which("admission", path=str(Path(sys.executable).parent))

pytestmark = pytest.mark.skipif(SCRIPT is None, reason="the console script is not installed")

APP = """
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route


async def index(request):
    return PlainTextResponse("mine\\n")


app = Starlette(routes=[Route("/", index)])
"""


def test_serve_finds_an_app_module_in_the_current_directory(tmp_path: Path) -> None:
    # A console script, unlike `python -m`, does not put the current directory on sys.path.
    (tmp_path / "mymodule.py").write_text(APP)
    assert SCRIPT is not None
    argv = [SCRIPT, "serve", "mymodule:app", "--port", "{port}"]
    with run_server(argv, cwd=tmp_path, ready_path="/") as server:
        assert httpx.get(server.url + "/", timeout=5).text == "mine\n"
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=20) == 0


def test_an_app_module_that_fails_on_import_is_reported_in_one_closing_line(
    tmp_path: Path,
) -> None:
    (tmp_path / "broken.py").write_text("raise RuntimeError('no database configured')\n")
    assert SCRIPT is not None
    done = subprocess.run(
        [SCRIPT, "serve", "broken:app", "--port", str(free_port())],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode == 2
    last = done.stderr.strip().splitlines()[-1]
    assert last.startswith("admission: cannot load the app 'broken:app'")
    assert "no database configured" in last

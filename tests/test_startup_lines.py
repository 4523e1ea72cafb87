"""What `admission serve` and plain uvicorn say at start-up: one summary line of the settings in
effect (credentials hidden), one warning when settings given in code override variables, and
nothing about a drain for a server that never served."""

from __future__ import annotations

import signal
import socket
import subprocess

import pytest

from admission.bench.process import free_port
from tests.support import REPO, admission_serve, plain_uvicorn, run_server, wait_until

pytestmark = pytest.mark.process


def test_serve_logs_one_summary_line_of_the_settings_in_effect_without_credentials() -> None:
    env = {
        "ADMISSION_WINDOW": "8",
        "ADMISSION_RATE": "100/second",
        "ADMISSION_STORAGE": "redis://app:hunter2Zq9@127.0.0.1:1/0?password=hunter2Zq9",
    }
    with run_server(admission_serve(), env) as server:
        wait_until(lambda: "settings in effect" in server.log(), 10, "the summary line")
        log = server.log()
    lines = [line for line in log.splitlines() if "settings in effect" in line]
    assert len(lines) == 1, log
    # Named by its logger, as under a plain server and as docs/configuration.md shows it.
    assert lines[0].startswith("INFO:     admission: settings in effect: "), lines[0]
    assert "ADMISSION_WINDOW='8'" in lines[0] and "ADMISSION_RATE='100/second'" in lines[0]
    assert "redis://app:***@127.0.0.1:1/0?password=***" in lines[0]
    assert "hunter2Zq9" not in log
    assert "win over the environment" not in log


def test_code_settings_that_override_variables_are_warned_about_once() -> None:
    env = {"ADMISSION_WINDOW": "8", "ADMISSION_DRAIN_DELAY": "0"}
    with run_server(plain_uvicorn("tests.apps.code_settings:app"), env) as server:
        wait_until(lambda: "win over the environment" in server.log(), 10, "the warning")
        for _ in range(3):
            server_get(server.url + "/")
        log = server.log()
    warnings = [line for line in log.splitlines() if "win over the environment" in line]
    assert len(warnings) == 1, log
    assert "WARNING" in warnings[0]
    assert "ADMISSION_WINDOW='8'" in warnings[0]
    assert "DRAIN_DELAY" not in warnings[0]  # the same as the code's: not overridden
    assert "ADMISSION_WINDOW='64'" in log  # the summary shows what is in effect


def server_get(url: str) -> None:
    import httpx

    assert httpx.get(url, timeout=5).status_code == 200


def test_a_port_in_use_does_not_log_a_drain_for_a_server_that_never_served() -> None:
    with socket.socket() as taken:
        taken.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        argv = [a.replace("{port}", str(port)) for a in admission_serve()]
        done = subprocess.run(argv, cwd=REPO, capture_output=True, text=True, timeout=60)
    output = done.stdout + done.stderr
    assert done.returncode != 0, output
    assert "address already in use" in output
    assert "drain started" not in output
    assert "readiness fails now" not in output


def test_an_idle_server_stopped_by_a_signal_still_logs_its_drain() -> None:
    with run_server(admission_serve(), {}) as server:
        server.process.send_signal(signal.SIGTERM)
        assert server.process.wait(timeout=20) == 0
        assert "drain started" in server.log()
    assert free_port()

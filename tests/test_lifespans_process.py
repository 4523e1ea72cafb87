"""Cleanups registered with priorities run in priority order, each once, when a real
`admission serve` process gets a real SIGTERM."""

from __future__ import annotations

import signal
import time
from pathlib import Path

import httpx
import pytest

from tests.support import admission_serve, run_server

pytestmark = pytest.mark.process


def test_sigterm_runs_cleanups_in_priority_order_each_once(tmp_path: Path) -> None:
    events_file = tmp_path / "events.txt"
    env = {"DRAIN_TEST_EVENTS": str(events_file)}
    with run_server(admission_serve("tests.apps.ordered_cleanups:app"), env) as server:
        assert httpx.get(server.url + "/", timeout=5).status_code == 200
        server.process.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + 15
        while server.process.poll() is None:
            assert time.monotonic() < deadline, f"still running 15s after SIGTERM:\n{server.log()}"
            time.sleep(0.01)
        status = server.process.returncode
        log = server.log()

    events = events_file.read_text().splitlines()
    assert status == 0, log
    assert events == [
        "app started",
        "app shutdown",
        "cleanup flush-writes",
        "cleanup flush-audit",
        "cleanup close-cache-pool",
        "cleanup close-db-pool",
        "cleanup report-health",
    ], log

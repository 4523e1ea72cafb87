"""admission.bench.process: the one way a server process is started, awaited and stopped."""

from __future__ import annotations

import os
import signal
import socket
import sys
import time

import pytest

from admission.bench.process import PORT, NotReady, free_port, http_get, served

pytestmark = pytest.mark.process

# A server that answers every GET with the status given on its command line, and prints a line
# once it listens; "ignore-term" makes it ignore SIGTERM, as a hung server would.
SERVER = """
import http.server, signal, sys

port, status, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
if mode == "ignore-term":
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


class Handler(http.server.BaseHTTPRequestHandler):
    def do_GET(self):
        self.send_response(status)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args):
        pass


server = http.server.HTTPServer(("127.0.0.1", port), Handler)
print("listening on", port, flush=True)
server.serve_forever()
"""


def answering(status: int, mode: str = "") -> list[str]:
    return [sys.executable, "-c", SERVER, PORT, str(status), mode or "-"]


def refuses_connections(port: int) -> bool:
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=1):
            return False
    except OSError:
        return True


def test_served_yields_once_ready_and_stops_the_server_on_leaving() -> None:
    with served(answering(200)) as server:
        assert server.url == f"http://127.0.0.1:{server.port}"
        assert http_get("127.0.0.1", server.port, "/healthz", timeout_s=2.0)[0] == 200
        assert f"listening on {server.port}" in server.log()
    assert server.process.returncode == -signal.SIGTERM
    assert refuses_connections(server.port)


def test_a_server_that_exits_at_start_is_not_ready_with_its_code_and_log() -> None:
    started = time.monotonic()
    argv = [sys.executable, "-c", "print('no database configured'); raise SystemExit(3)", PORT]
    with pytest.raises(NotReady) as caught, served(argv, start_timeout_s=20):
        pass
    assert time.monotonic() - started < 10
    assert caught.value.returncode == 3
    assert "no database configured" in caught.value.log
    assert "exited with code 3" in str(caught.value)


def test_a_status_that_is_not_ready_is_waited_on_until_the_deadline_then_stopped() -> None:
    port = free_port()
    started = time.monotonic()
    with pytest.raises(NotReady) as caught, served(answering(503), port=port, start_timeout_s=1):
        pass
    elapsed = time.monotonic() - started
    assert 1 <= elapsed < 5
    assert caught.value.returncode is None
    assert caught.value.last_status == 503
    assert f"listening on {port}" in caught.value.log
    assert refuses_connections(port)


def test_which_statuses_count_as_ready_is_the_callers_choice() -> None:
    with served(answering(404), ready=lambda status: status < 500, start_timeout_s=10) as server:
        assert http_get("127.0.0.1", server.port, "/", timeout_s=2.0)[0] == 404


def test_a_server_that_ignores_sigterm_is_killed_after_the_stop_timeout() -> None:
    started = time.monotonic()
    with served(answering(200, "ignore-term"), stop_timeout_s=0.5) as server:
        left = time.monotonic()
    assert server.process.returncode == -signal.SIGKILL
    assert 0.5 <= time.monotonic() - left < 5
    assert time.monotonic() - started < 15


@pytest.mark.skipif(not hasattr(os, "sched_setaffinity"), reason="no CPU affinity here")
def test_cpus_pin_the_server() -> None:
    cpu = min(os.sched_getaffinity(0))
    with served(answering(200), cpus={cpu}) as server:
        assert os.sched_getaffinity(server.process.pid) == {cpu}

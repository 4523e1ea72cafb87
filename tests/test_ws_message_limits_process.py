"""tests.test_ws_message_limits_process: websocket message limits under a real server
(`admission serve` of the demo app, whose `/ws` echoes), with a real websocket client:
`ADMISSION_WS_MESSAGE_RATE` closes a socket with 1008 after its own budget, and a policy's
`message_limits` share one budget across a client's sockets, in memory and in Redis."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from websockets.exceptions import ConnectionClosed
from websockets.sync.client import ClientConnection
from websockets.sync.client import connect as ws_connect

from admission.bench.process import Server
from tests.support import SETTLE_S, admission_serve, metric, run_server

pytestmark = pytest.mark.process

POLICY = """
[[policy]]
name = "chat"
match = ["/ws"]
key = "header:X-Client"
message_limits = ["10/minute"]
"""


def _echoes(ws: ClientConnection, n: int, tag: str = "m") -> None:
    for i in range(n):
        ws.send(f"{tag}{i}")
        assert ws.recv(timeout=SETTLE_S) == f"{tag}{i}"


def _closed_by_next(ws: ClientConnection) -> tuple[int, str]:
    """_closed_by_next sends one more message and answers the close code and reason."""
    ws.send("one too many")
    with pytest.raises(ConnectionClosed) as closed:
        ws.recv(timeout=SETTLE_S)
    frame = closed.value.rcvd
    assert frame is not None, "closed without a close frame"
    return frame.code, frame.reason


def _socket(
    server: Server, client: str = "alice"
) -> contextlib.AbstractContextManager[ClientConnection]:
    return ws_connect(
        f"ws://127.0.0.1:{server.port}/ws",
        additional_headers={"X-Client": client},
        open_timeout=SETTLE_S,
    )


def test_the_connection_rate_closes_an_echo_socket_after_10_messages() -> None:
    env = {"ADMISSION_WS_MESSAGE_RATE": "10/minute"}
    with run_server(admission_serve(), env) as server:
        with _socket(server) as ws:
            _echoes(ws, 10)
            assert _closed_by_next(ws) == (1008, "ws_message_rate")
        # Each connection has its own: a new socket sends 10 more.
        with _socket(server) as ws:
            _echoes(ws, 10)
        assert metric(server, "admission_rejected_total", reason="ws_message_rate") == 1


@pytest.fixture(params=["memory", "redis"])
def policy_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    path = tmp_path / "policies.toml"
    path.write_text(POLICY)
    env = {"ADMISSION_POLICIES": str(path)}
    if request.param == "redis":
        env["ADMISSION_STORAGE"] = request.getfixturevalue("redis_url")
        env["ADMISSION_KEY_PREFIX"] = f"admission-test-{uuid.uuid4().hex}"
        # A Redis that failed would show as closes with 1013, not as a fallback's budget.
        env["ADMISSION_ON_STORAGE_ERROR"] = "deny"
    yield env


def test_a_policy_shares_its_budget_across_two_sockets_of_one_client(
    policy_env: dict[str, str],
) -> None:
    with run_server(admission_serve(), policy_env) as server:
        with _socket(server) as one, _socket(server) as two:
            _echoes(one, 6, "a")
            _echoes(two, 4, "b")
            assert _closed_by_next(one) == (1008, "ws_message_limit")
            assert _closed_by_next(two) == (1008, "ws_message_limit")
        # Another client has a budget of its own.
        with _socket(server, "bob") as ws:
            _echoes(ws, 10)
            assert _closed_by_next(ws) == (1008, "ws_message_limit")
        assert (
            metric(server, "admission_rejected_total", reason="ws_message_limit", policy="chat")
            == 3
        )
        assert metric(server, "admission_storage_errors_total") == 0

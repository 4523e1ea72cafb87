"""Real-server tests of fair shares and ADMISSION_CLIENT_WINDOW: an `admission serve` process of
the demo on a free loopback port (window 4, a cap of 3 per client, clients told apart by an
`X-Client` header), driven through real sockets. Run time: about 4 s.
"""

from __future__ import annotations

import json
import socket
from collections.abc import Iterator

import httpx
import pytest

from admission.bench.process import Server
from tests.support import (
    SETTLE_S,
    admission_serve,
    body_of,
    in_flight,
    metric,
    open_request,
    read_response,
    run_server,
    wait_until,
)

pytestmark = pytest.mark.process

WINDOW = 4
CAP = 3


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    env = {
        "ADMISSION_WINDOW": str(WINDOW),
        "ADMISSION_CLIENT_WINDOW": str(CAP),
        "ADMISSION_KEY": "header:X-Client",
    }
    with run_server(admission_serve(), env) as proc:
        yield proc


@pytest.fixture
def idle_server(server: Server) -> Iterator[Server]:
    wait_until(lambda: in_flight(server) == 0, SETTLE_S, "in_flight to return to 0")
    yield server
    wait_until(lambda: in_flight(server) == 0, SETTLE_S, "in_flight to return to 0")
    assert metric(server, "admission_window_used", kind="http") == 0


def send(server: Server, client: str, path: str) -> socket.socket:
    return open_request(server.port, path, headers={"X-Client": client})


def reason(response: object) -> str:
    return str(json.loads(body_of(response))["reason"])  # type: ignore[arg-type]


def test_a_client_at_its_cap_is_refused_client_window_while_another_is_admitted(
    idle_server: Server,
) -> None:
    server = idle_server
    before = metric(server, "admission_rejected_total", reason="client_window")
    held = [send(server, "a", "/slow?ms=1000") for _ in range(CAP)]
    wait_until(lambda: in_flight(server) == CAP, SETTLE_S, "a's requests in flight")
    refused = read_response(send(server, "a", "/"))
    assert refused.status == 429
    assert refused.headers["Retry-After"] == "1"
    assert reason(refused) == "client_window"
    other = read_response(send(server, "b", "/"))
    assert other.status == 200
    assert [read_response(sock).status for sock in held] == [200] * CAP
    assert metric(server, "admission_rejected_total", reason="client_window") == before + 1


def test_a_heavy_client_keeps_a_slot_free_for_each_light_one_between_its_requests(
    idle_server: Server,
) -> None:
    server = idle_server
    # The light clients have been served: they take part in the shares while they think. One
    # is served 2 x WINDOW times, so that the clients of other tests, gone for two turns of
    # the window, are forgotten.
    for _ in range(2 * WINDOW):
        assert get(server, "light1") == 200
    assert get(server, "light2") == 200
    # heavy, below its cap, leaves each light client one slot: it gets 2 of 4, and its next is
    # refused for fairness.
    before = metric(server, "admission_rejected_total", reason="fair_share")
    held = [send(server, "heavy", "/slow?ms=1500") for _ in range(2)]
    wait_until(lambda: in_flight(server) == 2, SETTLE_S, "heavy's requests in flight")
    refused = read_response(send(server, "heavy", "/"))
    assert refused.status == 429 and reason(refused) == "fair_share"
    assert metric(server, "admission_rejected_total", reason="fair_share") == before + 1
    assert get(server, "light1") == 200
    assert get(server, "light2") == 200
    assert [read_response(sock).status for sock in held] == [200] * 2


def get(server: Server, client: str) -> int:
    return httpx.get(server.url + "/", headers={"X-Client": client}, timeout=SETTLE_S).status_code

"""Real-server tests of priority shedding and the adaptive window: `admission serve` of the
demo on a free loopback port, driven through real sockets.

Run time: about 10 s (two servers; the adaptive one is loaded for a few seconds).
"""

from __future__ import annotations

import json
import re
import socket
import threading
from collections.abc import Iterator

import httpx
import pytest

from admission.bench.process import Server
from tests.support import (
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

SETTLE_S = 10.0
HOLD_MS = 8000


@pytest.fixture(scope="module")
def server() -> Iterator[Server]:
    env = {"ADMISSION_WINDOW": "10", "ADMISSION_PRIORITY": "header:X-Priority"}
    with run_server(admission_serve(), env) as proc:
        yield proc


def start(server: Server, priority: str) -> socket.socket:
    return open_request(server.port, f"/slow?ms={HOLD_MS}", headers={"X-Priority": priority})


def test_window_of_ten_sheds_sheddable_at_8_default_at_9_and_gives_critical_the_10th(
    server: Server,
) -> None:
    # Ten slow requests started one after another, sheddable first, then default, then
    # critical; each class is tried once more when its share is used up.
    held: list[socket.socket] = []
    refused: list[tuple[str, int, dict[str, object], str | None]] = []
    try:
        for priority, admitted in (("sheddable", 8), ("default", 1), ("critical", 1)):
            for _ in range(admitted):
                held.append(start(server, priority))
                expected = len(held)
                wait_until(
                    lambda n=expected: in_flight(server) == n, SETTLE_S, f"{expected} in flight"
                )
            extra = start(server, priority)
            response = read_response(extra, SETTLE_S)
            extra.close()
            body = json.loads(body_of(response))
            refused.append((priority, response.status, body, response.getheader("Retry-After")))
            assert in_flight(server) == len(held)
        assert in_flight(server) == 10
        assert metric(server, "admission_shed_total", priority="sheddable") == 1
        assert metric(server, "admission_shed_total", priority="default") == 1
        assert metric(server, "admission_shed_total", priority="critical") == 0
        assert metric(server, "admission_rejected_total", reason="shed") == 2
        assert metric(server, "admission_rejected_total", reason="window") == 1
        assert metric(server, "admission_admitted_total") == 10
    finally:
        for sock in held:
            sock.close()
    assert [(p, status, body["reason"]) for p, status, body, _ in refused] == [
        ("sheddable", 429, "shed"),
        ("default", 429, "shed"),
        ("critical", 429, "window"),
    ]
    assert all(retry is not None and int(retry) >= 1 for *_, retry in refused)
    wait_until(lambda: in_flight(server) == 0, SETTLE_S, "the hung-up requests to end")


def test_adaptive_window_shrinks_to_a_small_downstream_and_says_so() -> None:
    env = {"ADMISSION_WINDOW": "auto", "ADMISSION_WINDOW_MIN": "1", "ADMISSION_WINDOW_MAX": "64"}
    with run_server(admission_serve(), env) as proc:
        assert httpx.get(proc.url + "/readyz", timeout=2).json()["window"] == 4
        assert metric(proc, "admission_window_limit") == 4
        stop = threading.Event()

        def client() -> None:
            # A closed loop on a downstream of 2 slots held 20 ms: 10 in flight queue 5 deep.
            with httpx.Client(base_url=proc.url, timeout=5) as http:
                while not stop.is_set():
                    http.get("/backend?ms=20&capacity=2")

        threads = [threading.Thread(target=client) for _ in range(12)]
        for thread in threads:
            thread.start()
        try:
            # It starts at 4, grows (slow start) until the downstream queues, and comes back
            # down: each move of more than 20 % is logged. The first baselines, measured at 4
            # in flight on 2 slots, are measured again at the minimum 10 s after the slow start,
            # and from then on the window sits at the downstream's 2 slots.
            wait_until(lambda: shrank(proc.log()), SETTLE_S, "a logged shrink of the window")
            wait_until(
                lambda: metric(proc, "admission_window_limit") <= 3, 2 * SETTLE_S, "the 2 slots"
            )
        finally:
            stop.set()
            for thread in threads:
                thread.join(10)
        moves = MOVE.findall(proc.log())
        assert moves[0][0] == "4"
        assert max(int(after) for _, after in moves) <= 16  # 8x the 2 slots, at its peak
        limit = metric(proc, "admission_window_limit")
        assert 1 <= limit <= 4
        assert httpx.get(proc.url + "/readyz", timeout=2).json()["window"] == limit


MOVE = re.compile(r"adaptive window (\d+) -> (\d+)")


def shrank(log: str) -> bool:
    return any(int(after) < int(before) for before, after in MOVE.findall(log))

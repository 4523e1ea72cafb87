"""Rate limits measured against real `admission serve` processes on 127.0.0.1.

With `ADMISSION_RATE=20/second ADMISSION_BURST=10`, a client sending as fast as it can for
T seconds gets the burst plus T * 20: 50 in 2 s from one process, and 70 in 3 s from three
processes sharing one Redis, whichever process each request reaches. Each test prints what it
measured (`pytest -s` shows it).
"""

from __future__ import annotations

import contextlib
import time
import uuid

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import admission_serve, run_server

pytestmark = pytest.mark.process

RATE_ENV = {
    "ADMISSION_RATE": "20/second",
    "ADMISSION_BURST": "10",
    "ADMISSION_KEY": "header:X-Client",
}


def hammer(clients: list[httpx.Client], who: str, duration_s: float) -> tuple[int, int]:
    """hammer sends sequential requests as `who`, round-robin over `clients`, for `duration_s`
    from the first one; returns (admitted, sent)."""
    admitted = sent = 0
    deadline = time.monotonic() + duration_s
    while time.monotonic() < deadline:
        response = clients[sent % len(clients)].get("/", headers={"X-Client": who})
        assert response.status_code in (200, 429), response.text
        admitted += response.status_code == 200
        sent += 1
    return admitted, sent


def storage_errors(url: str) -> float:
    text = httpx.get(url + "/metrics", timeout=5).text
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "admission_storage_errors_total":
                return sample.value
    raise AssertionError("no admission_storage_errors_total in /metrics")


def test_one_process_admits_burst_plus_rate_and_other_clients_keep_their_burst() -> None:
    with (
        run_server(admission_serve(), RATE_ENV) as server,
        httpx.Client(base_url=server.url, timeout=5) as client,
    ):
        admitted, sent = hammer([client], "hammer", 2.0)
        print(f"\none process, 2 s: {admitted} admitted of {sent} sent")
        assert sent > 100, "the client was too slow to exhaust the bucket"
        assert 47 <= admitted <= 53

        # A second client: its bucket is full, untouched by the first one's exhaustion.
        started = time.monotonic()
        statuses: list[int] = []
        remaining: list[str] = []
        while 429 not in statuses and len(statuses) < 100:
            response = client.get("/", headers={"X-Client": "second"})
            statuses.append(response.status_code)
            if response.status_code == 200:
                remaining.append(response.headers["ratelimit"])
        elapsed = time.monotonic() - started
        burst = statuses.index(429)
        print(f"second client: {burst} x 200 then 429, in {elapsed * 1000:.0f} ms")
        assert remaining[0] == '"default";r=9;t=1'
        # 10 at once, plus whatever refilled while they were being sent.
        assert 10 <= burst <= 10 + 20 * elapsed + 1


def test_three_processes_sharing_redis_admit_together_what_one_would(redis_url: str) -> None:
    env = {
        **RATE_ENV,
        "ADMISSION_STORAGE": redis_url,
        "ADMISSION_KEY_PREFIX": f"admission-process-test-{uuid.uuid4().hex}",
        # Sharing is under test, not timeouts: a slow answer on a busy machine must not turn
        # into a local decision, which would admit up to three times as much.
        "ADMISSION_STORAGE_TIMEOUT": "2",
    }
    with contextlib.ExitStack() as stack:
        servers = [stack.enter_context(run_server(admission_serve(), env)) for _ in range(3)]
        clients = [
            stack.enter_context(httpx.Client(base_url=server.url, timeout=5)) for server in servers
        ]
        for client in clients:  # connect and load the script before the clock starts
            assert client.get("/healthz").status_code == 200
        admitted, sent = hammer(clients, "hammer", 3.0)
        print(f"\nthree processes on one Redis, 3 s: {admitted} admitted of {sent} sent")
        assert sent > 150, "the client was too slow to exhaust the bucket"
        assert all(storage_errors(server.url) == 0 for server in servers)
        assert 66 <= admitted <= 74

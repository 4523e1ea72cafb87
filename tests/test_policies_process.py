"""Route policies under a real `admission serve` process, with the example policy file.

The file (tests/apps/policies.toml) is the one of docs/policies.md: `POST /login` at 5 a
minute (and 20 an hour, burst 5), `/api/*` keyed by `X-API-Key` with the `free` class at 10/s
and `pro` at 200/s, and a shadow policy on `GET /export`. The demo app answers 404 on these
paths: what is measured is what admission lets through (anything but 429).
"""

from __future__ import annotations

import asyncio
import re
import socket
import time

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.support import REPO, admission_serve, run_server

pytestmark = pytest.mark.process

POLICY_ENV = {"ADMISSION_POLICIES": str(REPO / "tests" / "apps" / "policies.toml")}


def metric(url: str, name: str, **labels: str) -> float:
    for family in text_string_to_metric_families(httpx.get(url + "/metrics", timeout=5).text):
        for sample in family.samples:
            if sample.name == name and all(sample.labels.get(k) == v for k, v in labels.items()):
                return sample.value
    return 0.0


async def admitted(url: str, method: str, path: str, n: int, headers: dict[str, str]) -> int:
    """admitted sends `n` requests over 16 connections and counts those not refused (429)."""
    limits = httpx.Limits(max_connections=16)
    async with httpx.AsyncClient(base_url=url, timeout=10, limits=limits) as client:
        gate = asyncio.Semaphore(16)

        async def one() -> int:
            async with gate:
                response = await client.request(method, path, headers=headers)
            assert response.status_code != 500, response.text
            return int(response.status_code != 429)

        return sum(await asyncio.gather(*(one() for _ in range(n))))


def pipelined(port: int, path: str, headers: dict[str, str], n: int, connections: int = 4) -> int:
    """pipelined sends `n` GETs of `path` written all at once on `connections` keep-alive
    connections (HTTP/1.1 pipelining: a client far faster than one awaiting each answer) and
    counts the answers that are not 429."""
    head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
    request = f"GET {path} HTTP/1.1\r\nHost: t\r\n{head}\r\n".encode()
    last = f"GET {path} HTTP/1.1\r\nHost: t\r\n{head}Connection: close\r\n\r\n".encode()
    shares = [n // connections + (i < n % connections) for i in range(connections)]
    socks = [socket.create_connection(("127.0.0.1", port), timeout=30) for _ in shares]
    try:
        for sock, share in zip(socks, shares, strict=True):
            sock.sendall(request * (share - 1) + last)
        statuses: list[bytes] = []
        for sock in socks:
            data = b""
            while chunk := sock.recv(1 << 16):
                data += chunk
            # A body ends without a newline: the next status line follows it on the same line.
            statuses += re.findall(rb"HTTP/1\.1 (\d{3}) ", data)
    finally:
        for sock in socks:
            sock.close()
    assert len(statuses) == n, f"{len(statuses)} answers to {n} requests"
    return sum(status != b"429" for status in statuses)


def test_the_example_policies_under_admission_serve() -> None:
    with run_server(admission_serve(), POLICY_ENV) as server:
        url = server.url
        # Login: exactly 5 a minute per address, and GET /login is not limited by it.
        assert asyncio.run(admitted(url, "POST", "/login", 12, {})) == 5
        assert asyncio.run(admitted(url, "GET", "/login", 12, {})) == 12
        refused = httpx.post(url + "/login", timeout=5)
        assert refused.status_code == 429
        assert refused.json()["policy"] == "login"

        # The API: per X-API-Key, free at 10/s and pro at 200/s.
        started = time.monotonic()
        free = pipelined(server.port, "/api/items", {"X-API-Key": "f", "X-Plan": "free"}, 100)
        free_s = time.monotonic() - started
        started = time.monotonic()
        pro = pipelined(server.port, "/api/items", {"X-API-Key": "p", "X-Plan": "pro"}, 1000)
        pro_s = time.monotonic() - started
        print(f"\nfree: {free} of 100 in {free_s:.2f}s; pro: {pro} of 1000 in {pro_s:.2f}s")
        assert 10 <= free <= 10 + 10 * free_s + 1
        assert 200 <= pro <= 200 + 200 * pro_s + 1
        assert pro < 1000, "the pro client was too slow to meet its limit"
        # An unlisted plan, or none, uses the policy's own 100/s, under buckets of its own.
        other = pipelined(server.port, "/api/items", {"X-API-Key": "p", "X-Plan": "gold"}, 300)
        assert 100 <= other < 300

        # Export: a shadow policy never refuses; its would-be refusals are counted.
        assert asyncio.run(admitted(url, "GET", "/export", 6, {})) == 6
        assert metric(url, "admission_shadow_refusals_total", policy="export-trial") == 5
        assert metric(url, "admission_rejected_total", reason="rate", policy="login") >= 8


def test_a_bad_policy_file_stops_start_up_with_one_line(tmp_path: pytest.TempPathFactory) -> None:
    import subprocess
    import sys

    bad = REPO / "tests" / "apps" / "policies.toml"
    path = tmp_path / "bad.toml"  # type: ignore[operator]
    path.write_text(bad.read_text().replace('limits = ["1/minute"]', 'limts = ["1/minute"]'))
    result = subprocess.run(
        [sys.executable, "-m", "admission", "serve", "--port", "1"],
        env={"ADMISSION_POLICIES": str(path), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0] and "policy 'export-trial'" in lines[0] and "limts" in lines[0]
    assert "Traceback" not in result.stderr

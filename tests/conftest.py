"""Fixtures shared by the test suite."""

from __future__ import annotations

import os
import socket
from collections.abc import Iterator

import pytest

from tests.support import (
    NO_REDIS,
    RedisServer,
    own_redis_cluster,
    own_redis_sentinel,
    own_redis_server,
)


def _reachable(host: str, port: int) -> bool:
    try:
        with socket.create_connection((host, port), timeout=0.5) as sock:
            sock.sendall(b"PING\r\n")
            return sock.recv(16).startswith(b"+PONG")
    except OSError:
        return False


@pytest.fixture(scope="session")
def redis_url() -> Iterator[str]:
    """redis_url is a real Redis: TEST_REDIS_URL, else 127.0.0.1:6379 if it answers,
    else a redis-server started for the session."""
    url = os.environ.get("TEST_REDIS_URL")
    if url:
        yield url
        return
    if _reachable("127.0.0.1", 6379):
        yield "redis://127.0.0.1:6379/0"
        return
    with own_redis_server() as server:
        yield server.url


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    """redis_server is a redis-server of this test's own, which it may kill and restart."""
    with own_redis_server() as server:
        yield server


@pytest.fixture(scope="session")
def redis_cluster_url() -> Iterator[str]:
    """redis_cluster_url is a three-master Redis Cluster started for the session."""
    with own_redis_cluster() as cluster:
        yield cluster.url


@pytest.fixture(scope="session")
def redis_sentinel_url() -> Iterator[str]:
    """redis_sentinel_url is a master watched by a sentinel, started for the session."""
    with own_redis_sentinel() as setup:
        yield setup.url


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """One line for the tests that need a redis-server where there is none: not run, and why."""
    skipped = [
        report
        for report in terminalreporter.stats.get("skipped", [])
        if NO_REDIS in str(getattr(report, "longrepr", ""))
    ]
    if skipped:
        terminalreporter.write_line(f"{len(skipped)} tests not run: {NO_REDIS}", yellow=True)

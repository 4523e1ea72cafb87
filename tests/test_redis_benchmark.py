"""benchmarks/redis_store.py still runs end to end (briefly): it starts its own redis-server,
measures every variant at 1 and 64 callers and every layer, and prints its verdict lines."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.support import REPO

pytestmark = pytest.mark.redis


def test_redis_benchmark_runs_and_reports_every_variant() -> None:
    argv = ["--rounds", "1", "--duration", "0.05", "--layer-calls", "20"]
    result = subprocess.run(
        [sys.executable, "benchmarks/redis_store.py", *argv],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    out = result.stdout
    for line in ("1 caller:", "64 callers:", "One caller, layer by layer"):
        assert line in out
    for variant in ("ping", "limits", "admission", "ping-conn", "+ GuardedStore.decide"):
        assert f"  {variant} " in out
    assert "EVALSHA per decision" in out
    assert "usec_per_call" in out

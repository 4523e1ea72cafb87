"""A response cut short on purpose (idle or handler deadline after it started) is reported
once by admission, at INFO, with its reason; never as uvicorn's ERROR "ASGI callable returned
without completing response"."""

from __future__ import annotations

import httpx
import pytest

from tests.support import admission_serve, run_server, wait_until

pytestmark = pytest.mark.process

UVICORN_ERROR = "ASGI callable returned without completing response"


@pytest.mark.parametrize(
    ("env", "query", "reason"),
    [
        ({"ADMISSION_IDLE_TIMEOUT": "0.3"}, "chunks=3&gap_ms=1500", "idle_timeout"),
        ({"ADMISSION_REQUEST_TIMEOUT": "0.5"}, "chunks=5&gap_ms=300", "deadline"),
    ],
)
def test_a_deliberate_cut_is_logged_once_by_admission_not_as_an_error(
    env: dict[str, str], query: str, reason: str
) -> None:
    cuts = 3
    with run_server(admission_serve(), env) as server:
        for _ in range(cuts):
            with pytest.raises(httpx.HTTPError):
                httpx.get(f"{server.url}/stream?{query}", timeout=10).raise_for_status()
        line = f"cut short after its response started: {reason}"
        wait_until(lambda: server.log().count(line) >= cuts, 10, "the cut lines")
        # The server still answers: a cut costs the connection, nothing else.
        assert httpx.get(server.url + "/", timeout=5).status_code == 200
        log = server.log()
    assert log.count(line) == cuts, log
    assert UVICORN_ERROR not in log
    assert "ERROR" not in log
    assert all(" INFO" in x or x.startswith("INFO") for x in log.splitlines() if line in x)

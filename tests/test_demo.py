"""The demo application's own answers: a bad query parameter is a 400, never a silent default."""

from __future__ import annotations

import httpx
import pytest

from admission.demo import app


@pytest.mark.parametrize(
    "query", ["ms=abc", "ms=-5", "ms=1e3", "ms=%D9%A3", "ms=600001", "ms=" + "9" * 400, "ms="]
)
async def test_slow_with_a_bad_ms_is_a_400_that_says_what_is_expected(query: str) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.get(f"/slow?{query}")
    assert response.status_code == 400
    assert "ms must be a whole number from 0 to 600000" in response.text


@pytest.mark.parametrize("query", ["chunks=x", "gap_ms=-1"])
async def test_stream_with_a_bad_parameter_is_a_400(query: str) -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.get(f"/stream?{query}")
    assert response.status_code == 400


async def test_slow_with_a_good_ms_sleeps_that_long() -> None:
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as c:
        response = await c.get("/slow?ms=0")
        default = await c.get("/slow")
    assert response.status_code == 200 and response.text == "slept 0 ms\n"
    assert default.text == "slept 100 ms\n"


async def test_echo_to_a_client_gone_mid_body_raises_nothing() -> None:
    # A hang-up mid-body is the client's doing: no traceback in the log, nobody to answer.
    messages = [
        {"type": "http.request", "body": b"abc", "more_body": True},
        {"type": "http.disconnect"},
    ]
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return messages.pop(0)

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    scope = {
        "type": "http",
        "method": "POST",
        "path": "/echo",
        "headers": [(b"content-length", b"10")],
        "query_string": b"",
    }
    await app(scope, receive, send)
    assert sent[0]["status"] == 499

"""The reasons table: one home for every refusal and abort, each with all it needs."""

from __future__ import annotations

import json

import pytest

from admission import reasons
from admission.reasons import Reason
from admission.request.responses import problem_body
from admission.stats import Stats


def test_every_reason_has_a_unique_label_and_a_metric_counter() -> None:
    labels = [reason.label for reason in reasons.ALL]
    assert len(set(labels)) == len(labels)
    assert list(Stats().rejected) == labels


@pytest.mark.parametrize("reason", reasons.ALL, ids=lambda r: r.label)
def test_every_reason_either_answers_with_a_problem_or_says_why_not(reason: Reason) -> None:
    assert reason.detail
    assert 1000 <= reason.ws_close <= 4999
    if reason.status is None:
        # Nothing to answer: the client is gone, or will never read an answer, or the reason
        # is a websocket's alone (closed with its code).
        websocket_only = ("ws_message_rate", "ws_message_limit")
        assert reason.label in ("disconnect", "write_timeout", *websocket_only)
        assert reason.drop_connection == (reason.label == "write_timeout")
        return
    doc = json.loads(problem_body(reason, reason.status))
    assert doc["status"] == reason.status
    assert doc["reason"] == reason.label
    assert doc["detail"] == reason.detail


@pytest.mark.parametrize(
    ("reason", "status", "ws_close", "headers"),
    [
        (reasons.RATE, 429, 1013, {}),
        (reasons.WINDOW, 429, 1013, {b"retry-after": b"1"}),
        (reasons.DRAINING, 503, 1001, {b"retry-after": b"1", b"connection": b"close"}),
        (reasons.READ_TIMEOUT, 408, 1011, {b"connection": b"close"}),
        (reasons.IDLE_TIMEOUT, 408, 1000, {b"connection": b"close"}),
        (reasons.WRITE_TIMEOUT, None, 1011, {}),
        (reasons.DEADLINE, 504, 1011, {}),
        (reasons.DISCONNECT, None, 1011, {}),
        (reasons.DRAIN_DEADLINE, 503, 1001, {b"retry-after": b"1", b"connection": b"close"}),
    ],
    ids=lambda v: v.label if isinstance(v, Reason) else None,
)
def test_each_reason_answers_as_the_contract_says(
    reason: Reason, status: int | None, ws_close: int, headers: dict[bytes, bytes]
) -> None:
    assert (reason.status, reason.ws_close, dict(reason.headers)) == (status, ws_close, headers)


def test_the_window_status_is_a_setting_and_keeps_the_label() -> None:
    refused = reasons.WINDOW.with_status(503)
    assert (refused.status, refused.label, refused.ws_close) == (503, "window", 1013)
    assert reasons.WINDOW.status == 429

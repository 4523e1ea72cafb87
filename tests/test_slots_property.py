"""Property-based test of the slot accounting: whatever mix of outcomes many concurrent
requests meet, the in-flight count never goes negative, never exceeds the window, and every
slot comes back.

Each example builds a middleware with a random window, queue timeout and waiter cap, and
drives a random batch of requests at it concurrently (asyncio.gather) against a small ASGI
app whose behaviour is chosen per request: success, raise, cancel (of the request task, while
queued or while running), client disconnect, read/idle/write timeout, or the deadline.
Timeouts are milliseconds; 40 examples run in 3 to 7 s.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from admission.config.settings import Settings
from admission.middleware import AdmissionMiddleware
from tests.asgi import Client, http_scope, no_body

OUTCOMES = (
    "success",
    "raise",
    "cancel",
    "disconnect",
    "read_timeout",
    "idle_timeout",
    "write_timeout",
    "deadline",
)
# The body trickles in this often for "read_timeout": well inside the idle timeout, so it is
# the read timeout (the whole body) that ends it, not the idle one.
TRICKLE_S = 0.005
TIMEOUTS = {
    "read_timeout": 0.04,
    "idle_timeout": 0.02,
    "write_timeout": 0.02,
    # Long next to the others: a request meant to succeed must not meet it by accident.
    "request_timeout": 0.2,
}
# A request that has not finished this long after the last one started is stuck: a bug.
STUCK_S = 2.0
FOREVER_S = 60.0


@dataclass(frozen=True)
class Plan:
    """Plan is what one request does: its outcome, when it starts, how long a successful or
    failing handler holds its slot, and, for "cancel", whether the request task is cancelled
    right away (after `early_steps` loop iterations, perhaps while queued for a slot) or once
    its handler runs."""

    outcome: str
    delay_ms: int
    hold_ms: int
    early: bool
    early_steps: int


plans = st.builds(
    Plan,
    outcome=st.sampled_from(OUTCOMES),
    delay_ms=st.integers(0, 10),
    hold_ms=st.integers(0, 5),
    early=st.booleans(),
    early_steps=st.integers(0, 3),
)


class TrickleClient(Client):
    """TrickleClient sends a request body a few bytes at a time and never finishes it."""

    async def receive(self) -> dict[str, Any]:
        await asyncio.sleep(TRICKLE_S)
        return {"type": "http.request", "body": b".", "more_body": True}


async def app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """app behaves as the request's plan says."""
    plan: Plan = scope["test.plan"]
    scope["test.started"].set()
    outcome = plan.outcome
    if outcome in ("success", "raise"):
        await asyncio.sleep(plan.hold_ms / 1000)
        if outcome == "raise":
            raise RuntimeError("the handler failed")
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})
    elif outcome in ("read_timeout", "idle_timeout"):
        while (await receive()).get("more_body", False):
            pass
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"whole body"})
    elif outcome == "write_timeout":
        await send({"type": "http.response.start", "status": 200, "headers": []})
        while True:
            await send({"type": "http.response.body", "body": b"x" * 100, "more_body": True})
    else:  # cancel, disconnect, deadline: a handler that never finishes on its own
        await asyncio.sleep(FOREVER_S)


def client_for(plan: Plan) -> tuple[Client, list[tuple[bytes, bytes]], str]:
    """client_for is the client side of `plan`: the connection, request headers and method."""
    if plan.outcome == "read_timeout":
        return TrickleClient(), [(b"content-length", b"100000")], "POST"
    if plan.outcome == "idle_timeout":
        first = {"type": "http.request", "body": b"first", "more_body": True}
        return Client([first]), [(b"transfer-encoding", b"chunked")], "POST"
    client = Client(no_body())
    client.stalled = plan.outcome == "write_timeout"
    return client, [], "GET"


@dataclass
class Result:
    plan: Plan
    ended: str  # "returned", "raised" or "cancelled"
    started: bool
    client: Client


async def drive(mw: AdmissionMiddleware, plan: Plan) -> Result:
    """drive plays one request from the client's side, as its plan says."""
    await asyncio.sleep(plan.delay_ms / 1000)
    client, headers, method = client_for(plan)
    started = asyncio.Event()
    scope = http_scope("/", method, headers)
    scope["test.plan"] = plan
    scope["test.started"] = started
    task = asyncio.create_task(mw(scope, client.receive, client.send))
    if plan.outcome == "cancel" and plan.early:
        for _ in range(plan.early_steps):
            await asyncio.sleep(0)
        task.cancel()
    elif plan.outcome in ("cancel", "disconnect"):
        running = asyncio.ensure_future(started.wait())
        await asyncio.wait([task, running], return_when=asyncio.FIRST_COMPLETED)
        running.cancel()
        if not task.done():
            task.cancel() if plan.outcome == "cancel" else client.hang_up()
    try:
        await asyncio.wait_for(asyncio.shield(task), STUCK_S)
        ended = "returned"
    except asyncio.CancelledError:
        ended = "cancelled"
    except RuntimeError:
        ended = "raised"
    return Result(plan, ended, started.is_set(), client)


class Watch:
    """Watch checks the accounting after every change to the ledger or the window."""

    def __init__(self, mw: AdmissionMiddleware) -> None:
        assert mw.window is not None
        self.mw = mw
        self.window = mw.window
        self.most_in_flight = 0
        self.changes = 0
        ledger, window = mw.ledger, mw.window
        ledger.enter = self.checked(ledger.enter)  # type: ignore[method-assign]
        ledger.leave = self.checked(ledger.leave)  # type: ignore[method-assign]
        window.try_take = self.checked(window.try_take)  # type: ignore[method-assign]
        window.give = self.checked(window.give)  # type: ignore[method-assign]

    def checked(self, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any) -> Any:
            result = method(*args)
            self.check()
            return result

        return call

    def check(self) -> None:
        self.changes += 1
        in_flight = self.mw.ledger.in_flight
        used = self.window.used
        assert in_flight >= 0
        assert 0 <= used <= self.window.size, f"window used {used} of {self.window.size}"
        # A slot is taken before the request enters the ledger and given back after it left.
        assert in_flight <= used, f"{in_flight} in flight with {used} slots taken"
        self.most_in_flight = max(self.most_in_flight, in_flight)


def expected(result: Result, window_status: int) -> None:
    """expected checks what the client saw against the request's plan."""
    plan, client, ended = result.plan, result.client, result.ended
    if not result.started:
        # Never reached the handler: refused by the window, or cancelled before a slot came.
        if plan.outcome == "cancel" and ended == "cancelled":
            assert client.sent == []
        else:
            assert ended == "returned", plan
            assert client.status == window_status, plan
        return
    outcome = plan.outcome
    # A loop stalled past the deadline (a loaded machine) may turn any handler into a 504.
    late = client.status == 504 and ended == "returned"
    if outcome == "success":
        assert (ended, client.status) == ("returned", 200) or late, (plan, client.sent)
    elif outcome == "raise":
        assert ended == "raised" or late, plan
    elif outcome == "cancel":
        assert ended == "cancelled", plan
    elif outcome == "disconnect":
        assert ended == "returned" and client.sent == [], (plan, client.sent)
    elif outcome in ("read_timeout", "idle_timeout"):
        assert ended == "returned" and client.status == 408, (plan, client.sent)
        assert dict(client.sent[0]["headers"])[b"connection"] == b"close"
    elif outcome == "write_timeout":
        assert ended == "returned" and client.status == 200, plan
        assert not client.complete
    elif outcome == "deadline":
        assert ended == "returned" and client.status == 504, (plan, client.sent)


async def scenario(
    window: int, queue_timeout: float, max_waiters: int | None, batch: list[Plan]
) -> None:
    mw = AdmissionMiddleware(
        app,
        settings=Settings(
            window=window,
            queue_timeout=queue_timeout,
            # A waiter cap only exists with a queue timeout, and is at least 1 there (settings
            # refuse it otherwise: no request could ever wait).
            max_waiters=max_waiters if queue_timeout > 0 and max_waiters != 0 else None,
            **TIMEOUTS,
        ),
        handle_signals=False,
    )
    mw.shared.ticker.watch_delay_s = 0.005
    watch = Watch(mw)
    results = await asyncio.gather(*(drive(mw, plan) for plan in batch))

    assert mw.ledger.in_flight == 0
    assert watch.window.used == 0
    assert watch.window.waiting == 0
    assert not watch.window._queued
    await asyncio.wait_for(mw.ledger.wait_empty(), 0.5)
    assert watch.most_in_flight <= window
    if any(r.started or r.client.sent for r in results):
        assert watch.changes > 0  # the watch saw the window and the ledger move
    for result in results:
        expected(result, mw.settings.window_status)
    # Every request was admitted once, refused once, or cancelled before it got a slot.
    cancelled_waiting = sum(not r.started and r.ended == "cancelled" for r in results)
    admitted = mw.stats.admitted
    assert admitted == sum(r.started for r in results)
    assert admitted + mw.stats.rejected["window"] + cancelled_waiting == len(batch)


@settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
@given(
    window=st.integers(1, 4),
    queue_timeout=st.sampled_from([0.0, 0.01, 0.04]),
    max_waiters=st.one_of(st.none(), st.integers(0, 4)),
    batch=st.lists(plans, min_size=1, max_size=12),
)
def test_slot_accounting_holds_whatever_happens_to_the_requests(
    window: int, queue_timeout: float, max_waiters: int | None, batch: list[Plan]
) -> None:
    asyncio.run(scenario(window, queue_timeout, max_waiters, batch))

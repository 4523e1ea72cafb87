"""The ticker that enforces the timeouts: when each one fires, measured on a manual clock.

A timeout falls due at a time the exchange writes down; the ticker fires it at its first tick
at or after that time, never before. Ticks are every TICK_S (25 ms) while a timeout is set, so
a timeout fires at most 25 ms late, plus whatever the event loop is late by. Each test ticks
by hand at chosen times just before and at the due time.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from types import SimpleNamespace
from typing import Any

import pytest

from admission.reasons import Reason
from admission.request.exchange import Exchange, Shared, TimedExchange
from admission.request.timeouts import TICK_S, Timeouts
from tests.asgi import Client, ManualClock, finish, http_scope, no_body, until, ws_scope

T0 = 1000.0
LIMIT_S = 1.0
# Just before a due time, as close as a float allows here.
JUST_BEFORE_S = 1e-6

ASGIApp = Callable[[dict[str, Any], Any, Any], Awaitable[None]]


def post_scope() -> dict[str, Any]:
    """post_scope is a request announcing a body that comes in chunks."""
    return http_scope(method="POST", headers=[(b"transfer-encoding", b"chunked")])


async def forever(scope: Any, receive: Any, send: Any) -> None:
    await asyncio.Event().wait()


async def read_body(scope: Any, receive: Any, send: Any) -> None:
    while True:
        message = await receive()
        if not message.get("more_body", False):
            break
    await forever(scope, receive, send)


async def stream_then_stall(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": b"first", "more_body": True})
    await forever(scope, receive, send)


async def stream_forever(scope: Any, receive: Any, send: Any) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": []})
    while True:
        await send({"type": "http.response.body", "body": b"x", "more_body": True})


async def ws_accept_then_wait(scope: Any, receive: Any, send: Any) -> None:
    await receive()
    await send({"type": "websocket.accept"})
    await forever(scope, receive, send)


class Harness:
    """Harness runs one exchange of `app` on a manual clock, ticking only when told."""

    def __init__(self, timeouts: Timeouts, app: ASGIApp, client: Client, scope: Any) -> None:
        self.clock = ManualClock(T0)
        self.dropped: list[Any] = []
        self.shared = Shared(
            timeouts,
            SimpleNamespace(begun=False),
            clock=self.clock.time,
            drop_connection=self._drop,
        )
        self.client = client

        async def admit() -> None:
            kind = TimedExchange if timeouts.enabled else Exchange
            await kind(self.shared, scope, client.receive, client.send).run(app)

        self.task = asyncio.ensure_future(admit())

    def _drop(self, send: Any) -> bool:
        self.dropped.append(send)
        return True

    def tick_at(self, now: float) -> None:
        self.clock.now = now
        self.shared.ticker.tick(asyncio.get_running_loop())

    def aborted(self) -> Reason | None:
        live = self.shared.ledger.live()
        return None if not live else live[0].reason  # type: ignore[attr-defined,no-any-return]


async def settle() -> None:
    """settle lets the request run until it waits on something outside the loop."""
    for _ in range(10):
        await asyncio.sleep(0)


async def test_the_deadline_fires_at_the_first_tick_at_or_after_it() -> None:
    h = Harness(Timeouts(request_s=LIMIT_S), forever, Client(no_body()), http_scope())
    await settle()
    h.tick_at(T0 + LIMIT_S - JUST_BEFORE_S)
    await settle()
    assert not h.task.done()
    h.tick_at(T0 + LIMIT_S)
    await finish(h.task)
    assert h.client.status == 504
    assert h.shared.stats.rejected["deadline"] == 1


async def test_the_read_timeout_counts_from_admission_and_fires_while_the_body_is_awaited() -> None:
    client = Client([{"type": "http.request", "body": b"a", "more_body": True}])
    h = Harness(Timeouts(read_s=LIMIT_S), read_body, client, post_scope())
    await settle()
    h.clock.now = T0 + 0.5  # time passes; the first chunk came at once, the rest never does
    h.tick_at(T0 + LIMIT_S - JUST_BEFORE_S)
    await settle()
    assert not h.task.done()
    h.tick_at(T0 + LIMIT_S)
    await finish(h.task)
    assert client.status == 408
    assert h.shared.stats.rejected["read_timeout"] == 1


async def test_the_idle_timeout_of_the_body_counts_from_the_start_of_the_wait() -> None:
    client = Client()
    h = Harness(Timeouts(idle_s=LIMIT_S), read_body, client, post_scope())
    await settle()
    h.tick_at(T0 + 0.5)
    client.inbox.put_nowait({"type": "http.request", "body": b"a", "more_body": True})
    await settle()  # the next wait began at T0 + 0.5
    h.tick_at(T0 + 0.5 + LIMIT_S - JUST_BEFORE_S)
    await settle()
    assert not h.task.done()
    h.tick_at(T0 + 0.5 + LIMIT_S)
    await finish(h.task)
    assert client.status == 408
    assert h.shared.stats.rejected["idle_timeout"] == 1


async def test_the_idle_timeout_of_a_streaming_response_counts_from_the_last_chunk() -> None:
    client = Client(no_body())
    h = Harness(Timeouts(idle_s=LIMIT_S), stream_then_stall, client, http_scope())
    await settle()
    h.tick_at(T0 + LIMIT_S - JUST_BEFORE_S)
    await settle()
    assert not h.task.done()
    h.tick_at(T0 + LIMIT_S)
    await finish(h.task)
    assert client.body == b"first"  # started: no second response, the connection closes
    assert h.shared.stats.rejected["idle_timeout"] == 1


async def test_the_write_timeout_counts_from_the_start_of_the_blocked_send() -> None:
    client = Client(no_body())
    client.stalled = True
    h = Harness(Timeouts(write_s=LIMIT_S), stream_forever, client, http_scope())
    await settle()  # the first chunk's send is blocked since T0
    h.tick_at(T0 + LIMIT_S - JUST_BEFORE_S)
    await settle()
    assert not h.task.done()
    h.tick_at(T0 + LIMIT_S)
    await finish(h.task)
    assert h.shared.stats.rejected["write_timeout"] == 1
    assert h.dropped == [client.send]  # a client that stopped reading is cut off


async def test_a_websocket_idle_timeout_counts_from_the_last_message() -> None:
    client = Client([{"type": "websocket.connect"}])
    client.websocket = True
    h = Harness(Timeouts(idle_s=LIMIT_S), ws_accept_then_wait, client, ws_scope())
    await settle()
    h.clock.now = T0 + 0.25
    client.inbox.put_nowait({"type": "websocket.receive", "text": "hi"})  # never read
    h.tick_at(T0 + LIMIT_S - JUST_BEFORE_S)
    await settle()
    assert not h.task.done()
    h.tick_at(T0 + LIMIT_S)
    await finish(h.task)
    assert client.sent[-1] == {"type": "websocket.close", "code": 1000, "reason": "idle_timeout"}


async def test_nothing_fires_after_the_request_ended() -> None:
    h = Harness(Timeouts(request_s=LIMIT_S), forever, Client(no_body()), http_scope())
    await settle()
    h.task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await h.task
    h.tick_at(T0 + 10 * LIMIT_S)
    assert h.shared.stats.rejected["deadline"] == 0


@pytest.mark.parametrize(
    "timeouts", [Timeouts(request_s=30), Timeouts(read_s=5), Timeouts(idle_s=60)], ids=repr
)
async def test_the_ticker_ticks_every_25_ms_while_a_timeout_is_set(timeouts: Timeouts) -> None:
    h = Harness(timeouts, forever, Client(no_body()), http_scope())
    await settle()
    loop = asyncio.get_running_loop()
    timer = h.shared.ticker.timers[loop]
    assert 0 < timer.when() - loop.time() <= TICK_S
    h.task.cancel()
    await asyncio.gather(h.task, return_exceptions=True)
    await until(lambda: loop not in h.shared.ticker.timers)  # disarmed with nothing in flight


async def test_without_a_timeout_the_ticker_only_serves_the_disconnect_watch() -> None:
    h = Harness(Timeouts(), forever, Client(no_body()), http_scope())
    await settle()
    loop = asyncio.get_running_loop()
    ticker = h.shared.ticker
    assert TICK_S < ticker.timers[loop].when() - loop.time() <= ticker.watch_delay_s / 2
    h.task.cancel()
    await asyncio.gather(h.task, return_exceptions=True)


async def test_requests_in_flight_arm_no_timer_of_their_own() -> None:
    loop = asyncio.get_running_loop()
    scheduled = loop._scheduled  # type: ignore[attr-defined]
    before = len(scheduled)
    shared = Shared(
        Timeouts(read_s=5, idle_s=60, write_s=3, request_s=30), SimpleNamespace(begun=False)
    )
    clients = [Client() for _ in range(20)]

    async def admit(client: Client) -> None:
        exchange = TimedExchange(shared, post_scope(), client.receive, client.send)
        await exchange.run(read_body)

    tasks = [asyncio.ensure_future(admit(client)) for client in clients]
    await until(lambda: shared.ledger.in_flight == 20)
    await settle()
    assert len(scheduled) - before == 1  # the ticker's, shared by all 20
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def test_a_blocked_send_is_bounded_by_the_write_timeout_not_the_idle_one() -> None:
    # The idle limit times the gaps between chunks; once the next chunk is being sent, only the
    # write timeout bounds it.
    class SecondChunkBlocks(Client):
        async def send(self, message: dict[str, Any]) -> None:
            chunks = sum(m["type"] == "http.response.body" for m in self.sent)
            if message["type"] == "http.response.body" and chunks == 1:
                await asyncio.Event().wait()
            self.sent.append(message)

    client = SecondChunkBlocks(no_body())
    timeouts = Timeouts(idle_s=LIMIT_S, write_s=10 * LIMIT_S)
    h = Harness(timeouts, stream_forever, client, http_scope())
    await settle()  # the first chunk went out at T0; the second blocks since T0
    h.tick_at(T0 + 5 * LIMIT_S)
    await settle()
    assert not h.task.done()
    h.tick_at(T0 + 10 * LIMIT_S)
    await finish(h.task)
    assert h.shared.stats.rejected["write_timeout"] == 1
    assert h.shared.stats.rejected["idle_timeout"] == 0

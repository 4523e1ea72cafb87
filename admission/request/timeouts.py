"""admission.request.timeouts: the four timeouts, enforced by one coarse ticker per event loop.

No request arms a timer of its own. An exchange only writes down when each of its limits falls
due (a float: the loop time, or infinity for none), and a `Ticker` walks the ledger of requests
in flight every TICK_S and aborts those whose time has come. The same walk starts the
disconnect watch of requests that have run DISCONNECT_WATCH_DELAY_S.

Precision: a limit fires at the first tick at or after its time, never before it, and at most
TICK_S (25 ms) after it, plus however long the event loop was kept busy by something else.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Protocol, cast

from admission.ledger import Ledger

# The ticker's period while any timeout is set: the most a timeout fires late.
TICK_S = 0.025
# How long a request runs before a watcher listens for the client going away: short requests
# never pay for a watcher task, long ones learn of a hang-up within this delay.
DISCONNECT_WATCH_DELAY_S = 0.2

NEVER = float("inf")


@dataclass(frozen=True, slots=True)
class Timeouts:
    """Timeouts are the four limits, in seconds; None turns one off.

    `read_s`: the whole request body. `idle_s`: the gap between two body chunks, in either
    direction, or two websocket messages. `write_s`: one `send` of the response. `request_s`:
    the handler's deadline. `enabled` says whether any of them is set.
    """

    read_s: float | None = None
    idle_s: float | None = None
    write_s: float | None = None
    request_s: float | None = None

    # Computed once: every request reads it to skip all timeout work when none is set.
    enabled: bool = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        limits = (self.read_s, self.idle_s, self.write_s, self.request_s)
        object.__setattr__(self, "enabled", any(limit is not None for limit in limits))


class Ticked(Protocol):
    """Ticked is an exchange as the ticker sees it: its loop, and what to do at a tick."""

    loop: asyncio.AbstractEventLoop

    def tick(self, now: float, watch_before: float) -> None: ...


class Ticker:
    """Ticker is one timer per event loop that ticks while requests of that loop are in flight.

    At every tick it calls `tick(now, watch_before)` of each exchange of the loop in the ledger:
    `now` is the clock (the loop's own unless `clock` is given), `watch_before` the time before
    which an exchange began if it has run `watch_delay_s`, on `watch_clock` (the one exchanges
    stamp their admission with; None: the same as `now`). It ticks every `period_s` (TICK_S
    while a timeout is set), and at least twice per watch delay, so that a hang-up is noticed
    between one and one and a half watch delays after the request began. A loop's timer
    disarms itself once none of its requests is left: `if loop not in ticker.timers:
    ticker.arm(loop)` is all an admitted request costs here.
    """

    def __init__(
        self,
        ledger: Ledger,
        *,
        period_s: float = TICK_S,
        watch_delay_s: float = DISCONNECT_WATCH_DELAY_S,
        clock: Callable[[], float] | None = None,
        watch_clock: Callable[[], float] | None = None,
    ) -> None:
        self.ledger = ledger
        self.period_s = period_s
        self.watch_delay_s = watch_delay_s
        self.clock = clock
        self.watch_clock = watch_clock
        #: The armed timer of each loop with requests in flight; a loop closed before its timer
        #: disarmed is forgotten at the next arming.
        self.timers: dict[asyncio.AbstractEventLoop, asyncio.TimerHandle] = {}

    def arm(self, loop: asyncio.AbstractEventLoop) -> None:
        """arm starts the timer of `loop`."""
        for old in [old for old in list(self.timers) if old.is_closed()]:
            self.timers.pop(old, None)
        self._arm(loop)

    def _arm(self, loop: asyncio.AbstractEventLoop) -> None:
        period = min(self.period_s, self.watch_delay_s / 2)
        self.timers[loop] = loop.call_later(period, self.tick, loop)

    def tick(self, loop: asyncio.AbstractEventLoop) -> None:
        """tick visits the exchanges of `loop` in flight once, and re-arms while there are any
        (called by the timer; tests call it to tick at a time of their choosing)."""
        now = self.clock() if self.clock is not None else loop.time()
        watch_before = (
            now if self.watch_clock is None else self.watch_clock()
        ) - self.watch_delay_s
        mine = False
        for item in self.ledger.live():
            # Only this loop's requests: another loop's (another thread's) are not ours to touch.
            if getattr(item, "loop", None) is loop:
                mine = True
                cast(Ticked, item).tick(now, watch_before)
        timer = self.timers.pop(loop, None)
        if timer is not None:
            # A no-op for the timer firing now; a tick called by hand replaces the armed one.
            timer.cancel()
        if mine:
            self._arm(loop)

"""admission.lifecycle.drain: the graceful drain, a state machine run once per lifetime.

serving → pre-drain (readiness fails, requests still served, responses say Connection: close)
→ draining (new requests refused with 503, websockets closed with 1001, in-flight awaited on
the ledger) → drained (in-flight 0, or the deadline passed and the stragglers were cancelled)
→ closed (the lifetime closed: tasks, child processes, cleanups and the store, once).
A closed drain may be reopened with a fresh lifetime (`reopen`): the next lifespan's service.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from collections.abc import Awaitable, Callable

from admission.ledger import Ledger
from admission.lifetime import Lifetime
from admission.reasons import DRAIN_DEADLINE, DRAINING

log = logging.getLogger("admission.drain")

# After cancelling stragglers, how long to wait for them to unwind before giving up on them.
STRAGGLER_UNWIND_S = 5.0


class Phase(str, enum.Enum):
    """Phase is where the drain is."""

    SERVING = "serving"
    PRE_DRAIN = "pre-drain"
    DRAINING = "draining"
    DRAINED = "drained"
    CLOSED = "closed"


# The phases in which new requests are still served.
_ACCEPTING = frozenset((Phase.SERVING, Phase.PRE_DRAIN))


class Drain:
    """Drain moves the service from serving to closed, once, however often it is started.

    `begin()` starts it (idempotent); `hurry()` ends the pre-drain delay and cancels whatever is
    still in flight now (a second Ctrl+C); `until_drained()` waits for `drained`; `run()` waits
    for `closed`. A delay of 0 skips the pre-drain phase; the timeout bounds the wait for
    in-flight requests, after which they are cancelled and their number logged; `unwind_s`
    bounds the wait for the cancelled ones to unwind.

    `accepting` (new requests are served: serving or pre-drain) and `begun` (the drain has
    started) are plain attributes kept in step with `phase`: every request reads them, and an
    attribute costs less than a property or a method call.
    """

    accepting: bool
    begun: bool
    _phase: Phase

    def __init__(
        self,
        ledger: Ledger,
        lifetime: Lifetime,
        *,
        delay_s: float,
        timeout_s: float,
        last: Callable[[], Awaitable[None]] | None = None,
        unwind_s: float = STRAGGLER_UNWIND_S,
    ) -> None:
        self.ledger = ledger
        self._refusal_watchers: set[asyncio.Future[None]] = set()
        self.unwind_s = unwind_s
        self.lifetime = lifetime
        self.last = last
        self.delay_s = delay_s
        self.timeout_s = timeout_s
        self.phase = Phase.SERVING
        self.cancelled = 0
        self._task: asyncio.Task[None] | None = None
        self._hurry: asyncio.Event | None = None
        self._close_task: asyncio.Task[None] | None = None

    @property
    def phase(self) -> Phase:
        """phase is where the drain is."""
        return self._phase

    @phase.setter
    def phase(self, phase: Phase) -> None:
        self._phase = phase
        self.accepting = phase in _ACCEPTING
        self.begun = phase is not Phase.SERVING
        if not self.accepting:
            for watcher in list(self._refusal_watchers):
                # The watcher's own loop completes it: a request may run on another thread's.
                watcher.get_loop().call_soon_threadsafe(_complete, watcher)

    @property
    def ready(self) -> bool:
        """ready is what readiness reports: True only before the drain starts."""
        return not self.begun

    def when_refusing(self) -> asyncio.Future[None]:
        """when_refusing is a future of the running loop that completes once new requests are
        refused (at once if they already are): what a request not yet admitted, such as one
        whose body is being read ahead, waits on to give up early. Cancel it when done with it."""
        watcher: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if not self.accepting:
            watcher.set_result(None)
        else:
            self._refusal_watchers.add(watcher)
            watcher.add_done_callback(self._refusal_watchers.discard)
        return watcher

    def draining(self) -> bool:
        """draining is True from the first moment of the drain."""
        return self.begun

    def begin(self, *, delay_s: float | None = None, quiet: bool = False) -> asyncio.Task[None]:
        """begin starts the drain (with `delay_s` instead of the configured delay, if given)
        and returns its task; later calls return the same task. `quiet` logs its progress at
        DEBUG: for a shutdown before anything was served, when there is nothing to drain and
        "readiness fails now" would describe a server that never was ready to anyone."""
        if self._task is None:
            self._hurry = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(
                self._drain(self.delay_s if delay_s is None else delay_s, quiet),
                name="admission-drain",
            )
        return self._task

    def hurry(self) -> None:
        """hurry cuts the drain short: no more delay, and in-flight requests are cancelled."""
        self.begin()
        assert self._hurry is not None
        self._hurry.set()

    async def until_drained(self, *, delay_s: float | None = None, quiet: bool = False) -> None:
        """until_drained starts the drain if needed and returns once nothing is in flight."""
        await asyncio.shield(self.begin(delay_s=delay_s, quiet=quiet))

    async def run(self, *, delay_s: float | None = None, quiet: bool = False) -> None:
        """run drains and then closes; concurrent and repeated calls share one run."""
        await self.until_drained(delay_s=delay_s, quiet=quiet)
        if self._close_task is None:
            self._close_task = asyncio.get_running_loop().create_task(self._close())
        await asyncio.shield(self._close_task)

    def reopen(self, lifetime: Lifetime) -> None:
        """reopen starts the drain over, serving again, with `lifetime` to close next time:
        for a lifespan that starts after a completed shutdown (a second `TestClient` block, a
        server restarting the app in process). Only a closed drain can be reopened."""
        if self.phase is not Phase.CLOSED:
            raise RuntimeError(f"only a closed drain can be reopened, not one {self.phase.value}")
        self.lifetime = lifetime
        self.cancelled = 0
        self._task = self._hurry = self._close_task = None
        self.phase = Phase.SERVING

    async def _drain(self, delay_s: float, quiet: bool = False) -> None:
        assert self._hurry is not None
        loop = asyncio.get_running_loop()
        started = loop.time()
        self.phase = Phase.PRE_DRAIN
        say = log.debug if quiet else log.info
        say(
            "drain started: %d in flight; readiness fails now%s",
            self.ledger.in_flight,
            f", still serving for {delay_s:g}s" if delay_s > 0 else "",
        )
        if delay_s > 0:
            await _wait(self._hurry.wait(), delay_s)
        self.phase = Phase.DRAINING
        for item in self.ledger.live():
            if item.websocket:
                item.abort(DRAINING)
        if self.ledger.in_flight:
            log.info(
                "draining: new requests refused; waiting up to %gs for %d in flight",
                self.timeout_s,
                self.ledger.in_flight,
            )
        left = self.timeout_s
        if not self._hurry.is_set():
            empty = loop.create_task(self.ledger.wait_empty())
            hurry = loop.create_task(self._hurry.wait())
            await asyncio.wait({empty, hurry}, timeout=left, return_when=asyncio.FIRST_COMPLETED)
            empty.cancel()
            hurry.cancel()
        stragglers = self.ledger.live()
        if stragglers:
            self.cancelled = len(stragglers)
            for item in stragglers:
                item.abort(DRAIN_DEADLINE)
            log.warning(
                "drain deadline: cancelled %d request(s) still in flight after %.1fs",
                len(stragglers),
                loop.time() - started,
            )
            await _wait(self.ledger.wait_empty(), self.unwind_s)
        self.phase = Phase.DRAINED
        say("drained in %.2fs (%d cancelled)", loop.time() - started, self.cancelled)

    async def _close(self) -> None:
        try:
            await self.lifetime.close()
        finally:
            if self.last is not None:
                # The store closes after every cleanup, whenever those were registered.
                try:
                    await self.last()
                except Exception:
                    log.exception("closing the rate-limit store failed")
        self.phase = Phase.CLOSED
        log.info("closed: resources released")


async def _wait(awaitable: object, timeout_s: float) -> None:
    with contextlib.suppress(asyncio.TimeoutError):
        await asyncio.wait_for(awaitable, timeout_s)  # type: ignore[arg-type]


def _complete(watcher: asyncio.Future[None]) -> None:
    if not watcher.done():
        watcher.set_result(None)

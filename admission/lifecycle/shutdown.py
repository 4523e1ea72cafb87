"""admission.lifecycle.shutdown: a termination signal drains the service before the server
hears of it.

The first SIGTERM or SIGINT starts the drain; once nothing is in flight, the signal is handed
on to the handler it displaced (the server's), which then shuts down. A second signal during
the drain hurries it: what is still in flight is cancelled.
"""

from __future__ import annotations

import asyncio
import logging
from types import FrameType

from admission.lifecycle.drain import Drain
from admission.lifecycle.lifespan import Lifespan
from admission.lifecycle.listening import SETTLE_S, listening_tcp_sockets, stop_taking_connections
from admission.lifecycle.signals import SignalChain

log = logging.getLogger("admission")


class SignalDrain:
    """SignalDrain drains `drain` on a signal, then forwards the signal through `signals`.

    Resources are released by the lifespan shutdown when a lifespan runs (after the
    application's own shutdown, which may still need them); without one, by the drain here.
    """

    def __init__(self, drain: Drain, lifespan: Lifespan) -> None:
        self.drain = drain
        self.lifespan = lifespan
        self.signals = SignalChain(self.on_signal)
        self.count = 0
        self.task: asyncio.Task[None] | None = None

    def install(self) -> None:
        """install takes over SIGTERM and SIGINT (on the main thread only)."""
        self.signals.install()

    def reset(self) -> None:
        """reset forgets the signals counted so far: a reopened service's first signal drains
        it again rather than hurrying a drain that is over."""
        self.count = 0
        self.task = None

    def on_signal(self, sig: int, frame: FrameType | None) -> None:
        """on_signal starts the drain on the first signal and hurries it on the next."""
        self.count += 1
        if self.count == 1:
            log.info("received signal %d: draining before the server shuts down", sig)
            self.task = asyncio.get_running_loop().create_task(self.drain_then_forward(sig, frame))
        else:
            log.warning("received signal %d again: cancelling what is still in flight", sig)
            self.drain.hurry()

    async def drain_then_forward(self, sig: int, frame: FrameType | None) -> None:
        """drain_then_forward waits for the drain, then hands `sig` on to the server."""
        if self.lifespan.running:
            await self.drain.until_drained()
        else:
            # No lifespan (the server runs with it off): nothing else would release them.
            await self.drain.run()
        if self.signals.in_loop(sig):
            # hypercorn and granian close their listening socket the moment they hear the
            # signal, resetting the connections still queued on it: have the kernel take no new
            # one first, and the server accept (and the drain refuse) those already queued.
            await stop_taking_connections(listening_tcp_sockets(), settle_s=SETTLE_S)
        self.signals.forward(sig, frame)

"""admission.lifecycle.service: the service's life as the middleware runs it, in one piece.

Its lifetime (what the service holds and releases once at shutdown), the ledger of requests in
flight, the drain, the lifespan handler and the signal hook, built together from the settings;
and `reopen`, which starts it afresh when a lifespan follows a completed shutdown (a second
`TestClient` block, a server that restarts apps in process).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from admission.config.report import announce
from admission.config.settings import Settings
from admission.ledger import Ledger
from admission.lifecycle import context
from admission.lifecycle.drain import Drain, Phase
from admission.lifecycle.lifespan import Lifespan
from admission.lifecycle.shutdown import SignalDrain
from admission.lifetime import Lifetime
from admission.stores import ReopenableStore, Store


class Service:
    """Service is the life of one middleware's service.

    `lifetime` is the service lifetime `admission.service_lifetime()` hands out (a fresh one
    per `reopen`); `drain` releases it, then closes `store`, once per lifespan. `startup` runs
    when a lifespan starts, `served` says whether any request was answered (a server stopping
    before it served has nothing to drain). `handle_signals=False` leaves SIGTERM/SIGINT alone.
    """

    def __init__(
        self,
        settings: Settings,
        store: Store | None,
        *,
        startup: Callable[[], Awaitable[None]],
        served: Callable[[], bool],
        handle_signals: bool,
    ) -> None:
        self.settings = settings
        self._cleanup_timeout_s = settings.cleanup_timeout
        self.lifetime: Lifetime = context.adopt_service_lifetime(settings.cleanup_timeout)
        self.ledger = Ledger()
        self.drain = Drain(
            self.ledger,
            self.lifetime,
            delay_s=settings.drain_delay,
            timeout_s=settings.drain_timeout,
            last=store.close if store is not None else None,
        )
        # What a lifespan after a completed shutdown reconnects (see `reopen`).
        self._reopen_store = store.reopen if isinstance(store, ReopenableStore) else None
        self.lifespan = Lifespan(self.drain, startup, served)
        self.signals = SignalDrain(self.drain, self.lifespan) if handle_signals else None

    def use_store(self, store: Store) -> None:
        """use_store makes `store` the one the drain closes last and a reopen reconnects (the
        store start-up opened for limits declared on routes)."""
        self.drain.last = store.close
        self._reopen_store = store.reopen if isinstance(store, ReopenableStore) else None

    @property
    def closed(self) -> bool:
        """closed: has a drain run to the end (everything released)?"""
        return self.drain.phase is Phase.CLOSED

    def reopen(self) -> None:
        """reopen opens a fresh lifetime for a lifespan that starts after a completed shutdown:
        the drain serves again, the store reconnects, and the next shutdown releases what this
        lifespan acquires."""
        self.lifetime = context.adopt_service_lifetime(self._cleanup_timeout_s)
        if self._reopen_store is not None:
            self._reopen_store()
        self.drain.reopen(self.lifetime)
        if self.signals is not None:
            self.signals.reset()

    def start(self, *, in_code: bool, log: logging.Logger) -> None:
        """start says the settings in effect on `log` (`in_code`: the settings were given in
        code, which wins over the environment) and installs the signal hook (once per
        process; again after a reopen)."""
        announce(self.settings, in_code=in_code, log=log)
        if self.signals is not None:
            self.signals.install()

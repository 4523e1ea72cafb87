"""admission.concurrency.gate: the concurrency gate, every window a request may need a slot
of, built from the settings: the HTTP window (fixed, or sized by the adaptive window), the
websocket window, the priority source that ranks requests for the HTTP window's slots, the
client key that shares them fairly (admission.concurrency.fairness), and why a request that got
no slot was refused.

The middleware takes and gives slots itself (`Window.try_take`, `take`, `give`): the hot path
stays two calls on the window, with nothing between (see docs/performance.md).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

from admission import reasons
from admission.concurrency.adaptive import AdaptiveLimit, LimitParams
from admission.concurrency.baselines import class_of
from admission.concurrency.fairness import NO_CAP
from admission.concurrency.priority import priority_from
from admission.concurrency.window import DEFAULT, Window
from admission.config.settings import Settings
from admission.ratelimit.keys import make_key_func
from admission.reasons import Reason
from admission.stats import Stats
from admission.types import Scope

__all__ = ["DEFAULT", "Concurrency", "Sample"]


class Sample(Protocol):
    """Sample is what the adaptive window reads of a finished exchange (see
    `admission.request.exchange.Exchange`)."""

    reason: Reason | None
    disconnected: bool
    latency_s: float
    status: int
    scope: Scope

    def now(self) -> float: ...

    def service_s(self) -> float: ...


class Concurrency:
    """Concurrency is the windows of `settings`, counting sheds in `stats`.

    `http`: the HTTP window, None without `ADMISSION_WINDOW`. `websocket`: the websocket
    window, None without either window setting. `adaptive`: what sizes `http` under
    `ADMISSION_WINDOW=auto`, else None. `priority`: reads a request's class, None when every
    request is `default` (no `ADMISSION_PRIORITY`). `slots`: the window HTTP requests take a
    slot of: `http`, or under `ADMISSION_CLIENT_WINDOW` alone a window of no size of its own
    that only caps each client. `client`: the key function naming a request's client to
    `slots` (`ADMISSION_KEY`'s, with the trusted proxies), None without `slots` or when every
    request is one client's (`ADMISSION_KEY=global`).

    Websocket connections have their own window and last for minutes: one open socket must not
    hold a share of the HTTP slots. Under `ADMISSION_CLIENT_WINDOW` each client's open sockets
    are capped at the same number, apart from its requests (`websocket_clients`).
    """

    def __init__(self, settings: Settings, stats: Stats) -> None:
        s = settings
        self.stats = stats
        self.priority: Callable[[Scope], int] | None = priority_from(s.priority, s.trusted_networks)
        # Without a priority source every request is `default`: nothing to keep slots for.
        shed_at = s.shed_fractions if self.priority is not None else {}
        lifo = s.queue_order == "lifo"
        self.adaptive: AdaptiveLimit | None = None
        self.http: Window | None = None
        cap = s.client_window
        if s.window == "auto":
            low, high = s.window_bounds
            params = LimitParams(minimum=low, maximum=high)
            self.http = Window(
                params.start, max_waiters=s.waiters_cap, shed_at=shed_at, lifo=lifo, client_cap=cap
            )
            self.adaptive = AdaptiveLimit(params, self.http.resize)
        elif s.window is not None:
            self.http = Window(
                s.window, max_waiters=s.waiters_cap, shed_at=shed_at, lifo=lifo, client_cap=cap
            )
        self.slots = self.http
        if self.slots is None and cap is not None:
            # nginx's limit_conn without a window: every client capped, the total not.
            self.slots = Window(NO_CAP, client_cap=cap, fair=False)
        self.client = make_key_func(s) if self.slots is not None and s.key != "global" else None
        ws_size = s.websocket_window or (s.window_bounds[1] if s.window == "auto" else s.window)
        # Whether websockets name their client to `websocket`, for ADMISSION_CLIENT_WINDOW's
        # websocket form: a client's open sockets capped at the same number, counted apart
        # from its requests (no shares: a socket lasts minutes; this is nginx's limit_conn).
        self.websocket_clients = cap is not None and self.client is not None
        self.websocket: Window | None = None
        if self.websocket_clients:
            self.websocket = Window(ws_size or NO_CAP, max_waiters=0, client_cap=cap, fair=False)
        elif ws_size:
            self.websocket = Window(ws_size, max_waiters=0)
        self.queue_timeout_s = s.queue_timeout
        self._full = reasons.WINDOW.with_status(s.window_status)
        self._shed = reasons.SHED.with_status(s.window_status)
        self._unfair = reasons.FAIR_SHARE.with_status(s.window_status)

    def windows(self) -> dict[str, Window]:
        """windows is every window there is, by kind ("http", "websocket"), for the metrics."""
        found = (("http", self.http), ("websocket", self.websocket))
        # A window of no size of its own (only a cap per client) has no size to show.
        return {kind: w for kind, w in found if w is not None and w.size != NO_CAP}

    def refusal(self, window: Window, priority: int, client: str | None = None) -> Reason:
        """refusal is why a request of `priority` from `client` got no slot of `window`: its
        client at the cap (`client_window`); its client holding more than its fair share (the
        slots are kept for, or went to, clients holding fewer); shed (counted), when the window
        still had room that its class may not use; the window's being full otherwise."""
        unfair = client is not None and window.clients.over_share(client, window.size)
        if client is not None and window.clients.capped(client):
            return reasons.CLIENT_WINDOW
        if unfair and window.used < window.limits[priority]:
            # Its class had room: only the share kept it out.
            return self._unfair
        if window.used < window.size and window.limits[priority] < window.size:
            self.stats.shed[priority] += 1
            return self._shed
        return self._unfair if unfair else self._full

    def sample(self, exchange: Sample) -> None:
        """sample gives the adaptive window what an admitted request says about capacity: its
        service time if it completed, of its class (the route the application served it on
        and its status), a drop if it hit its deadline, nothing if the client went away or
        admission cut it short for another reason (a slow client, the drain)."""
        adaptive = self.adaptive
        if adaptive is None:
            return
        # The exchange's own clock, which the adaptive window's intervals are counted on.
        now = exchange.now()
        reason = exchange.reason
        if reason is None:
            if not exchange.disconnected:
                key = class_of(exchange.scope.get("endpoint"), exchange.status)
                adaptive.record(exchange.service_s(), now, key, now - exchange.latency_s)
        elif reason is reasons.DEADLINE:
            adaptive.drop(now)

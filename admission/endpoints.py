"""admission.endpoints: the paths the middleware answers itself, `/healthz`, `/readyz` and
`/metrics`, for HTTP requests; they are never limited, timed or counted."""

from __future__ import annotations

from admission.drain import Drain
from admission.ledger import Ledger
from admission.metrics import AdmissionCollector, render
from admission.responses import Send, send_bytes, send_json
from admission.stores import GuardedStore, Store
from admission.window import Window

PATHS = frozenset(("/healthz", "/readyz", "/metrics"))
METRICS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"


class Endpoints:
    """Endpoints answers admission's own paths: `/healthz` 200 while the process is up,
    `/readyz` 200 until the drain begins and 503 from then on (with the phase, the requests in
    flight, the window's size and whether the store is degraded), `/metrics` the Prometheus
    text of `collector`."""

    def __init__(
        self,
        drain: Drain,
        ledger: Ledger,
        window: Window | None,
        store: Store | None,
        collector: AdmissionCollector,
    ) -> None:
        self.drain = drain
        self.ledger = ledger
        self.window = window
        self.store = store
        self.collector = collector

    async def answer(self, path: str, send: Send) -> None:
        """answer sends the response for `path`, one of PATHS."""
        if path == "/healthz":
            await send_json(send, 200, {"status": "ok"})
        elif path == "/readyz":
            ready = self.drain.ready
            degraded = isinstance(self.store, GuardedStore) and self.store.degraded
            await send_json(
                send,
                200 if ready else 503,
                {
                    "status": "ready" if ready else "draining",
                    "phase": self.drain.phase.value,
                    "in_flight": self.ledger.in_flight,
                    "window": self.window.size if self.window else None,
                    "storage": "degraded" if degraded else "ok",
                },
            )
        else:
            await send_bytes(send, 200, render(self.collector), METRICS_TYPE)

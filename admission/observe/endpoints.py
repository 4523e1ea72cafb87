"""admission.observe.endpoints: the paths the middleware answers itself (by default `/healthz`,
`/readyz` and `/metrics`), for HTTP GET and HEAD requests only; they are never limited, timed or
counted. Any other method on those paths, and any path switched off, goes to the application."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping

from prometheus_client import CollectorRegistry, generate_latest

from admission.concurrency.window import Window
from admission.ledger import Ledger
from admission.lifecycle.drain import Drain
from admission.observe.metrics import AdmissionCollector, render
from admission.request.responses import send_bytes, send_json
from admission.served import routed, routes_of
from admission.types import Message, Send

METRICS_TYPE = b"text/plain; version=0.0.4; charset=utf-8"
METHODS = frozenset(("GET", "HEAD"))
# The variable that moves each endpoint, for the start-up line about an app route it shadows.
VARIABLES = {
    "health": "ADMISSION_HEALTH_PATH",
    "ready": "ADMISSION_READY_PATH",
    "metrics": "ADMISSION_METRICS_PATH",
}


class Endpoints:
    """Endpoints answers admission's own paths: `paths` maps each path to "health" (200 while
    the process is up), "ready" (200 until the drain begins and 503 from then on, with the
    phase, the requests in flight, the window's size and whether the store is `degraded()`,
    failing behind its guard) or "metrics" (the Prometheus text of `registry` when given, the
    application's metrics with admission's, else of `collector` alone). A HEAD request gets the
    same head, no body.

    `storage_up`, given when the store's failures refuse requests (`ADMISSION_ON_STORAGE_ERROR=
    deny`), is asked by "ready" while the store is degraded: a pod that refuses everything for
    want of its store must fail readiness, so that the balancer sends its traffic elsewhere."""

    def __init__(
        self,
        drain: Drain,
        ledger: Ledger,
        window: Window | None,
        degraded: Callable[[], bool],
        collector: AdmissionCollector,
        *,
        paths: Mapping[str, str] | None = None,
        registry: CollectorRegistry | None = None,
        storage_up: Callable[[], Awaitable[bool]] | None = None,
    ) -> None:
        self.drain = drain
        self.ledger = ledger
        self.window = window
        self.degraded = degraded
        self.collector = collector
        self.registry = registry
        self.storage_up = storage_up
        self.paths: Mapping[str, str] = (
            {"/healthz": "health", "/readyz": "ready", "/metrics": "metrics"}
            if paths is None
            else paths
        )

    def shadowed(self, app: object) -> list[tuple[str, str]]:
        """shadowed lists (path, variable that moves it) for each of admission's endpoints that
        a route of `app`'s Starlette router also serves: GET and HEAD there reach admission's,
        never the application's."""
        routes = routes_of(app)
        if routes is None:
            return []
        return [
            (path, VARIABLES[kind])
            for path, kind in self.paths.items()
            if routed(routes, "GET", path)
        ]

    async def answer(self, path: str, send: Send, method: str = "GET") -> None:
        """answer sends the response for `path`, one of `paths`."""
        if method == "HEAD":
            send = _without_body(send)
        kind = self.paths[path]
        if kind == "health":
            await send_json(send, 200, {"status": "ok"})
        elif kind == "ready":
            ready = self.drain.ready
            degraded = self.degraded()
            status = "ready" if ready else "draining"
            if ready and degraded and self.storage_up is not None and not await self.storage_up():
                ready, status = False, "storage_unavailable"
            await send_json(
                send,
                200 if ready else 503,
                {
                    "status": status,
                    "phase": self.drain.phase.value,
                    "in_flight": self.ledger.in_flight,
                    "window": self.window.size if self.window else None,
                    "storage": "degraded" if degraded else "ok",
                },
            )
        else:
            text = (
                render(self.collector) if self.registry is None else generate_latest(self.registry)
            )
            await send_bytes(send, 200, text, METRICS_TYPE)


def _without_body(send: Send) -> Send:
    """_without_body is `send` with every body emptied: the answer to a HEAD request keeps the
    GET answer's head, its content-length included."""

    async def head_only(message: Message) -> None:
        if message["type"] == "http.response.body":
            message = {**message, "body": b""}
        await send(message)

    return head_only

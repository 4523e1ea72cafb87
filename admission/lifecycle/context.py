"""admission.lifecycle.context: what a handler can ask admission about its own request.

Each function takes the ASGI scope or anything with a `.scope` (Starlette's Request and
WebSocket). Outside admission (no middleware in front) they answer as if nothing were set:
no deadline, not draining, and a request lifetime is refused with RuntimeError.
"""

from __future__ import annotations

from typing import Any, Protocol

from admission.lifetime import Lifetime

STATE_KEY = "admission"


class Exchange(Protocol):
    """Exchange is what this module reads of the request's
    `admission.request.exchange.Exchange`, which puts itself in the scope's state under
    STATE_KEY while the request runs."""

    deadline: float | None
    lifetime: Lifetime | None

    def time_left(self) -> float | None: ...

    def draining(self) -> bool: ...


_service: Lifetime | None = None
_adopted = False


def _exchange(request: Any) -> Exchange | None:
    scope = request if isinstance(request, dict) else getattr(request, "scope", {})
    state = scope.get("state")
    if not state:
        return None
    return state.get(STATE_KEY)  # type: ignore[no-any-return]


def time_left(request: Any) -> float | None:
    """time_left is the seconds left before the handler's deadline (`ADMISSION_REQUEST_TIMEOUT`),
    never negative; None when there is no deadline. Pass it on to the calls the handler makes."""
    exchange = _exchange(request)
    return None if exchange is None else exchange.time_left()


def deadline(request: Any) -> float | None:
    """deadline is the event-loop time (`loop.time()`) at which the handler is cancelled, or
    None when there is none."""
    exchange = _exchange(request)
    return None if exchange is None else exchange.deadline


def draining(request: Any) -> bool:
    """draining is True once the service has begun to drain: a streaming or websocket handler
    can finish early and let its client reconnect elsewhere."""
    exchange = _exchange(request)
    return False if exchange is None else exchange.draining()


def request_lifetime(request: Any) -> Lifetime:
    """request_lifetime is a `Lifetime` that ends with the request: tasks it spawns are
    cancelled and child processes it starts are terminated when the request finishes, fails,
    times out, is cancelled or its client hangs up, before the request's slot is given back."""
    exchange = _exchange(request)
    if exchange is None:
        raise RuntimeError("request_lifetime needs a request admitted by AdmissionMiddleware")
    if exchange.lifetime is None:
        exchange.lifetime = Lifetime("request", grace_s=1.0, cleanup_timeout_s=1.0)
    return exchange.lifetime


def service_lifetime() -> Lifetime:
    """service_lifetime is the `Lifetime` of the service: what it holds is released once, at
    the end of the drain (tasks cancelled, children terminated, cleanups run highest priority
    first, ties last-registered first). It may be called before the middleware exists, at
    import time, to register cleanups: the next AdmissionMiddleware created adopts it. Each
    lifespan that starts after a completed shutdown gets a fresh one. Tasks and child
    processes need a running event loop, so start those from a lifespan handler or a
    request."""
    global _service, _adopted
    if _service is None or _service.closed:
        _service = Lifetime("service")
        _adopted = False
    return _service


def adopt_service_lifetime(cleanup_timeout_s: float) -> Lifetime:
    """adopt_service_lifetime gives a new AdmissionMiddleware its service lifetime: the one
    `service_lifetime()` handed out before it existed, else a new one."""
    global _service, _adopted
    if _service is None or _service.closed or _adopted:
        _service = Lifetime("service", cleanup_timeout_s=cleanup_timeout_s)
    else:
        _service.cleanup_timeout_s = cleanup_timeout_s
    _adopted = True
    return _service

"""admission.context: what a handler can ask admission about its own request.

Each function takes the ASGI scope or anything with a `.scope` (Starlette's Request and
WebSocket). Outside admission (no middleware in front) they answer as if nothing were set:
no deadline, not draining, and a request lifetime is refused with RuntimeError.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from admission.exchange import Exchange
    from admission.lifetime import Lifetime

STATE_KEY = "admission"

_service: Lifetime | None = None


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
    from admission.lifetime import Lifetime

    exchange = _exchange(request)
    if exchange is None:
        raise RuntimeError("request_lifetime needs a request admitted by AdmissionMiddleware")
    if exchange.lifetime is None:
        exchange.lifetime = Lifetime("request", grace_s=1.0, cleanup_timeout_s=1.0)
    return exchange.lifetime


def service_lifetime() -> Lifetime:
    """service_lifetime is the `Lifetime` of the service: what it holds is released at the end
    of the drain (tasks cancelled, children terminated, cleanups run last-registered first).
    It belongs to the AdmissionMiddleware created last in this process."""
    if _service is None:
        raise RuntimeError("service_lifetime needs an AdmissionMiddleware in this process")
    return _service


def set_service_lifetime(lifetime: Lifetime) -> None:
    """set_service_lifetime makes `lifetime` the one `service_lifetime()` returns."""
    global _service
    _service = lifetime

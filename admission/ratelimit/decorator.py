"""admission.ratelimit.decorator: limits declared on the route, `@limit("5/minute")`.

`limit` marks an endpoint and returns it unchanged (its signature intact for FastAPI). At
start-up `route_policies` finds every marked endpoint in the application's Starlette router
(mounts and included routers too) and makes its route a policy, named after the route, which
the middleware enforces before the handler with every other matching policy, all or nothing.
The policy follows the route it was declared on: its path as the router sees it, every
method it serves (`HEAD` with `GET`), whatever a client writes.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple, TypeVar

from admission.config.policies import CostSpec, KeySpec, Policy
from admission.served import routes_of, walk

__all__ = ["limit", "route_policies"]

F = TypeVar("F", bound=Callable[..., Any])
MARK = "__admission_limit__"
# A path convertor that takes the rest of the path, whatever its slashes ("{name:path}").
_REST = re.compile(r"\{[^}:]+:path\}$")
_PARAM = re.compile(r"\{[^}]*\}")
_NAME_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")


class RouteLimit(NamedTuple):
    """RouteLimit is what `@limit` says of an endpoint: its rates and the policy's fields."""

    limits: tuple[str, ...]
    key: KeySpec
    cost: CostSpec
    burst: int | None
    name: str | None
    charge_when: tuple[str | int, ...] = ()
    message_limits: tuple[str, ...] = ()


def limit(
    *limits: str,
    key: KeySpec = "ip",
    cost: CostSpec = 1,
    burst: int | None = None,
    name: str | None = None,
    charge_when: Sequence[str | int] | str = (),
    message_limits: Sequence[str] | str = (),
) -> Callable[[F], F]:
    """limit makes the route of the decorated endpoint a route policy of `limits` (rates in
    limits notation, all of which must admit), keyed by `key` ("ip", "global",
    "header:<Name>" or a callable), each request costing `cost`, every bucket holding `burst`
    (default: each rate's amount). The policy is named `name`, else after the route
    ("route.<route name>"). `charge_when` (statuses such as "401" or classes such as "4xx")
    charges a request only when its response has one of them, as the policy field does.
    `message_limits` (rates too) limit the messages a client sends on a websocket route,
    across all its sockets; with them, `limits` may be left out (the handshakes are then not
    limited). Put it under the route decorator or above it: either way the endpoint is
    returned unchanged. The fields are checked at once: a bad rate or status raises here."""
    when = (charge_when,) if isinstance(charge_when, (str, int)) else tuple(charge_when)
    messages = (message_limits,) if isinstance(message_limits, str) else tuple(message_limits)
    spec = RouteLimit(tuple(limits), key, cost, burst, name, when, messages)
    # Checked now, with a stand-in path: a typo fails where it was written, not at start-up.
    _policy(spec, "route.check", ["GET /"])

    def mark(endpoint: F) -> F:
        setattr(endpoint, MARK, spec)
        return endpoint

    return mark


def route_policies(app: object) -> tuple[Policy, ...]:
    """route_policies is a policy per route of `app`'s router whose endpoint `@limit` marked,
    in route order; empty when there is no router or no mark."""
    routes = routes_of(app)
    if routes is None:
        return ()
    found: list[Policy] = []
    seen: set[str] = set()
    for route, path in walk(routes):
        spec = getattr(getattr(route, "endpoint", None), MARK, None)
        if not isinstance(spec, RouteLimit):
            continue
        methods = getattr(route, "methods", None) or {"GET"}
        pattern = _pattern(path)
        match = [f"{m} {pattern}" for m in sorted(methods) if m != "HEAD"] or [f"GET {pattern}"]
        name = spec.name or "route." + _NAME_CHARS.sub("_", str(getattr(route, "name", path)))
        base, n = name, 1
        while name in seen:
            n += 1
            name = f"{base}.{n}"
        seen.add(name)
        found.append(_policy(spec, name[:64], match))
    return tuple(found)


def _policy(spec: RouteLimit, name: str, match: Sequence[str]) -> Policy:
    return Policy(
        name=name,
        match=tuple(match),
        limits=spec.limits,
        key=spec.key,
        burst=spec.burst,
        cost=spec.cost,
        charge_when=spec.charge_when,
        message_limits=spec.message_limits,
        source="@limit",
    )


def _pattern(path: str) -> str:
    """_pattern is a route's path as a policy pattern: `{name:path}` at its end is a prefix,
    and a segment holding a parameter is a `{name}` segment."""
    if _REST.search(path):
        return _REST.sub("", path) + "*"
    segments = ["{p}" if "{" in segment else segment for segment in (path or "/").split("/")]
    return "/".join(segments) or "/"

"""admission.served: what the application serves, read from its Starlette router: which
policy patterns name no route it serves, and which paths it routes (those admission's own
endpoints would shadow).

A typo (`"POST /logn"`) or a renamed route leaves a policy limiting nothing, silently. When the
application exposes a Starlette router (Starlette, FastAPI, their mounts and routers), each
pattern is tried against it once at start-up, the way a request would be routed: a literal
path or a template (its `{name}` segments filled with sample values) as a request of the
pattern's method, a prefix (`/api/*`) against every route's path. An application without a
router (plain ASGI) is not checked: nothing can be known of what it serves.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Iterator, Sequence
from typing import Any

from admission.config.policies import Policy, split_pattern
from admission.types import layers

# Values a template's `{name}` segment is filled with: one of them fits each of Starlette's
# convertors (str, path, int, float, uuid).
_SAMPLES = ("1", "x", "00000000-0000-0000-0000-000000000000")
_PARAM = re.compile(r"\{[^}]*\}")


def routes_of(app: object) -> Sequence[Any] | None:
    """routes_of is the route list of the first router found in `app` or the apps it wraps
    (`.app`, as middleware hold them); None when there is none."""
    for layer in layers(app):
        routes = getattr(layer, "routes", None)
        if isinstance(routes, list):
            return routes
    return None


def unserved(app: object, policies: Iterable[Policy]) -> list[tuple[str, str]]:
    """unserved lists (policy name, pattern) for each pattern of `policies` that matches no
    route of `app`; empty when `app` has no router to check against. "*" always matches."""
    routes = routes_of(app)
    if routes is None:
        return []
    found = []
    for policy in policies:
        for pattern in policy.match:
            method, path = split_pattern(pattern)
            if path != "*" and not _matches(routes, method, path):
                found.append((policy.name, pattern))
    return found


def _matches(routes: Sequence[Any], method: str | None, path: str) -> bool:
    if path.endswith("*"):
        prefix = path[:-1]
        return any(
            served.startswith(prefix) or (whole and prefix.startswith(served))
            for served, whole in _paths(routes, "")
        )
    probes = {_PARAM.sub(sample, path) for sample in _SAMPLES}
    return any(routed(routes, method, probe) for probe in probes)


def routed(routes: Sequence[Any], method: str | None, path: str) -> bool:
    """routed: would a request for `path` (of `method`, any method when None) reach a route?"""
    from starlette.routing import Match

    kinds = ("http", "websocket") if method in (None, "GET") else ("http",)
    for kind in kinds:
        scope: dict[str, Any] = {
            "type": kind,
            "path": path,
            "root_path": "",
            "method": method or "GET",
            "headers": [],
        }
        if _find(routes, scope, Match, any_method=method is None):
            return True
    return False


def _find(routes: Sequence[Any], scope: dict[str, Any], match: Any, *, any_method: bool) -> bool:
    for route in routes:
        matches = getattr(route, "matches", None)
        if matches is None:
            continue
        found, child = matches(scope)
        if found == match.NONE or (found == match.PARTIAL and not any_method):
            continue
        inner = getattr(route, "routes", None)
        if isinstance(inner, list) and inner and "root_path" in child:
            # A mount of a router: the request is routed on inside it.
            if _find(inner, {**scope, **child}, match, any_method=any_method):
                return True
            continue
        return True
    return False


def walk(routes: Sequence[Any], base: str = "") -> list[tuple[Any, str]]:
    """walk is every route below `routes` that is not itself a router, with its full path:
    mounts' prefixes and the prefix FastAPI's included routers were given joined."""
    out: list[tuple[Any, str]] = []
    for route in routes:
        included = getattr(route, "original_router", None)
        if included is not None:
            # FastAPI's included router: its routes hold their full paths, past the prefix
            # given to include_router.
            prefix = str(getattr(getattr(route, "include_context", None), "prefix", ""))
            out += walk(getattr(included, "routes", []), base + prefix)
            continue
        path = base + str(getattr(route, "path", ""))
        inner = getattr(route, "routes", None)
        if isinstance(inner, list) and inner:
            out += walk(inner, path)
        else:
            out.append((route, path))
    return out


def _paths(routes: Sequence[Any], base: str) -> Iterator[tuple[str, bool]]:
    """_paths yields every route's path as written, and whether it covers everything below it
    (a mount of an application that is not a router)."""
    for route, path in walk(routes, base):
        yield path, hasattr(route, "routes") or not hasattr(route, "endpoint")

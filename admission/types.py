"""admission.types: the ASGI types every layer speaks, defined once, and two readings of them:
a request's path below its root path, and the layers of an application stack."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterator, MutableMapping
from typing import Any

Message = MutableMapping[str, Any]
Scope = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]
RawHeaders = list[tuple[bytes, bytes]]
"""RawHeaders is a response's header fields as ASGI carries them: (name, value) byte pairs."""


def route_path(scope: Scope) -> str:
    """route_path is the request's path below the app's mount point: `scope["path"]` without
    `scope["root_path"]` (as Starlette routes it), so that admission's endpoints, exempt paths
    and policy patterns mean the same under `--root-path /api` as without. A path outside the
    root path is returned whole; the root path itself is ""."""
    path: str = scope["path"]
    root: str = scope.get("root_path", "")
    if not root or not path.startswith(root):
        return path
    if len(path) == len(root):
        return ""
    return path[len(root) :] if path[len(root)] == "/" else path


# How far down `.app` attributes (middleware wrapping middleware) a stack is followed.
MAX_LAYERS = 64


def layers(app: object) -> Iterator[object]:
    """layers yields `app` and each application it wraps, outermost first, through the `.app`
    attribute middleware hold them in (Starlette's, admission's), at most MAX_LAYERS deep."""
    for _ in range(MAX_LAYERS):
        if app is None:
            return
        yield app
        app = getattr(app, "app", None)

"""admission.testing: helpers for testing an app that uses admission, and a pytest plugin.

`reset(app)` empties every bucket and the window of each `AdmissionMiddleware` in `app`'s stack
(`await areset(app)` as well for a Redis store); `use_clock(app, clock)` makes a memory store's
buckets read a manual clock; `disabled(app)` takes admission out of the stack for a while;
`lifespan(app)` runs an app's lifespan around an `async with` block, for clients that don't
(httpx's `ASGITransport`); `ManualClock` is a clock a test moves by hand.

The pytest plugin is these fixtures, loaded by `pytest_plugins = ["admission.testing"]` in a
project's top-level conftest.py. They find the application in a fixture named `app` that the
project defines:

- `admission_app`: `app` with every bucket and the window reset before and after the test;
- `admission_clock`: a `ManualClock` that `app`'s memory-store buckets read during the test;
- `admission_disabled_app`: `app` (or, for an app that is itself the middleware, the app it
  wraps) with admission out of the way during the test.

It is not registered as an entry point on purpose: that would import admission, and everything
it imports, into every pytest run of every project installed beside it.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from typing import Any

from admission.middleware import AdmissionMiddleware
from admission.ratelimit.limiter import PolicyLimiter
from admission.stores import GuardedStore, MemoryStore

__all__ = [
    "LifespanFailed",
    "ManualClock",
    "areset",
    "disabled",
    "lifespan",
    "middlewares",
    "reset",
    "use_clock",
]


# More objects than any real stack has: the walk of one that never ends stops here.
MAX_LAYERS = 10_000


class ManualClock:
    """ManualClock is a clock that stands still until `advance(seconds)` moves it on: calling
    it, or `time()`, answers `now`. It starts at `now` (1000 s: any value works, buckets only
    compare times)."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def time(self) -> float:
        """time is `now`."""
        return self.now

    def advance(self, seconds: float) -> None:
        """advance moves the clock `seconds` on (never back: a negative value is refused)."""
        if seconds < 0:
            raise ValueError(f"a clock moves forward only, not by {seconds}")
        self.now += seconds


def middlewares(app: Any) -> list[AdmissionMiddleware]:
    """middlewares is every `AdmissionMiddleware` in `app`'s stack, outermost first: `app`
    itself, what it wraps (`.app`), a Starlette or FastAPI app's middleware stack (built now,
    as its first call would, if it wasn't yet) and the apps it mounts. Empty when there is
    none."""
    found: list[AdmissionMiddleware] = []
    for _, layer in _layers(app):
        if isinstance(layer, AdmissionMiddleware):
            found.append(layer)
    return found


def reset(app: Any) -> list[AdmissionMiddleware]:
    """reset empties every bucket and the window of each `AdmissionMiddleware` in `app`'s stack,
    and returns them: every client's buckets are full again, no slot is taken, and an adaptive
    window starts over from its first size. Call it between tests, while no request runs
    (RuntimeError otherwise). LookupError when `app` has no AdmissionMiddleware; TypeError for
    a store that needs I/O to empty (Redis): `await areset(app)` instead."""
    found = _found(app)
    for middleware in found:
        store = middleware.store
        if store is not None and not isinstance(_inner(store), MemoryStore):
            raise TypeError(
                f"{type(_inner(store)).__name__} is emptied over the network: "
                "use `await admission.testing.areset(app)`"
            )
    for middleware in found:
        _reset_local(middleware)
    return found


async def areset(app: Any) -> list[AdmissionMiddleware]:
    """areset is `reset` for any store: a Redis store's buckets under its key prefix are
    deleted too (a Redis shared with a running service would lose that service's buckets)."""
    found = _found(app)
    for middleware in found:
        _reset_local(middleware)
        inner = _inner(middleware.store)
        clear = getattr(inner, "clear", None)
        if clear is not None and not isinstance(inner, MemoryStore):
            await clear()
    return found


def use_clock(app: Any, clock: Callable[[], float]) -> Callable[[], None]:
    """use_clock makes the memory-store buckets of each AdmissionMiddleware in `app` read
    `clock` (a `ManualClock`, say) instead of the monotonic clock, and returns the function
    that puts the clocks back. Buckets are emptied both times: times read from two clocks
    can't be compared. Timeouts and the drain keep the event loop's clock."""
    undo: list[Callable[[], None]] = []
    for middleware in _found(app):
        _reset_local(middleware)
        for holder, name in _clock_holders(middleware):
            undo.append(_setter(holder, name, getattr(holder, name)))
            setattr(holder, name, clock)

    def restore() -> None:
        for step in reversed(undo):
            step()
        for middleware in _found(app):
            _reset_local(middleware)

    return restore


@contextlib.contextmanager
def disabled(app: Any) -> Iterator[Any]:
    """disabled takes every AdmissionMiddleware out of `app`'s stack inside the `with` block
    (the layer in front of each calls the app behind it directly: no limits, no endpoints, no
    drain, the application's own lifespan) and yields the app to call: `app` itself, or the
    app it wraps when `app` is an AdmissionMiddleware. Put back on the way out."""
    undo: list[Callable[[], None]] = []
    outer = app
    for parent, layer in _layers(app):
        if not isinstance(layer, AdmissionMiddleware):
            continue
        behind = layer.app
        if parent is None:
            outer = behind
        elif getattr(parent, "app", None) is layer:
            undo.append(_setter(parent, "app", layer))
            parent.app = behind
        else:
            raise TypeError(f"can't take admission out of {type(parent).__name__}")
    try:
        yield outer
    finally:
        for step in reversed(undo):
            step()


class LifespanFailed(RuntimeError):
    """LifespanFailed is an app's refusal to start or to shut down, with its message."""


@contextlib.asynccontextmanager
async def lifespan(app: Any, *, timeout_s: float = 30.0) -> AsyncIterator[Any]:
    """lifespan runs `app`'s ASGI lifespan around the `async with` block, as a server would:
    start-up before the block (LifespanFailed if the app refuses it), shutdown after it, each
    within `timeout_s`. It yields `app`. For clients that send requests without a lifespan,
    such as httpx's `ASGITransport`; Starlette's `TestClient` runs it itself. An app that
    doesn't speak lifespan (it raises on the scope before starting) is simply called."""
    to_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    from_app: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
    scope = {"type": "lifespan", "asgi": {"version": "3.0", "spec_version": "2.0"}, "state": {}}

    async def run() -> None:
        try:
            await app(scope, to_app.get, from_app.put)
        finally:
            # An app that returns (or raises) without answering must not leave us waiting.
            await from_app.put({"type": "lifespan.ended"})

    task = asyncio.get_running_loop().create_task(run())
    try:
        await to_app.put({"type": "lifespan.startup"})
        answer = await asyncio.wait_for(from_app.get(), timeout_s)
        if answer["type"] == "lifespan.startup.failed":
            raise LifespanFailed(answer.get("message", ""))
        supported = answer["type"] == "lifespan.startup.complete"
        yield app
        if supported:
            await to_app.put({"type": "lifespan.shutdown"})
            answer = await asyncio.wait_for(from_app.get(), timeout_s)
            if answer["type"] == "lifespan.shutdown.failed":
                raise LifespanFailed(answer.get("message", ""))
    finally:
        if not task.done():
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


def _found(app: Any) -> list[AdmissionMiddleware]:
    found = middlewares(app)
    if not found:
        raise LookupError(f"no AdmissionMiddleware in the stack of {app!r}")
    return found


def _layers(app: Any) -> Iterator[tuple[Any, Any]]:
    """_layers walks `app`'s stack: (the layer that calls it, or None for `app`; the layer),
    each object once. A Starlette app's stack is built now if it wasn't yet, exactly as
    Starlette's first call builds it (and keeps it)."""
    # Each object kept (not only its id): an id is reused once its object is gone.
    seen: dict[int, Any] = {}
    todo: list[tuple[Any, Any]] = [(None, app)]
    while todo:
        parent, layer = todo.pop(0)
        if layer is None or id(layer) in seen:
            continue
        if len(seen) >= MAX_LAYERS:
            # An object that makes up a new `.app` on every look (a mock) would never end.
            raise RecursionError(f"more than {MAX_LAYERS} layers in the stack of {app!r}")
        seen[id(layer)] = layer
        yield parent, layer
        if callable(getattr(layer, "build_middleware_stack", None)):
            # Starlette (and FastAPI) build the stack on their first call; build it the same
            # way so that the middleware exists, and later calls use this very stack.
            if getattr(layer, "middleware_stack", None) is None:
                layer.middleware_stack = layer.build_middleware_stack()
            todo.append((layer, layer.middleware_stack))
            continue
        inner = getattr(layer, "app", None)
        if inner is not None:
            todo.append((layer, inner))
        for route in getattr(layer, "routes", None) or ():
            # Mounted apps (a Mount's app, a Host's) may have middleware stacks of their own.
            mounted = getattr(route, "app", None)
            if mounted is not None:
                todo.append((route, mounted))


def _inner(store: Any) -> Any:
    """_inner is the store behind a GuardedStore, else `store`."""
    return store.store if isinstance(store, GuardedStore) else store


def _reset_local(middleware: AdmissionMiddleware) -> None:
    """_reset_local empties what `middleware` holds in this process: memory buckets (a memory
    store's, a guarded store's local fallback) and the windows."""
    if middleware.ledger.in_flight:
        raise RuntimeError(
            f"{middleware.ledger.in_flight} request(s) in flight: reset between tests, "
            "when none runs"
        )
    store = middleware.store
    if isinstance(store, MemoryStore):
        store.clear()
    elif isinstance(store, GuardedStore):
        store._local.clear()
    for window in (middleware.window, middleware.websocket_window):
        if window is not None:
            window.used = 0
    if middleware.adaptive is not None:
        middleware.adaptive.restart()


def _clock_holders(middleware: AdmissionMiddleware) -> list[tuple[Any, str]]:
    """_clock_holders is every (object, attribute) a memory-store decision reads the clock
    from: the store's own, and the policy limiter's (for its shadow log)."""
    holders: list[tuple[Any, str]] = []
    store = middleware.store
    if isinstance(store, MemoryStore):
        holders.append((store, "clock"))
    gate = middleware.gate
    if isinstance(gate, PolicyLimiter) and isinstance(store, MemoryStore):
        holders.append((gate, "clock"))
    return holders


def _setter(holder: Any, name: str, value: Any) -> Callable[[], None]:
    return lambda: setattr(holder, name, value)


try:
    import pytest
except ImportError:  # pragma: no cover - the helpers above need no pytest
    pass
else:

    @pytest.fixture
    def admission_app(app: Any) -> Iterator[Any]:
        """admission_app is the project's `app` fixture with admission's buckets and window
        reset before the test and after it (see `reset`: a Redis store needs an async fixture
        of the project's own that awaits `areset`)."""
        reset(app)
        yield app
        reset(app)

    @pytest.fixture
    def admission_clock(app: Any) -> Iterator[ManualClock]:
        """admission_clock is a `ManualClock` that the memory-store buckets of the project's
        `app` read during the test (see `use_clock`): a bucket refills only when the test
        moves the clock on."""
        clock = ManualClock()
        restore = use_clock(app, clock)
        yield clock
        restore()

    @pytest.fixture
    def admission_disabled_app(app: Any) -> Iterator[Any]:
        """admission_disabled_app is the project's `app` with admission taken out of its stack
        for the test (see `disabled`)."""
        with disabled(app) as bare:
            yield bare

"""admission.middleware: `AdmissionMiddleware`, the one piece users add to their app."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
import struct
from asyncio import current_task
from collections.abc import Awaitable, Callable, Sequence
from threading import get_ident
from time import perf_counter
from types import FrameType

from admission import context
from admission.drain import Drain
from admission.errors import ConfigError
from admission.exchange import DisconnectWatch, Exchange, Timeouts
from admission.headers import policy_header, ratelimit_header, retry_after_seconds
from admission.keys import make_key_func
from admission.ledger import Ledger
from admission.metrics import AdmissionCollector, Stats, render
from admission.responses import (
    Message,
    Receive,
    Scope,
    Send,
    refuse_websocket,
    send_bytes,
    send_json,
    send_problem,
)
from admission.settings import Settings
from admission.signals import SignalChain
from admission.stores import GuardedStore, MemoryStore, Store, bucket_for, open_store
from admission.window import Window

log = logging.getLogger("admission")

ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

ENDPOINTS = frozenset(("/healthz", "/readyz", "/metrics"))
CLOSE = (b"connection", b"close")
RETRY_1 = (b"retry-after", b"1")
# Status for requests cut short by admission, when nothing was sent yet.
ABORT_STATUS = {
    "read_timeout": 408,
    "idle_timeout": 408,
    "deadline": 504,
    "drain_deadline": 503,
}
# Websocket close codes when admission ends a socket: going away, or normal closure on idle.
WS_ABORT_CODE = {"draining": 1001, "drain_deadline": 1001, "idle_timeout": 1000}


class AdmissionMiddleware:
    """AdmissionMiddleware admits, limits, times and drains every request to `app`.

    `settings` default to `Settings.from_env()`. `store` replaces the one `ADMISSION_STORAGE`
    names (a store that can fail is wrapped in the `ADMISSION_ON_STORAGE_ERROR` policy).
    `handle_signals=False` leaves SIGTERM/SIGINT alone, for programs that call `drain()`
    themselves. Scope types other than http, websocket and lifespan pass straight through.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings | None = None,
        store: Store | None = None,
        handle_signals: bool = True,
    ) -> None:
        self.app = app
        self._config_error: ConfigError | None = None
        if settings is None:
            try:
                settings = Settings.from_env()
            except ConfigError as exc:
                if not _loop_running():
                    raise
                # Built by Starlette inside the server's first call (the lifespan): raising here
                # would read as "lifespan unsupported" under uvicorn's default, which then serves
                # 500s. Fail the start-up through the lifespan protocol instead.
                self._config_error = exc
                settings = Settings()
        self.settings = s = settings
        self.stats = Stats()
        self.ledger = Ledger()
        self.lifetime = context.adopt_service_lifetime(s.cleanup_timeout)
        bucket = bucket_for(s)
        if (
            store is not None
            and bucket is not None
            and not isinstance(store, MemoryStore | GuardedStore)
        ):
            store = GuardedStore(store, bucket, s.on_storage_error, max_keys=s.max_keys)
        self.store = store if store is not None else open_store(s)
        if isinstance(self.store, GuardedStore):
            self.store._on_error = self._count_storage_error
        rate = s.rate_item
        self._policy = policy_header(rate) if rate is not None else None
        self.window = Window(s.window, max_waiters=s.waiters_cap) if s.window else None
        ws_size = s.websocket_window or s.window
        self.websocket_window = Window(ws_size, max_waiters=0) if ws_size else None
        self.drain_state = Drain(
            self.ledger,
            self.lifetime,
            delay_s=s.drain_delay,
            timeout_s=s.drain_timeout,
            last=self.store.close if self.store is not None else None,
        )
        self.timeouts = Timeouts(s.read_timeout, s.idle_timeout, s.write_timeout, s.request_timeout)
        self._key = make_key_func(s)
        self._exempt = s.exempt
        windows = {
            k: w for k, w in (("http", self.window), ("websocket", self.websocket_window)) if w
        }
        self.collector = AdmissionCollector(
            self.stats, self.ledger, windows, self.drain_state.draining
        )
        self._signals = SignalChain(self._on_signal) if handle_signals else None
        self._signal_count = 0
        self._started = False
        self._lifespan_running = False
        self._drain_task: asyncio.Task[None] | None = None
        self._watch = DisconnectWatch(self.ledger)
        # Without write and idle timeouts, responses go through the exchange's lean `send`.
        self._untimed_send = s.write_timeout is None and s.idle_timeout is None
        # The loop requests last ran on, and its thread: finding the running loop afresh costs
        # more than the rest of an admission (see `_loop_and_task`).
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread = 0

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """__call__ is the order of the layers for http and websocket, outermost first: own
        endpoints, exempt paths, drain gate, window, rate limit, then the application inside
        the exchange's timeouts. Lifespan and other scope types go to `_other`. Written as one
        function on purpose: each coroutine layer costs every request."""
        kind = scope["type"]
        if (kind != "http" and kind != "websocket") or self._config_error is not None:
            await self._other(scope, receive, send)
            return
        if not self._started:
            self._start()
        path = scope["path"]
        websocket = kind == "websocket"
        if path in ENDPOINTS and not websocket:
            await self._endpoint(path, send)
            return
        if self._exempt and path.startswith(self._exempt):
            await self.app(scope, receive, send)
            return
        drain = self.drain_state
        if not drain.accepting:
            await self._refuse(scope, receive, send, 503, "draining", [RETRY_1, CLOSE])
            return
        window = self.websocket_window if websocket else self.window
        if (
            window is not None
            and not window.try_take()
            and not await window.take(self.settings.queue_timeout)
        ):
            headers = [(b"retry-after", b"1")]
            await self._refuse(scope, receive, send, self.settings.window_status, "window", headers)
            return
        try:
            extra: Sequence[tuple[bytes, bytes]] = ()
            if self.store is not None:
                store = self.store
                if type(store) is MemoryStore:
                    # Synchronous: saves a coroutine per request (subclasses keep `decide`).
                    decision = store.decide_at(self._key(scope), store.clock())
                else:
                    decision = await store.decide(self._key(scope))
                assert self._policy is not None
                limit_headers = [self._policy, ratelimit_header(decision)]
                if not decision.allowed:
                    fill = self.settings.emission_interval_s
                    retry = str(retry_after_seconds(decision.retry_after_s, fill)).encode()
                    headers = [(b"retry-after", retry), *limit_headers]
                    await self._refuse(scope, receive, send, 429, "rate", headers)
                    return
                extra = limit_headers
            if not drain.accepting:
                # It waited for a slot or for Redis while the drain began: it must not start.
                await self._refuse(scope, receive, send, 503, "draining", [RETRY_1, CLOSE])
                return
            loop = self._loop
            if (
                loop is None
                or self._loop_thread != get_ident()
                or (task := current_task(loop)) is None
            ):
                loop, task = self._loop_and_task()
            # Positional: keyword arguments to a constructor cost a third of a microsecond.
            exchange = Exchange(scope, receive, send, self.timeouts, extra, drain, loop, task)
            state = scope.get("state")
            if state is None:
                scope["state"] = state = {}
            state[context.STATE_KEY] = exchange
            self.ledger.enter(exchange)
            if self._watch.timer is None:
                self._watch.arm()
            self.stats.admitted += 1
            try:
                if self.timeouts.enabled:
                    exchange.begin()
                send_ = exchange.send_untimed if self._untimed_send else exchange.send
                await self.app(scope, exchange.receive, send_)
            except asyncio.CancelledError:
                exchange.end()
                if not exchange.owns_cancellation():
                    raise
                await self._aborted(exchange, send)
            except BaseException:
                exchange.end()
                raise
            else:
                exchange.end()
            finally:
                try:
                    if exchange.lifetime is not None:
                        await exchange.lifetime.close()
                finally:
                    self.ledger.leave(exchange)
                    self.stats.observe(perf_counter() - exchange.begun_at)
                    # scope -> state -> exchange -> scope is a reference cycle: left in place, every
                    # request's objects (the server's included) wait for the cyclic garbage
                    # collector instead of being freed here, which costs more than all the rest.
                    if state.get(context.STATE_KEY) is exchange:
                        del state[context.STATE_KEY]
        finally:
            if window is not None:
                window.give()

    def _loop_and_task(self) -> tuple[asyncio.AbstractEventLoop, asyncio.Task[object] | None]:
        """_loop_and_task finds the running loop and the current task the slow way, and keeps
        the loop and its thread for the next request. The fast way, the task the kept loop is
        running now, asked from the kept loop's thread, is only None when the loop changed: a
        new loop has no current task on the old one. (From another thread the kept loop may be
        busy with a task of its own, which must never be taken for this request's.)"""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:
            self._watch.moved()
            self._loop = loop
        self._loop_thread = get_ident()
        return loop, current_task(loop)

    async def _other(self, scope: Scope, receive: Receive, send: Send) -> None:
        """_other handles what is not an admitted request: a refusal to start on bad settings,
        the lifespan, and scope types admission doesn't know, which pass straight through."""
        if self._config_error is not None:
            await self._refuse_to_start(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self._lifespan(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _aborted(self, exchange: Exchange, send: Send) -> None:
        """_aborted answers for an application the exchange cut short, if anything can still
        be said: a problem response before the response started, a close frame for websockets,
        otherwise nothing (the server closes the half-sent response's connection)."""
        reason = exchange.reason or "deadline"
        self.stats.reject(reason)
        log.debug("request to %s cut short: %s", exchange.scope.get("path"), reason)
        with contextlib.suppress(Exception):
            if exchange.websocket:
                if not exchange.completed and not exchange.disconnected:
                    await send({"type": "websocket.close", "code": WS_ABORT_CODE.get(reason, 1011)})
                return
            if reason == "write_timeout" and not exchange.disconnected:
                # The client stopped reading: closing would wait for it to take the buffered
                # response first, which it never will. Drop the connection instead.
                abort_connection(send)
                return
            status = ABORT_STATUS.get(reason)
            if status is None or exchange.started or exchange.disconnected:
                return
            headers = [CLOSE] if status != 504 else []
            if status == 503:
                headers.append((b"retry-after", b"1"))
            await asyncio.wait_for(
                send_problem(send, status, reason, headers), self.timeouts.write_s or 5.0
            )

    async def _refuse(
        self,
        scope: Scope,
        receive: Receive,
        send: Send,
        status: int,
        reason: str,
        headers: list[tuple[bytes, bytes]],
    ) -> None:
        self.stats.reject(reason)
        if scope["type"] == "websocket":
            await refuse_websocket(scope, receive, send, status, reason, headers)
        else:
            await send_problem(send, status, reason, headers)

    async def _endpoint(self, path: str, send: Send) -> None:
        if path == "/healthz":
            await send_json(send, 200, {"status": "ok"})
        elif path == "/readyz":
            ready = self.drain_state.ready
            degraded = isinstance(self.store, GuardedStore) and self.store.degraded
            await send_json(
                send,
                200 if ready else 503,
                {
                    "status": "ready" if ready else "draining",
                    "phase": self.drain_state.phase.value,
                    "in_flight": self.ledger.in_flight,
                    "window": self.window.size if self.window else None,
                    "storage": "degraded" if degraded else "ok",
                },
            )
        else:
            await send_bytes(
                send, 200, render(self.collector), b"text/plain; version=0.0.4; charset=utf-8"
            )

    async def _lifespan(self, scope: Scope, receive: Receive, send: Send) -> None:
        """_lifespan runs the application's lifespan with admission's around it: start-up
        first, and at shutdown the drain before the application's own shutdown, the release of
        resources after it. An application that doesn't speak lifespan gets it done for it."""
        seen: dict[str, bool] = {"startup": False, "answered": False, "shutdown": False}
        self._lifespan_running = True

        async def receive_() -> Message:
            message = await receive()
            if message["type"] == "lifespan.startup":
                seen["startup"] = True
                await self._startup()
            elif message["type"] == "lifespan.shutdown":
                seen["shutdown"] = True
                await self.drain_state.until_drained(delay_s=0)
            return message

        async def send_(message: Message) -> None:
            kind = message["type"]
            if kind.startswith("lifespan.startup."):
                seen["answered"] = True
            elif kind.startswith("lifespan.shutdown."):
                await self.drain_state.run(delay_s=0)
            await send(message)

        try:
            await self.app(scope, receive_, send_)
        except Exception:
            if seen["answered"]:
                raise
            log.debug("the application does not support lifespan; admission runs it alone")
        if seen["answered"]:
            return
        if not seen["startup"]:
            await receive_()
        await send({"type": "lifespan.startup.complete"})
        if not seen["shutdown"]:
            await receive_()
        await self.drain_state.run(delay_s=0)
        await send({"type": "lifespan.shutdown.complete"})

    async def _startup(self) -> None:
        self._start()
        if self.store is not None:
            try:
                await self.store.check()
            except Exception as exc:
                log.warning("rate-limit storage is not reachable at start-up: %s", exc)

    def _start(self) -> None:
        self._started = True
        _ensure_logging()
        if self._signals is not None:
            self._signals.install()

    def _on_signal(self, sig: int, frame: FrameType | None) -> None:
        self._signal_count += 1
        if self._signal_count == 1:
            log.info("received signal %d: draining before the server shuts down", sig)
            self._drain_task = asyncio.get_running_loop().create_task(
                self._drain_then_forward(sig, frame)
            )
        else:
            log.warning("received signal %d again: cancelling what is still in flight", sig)
            self.drain_state.hurry()

    async def _drain_then_forward(self, sig: int, frame: FrameType | None) -> None:
        if self._lifespan_running:
            # The lifespan shutdown releases resources (see _lifespan), after the application's
            # own shutdown, which may still need them.
            await self.drain_state.until_drained()
        else:
            # No lifespan (the server runs with it off): nothing else would release them.
            await self.drain_state.run()
        assert self._signals is not None
        self._signals.forward(sig, frame)

    async def _refuse_to_start(self, scope: Scope, receive: Receive, send: Send) -> None:
        """_refuse_to_start answers every call of a middleware whose settings were bad: the
        lifespan start-up fails with the one-line error (the server exits), and any request
        that still arrives (a server without lifespan) gets 500."""
        message = str(self._config_error)
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.startup":
                pass
            await send({"type": "lifespan.startup.failed", "message": f"admission: {message}"})
        elif scope["type"] == "http":
            log.error("admission: %s", message)
            await send_problem(send, 500, "configuration", detail=message)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": 1011})

    def _count_storage_error(self) -> None:
        self.stats.storage_errors += 1

    async def drain(self) -> None:
        """drain runs the whole drain (pre-drain delay, refusal of new requests, the wait for
        in-flight requests, release of resources) and returns when it is closed. Safe to call
        concurrently and repeatedly: every call waits for the same single drain."""
        await self.drain_state.run()


def _ensure_logging() -> None:
    # Drain progress must be visible even when the host program never configured logging.
    root = logging.getLogger()
    if not root.handlers and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def abort_connection(send: Send) -> bool:
    """abort_connection drops the connection `send` writes to at once, discarding whatever is
    buffered, where the server allows it: uvicorn's `send` is a method of its request cycle,
    which holds the asyncio transport. False elsewhere; the server then closes the connection
    itself when the application returns without finishing the response."""
    transport = getattr(getattr(send, "__self__", None), "transport", None)
    abort = getattr(transport, "abort", None)
    if transport is None or not callable(abort):
        return False
    sock = transport.get_extra_info("socket")
    if sock is not None:
        # Linger 0: the close sends a reset and the kernel drops its send queue too; otherwise
        # the socket lingers, orphaned, for as long as the peer keeps its window shut.
        with contextlib.suppress(OSError):
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    abort()
    return True


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True

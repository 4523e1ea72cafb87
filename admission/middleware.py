"""admission.middleware: `AdmissionMiddleware`, the one piece users add to their app."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry

from admission import reasons
from admission.concurrency.gate import DEFAULT, Concurrency
from admission.config.settings import Settings
from admission.errors import ConfigError, StackError
from admission.lifecycle.service import Service
from admission.observe.endpoints import METHODS, Endpoints
from admission.observe.metrics import AdmissionCollector, otel_export
from admission.ratelimit.gate import message_limiter, rate_gate, with_route_limits
from admission.reasons import Reason
from admission.refusal import Refusal
from admission.request.body import Budget, buffer_body
from admission.request.exchange import Exchange, Shared, TimedExchange, Timeouts
from admission.request.responses import answer_refusal, send_problem
from admission.stats import Stats
from admission.stores import GuardedStore, MemoryStore, Store, open_store
from admission.types import ASGIApp, Receive, Scope, Send, layers, route_path

if TYPE_CHECKING:
    from opentelemetry.metrics import MeterProvider

    from admission.lifetime import Lifetime

__all__ = ["AdmissionMiddleware"]

log = logging.getLogger("admission")


# The scope types admission admits; others pass through.
ADMITTED = frozenset(("http", "websocket"))


class AdmissionMiddleware:
    """AdmissionMiddleware admits, limits, times and drains every request to `app`.

    `settings` default to `Settings.from_env()`. `store` replaces the one `ADMISSION_STORAGE`
    names (a store that can fail is wrapped in the `ADMISSION_ON_STORAGE_ERROR` policy).
    `handle_signals=False` leaves SIGTERM/SIGINT alone, for programs that call `drain()`
    themselves. `metrics_registry` (say prometheus_client.REGISTRY) gets admission's metrics
    too, and the metrics endpoint then shows that whole registry: the application's metrics with
    admission's. `meter_provider` replaces OpenTelemetry's global one for
    `ADMISSION_METRICS=otel` or `both`. Scope types other than http, websocket and lifespan
    pass straight through.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        settings: Settings | None = None,
        store: Store | None = None,
        handle_signals: bool = True,
        metrics_registry: CollectorRegistry | None = None,
        meter_provider: MeterProvider | None = None,
    ) -> None:
        self.app = app
        self._config_error: ConfigError | StackError | None = None
        self._stacked = False
        self._settings_in_code = settings is not None
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
        self.store = open_store(s, store)
        self.service = service = Service(
            s,
            self.store,
            startup=self._startup,
            served=self._served,
            handle_signals=handle_signals,
        )
        self.ledger = service.ledger
        self.drain_state = service.drain
        self.lifespan = service.lifespan
        self.signal_drain = service.signals
        # Every rate limit, `ADMISSION_RATE`'s and route policies', is the one gate's.
        self.gate = rate_gate(s, self.store)
        self._on_refuse = s.on_refuse
        # ADMISSION_HEADERS: which responses carry the RateLimit fields.
        self._fields_on_admitted = s.headers == "all"
        self._fields_on_refusals = s.headers != "off"
        # Only a service exporting to OpenTelemetry loads it (and records latencies twice).
        otel = None if s.metrics == "prometheus" else otel_export(meter_provider)
        self.stats = Stats() if otel is None else otel.stats()
        self.concurrency = c = Concurrency(s, self.stats)
        # Read on every request: attributes of the middleware, one lookup each.
        self.window = c.slots
        self._client = c.client
        self.websocket_window = c.websocket
        self._websocket_clients = c.websocket_clients
        self.adaptive = c.adaptive
        self._priority = c.priority
        self.timeouts = Timeouts(s.read_timeout, s.idle_timeout, s.write_timeout, s.request_timeout)
        # Without a timeout, requests need none of a TimedExchange's bookkeeping.
        self._exchange = TimedExchange if self.timeouts.enabled else Exchange
        self.shared = Shared(
            self.timeouts,
            self.drain_state,
            ledger=self.ledger,
            stats=self.stats,
            on_refuse=s.on_refuse,
            ws_messages=s.ws_message_bucket,
            times_service=c.adaptive is not None,
            messages=message_limiter(s, self.store),
        )
        self._buffer_body = s.buffer_body
        # Every body read ahead shares ADMISSION_BUFFER_BODY_TOTAL.
        self.body_budget = Budget(s.buffer_body_total) if s.buffer_body is not None else None
        self._queue_s = s.queue_timeout
        self._exempt = bool(s.exempt)
        self._exempts = s.exempts
        guard = self.store if isinstance(self.store, GuardedStore) else None
        degraded = (lambda: guard.degraded) if guard is not None else (lambda: False)
        self.collector = AdmissionCollector(
            self.stats,
            self.ledger,
            c.windows(),
            self.drain_state.draining,
            storage_errors=(lambda: guard.errors) if guard is not None else (lambda: 0),
            storage_degraded=degraded,
            policies=self.gate,
            messages=self.shared.messages,
        )
        if metrics_registry is not None:
            # Admission's metrics join the application's, on its endpoint and on ours.
            metrics_registry.register(self.collector)
        if otel is not None:
            otel.observe(self.collector)
        endpoints = (
            ("health", s.health_path),
            ("ready", s.ready_path),
            # ADMISSION_METRICS=otel: OpenTelemetry alone; the path goes to the application.
            ("metrics", s.metrics_path if s.metrics != "otel" else None),
        )
        self.endpoints = Endpoints(
            self.drain_state,
            self.ledger,
            c.http,
            degraded,
            self.collector,
            paths={path: kind for kind, path in endpoints if path is not None},
            registry=metrics_registry,
            # Refusing every request for want of the store: not ready (see Endpoints).
            storage_up=guard.answers
            if guard is not None and s.on_storage_error == "deny"
            else None,
        )
        self._endpoint_paths = self.endpoints.paths
        # True once started (by the lifespan or the first request) on good settings.
        self._serving = False

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """__call__ is the order of the layers for http and websocket, outermost first: own
        endpoints, exempt paths, drain gate, the body read ahead (`ADMISSION_BUFFER_BODY`),
        window, rate limit, then the application inside its exchange, which finishes the
        request. Lifespan and other scope types go to `_other`."""
        kind = scope["type"]
        if kind not in ADMITTED or not self._serving:
            return await self._other(scope, receive, send)
        path = scope["path"]
        if scope.get("root_path"):
            # Mounted below a root path (`--root-path`): matched as the router sees it.
            path = route_path(scope)
        websocket = kind == "websocket"
        if path in self._endpoint_paths and not websocket and scope["method"] in METHODS:
            return await self.endpoints.answer(path, send, scope["method"])
        if self._exempt and self._exempts(path):
            return await self.app(scope, receive, send)
        drain = self.drain_state
        if not drain.accepting:
            return await self._refuse(scope, receive, send, reasons.DRAINING)
        if self._buffer_body is not None and not websocket:
            # The body first, holding nothing: a slow one must not keep a slot from others.
            read = await self._read_ahead(scope, receive, send)
            if read is None:
                return
            receive = read
        window = self.websocket_window if websocket else self.window
        if window is not None:
            # Each function loaded, then called: a specialised call (see `decide_now` below).
            priority_of, client_of = self._priority, self._client
            priority = DEFAULT if priority_of is None or websocket else priority_of(scope)
            client = (
                None
                if client_of is None or (websocket and not self._websocket_clients)
                else client_of(scope)
            )
            if not window.try_take(priority, client) and not await window.take(
                self._queue_s, priority, client
            ):
                reason = self.concurrency.refusal(window, priority, client)
                return await self._refuse(scope, receive, send, reason)
        try:
            extra: Sequence[tuple[bytes, bytes]] = ()
            after = None
            gate = self.gate
            if gate is not None:
                # A memory store decides synchronously: no coroutine per request. The outcome
                # unpacked, not read by field name (see `Outcome`).
                if gate.synchronous:
                    # Loaded, then called: Python 3.11 specialises no call written as a method
                    # call of an attribute that holds a function.
                    decide_now = gate.decide_now
                    refusal, headers, after = decide_now(scope)
                else:
                    refusal, headers, after = await gate.decide(scope)
                if refusal is not None:
                    return await self._refuse(scope, receive, send, refusal)
                if self._fields_on_admitted:
                    extra = headers
            if not drain.accepting:
                # It waited for a slot or for Redis while the drain began: it must not start,
                # and its refusal is no outcome of the application's to charge.
                return await self._refuse(scope, receive, send, reasons.DRAINING)
            if after is not None:
                # A policy's charge_when: charged by the response's status, as it starts.
                send = after(send)
            exchange = self._exchange(self.shared, scope, receive, send, extra)
            await exchange.run(self.app)
            if self.adaptive is not None and not websocket:
                # Only what returned: a failure or an outside cancellation says nothing.
                self.concurrency.sample(exchange)
        finally:
            if window is not None:
                window.give(client)

    async def _read_ahead(self, scope: Scope, receive: Receive, send: Send) -> Receive | None:
        """_read_ahead reads the request's body ahead (`ADMISSION_BUFFER_BODY`) and is the
        `receive` that replays it; None when the request was answered (413, 408) or the client
        went away instead."""
        assert self._buffer_body is not None
        read = await buffer_body(
            scope,
            receive,
            self._buffer_body,
            timeout_s=self.timeouts.read_s,
            idle_s=self.timeouts.idle_s,
            stop=self.drain_state.when_refusing,
            budget=self.body_budget,
        )
        if not isinstance(read, Reason):
            return read
        if read.status is None:
            self.stats.reject(read)
        else:
            await self._refuse(scope, receive, send, read)
        return None

    async def _other(self, scope: Scope, receive: Receive, send: Send) -> None:
        """_other handles what is not an admitted request: a refusal to start on bad settings,
        the lifespan, the first request when no lifespan came first, and scope types admission
        doesn't know, which pass straight through."""
        if not self._stacked and scope["type"] in ("lifespan", "http", "websocket"):
            # Once, at the first call: Starlette builds its middleware stack only then.
            self._stacked = True
            self._config_error = self._config_error or _twice(self) or self._limit_routes()
        if self._config_error is not None:
            await self._refuse_to_start(scope, receive, send)
        elif scope["type"] == "lifespan":
            await self.lifespan(self.app, scope, receive, send)
        elif scope["type"] in ADMITTED:
            # The first request, where no lifespan started admission: start it, then admit.
            self._start()
            await self(scope, receive, send)
        else:
            await self.app(scope, receive, send)

    async def _refuse(
        self, scope: Scope, receive: Receive, send: Send, why: Reason | Refusal
    ) -> None:
        """_refuse turns a request down before the application sees it, for a `Reason` or a
        rate limit's `Refusal`: through the `on_refuse` app if one is set, else with
        problem+json (see `answer_refusal`)."""
        if isinstance(why, Reason):
            refusal = Refusal.of(why)
        elif self._fields_on_refusals:
            refusal = why
        else:
            # ADMISSION_HEADERS=off: Retry-After (always first) alone.
            refusal = why._replace(headers=why.headers[:1])
        self.stats.reject(refusal.cause)
        await answer_refusal(scope, receive, send, refusal, self._on_refuse)

    @property
    def lifetime(self) -> Lifetime:
        """lifetime is the service lifetime of the current lifespan."""
        return self.service.lifetime

    async def _startup(self) -> None:
        if self.service.closed:
            self.service.reopen()
        self._start()
        if self.store is not None:
            try:
                await self.store.check()
            except Exception as exc:
                log.warning("rate-limit storage is not reachable at start-up: %s", exc)

    def _served(self) -> bool:
        """_served is True once any request was admitted or refused."""
        return self.stats.admitted > 0 or any(self.stats.rejected.values())

    def _start(self) -> None:
        """_start begins serving: the settings line, the signal hook, then what start-up can
        tell of the application (routes admission shadows, policies that limit nothing)."""
        self._serving = self._config_error is None
        _ensure_logging()
        self.service.start(in_code=self._settings_in_code, log=log)
        for path, variable in self.endpoints.shadowed(self.app):
            log.warning(
                "the application's own %s is never reached: admission answers GET and HEAD "
                "there (set %s to move admission's)",
                path,
                variable,
            )
        if self.gate is not None:
            for policy, pattern in self.gate.unserved(self.app):
                log.warning(
                    "policy %r: %r matches no route of the application: it limits nothing",
                    policy,
                    pattern,
                )

    def _limit_routes(self) -> ConfigError | None:
        """_limit_routes adds a policy for every route the application marked with `@limit`,
        once, at the first call (Starlette's stack and router are complete then): the rate
        gate is built anew with them, on a store opened for them if no limit needed one
        before. A policy that can't be (its name taken) is the start-up's error."""
        try:
            settings = with_route_limits(self.settings, self.app)
        except ConfigError as exc:
            return exc
        if settings is None:
            return None
        if self.store is None or type(self.store) is MemoryStore:
            # Nothing held yet: a memory store keeps keys as long as the slowest limit needs.
            self.store = open_store(settings, None)
            assert self.store is not None
            self.service.use_store(self.store)
        self.settings = self.service.settings = settings
        self.gate = rate_gate(settings, self.store)
        self.collector.policies = self.gate
        self.shared.messages = self.collector.messages = message_limiter(settings, self.store)
        return None

    async def _refuse_to_start(self, scope: Scope, receive: Receive, send: Send) -> None:
        """_refuse_to_start answers every call of a middleware whose settings were bad (or whose
        stack holds it twice): the lifespan start-up fails with the one-line error (the server
        exits; a TestClient raises it), and any request
        that still arrives (a server without lifespan) gets 500."""
        assert self._config_error is not None
        # One line per bad variable, each naming its source, as `admission serve` prints them.
        message = "\n".join(f"admission: {line}" for line in self._config_error.lines)
        if scope["type"] == "lifespan":
            while (await receive())["type"] != "lifespan.startup":
                pass
            await send({"type": "lifespan.startup.failed", "message": message})
            # Raised as well, as Starlette's router does: a server has already printed the
            # message and stops, while a TestClient raises it instead of going on unstarted.
            raise self._config_error
        elif scope["type"] == "http":
            log.error("%s", message)
            # The client learns that the service is misconfigured, not how: that is in the log.
            await send_problem(send, reasons.CONFIGURATION)
        elif scope["type"] == "websocket":
            await send({"type": "websocket.close", "code": reasons.CONFIGURATION.ws_close})

    async def drain(self) -> None:
        """drain runs the whole drain (pre-drain delay, refusal of new requests, the wait for
        in-flight requests, release of resources) and returns when it is closed. Safe to call
        concurrently and repeatedly: every call waits for the same single drain."""
        await self.drain_state.run()


def _twice(middleware: AdmissionMiddleware) -> StackError | None:
    """_twice is the error of an application stack where `middleware` wraps another
    AdmissionMiddleware (`add_middleware` called twice): each would limit, drain and answer
    its endpoints apart, with two RateLimit pairs on every response. None if it doesn't."""
    chain = list(layers(middleware))
    for depth, layer in enumerate(chain[1:], start=2):
        if isinstance(layer, AdmissionMiddleware):
            names = " > ".join(type(one).__name__ for one in chain[:depth])
            return StackError(
                f"AdmissionMiddleware is in this application's stack twice ({names} ...): "
                "add it once"
            )
    return None


def _ensure_logging() -> None:
    # Drain progress must be visible even when the host program never configured logging.
    root = logging.getLogger()
    if not root.handlers and not log.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("%(levelname)s:     %(name)s: %(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)


def _loop_running() -> bool:
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return False
    return True

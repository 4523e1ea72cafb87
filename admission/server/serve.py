"""admission.server.serve: run an ASGI app under uvicorn with the middleware and the drain
wired in."""

from __future__ import annotations

import copy
import os
from typing import Any

from uvicorn.config import LOGGING_CONFIG
from uvicorn.importer import import_from_string
from uvicorn.supervisors import ChangeReload

from admission.config.report import WORKERS_ENV
from admission.config.settings import Settings
from admission.middleware import AdmissionMiddleware
from admission.server.protocol import HttpProtocol, ServerLimits
from admission.server.supervisor import Supervisor
from admission.server.uvicorn import SERVER_GRACE_MARGIN_S, AdmissionConfig, AdmissionServer

DEMO = "admission.demo:app"
# Carries the target to worker processes, which import the app factory by name.
TARGET_ENV = "_ADMISSION_SERVE_TARGET"


def make_app() -> Any:
    """make_app imports the target named by `_ADMISSION_SERVE_TARGET` (default: the demo) and
    wraps it in `AdmissionMiddleware`, unless the app already has the middleware."""
    app = import_from_string(os.environ.get(TARGET_ENV, DEMO))
    if has_admission(app):
        return app
    return AdmissionMiddleware(app)


def has_admission(app: Any) -> bool:
    """has_admission is True when `app` already runs under AdmissionMiddleware, so that
    `admission serve` never limits a request twice."""
    if isinstance(app, AdmissionMiddleware):
        return True
    middleware = getattr(app, "user_middleware", None) or []
    return any(getattr(m, "cls", None) is AdmissionMiddleware for m in middleware)


def log_config(level: str = "info") -> dict[str, Any]:
    """log_config is uvicorn's logging configuration plus the `admission` logger at `level`
    (uvicorn's names: "info", "warning", ...), its lines named by their logger."""
    config = copy.deepcopy(LOGGING_CONFIG)
    # uvicorn's own format plus the logger's name, so that admission's lines read the same under
    # `admission serve` as under a plain server ("admission.lifecycle.drain: drained in ...").
    formatter = dict(config["formatters"]["default"], fmt="%(levelprefix)s %(name)s: %(message)s")
    config["formatters"]["admission"] = formatter
    config["handlers"]["admission"] = dict(config["handlers"]["default"], formatter="admission")
    config["loggers"]["admission"] = {
        "handlers": ["admission"],
        "level": level.upper(),
        "propagate": False,
    }
    return config


def serve(
    target: str,
    *,
    host: str,
    port: int,
    workers: int,
    settings: Settings,
    access_log: bool = True,
    uvicorn: dict[str, Any] | None = None,
) -> int:
    """serve runs `target` under the middleware until a signal drains it; returns the exit
    status (0 after a clean drain, 3 when a worker failed to start). `access_log=False` turns
    off uvicorn's access log; `uvicorn` holds more uvicorn Config arguments (the flags of
    `admission.server.flags.PASSED`)."""
    os.environ[TARGET_ENV] = target
    os.environ[WORKERS_ENV] = str(workers)
    return run(server_config(target, host, port, workers, settings, access_log, uvicorn))


def server_config(
    target: str,
    host: str,
    port: int,
    workers: int,
    settings: Settings,
    access_log: bool = True,
    uvicorn: dict[str, Any] | None = None,
) -> AdmissionConfig:
    """server_config is the uvicorn configuration `serve` runs with; `uvicorn` adds Config
    arguments that admission doesn't set itself."""
    keep_alive: dict[str, Any] = {}
    if settings.idle_timeout is not None:
        # A kept-alive connection idle between two requests is closed after the idle timeout
        # (uvicorn's own default, 5 s, otherwise).
        keep_alive["timeout_keep_alive"] = settings.idle_timeout
    return AdmissionConfig(
        "admission.server.serve:make_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        # --log-level quiets admission's own lines as it does uvicorn's.
        log_config=log_config((uvicorn or {}).get("log_level") or "info"),
        access_log=access_log,
        # Who the client is is admission's to decide (ADMISSION_TRUSTED_PROXIES): uvicorn's
        # proxy-header handling would rewrite the client address from X-Forwarded-For for any
        # peer on 127.0.0.1 before admission sees the request.
        proxy_headers=False,
        http=HttpProtocol,
        timeout_graceful_shutdown=int(
            settings.drain_delay + settings.drain_timeout + SERVER_GRACE_MARGIN_S
        ),
        limits=ServerLimits.from_settings(settings),
        **keep_alive,
        **(uvicorn or {}),
    )


def run(config: AdmissionConfig) -> int:
    """run serves `config` (in this process, or under a `Supervisor` with more than one
    worker) until it is stopped; returns the exit status (0, or 3 when it failed to start).
    A single process that fails to start exits with 3 itself, as uvicorn does."""
    if config.should_reload:
        # Development: a child process serves and is replaced when a source file changes.
        server = AdmissionServer(config)
        ChangeReload(config, target=server.run, sockets=[config.bind_socket()]).run()
        return 0
    if config.workers > 1:
        sock = config.bind_socket()
        return Supervisor(config, [sock]).run()
    AdmissionServer(config).run()
    return 0

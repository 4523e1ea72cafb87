"""admission.serve: run an ASGI app under uvicorn with the middleware and the drain wired in."""

from __future__ import annotations

import asyncio
import copy
import inspect
import os
import socket
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.config import LOGGING_CONFIG
from uvicorn.importer import import_from_string
from uvicorn.supervisors import Multiprocess

from admission.middleware import AdmissionMiddleware
from admission.settings import Settings
from admission.signals import ask_server_to_exit

DEMO = "admission.demo:app"
# Carries the target to worker processes, which import the app factory by name.
TARGET_ENV = "_ADMISSION_SERVE_TARGET"
# uvicorn's own graceful wait must outlast ours: it only starts once our drain is over.
SERVER_GRACE_MARGIN_S = 5.0
# How long connections accepted just before the listener closed have to send their request.
FRESH_CONNECTION_GRACE_S = 0.1


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


class GracefulServer(uvicorn.Server):
    """GracefulServer is uvicorn's server, except that a signal reaching its own handler (one
    that arrives before admission's drain handler is installed, say) ends it with status 0
    instead of being raised again at exit, as after a drain; and it answers the connections
    accepted at the last instant before it stops (see `shutdown`)."""

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        ask_server_to_exit(self, sig)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        """shutdown stops listening, waits FRESH_CONNECTION_GRACE_S, then runs uvicorn's.

        uvicorn's shutdown closes every connection that has not sent a request yet: without the
        pause, a client that connected in the last instant would get no answer at all instead
        of the drain's 503."""
        for server in self.servers:
            server.close()
        for sock in sockets or []:
            sock.close()
        await asyncio.sleep(FRESH_CONNECTION_GRACE_S)
        await super().shutdown(sockets)


def log_config() -> dict[str, Any]:
    """log_config is uvicorn's logging configuration plus the `admission` logger at INFO."""
    config = copy.deepcopy(LOGGING_CONFIG)
    config["loggers"]["admission"] = {"handlers": ["default"], "level": "INFO", "propagate": False}
    return config


def serve(
    target: str,
    *,
    host: str,
    port: int,
    workers: int,
    settings: Settings,
    access_log: bool = True,
) -> int:
    """serve runs `target` under the middleware until a signal drains it; returns the exit
    status (0 after a clean drain). `access_log=False` turns off uvicorn's access log."""
    os.environ[TARGET_ENV] = target
    config = uvicorn.Config(
        "admission.serve:make_app",
        factory=True,
        host=host,
        port=port,
        workers=workers,
        log_config=log_config(),
        access_log=access_log,
        timeout_graceful_shutdown=int(
            settings.drain_delay + settings.drain_timeout + SERVER_GRACE_MARGIN_S
        ),
    )
    server = GracefulServer(config)
    if workers > 1:
        sock = config.bind_socket()
        # Workers run uvicorn's own Server; admission's drain asks it to exit (see signals.py).
        supervisor: Any = Multiprocess
        if "target" in inspect.signature(Multiprocess.__init__).parameters:
            supervisor(config, target=server.run, sockets=[sock]).run()
        else:
            supervisor(config, sockets=[sock]).run()
    else:
        server.run()
    return 0

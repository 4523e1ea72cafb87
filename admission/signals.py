"""admission.signals: SIGTERM and SIGINT, chained in front of the server's own handlers.

The handler installed here runs the drain first and only then calls the handler it replaced
(uvicorn's, gunicorn's worker's, or the default), so the server starts its own shutdown once
nothing is in flight. A second signal during the drain hurries it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("admission.drain")

HANDLED = (signal.SIGTERM, signal.SIGINT)


class SignalChain:
    """SignalChain replaces the handlers of `HANDLED` with one that calls `on_signal` on the
    event loop, and remembers the previous handlers so `forward` can pass a signal on."""

    def __init__(self, on_signal: Callable[[int, FrameType | None], None]) -> None:
        self.on_signal = on_signal
        self.installed = False
        self._previous: dict[int, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> bool:
        """install takes over the signals; False (and nothing done) off the main thread,
        where Python can't set signal handlers."""
        if self.installed:
            return True
        if threading.current_thread() is not threading.main_thread():
            return False
        self._loop = asyncio.get_running_loop()
        for sig in HANDLED:
            self._previous[sig] = signal.getsignal(sig)
            signal.signal(sig, self._handle)
        self.installed = True
        return True

    def _handle(self, sig: int, frame: FrameType | None) -> None:
        # Runs between two bytecodes of the main thread: only hand over to the loop.
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self.on_signal, sig, frame)

    def forward(self, sig: int, frame: FrameType | None) -> None:
        """forward passes `sig` to the handler that was there before ours."""
        previous = self._previous.get(sig, signal.SIG_DFL)
        server: Any = getattr(previous, "__self__", None)
        if getattr(previous, "__name__", "") == "handle_exit" and hasattr(server, "should_exit"):
            # uvicorn's Server (also under gunicorn's uvicorn workers): its own handler would
            # record the signal and raise it again at exit. The drain has handled it: a clean
            # drain exits 0, as under admission serve.
            ask_server_to_exit(server, sig)
        elif callable(previous):
            previous(sig, frame)
        elif previous == signal.SIG_DFL:
            signal.signal(sig, signal.SIG_DFL)
            signal.raise_signal(sig)


def ask_server_to_exit(server: Any, sig: int) -> None:
    """ask_server_to_exit does what uvicorn's `Server.handle_exit` does, except record the
    signal to raise it again at exit: the first signal asks for a graceful shutdown, a second
    SIGINT forces it."""
    if server.should_exit and sig == signal.SIGINT:
        server.force_exit = True
    else:
        server.should_exit = True

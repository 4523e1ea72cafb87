"""admission.lifecycle.signals: SIGTERM and SIGINT, chained in front of the server's own handlers.

The handler installed here runs the drain first and only then calls the handler it replaced
(uvicorn's, gunicorn's worker's, or the default), so the server starts its own shutdown once
nothing is in flight. A second signal during the drain hurries it.

A server may instead have handed the signals to the event loop (`loop.add_signal_handler`:
hypercorn without a supervisor, granian's workers). The loop then runs its handler whatever
Python-level handler is set, so the chain takes the loop's place: its own handler goes into
the loop, and the server's is called when the drain is over. That needs asyncio's loop, whose
table of handlers can be read; uvloop's can't, and there the server keeps its handler (a
warning says so).

Under `admission serve --workers` a worker also hears of the supervisor's stop signals, relayed
by count (see `admission.server.uvicorn.StopRelay`). A signal sent to the whole process group
reaches the worker both ways; the chain counts max(signals received, stops relayed), so that
one Ctrl+C drains once and only a second signal hurries.
"""

from __future__ import annotations

import asyncio
import logging
import multiprocessing
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("admission.drain")

HANDLED = (signal.SIGTERM, signal.SIGINT)

# The chain holding this process's handlers: the one the supervisor's relay reaches.
_installed: SignalChain | None = None


class SignalChain:
    """SignalChain replaces the handlers of `HANDLED` with one that calls `on_signal` on the
    event loop, and remembers the previous handlers so `forward` can pass a signal on."""

    def __init__(self, on_signal: Callable[[int, FrameType | None], None]) -> None:
        self.on_signal = on_signal
        self.installed = False
        self._previous: dict[int, Any] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self._received = 0
        self._relayed = 0
        self._counted = 0

    def install(self) -> bool:
        """install takes over the signals; False (and nothing done) off the main thread,
        where Python can't set signal handlers."""
        if self.installed:
            return True
        if threading.current_thread() is not threading.main_thread():
            return False
        self._loop = loop = asyncio.get_running_loop()
        if signal.getsignal(signal.SIGINT) == signal.SIG_IGN and multiprocessing.parent_process():
            # What hypercorn's supervisor does to its workers (`--workers 1` and more): they
            # are stopped by a flag shared with it, not by a signal.
            log.warning(
                "SIGINT is ignored in this worker process: its supervisor may stop it without a "
                "signal (hypercorn with --workers 1 or more), and the server then shuts down "
                "before admission drains. Run hypercorn with --workers 0 (docs/deployment.md)"
            )
        unreachable = []
        for sig in HANDLED:
            in_loop = _loop_handler(loop, sig)
            if in_loop is not None:
                self._previous[sig] = in_loop
                loop.add_signal_handler(sig, self._received_one, sig, None)
                continue
            self._previous[sig] = previous = signal.getsignal(sig)
            if getattr(previous, "__self__", None) is loop:
                unreachable.append(signal.Signals(sig).name)
                continue
            signal.signal(sig, self._handle)
        if unreachable:
            log.warning(
                "the server lets the event loop (%s) handle %s, and admission can't reach its "
                "handlers there: the server will shut down before admission drains. Run it on "
                "asyncio's loop (granian --loop asyncio; hypercorn's default asyncio worker)",
                type(loop).__name__,
                " and ".join(unreachable),
            )
        self.installed = True
        global _installed
        _installed = self
        return True

    def _handle(self, sig: int, frame: FrameType | None) -> None:
        # Runs between two bytecodes of the main thread: only hand over to the loop.
        assert self._loop is not None
        self._loop.call_soon_threadsafe(self._received_one, sig, frame)

    def _received_one(self, sig: int, frame: FrameType | None) -> None:
        self._received += 1
        self._count(sig, frame)

    def relayed(self, count: int, sig: int) -> None:
        """relayed takes the supervisor's count of stop signals (`sig` the last), on the loop:
        `on_signal` runs once for each signal counted by neither this nor `_handle` before."""
        self._relayed = max(self._relayed, count)
        self._count(sig, None)

    def _count(self, sig: int, frame: FrameType | None) -> None:
        while self._counted < max(self._received, self._relayed):
            self._counted += 1
            self.on_signal(sig, frame)

    def in_loop(self, sig: int) -> bool:
        """in_loop is True when the server's handler for `sig` is one the chain took from the
        event loop (hypercorn, granian)."""
        return isinstance(self._previous.get(sig), asyncio.Handle)

    def forward(self, sig: int, frame: FrameType | None) -> None:
        """forward passes `sig` to the handler that was there before ours."""
        previous = self._previous.get(sig, signal.SIG_DFL)
        if isinstance(previous, asyncio.Handle):
            # The server's handler in the loop (see `_loop_handler`), with its own arguments.
            if not previous.cancelled():
                previous._run()
            return
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


def _loop_handler(loop: asyncio.AbstractEventLoop, sig: int) -> asyncio.Handle | None:
    """_loop_handler is the handler a server gave asyncio's loop for `sig`
    (`loop.add_signal_handler`), or None: none given, or a loop whose table can't be read."""
    handlers = getattr(loop, "_signal_handlers", None)
    if not isinstance(handlers, dict):
        return None
    handle = handlers.get(sig)
    return handle if isinstance(handle, asyncio.Handle) else None


def relay(count: int, sig: int) -> bool:
    """relay hands the supervisor's stop count to the chain installed in this process (see
    `SignalChain.relayed`); False when there is none, and the server must act itself."""
    if _installed is None:
        return False
    _installed.relayed(count, sig)
    return True


def ask_server_to_exit(server: Any, sig: int) -> None:
    """ask_server_to_exit does what uvicorn's `Server.handle_exit` does, except record the
    signal to raise it again at exit: the first signal asks for a graceful shutdown, a second
    SIGINT forces it."""
    if server.should_exit and sig == signal.SIGINT:
        server.force_exit = True
    else:
        server.should_exit = True

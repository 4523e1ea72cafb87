"""admission.server.supervisor: `--workers` processes under one supervisor, which on
SIGTERM/SIGINT lets go of the listening socket at once and relays the stop to the workers by
count (`StopRelay`), never by a second signal."""

from __future__ import annotations

import inspect
import logging
import os
import signal
import socket
import time
from types import FrameType
from typing import Any

import uvicorn
from uvicorn.supervisors.multiprocess import Process

from admission.server.uvicorn import AdmissionConfig, AdmissionServer

log = logging.getLogger("uvicorn.error")

# uvicorn's exit status for a server that failed to start (uvicorn.config.STARTUP_FAILURE).
STARTUP_FAILURE = 3
# How often the supervisor looks for a stop, and how often it checks that its workers are alive
# (each check is a round trip to every worker, as in uvicorn's supervisor).
SUPERVISOR_TICK_S = 0.1
HEALTHCHECK_EVERY_S = 0.5


class _Worker(Process):
    """_Worker is one of uvicorn's supervised worker processes, running `AdmissionServer`."""

    def __init__(self, config: uvicorn.Config, sockets: list[socket.socket], slot: int) -> None:
        server = AdmissionServer(config, slot=slot)
        init: Any = super().__init__
        if "target" in inspect.signature(Process.__init__).parameters:
            init(config, server.run, sockets)  # older uvicorn: the worker runs `target`
        else:
            init(config, sockets)
            self._server = server


class Supervisor:
    """Supervisor runs `config.workers` worker processes on the listening `sockets`, replaces
    a worker that dies, and stops them all on SIGTERM or SIGINT.

    Unlike uvicorn's supervisor it never signals a worker to stop: the first stop signal makes
    it close its own copy of the listening socket at once (the workers hold theirs and keep
    accepting through the drain; a copy left in the supervisor would queue connections that
    no one accepts, reset when it exits) and relays the stop by count (`StopRelay`), so that
    a signal that reached the workers as well is not counted twice.
    """

    def __init__(self, config: AdmissionConfig, sockets: list[socket.socket]) -> None:
        assert config.admission_relay is not None
        self.config = config
        self.relay = config.admission_relay
        self.sockets = sockets
        self.workers: list[_Worker] = []
        self.stops = 0
        self.status = 0

    def run(self) -> int:
        """run starts the workers and returns once they have all exited after a stop: 0, or
        uvicorn's start-up failure status (3) when a worker failed to start."""
        for sig in (signal.SIGTERM, signal.SIGINT):
            signal.signal(sig, self._on_stop)
        # uvicorn's supervisor restarts its workers on SIGHUP; this one doesn't, and must not
        # die of it either (its default action), leaving the workers without a supervisor.
        signal.signal(signal.SIGHUP, self._on_hangup)
        log.info("Started parent process [%d]", os.getpid())
        self.workers = [self._start(slot) for slot in range(self.config.workers)]
        checked = time.monotonic()
        while not self.stops:
            time.sleep(SUPERVISOR_TICK_S)
            if time.monotonic() - checked >= HEALTHCHECK_EVERY_S:
                self._replace_dead()
                checked = time.monotonic()
        for worker in self.workers:
            worker.join()
        log.info("Stopping parent process [%d]", os.getpid())
        return self.status

    def _on_stop(self, sig: int, frame: FrameType | None) -> None:
        # In the handler itself, not on the next tick: a worker with nothing in flight may
        # finish its drain within milliseconds.
        self.stops += 1
        if self.stops == 1:
            log.info("Received %s, stopping the workers.", signal.Signals(sig).name)
            for sock in self.sockets:
                sock.close()
        self.relay.stopped(sig)

    def _on_hangup(self, sig: int, frame: FrameType | None) -> None:
        log.warning("Received SIGHUP: ignored (to restart the workers, restart the service).")

    def _start(self, slot: int) -> _Worker:
        # A worker that died may have left its slot marked as listening.
        self.relay.listening(slot, False)
        worker = _Worker(self.config, self.sockets, slot)
        worker.start()
        return worker

    def _replace_dead(self) -> None:
        healthcheck_s = getattr(self.config, "timeout_worker_healthcheck", 5)
        for i, worker in enumerate(self.workers):
            if self.stops or worker.is_alive(timeout=healthcheck_s):
                continue
            worker.kill()
            worker.join()
            if worker.process.exitcode == STARTUP_FAILURE:
                # The app or the socket is broken: every new worker would fail the same way.
                log.error("Child process [%s] failed to start, stopping.", worker.pid)
                self.status = STARTUP_FAILURE
                self._on_stop(signal.SIGTERM, None)
                return
            log.info("Child process [%s] died", worker.pid)
            try:
                self.workers[i] = self._start(i)
            except OSError:
                if not self.stops:
                    raise
                # A stop closed the listening socket while the replacement was being started.
                return

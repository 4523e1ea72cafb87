"""admission.server.uvicorn: uvicorn's server and config as admission runs them.

- `AdmissionConfig`: uvicorn's Config carrying admission's server limits and, with workers,
  the supervisor's stop relay; it speaks `admission.server.protocol.HttpProtocol`.
- `AdmissionServer`: uvicorn's server, whose shutdown stops listening without dropping a
  connection the kernel had already accepted (`admission.server.listener`), and which hears
  the supervisor's stop relay (`StopRelay`)."""

from __future__ import annotations

import logging
import multiprocessing
import socket
from types import FrameType
from typing import Any

import uvicorn

from admission.lifecycle import signals
from admission.server.listener import stop_listening
from admission.server.protocol import HttpProtocol, ServerLimits

log = logging.getLogger("uvicorn.error")

# uvicorn's own graceful wait must outlast the drain: it only starts once the drain is over.
SERVER_GRACE_MARGIN_S = 5.0


class StopRelay:
    """StopRelay is what the supervisor and its workers share, in shared memory: how many stop
    signals (SIGTERM, SIGINT) the supervisor has received and the last one, which the workers
    read on their server's tick, and which workers still listen.

    A count rather than a forwarded signal: a signal sent to the whole process group (Ctrl+C,
    systemd's KillMode=control-group) reaches each worker directly as well, and the worker
    counts max(signals it received, stops relayed), so one group signal drains once while a
    deliberate second signal, to the group or to the supervisor alone, hurries.

    Which workers listen (one slot per worker) tells the last of them to stop listening that
    it is the last, and so the one that must not leave connections in the socket's queue."""

    def __init__(self, workers: int) -> None:
        self._shared = multiprocessing.get_context("spawn").RawArray("i", 2 + workers)

    def stopped(self, sig: int) -> None:
        """stopped records one more stop signal (called by the supervisor)."""
        self._shared[1] = sig
        self._shared[0] += 1

    def read(self) -> tuple[int, int]:
        """read is the number of stops so far and the last signal."""
        return int(self._shared[0]), int(self._shared[1])

    def listening(self, slot: int, listening: bool) -> None:
        """listening records whether the worker in `slot` holds the listening socket open."""
        self._shared[2 + slot] = int(listening)

    def others_listening(self, slot: int) -> bool:
        """others_listening is True while a worker other than `slot`'s still listens. Each
        worker clears its own slot before asking, so of two that stop at the same moment the
        second to clear always sees none."""
        return any(self._shared[2 + i] for i in range(len(self._shared) - 2) if i != slot)


class AdmissionConfig(uvicorn.Config):
    """AdmissionConfig is uvicorn's Config (same arguments) carrying admission's server
    limits (default: from the ADMISSION_* environment) and, with more than one worker, the
    supervisor's stop relay to the worker processes. Unless told otherwise it turns uvicorn's
    proxy headers off (admission decides who the client is) and speaks `HttpProtocol`."""

    def __init__(
        self,
        *args: Any,
        limits: ServerLimits | None = None,
        relay: StopRelay | None = None,
        **kwargs: Any,
    ) -> None:
        kwargs.setdefault("proxy_headers", False)
        kwargs.setdefault("http", HttpProtocol)
        super().__init__(*args, **kwargs)
        self.admission_limits = limits
        if relay is None and self.workers > 1:
            relay = StopRelay(self.workers)
        self.admission_relay = relay


class AdmissionServer(uvicorn.Server):
    """AdmissionServer is uvicorn's server with three changes.

    - A signal reaching its own handler (one that arrives before admission's drain handler is
      installed, or after it handed the signal on) ends it with status 0 instead of being
      raised again at exit, as after a drain.
    - Under the supervisor it reads the stop relay on every tick and hands new stops to
      admission's signal chain (or, with no middleware handling signals, acts on them itself).
    - Its shutdown stops listening without losing a connection: when it is the last process
      holding the listening socket, the kernel first stops completing new handshakes, the
      connections already queued are accepted (and answered by the drain), and only then is
      the socket closed, so that a client either gets an answer or is refused at connect.
    """

    def __init__(self, config: uvicorn.Config, *, slot: int | None = None) -> None:
        super().__init__(config)
        self.relayed = 0
        # This worker's place in the supervisor's StopRelay (None: not under the supervisor).
        self.slot = slot

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        signals.ask_server_to_exit(self, sig)

    async def on_tick(self, counter: int) -> bool:
        relay: StopRelay | None = getattr(self.config, "admission_relay", None)
        if relay is not None:
            count, sig = relay.read()
            if count > self.relayed:
                steps, self.relayed = count - self.relayed, count
                if not signals.relay(count, sig):
                    for _ in range(steps):
                        self.handle_exit(sig, None)
        return await super().on_tick(counter)

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        relay = getattr(self.config, "admission_relay", None)
        if relay is not None and self.slot is not None and self.started:
            relay.listening(self.slot, True)

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        await stop_listening(self.servers, last_holder=self._last_holder())
        for sock in sockets or []:
            sock.close()
        await super().shutdown(sockets)

    def _last_holder(self) -> bool:
        """_last_holder is True when closing this process's listening socket may close it for
        good: always alone; under the supervisor, when the whole service stops (the
        supervisor has let go of its copy) and no other worker still listens. A worker
        stopping on its own (replaced, --limit-max-requests) just lets go: the others accept
        what is queued."""
        relay: StopRelay | None = getattr(self.config, "admission_relay", None)
        if relay is None or self.slot is None:
            return True
        relay.listening(self.slot, False)
        return self.relayed > 0 and not relay.others_listening(self.slot)

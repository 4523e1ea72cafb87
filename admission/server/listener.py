"""admission.server.listener: letting go of a listening socket at shutdown without
dropping a connection the kernel had already accepted: new connections are refused by a
socket filter while the queue of accepted ones drains (`admission.lifecycle.listening`)."""

from __future__ import annotations

from typing import Any

from admission.lifecycle.listening import refuse_new_connections, stop_taking_connections

__all__ = ["refuse_new_connections", "stop_listening"]


async def stop_listening(servers: list[Any], *, last_holder: bool) -> None:
    """stop_listening closes the listening `servers`. As `last_holder` it first has the kernel
    refuse new connections and waits, at most ACCEPT_QUEUE_WAIT_S, for the connections
    already queued to be accepted (`stop_taking_connections`): closing the last descriptor of a
    listening socket resets every connection still in its queue."""
    if last_holder:
        await stop_taking_connections(
            [s.fileno() for server in servers for s in server.sockets or ()]
        )
    for server in servers:
        server.close()

"""admission.request.abort: dropping a client's connection at once, where the server lets
the application reach its transport."""

from __future__ import annotations

import contextlib
import socket
import struct

from admission.types import Send


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

"""admission.server.listener: letting go of a listening socket at shutdown without
dropping a connection the kernel had already accepted: new connections are refused by a
socket filter while the queue of accepted ones drains."""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import select
import socket
import struct
import sys
import time
from typing import Any

log = logging.getLogger("uvicorn.error")

# At shutdown, the longest wait for the connections already queued on the listening socket
# to be accepted.
ACCEPT_QUEUE_WAIT_S = 1.0


async def stop_listening(servers: list[Any], *, last_holder: bool) -> None:
    """stop_listening closes the listening `servers`. As `last_holder` it first has the kernel
    refuse new connections (`refuse_new_connections`) and waits, at most ACCEPT_QUEUE_WAIT_S,
    for the connections already queued to be accepted: closing the last descriptor of a
    listening socket resets every connection still in its queue."""
    if last_holder:
        fds = [s.fileno() for server in servers for s in (server.sockets or ())]
        if all(refuse_new_connections(fd) for fd in fds):
            deadline = time.monotonic() + ACCEPT_QUEUE_WAIT_S
            # Polled: the loop's own reader on these sockets is what accepts them, and the
            # kernel's queue has no event of its own to wait on.
            while fds and _queued(fds) and time.monotonic() < deadline:  # noqa: ASYNC110
                await asyncio.sleep(0.005)
    for server in servers:
        server.close()


# SO_ATTACH_FILTER and a classic BPF program that drops what opens a connection and keeps
# the rest. A listening socket's filter sees its packets from the TCP header on: byte 13 holds
# the flags. A packet without ACK (a SYN) is dropped ("keep 0 bytes"), so no new handshake
# begins; the ACK that completes a handshake already under way goes through, so that
# connection reaches the queue and is answered. (A drop-everything filter also dropped those
# ACKs: the client, whose connect had returned, was reset when the socket closed.)
SO_ATTACH_FILTER = 26
_TCP_FLAGS = 13
_ACK = 0x10
_REFUSE_SYN = b"".join(
    struct.pack("HBBI", code, jt, jf, k)
    for code, jt, jf, k in (
        (0x30, 0, 0, _TCP_FLAGS),  # BPF_LD|BPF_B|BPF_ABS: A = the flags byte
        (0x45, 1, 0, _ACK),  # BPF_JMP|BPF_JSET|BPF_K: ACK set? keep it, else drop it
        (0x06, 0, 0, 0),  # BPF_RET|BPF_K: drop
        (0x06, 0, 0, 0xFFFFFFFF),  # BPF_RET|BPF_K: keep the whole packet
    )
)


def refuse_new_connections(fd: int) -> bool:
    """refuse_new_connections attaches a socket filter that drops SYNs to the listening socket
    `fd` (Linux): the kernel no longer answers new handshakes (the client retries its SYN, and
    once the socket is closed is refused), while handshakes under way complete and connections
    already queued stay acceptable. False where that isn't possible, after which closing may
    reset queued connections."""
    if not sys.platform.startswith("linux"):
        return False
    program = ctypes.create_string_buffer(_REFUSE_SYN)
    # struct sock_fprog { unsigned short len; struct sock_filter *filter; }
    fprog = struct.pack("HP", len(_REFUSE_SYN) // 8, ctypes.addressof(program))
    try:
        with socket.socket(fileno=os.dup(fd)) as sock:
            sock.setsockopt(socket.SOL_SOCKET, SO_ATTACH_FILTER, fprog)
    except OSError as exc:
        log.warning("cannot stop the listening socket taking connections: %s", exc)
        return False
    return True


def _queued(fds: list[int]) -> bool:
    # A listening socket is readable while its accept queue is not empty.
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))

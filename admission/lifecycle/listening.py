"""admission.lifecycle.listening: a listening socket that stops taking new connections while
the ones the kernel already accepted are still answered.

Closing the last descriptor of a listening socket resets every connection still waiting in
its queue, whose clients may have sent their request already. So the kernel is first told to
complete no new handshake (a socket filter that drops SYNs), the queue is left to empty into
the server, and only then may the socket be closed: a client gets an answer, or is refused at
connect (its SYN, retried after about 1 s, then meets a closed port).
"""

from __future__ import annotations

import asyncio
import ctypes
import logging
import os
import select
import socket
import stat
import struct
import sys
import time

log = logging.getLogger("admission.drain")

# The longest wait for the connections already queued on a listening socket to be accepted.
ACCEPT_QUEUE_WAIT_S = 1.0
# After the queue is empty, how long a server that only hears of the stop afterwards is given
# to read the requests of the connections it has just accepted (see stop_taking_connections).
SETTLE_S = 0.1

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
    already queued stay acceptable. The filter belongs to the socket, so it holds in every
    process sharing it. False where that isn't possible, after which closing may reset queued
    connections."""
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


def queued(fds: list[int]) -> bool:
    """queued is True while any of the listening sockets `fds` has a connection waiting to be
    accepted (a listening socket is readable while its accept queue is not empty)."""
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    return bool(poller.poll(0))


def listening_tcp_sockets() -> list[int]:
    """listening_tcp_sockets are the descriptors of this process's listening TCP sockets, found
    in /proc/self/fd (Linux; elsewhere none): for servers that don't hand theirs out."""
    try:
        names = os.listdir("/proc/self/fd")
    except OSError:
        return []
    found = []
    for name in names:
        fd = int(name)
        try:
            if not stat.S_ISSOCK(os.fstat(fd).st_mode):
                continue
            with socket.socket(fileno=os.dup(fd)) as sock:
                tcp = sock.family in (socket.AF_INET, socket.AF_INET6)
                if tcp and sock.getsockopt(socket.SOL_SOCKET, socket.SO_ACCEPTCONN):
                    found.append(fd)
        except OSError:
            # Closed since the listing (the listing's own descriptor among them).
            continue
    return found


async def stop_taking_connections(
    fds: list[int], wait_s: float = ACCEPT_QUEUE_WAIT_S, settle_s: float = 0.0
) -> None:
    """stop_taking_connections has the kernel refuse new connections on the listening sockets
    `fds` and waits, at most `wait_s`, for the server to accept those already queued, then
    `settle_s` more for it to read their requests."""
    if not fds or not all(refuse_new_connections(fd) for fd in fds):
        return
    deadline = time.monotonic() + wait_s
    # Polled: the server's own reader on these sockets is what accepts them, and the kernel's
    # queue has no event of its own to wait on.
    while queued(fds) and time.monotonic() < deadline:  # noqa: ASYNC110
        await asyncio.sleep(0.005)
    if settle_s > 0:
        # A server that hears of the stop only now may close a connection it accepted whose
        # request it has not read yet (granian does), resetting it: nothing tells us when that
        # read happened, so it gets a moment.
        await asyncio.sleep(settle_s)

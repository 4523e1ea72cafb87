"""Tests of how admission stops listening: the kernel refuses new handshakes while the
connections it had already queued are accepted and answered, so none is reset by the close."""

from __future__ import annotations

import asyncio
import socket

import pytest

from admission.lifecycle.listening import listening_tcp_sockets
from admission.server.listener import refuse_new_connections, stop_listening


def test_a_refusing_socket_completes_no_new_handshake_but_keeps_the_queued_ones() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        address = listener.getsockname()
        queued = socket.create_connection(address, timeout=2)
        queued.sendall(b"x")
        assert refuse_new_connections(listener.fileno())
        late = socket.socket()
        late.settimeout(0.3)
        # The handshake is dropped (the client retries), never completed into the queue.
        with pytest.raises(TimeoutError):
            late.connect(address)
        accepted, _ = listener.accept()
        assert accepted.recv(1) == b"x"
        accepted.close()
        queued.close()
        late.close()


async def test_stop_listening_answers_every_queued_connection_then_refuses() -> None:
    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.readexactly(4)
        writer.write(b"done")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    address = server.sockets[0].getsockname()
    # The loop does not run between these connects: they wait in the kernel's accept queue.
    clients = [socket.create_connection(address, timeout=5) for _ in range(8)]
    for client in clients:
        client.sendall(b"ping")
    await stop_listening([server], last_holder=True)
    for client in clients:
        data = await asyncio.to_thread(client.recv, 4)
        assert data == b"done"
        client.close()
    with pytest.raises(ConnectionRefusedError):
        socket.create_connection(address, timeout=2)
    await server.wait_closed()


def test_a_handshake_under_way_when_the_socket_refuses_still_completes() -> None:
    # TCP_DEFER_ACCEPT keeps the handshake open after the client's ACK (its connect has
    # returned) until its first data: the connection is still being made, not yet queued,
    # when the listening socket starts refusing. The data that completes it must get through.
    with socket.socket() as listener:
        listener.setsockopt(socket.IPPROTO_TCP, socket.TCP_DEFER_ACCEPT, 5)
        listener.bind(("127.0.0.1", 0))
        listener.listen(16)
        client = socket.create_connection(listener.getsockname(), timeout=2)
        listener.settimeout(0.3)
        with pytest.raises(TimeoutError):
            listener.accept()  # not queued yet: the handshake waits for data
        assert refuse_new_connections(listener.fileno())
        client.sendall(b"GET / HTTP/1.1\r\n\r\n")
        listener.settimeout(3)
        accepted, _ = listener.accept()
        accepted.settimeout(2)
        assert accepted.recv(64).startswith(b"GET / ")
        accepted.close()
        client.close()


def test_the_process_s_listening_sockets_are_found_and_no_other() -> None:
    # What admission lets go of under hypercorn and granian, which don't hand theirs out.
    with socket.socket() as listener, socket.socket() as bound, socket.socket() as client:
        listener.bind(("127.0.0.1", 0))
        listener.listen(4)
        bound.bind(("127.0.0.1", 0))
        client.connect(listener.getsockname())
        found = listening_tcp_sockets()
        assert listener.fileno() in found
        assert bound.fileno() not in found
        assert client.fileno() not in found

"""tests.forwarding_proxy: a small HTTP/1.1 reverse proxy that appends to X-Forwarded-For.

It behaves as nginx with `proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for` does:
the client's own X-Forwarded-For values, then the address the proxy saw, in one header; every
other header (a client's `Forwarded` included) passes through unchanged. With
`header="forwarded"` it does the same to `Forwarded` (RFC 7239 `for=`) and passes a client's
X-Forwarded-For through instead. One request per
connection (`Connection: close` both ways), bodies by Content-Length only: enough for tests.
It connects to the upstream from `source` so that the upstream sees the proxy at an address
of its own, apart from the clients on other loopback addresses.
"""

from __future__ import annotations

import socket
import threading
from types import TracebackType


class ForwardingProxy:
    """ForwardingProxy listens on (`host`, a free port) and forwards to `upstream`."""

    def __init__(
        self,
        upstream: tuple[str, int],
        *,
        host: str,
        source: str,
        header: str = "x-forwarded-for",
    ) -> None:
        self.upstream = upstream
        self.header = header.encode()
        self.source = source
        self._listener = socket.create_server((host, 0))
        self.address: tuple[str, int] = self._listener.getsockname()[:2]
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def url(self) -> str:
        return f"http://{self.address[0]}:{self.address[1]}"

    def __enter__(self) -> ForwardingProxy:
        self._thread.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._listener.close()
        self._thread.join(timeout=5)

    def _serve(self) -> None:
        while True:
            try:
                conn, peer = self._listener.accept()
            except OSError:
                return
            threading.Thread(target=self._handle, args=(conn, peer[0]), daemon=True).start()

    def _handle(self, conn: socket.socket, peer: str) -> None:
        with conn:
            conn.settimeout(10)
            head = b""
            while b"\r\n\r\n" not in head:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                head += chunk
            head, _, body = head.partition(b"\r\n\r\n")
            request_line, *lines = head.split(b"\r\n")
            kept: list[bytes] = []
            forwarded_for: list[bytes] = []
            length = 0
            for line in lines:
                name, _, value = line.partition(b":")
                lowered = name.strip().lower()
                if lowered == self.header:
                    forwarded_for.append(value.strip())
                    continue
                if lowered == b"connection":
                    continue
                if lowered == b"content-length":
                    length = int(value)
                kept.append(line)
            while len(body) < length:
                chunk = conn.recv(65536)
                if not chunk:
                    return
                body += chunk
            if self.header == b"forwarded":
                node = f'"[{peer}]"' if ":" in peer else peer
                forwarded_for.append(f"for={node}".encode())
            else:
                forwarded_for.append(peer.encode())
            kept.append(self.header + b": " + b", ".join(forwarded_for))
            kept.append(b"Connection: close")
            upstream = socket.create_connection(
                self.upstream, timeout=10, source_address=(self.source, 0)
            )
            with upstream:
                upstream.sendall(b"\r\n".join([request_line, *kept]) + b"\r\n\r\n" + body)
                while chunk := upstream.recv(65536):
                    conn.sendall(chunk)

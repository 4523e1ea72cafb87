"""Spoofed forwarding headers against a real server: they never change a client's bucket.

The app is `tests.apps.counted:app` (the middleware added as a user adds it) under plain
`uvicorn --no-proxy-headers`, so the client address reaching admission is the socket's. The
clients and the proxy use addresses of their own on the loopback network (127.0.0.2 and up);
the proxy reaches the server from 127.0.0.1, the only trusted address, and appends to the
header admission believes (X-Forwarded-For, or `Forwarded` with ADMISSION_FORWARDED_HEADER)
as nginx does, passing the other through from the client.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import httpx
import pytest

from tests.forwarding_proxy import ForwardingProxy
from tests.support import plain_uvicorn, run_server

pytestmark = pytest.mark.process

RATE = {"ADMISSION_RATE": "3/minute", "ADMISSION_KEY": "ip"}
SPOOFS: list[dict[str, str]] = [
    {"X-Forwarded-For": "198.51.100.1"},
    {"Forwarded": "for=198.51.100.2"},
    {"X-Forwarded-For": "198.51.100.3", "Forwarded": "for=198.51.100.4"},
    {"Forwarded": "for=unknown"},
    {"Forwarded": "for=_hidden"},
    {"X-Forwarded-For": "unknown"},
    {"X-Forwarded-For": "garbage, 127.0.0.1"},
    {"Forwarded": 'for="[::1'},
    {"X-Forwarded-For": "127.0.0.1"},
    {"X-Forwarded-For": ", , ,"},
]


@contextlib.contextmanager
def client_from(source: str, base_url: str) -> Iterator[httpx.Client]:
    transport = httpx.HTTPTransport(local_address=source)
    with httpx.Client(transport=transport, base_url=base_url, timeout=10) as client:
        yield client


def statuses(client: httpx.Client, spoofs: list[dict[str, str]]) -> list[int]:
    return [client.get("/", headers=headers).status_code for headers in spoofs]


@pytest.mark.parametrize("trusted", ["", "127.0.0.1/32"])
def test_spoofed_headers_from_a_loopback_client_never_change_its_bucket(trusted: str) -> None:
    env = {**RATE, "ADMISSION_TRUSTED_PROXIES": trusted}
    with (
        run_server(plain_uvicorn("tests.apps.counted:app", "--no-proxy-headers"), env) as server,
        client_from("127.0.0.2", server.url) as client,
    ):
        got = statuses(client, SPOOFS)
        assert got == [200] * 3 + [429] * 7, got


@pytest.mark.parametrize("header", ["x-forwarded-for", "forwarded"])
def test_spoofed_headers_behind_a_trusted_appending_proxy_never_change_a_bucket(
    header: str,
) -> None:
    env = {
        **RATE,
        "ADMISSION_TRUSTED_PROXIES": "127.0.0.1/32",
        "ADMISSION_FORWARDED_HEADER": header,
    }
    with (
        run_server(plain_uvicorn("tests.apps.counted:app", "--no-proxy-headers"), env) as server,
        ForwardingProxy(
            ("127.0.0.1", server.port), host="127.0.0.3", source="127.0.0.1", header=header
        ) as proxy,
        client_from("127.0.0.2", proxy.url) as alice,
        client_from("127.0.0.4", proxy.url) as bob,
        client_from("127.0.0.1", server.url) as from_the_proxy_address,
    ):
        got = statuses(alice, SPOOFS)
        assert got == [200] * 3 + [429] * 7, got
        # Another client behind the same proxy has its own bucket, and so does the proxy.
        assert statuses(bob, [{}] * 4) == [200] * 3 + [429]
        assert statuses(from_the_proxy_address, [{}]) == [200]

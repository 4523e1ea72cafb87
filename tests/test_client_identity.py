"""Who the client is, against hostile forwarding headers: nothing a client writes moves it into
another client's bucket or out of its own, whichever header is believed.

The proxy in these tests behaves as nginx with `$proxy_add_x_forwarded_for`, HAProxy, AWS ALB
or Envoy do: it appends the address it saw to the header it owns and passes every other
header through from the client unchanged.
"""

from __future__ import annotations

import ipaddress
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from admission import Settings
from admission.ratelimit.keys import MAX_KEY_BYTES, make_key_func

PROXY = "10.0.0.2"
TRUSTED = "10.0.0.0/8,fd00::/8"
CLIENTS = ["198.51.100.7", "203.0.113.9", "2001:db8::7", "192.0.2.1"]
HEADERS = ("x-forwarded-for", "forwarded")

# Header values a client may send: any bytes at all, and some built to look like hops.
hostile_bytes = st.binary(max_size=300)
hop_like = st.sampled_from(
    [
        "unknown",
        "UNKNOWN",
        "_hidden",
        '"_hidden:_p"',
        "for=unknown",
        "for=_x",
        'for="[2001:db8::1]:80"',
        "for=192.0.2.1",
        "192.0.2.1",
        "10.0.0.5",
        "127.0.0.1",
        "::1",
        "[::1]:80",
        "::ffff:10.0.0.2",
        "",
        " ",
        ",",
        ",,,",
        ";",
        '"',
        '"[',
        "[",
        "]",
        "999.1.1.1",
        "1.2.3.4:99999",
        "for=",
        "for=for=1.1.1.1",
        "for=1.1.1.1;for=2.2.2.2",
        "proto=https",
        "\x00",
        "\xff\xfe",
        "fe80::1%eth0",
        "x" * 5000,
    ]
).map(lambda s: s.encode("latin-1"))
client_values = st.lists(st.one_of(hostile_bytes, hop_like), max_size=4).map(b", ".join)


def request(peer: str, headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "path": "/", "client": (peer, 4000), "headers": headers}


def key_funcs(header: str) -> Any:
    return make_key_func(Settings(key="ip", trusted_proxies=TRUSTED, forwarded_header=header))


def hop_for(header: str, address: str) -> bytes:
    """hop_for is the hop a proxy writes for `address` into `header`."""
    if header == "forwarded":
        ip = ipaddress.ip_address(address)
        return f'for="[{ip}]"'.encode() if ip.version == 6 else f"for={ip}".encode()
    return address.encode()


def through_proxy(
    header: str, client: str, xff: bytes | None, forwarded: bytes | None
) -> dict[str, Any]:
    """through_proxy is what the app sees when `client` sends these headers through a trusted
    proxy that appends to `header` and passes the other through."""
    sent = {b"x-forwarded-for": xff, b"forwarded": forwarded}
    headers: list[tuple[bytes, bytes]] = []
    for name, value in sent.items():
        if name.decode() == header:
            # Appended, as nginx's $proxy_add_x_forwarded_for does: the client's value, a
            # comma, the address the proxy saw.
            own = hop_for(header, client)
            headers.append((name, own if value is None else value + b", " + own))
        elif value is not None:
            headers.append((name, value))
    return request(PROXY, headers)


@settings(max_examples=400, deadline=None)
@given(
    header=st.sampled_from(HEADERS),
    client=st.sampled_from(CLIENTS),
    xff=st.none() | client_values,
    forwarded=st.none() | client_values,
)
@example(header="x-forwarded-for", client="198.51.100.7", xff=None, forwarded=b"for=1.1.1.1")
@example(header="x-forwarded-for", client="198.51.100.7", xff=None, forwarded=b"for=unknown")
@example(header="x-forwarded-for", client="198.51.100.7", xff=None, forwarded=b'for="')
@example(header="forwarded", client="198.51.100.7", xff=b"1.1.1.1", forwarded=b'for="[::1')
def test_behind_an_appending_proxy_a_client_is_keyed_by_its_own_address_whatever_it_sends(
    header: str, client: str, xff: bytes | None, forwarded: bytes | None
) -> None:
    key = key_funcs(header)(through_proxy(header, client, xff, forwarded))
    assert key == f"ip:{ipaddress.ip_address(client)}"


@settings(max_examples=300, deadline=None)
@given(
    header=st.sampled_from(HEADERS),
    peer=st.sampled_from([*CLIENTS, "127.0.0.1", "::1"]),
    xff=st.none() | client_values,
    forwarded=st.none() | client_values,
)
def test_from_an_untrusted_peer_no_header_changes_the_key(
    header: str, peer: str, xff: bytes | None, forwarded: bytes | None
) -> None:
    headers = [(b"x-forwarded-for", xff), (b"forwarded", forwarded)]
    scope = request(peer, [(n, v) for n, v in headers if v is not None])
    assert key_funcs(header)(scope) == f"ip:{peer}"


@settings(max_examples=400, deadline=None)
@given(header=st.sampled_from(HEADERS), hop=st.one_of(hostile_bytes, hop_like))
def test_a_hop_that_is_no_address_never_lands_in_a_shared_or_an_address_bucket(
    header: str, hop: bytes
) -> None:
    """Whatever the nearest trusted proxy wrote about its client, the key is its own: not the
    proxy's bucket, not any address's bucket, bounded, and the same for the same words."""
    if header == "forwarded":
        hop = b"for=" + hop
    key_func = key_funcs(header)
    key = key_func(request(PROXY, [(header.encode(), hop)]))
    assert len(key) <= len("ip:") + MAX_KEY_BYTES
    assert key == key_func(request(PROXY, [(header.encode(), hop)]))
    address = key.removeprefix("ip:")
    if "/" in address or address.startswith("sha256:"):
        assert key != f"ip:{PROXY}"
        # Another proxy's clients with the same words are others.
        assert key != key_func(request("10.9.9.9", [(header.encode(), hop)]))
    else:
        # It was an address after all (maybe a trusted one: then the proxy says the request
        # came from its own side): the client is that address.
        ipaddress.ip_address(address)


@pytest.mark.parametrize("header", HEADERS)
def test_two_clients_behind_one_proxy_with_hidden_names_get_two_buckets(header: str) -> None:
    key = key_funcs(header)
    prefix = b"for=" if header == "forwarded" else b""
    a = key(request(PROXY, [(header.encode(), prefix + b"_alice")]))
    b = key(request(PROXY, [(header.encode(), prefix + b"_bob")]))
    unknown = key(request(PROXY, [(header.encode(), prefix + b"unknown")]))
    assert len({a, b, unknown, f"ip:{PROXY}"}) == 4


NOT_ADDRESSES = [
    "unknown",
    "UNKNOWN",
    "_hidden",
    "_hidden:_port",
    "",
    " ",
    '"',
    "[",
    "]",
    "[::1",
    "999.1.1.1",
    "1.2.3",
    "localhost",
    "example.com",
    "\x00",
    "\xff",
    "x" * 5000,
]


@pytest.mark.parametrize("header", HEADERS)
@pytest.mark.parametrize("hop", NOT_ADDRESSES)
def test_every_hop_that_is_no_address_gets_a_bucket_apart_from_the_proxy(
    header: str, hop: str
) -> None:
    value = ("for=" + hop if header == "forwarded" else hop).encode("latin-1")
    key = key_funcs(header)(request(PROXY, [(header.encode(), value)]))
    assert key != f"ip:{PROXY}"
    assert key.startswith(f"ip:{PROXY}/") or key.startswith("ip:sha256:")

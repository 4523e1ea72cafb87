"""Client keys: which bucket a request draws from, and who may not choose it for themselves."""

from __future__ import annotations

import ipaddress
from typing import Any

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from admission import AdmissionMiddleware, Settings
from admission.ratelimit.keys import (
    _CACHE_SIZE,
    MAX_KEY_BYTES,
    _resolving,
    bounded,
    client_address,
    key_function,
    make_key_func,
)

TRUSTED = (ipaddress.ip_network("10.0.0.0/8"), ipaddress.ip_network("fd00::/8"))


def scope(
    peer: str | None = "203.0.113.9", headers: list[tuple[str, str]] | None = None
) -> dict[str, Any]:
    """scope is an HTTP scope from `peer` with `headers`, names lower-cased as ASGI has them."""
    return {
        "type": "http",
        "path": "/",
        "client": (peer, 50000) if peer is not None else None,
        "headers": [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers or []],
    }


# --- client_address -----------------------------------------------------------------------


def test_peer_address_is_the_client_without_trusted_proxies() -> None:
    request = scope("198.51.100.7", [("X-Forwarded-For", "1.1.1.1")])
    assert client_address(request, ()) == "198.51.100.7"


def test_spoofed_forwarded_for_from_an_untrusted_peer_is_ignored() -> None:
    request = scope("198.51.100.7", [("X-Forwarded-For", "1.1.1.1")])
    assert client_address(request, TRUSTED) == "198.51.100.7"


def test_trusted_proxy_forwarded_for_names_the_client() -> None:
    request = scope("10.0.0.2", [("X-Forwarded-For", "192.0.2.60")])
    assert client_address(request, TRUSTED) == "192.0.2.60"


def test_walk_from_the_right_stops_at_the_first_untrusted_hop() -> None:
    # The client forged "1.1.1.1"; our proxies 10.0.0.5 and 10.0.0.2 appended what they saw.
    request = scope("10.0.0.2", [("X-Forwarded-For", "1.1.1.1, 192.0.2.60, 10.0.0.5")])
    assert client_address(request, TRUSTED) == "192.0.2.60"


def test_several_forwarded_for_headers_form_one_chain() -> None:
    request = scope(
        "10.0.0.2", [("X-Forwarded-For", "1.1.1.1"), ("X-Forwarded-For", "192.0.2.60, 10.0.0.5")]
    )
    assert client_address(request, TRUSTED) == "192.0.2.60"


def test_chain_of_only_trusted_proxies_gives_the_leftmost() -> None:
    request = scope("10.0.0.2", [("X-Forwarded-For", "10.1.1.1, 10.0.0.5")])
    assert client_address(request, TRUSTED) == "10.1.1.1"


def test_trusted_peer_without_forwarding_headers_is_the_client() -> None:
    assert client_address(scope("10.0.0.2"), TRUSTED) == "10.0.0.2"


@pytest.mark.parametrize(
    ("header", "client"),
    [
        ('for="[2001:db8:cafe::17]:4711"', "2001:db8:cafe::17"),
        ("for=192.0.2.43", "192.0.2.43"),
        ('for="192.0.2.43:8080";proto=https;by=10.0.0.2', "192.0.2.43"),
        ("For=192.0.2.43, for=10.0.0.5", "192.0.2.43"),
        ("for=1.1.1.1, for=192.0.2.43;proto=http, for=10.0.0.5", "192.0.2.43"),
        ('proto=https;for="[2001:db8::1]"', "2001:db8::1"),
    ],
)
def test_forwarded_header_rfc7239_is_walked_like_x_forwarded_for(header: str, client: str) -> None:
    request = scope("10.0.0.2", [("Forwarded", header)])
    assert client_address(request, TRUSTED, "forwarded") == client


def test_only_the_configured_forwarded_header_is_believed() -> None:
    request = scope("10.0.0.2", [("X-Forwarded-For", "192.0.2.60"), ("Forwarded", "for=1.1.1.1")])
    assert client_address(request, TRUSTED) == "192.0.2.60"
    assert client_address(request, TRUSTED, "x-forwarded-for") == "192.0.2.60"
    assert client_address(request, TRUSTED, "forwarded") == "1.1.1.1"
    # The one not configured is ignored even when the configured one is absent.
    forwarded_only = scope("10.0.0.2", [("Forwarded", "for=1.1.1.1")])
    assert client_address(forwarded_only, TRUSTED) == "10.0.0.2"
    xff_only = scope("10.0.0.2", [("X-Forwarded-For", "1.1.1.1")])
    assert client_address(xff_only, TRUSTED, "forwarded") == "10.0.0.2"


@pytest.mark.parametrize(
    ("header", "value", "expected"),
    [
        ("x-forwarded-for", "not-an-address", "10.0.0.2/not-an-address"),
        ("x-forwarded-for", "192.0.2.60, garbage", "10.0.0.2/garbage"),
        ("x-forwarded-for", "", "10.0.0.2/"),
        ("x-forwarded-for", "192.0.2.60,", "10.0.0.2/"),
        ("x-forwarded-for", "unknown, 10.0.0.5", "10.0.0.5/unknown"),
        ("forwarded", "for=unknown", "10.0.0.2/unknown"),
        ("forwarded", "for=_hidden", "10.0.0.2/_hidden"),
        ("forwarded", 'for="_hidden:_port9"', "10.0.0.2/_hidden"),
        ("forwarded", 'for="_hidden:4711";proto=https', "10.0.0.2/_hidden"),
        ("forwarded", "proto=https", "10.0.0.2/proto=https"),
        ("forwarded", 'for="[2001:db8::1', "10.0.0.2/[2001:db8::1"),
        ("forwarded", "for=192.0.2.43, proto=http", "10.0.0.2/proto=http"),
        ("forwarded", "for=192.0.2.43;for=192.0.2.44", "10.0.0.2/for=192.0.2.43;for=192.0.2.44"),
        ("forwarded", "for=_a, for=10.0.0.5", "10.0.0.5/_a"),
    ],
)
def test_a_hop_that_is_not_an_address_is_keyed_by_the_proxy_that_wrote_it_and_the_hop(
    header: str, value: str, expected: str
) -> None:
    """The nearest trusted proxy's word about its client: never its own shared bucket."""
    request = scope("10.0.0.2", [(header, value)])
    assert client_address(request, TRUSTED, header) == expected


def test_malformed_hop_beyond_the_first_untrusted_one_does_not_matter() -> None:
    request = scope("10.0.0.2", [("X-Forwarded-For", "garbage, 192.0.2.60")])
    assert client_address(request, TRUSTED) == "192.0.2.60"


def test_ipv6_peer_in_a_trusted_network_is_a_trusted_proxy() -> None:
    request = scope("fd00::2", [("X-Forwarded-For", "2001:db8::9")])
    assert client_address(request, TRUSTED) == "2001:db8::9"


def test_ipv4_mapped_ipv6_peer_is_matched_as_ipv4() -> None:
    request = scope("::ffff:10.0.0.2", [("X-Forwarded-For", "192.0.2.60")])
    assert client_address(request, TRUSTED) == "192.0.2.60"


def test_request_without_a_peer_is_keyed_unknown() -> None:
    assert client_address(scope(None, [("X-Forwarded-For", "1.1.1.1")]), TRUSTED) == "unknown"


# --- make_key_func ------------------------------------------------------------------------


def test_ip_key_uses_the_client_address() -> None:
    key = make_key_func(Settings(key="ip", trusted_proxies="10.0.0.0/8"))
    assert key(scope("198.51.100.7")) == "ip:198.51.100.7"
    assert key(scope("10.0.0.2", [("X-Forwarded-For", "192.0.2.60")])) == "ip:192.0.2.60"


def test_ip_key_without_proxies_keys_every_request_by_its_own_peer() -> None:
    # It remembers the last request's key (the window and the rate limit key a request once
    # between them): any other scope is keyed anew.
    key = make_key_func(Settings(key="ip"))
    first, second = scope("198.51.100.7"), scope("198.51.100.8")
    assert key(first) == key(first) == "ip:198.51.100.7"
    assert key(second) == "ip:198.51.100.8"
    assert key(scope(None)) == "ip:unknown"
    assert key(first) == "ip:198.51.100.7"
    assert key(scope("198.51.100.9")) == "ip:198.51.100.9"


def test_global_key_is_one_bucket_for_everyone() -> None:
    key = make_key_func(Settings(key="global"))
    assert key(scope("198.51.100.7")) == key(scope("192.0.2.1")) == "global"


def test_header_key_uses_the_header_value_whatever_its_case() -> None:
    key = make_key_func(Settings(key="header:X-API-Key"))
    assert key(scope("198.51.100.7", [("x-api-key", "alice")])) == "h:alice"
    assert key(scope("192.0.2.1", [("X-Api-Key", "alice")])) == "h:alice"
    assert key(scope("192.0.2.1", [("X-API-Key", "bob")])) == "h:bob"


def test_request_without_the_header_is_keyed_by_its_address() -> None:
    key = make_key_func(Settings(key="header:X-API-Key"))
    first = key(scope("198.51.100.7"))
    second = key(scope("192.0.2.1", [("X-API-Key", "   ")]))
    assert first == "ip:198.51.100.7"
    assert second == "ip:192.0.2.1"
    assert first != second


def test_header_value_cannot_borrow_an_address_bucket() -> None:
    key = make_key_func(Settings(key="header:X-API-Key"))
    forged = key(scope("192.0.2.1", [("X-API-Key", "ip:198.51.100.7")]))
    assert forged != key(scope("198.51.100.7"))


def test_huge_header_values_are_hashed_and_stay_distinct() -> None:
    key = make_key_func(Settings(key="header:X-API-Key"))
    a = key(scope(headers=[("X-API-Key", "k" * 100_000 + "a")]))
    b = key(scope(headers=[("X-API-Key", "k" * 100_000 + "b")]))
    assert a != b
    assert len(a) <= MAX_KEY_BYTES
    assert a.startswith("h:sha256:")
    short = "k" * MAX_KEY_BYTES
    assert key(scope(headers=[("X-API-Key", short)])) == "h:" + short


# --- through the middleware ---------------------------------------------------------------


class Counter:
    """Counter is a tiny ASGI app that counts the requests it gets."""

    def __init__(self) -> None:
        self.calls = 0

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        assert scope["type"] == "http"
        self.calls += 1
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})


def middleware(**settings: Any) -> AdmissionMiddleware:
    return AdmissionMiddleware(
        Counter(), settings=Settings(rate="1/minute", **settings), handle_signals=False
    )


async def statuses(
    app: AdmissionMiddleware, peer: str, n: int, headers: dict[str, str] | None = None
) -> list[int]:
    transport = httpx.ASGITransport(app=app, client=(peer, 4000))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as client:
        return [(await client.get("/", headers=headers)).status_code for _ in range(n)]


async def test_spoofed_forwarded_for_does_not_escape_the_limit() -> None:
    app = middleware(trusted_proxies="10.0.0.0/8")
    got = [
        (await statuses(app, "198.51.100.7", 1, {"X-Forwarded-For": f"192.0.2.{i}"}))[0]
        for i in range(5)
    ]
    assert got == [200, 429, 429, 429, 429]


async def test_clients_behind_a_trusted_proxy_get_a_bucket_each() -> None:
    app = middleware(trusted_proxies="10.0.0.0/8")
    alice = await statuses(app, "10.0.0.2", 2, {"X-Forwarded-For": "192.0.2.1"})
    bob = await statuses(app, "10.0.0.2", 2, {"X-Forwarded-For": "192.0.2.2"})
    assert alice == [200, 429]
    assert bob == [200, 429]


async def test_forwarded_ipv6_client_behind_a_trusted_proxy_is_limited_alone() -> None:
    app = middleware(trusted_proxies="10.0.0.0/8", forwarded_header="forwarded")
    header = {"Forwarded": 'for="[2001:db8:cafe::17]:4711"', "X-Forwarded-For": "192.0.2.1"}
    assert await statuses(app, "10.0.0.2", 2, header) == [200, 429]
    other = {"Forwarded": 'for="[2001:db8:cafe::18]:4711"', "X-Forwarded-For": "192.0.2.1"}
    assert await statuses(app, "10.0.0.2", 1, other) == [200]


async def test_ipv6_client_behind_a_trusted_proxy_is_limited_alone() -> None:
    app = middleware(trusted_proxies="10.0.0.0/8")
    header = {"X-Forwarded-For": "[2001:db8:cafe::17]:4711"}
    assert await statuses(app, "10.0.0.2", 2, header) == [200, 429]
    other = {"X-Forwarded-For": "2001:db8:cafe::18"}
    assert await statuses(app, "10.0.0.2", 1, other) == [200]


async def test_clients_without_the_key_header_do_not_share_a_bucket() -> None:
    app = middleware(key="header:X-Client")
    assert await statuses(app, "192.0.2.1", 2) == [200, 429]
    assert await statuses(app, "192.0.2.2", 2) == [200, 429]
    assert await statuses(app, "192.0.2.1", 1, {"X-Client": "alice"}) == [200]


async def test_key_header_shared_across_addresses_is_one_bucket() -> None:
    app = middleware(key="header:X-Client")
    assert await statuses(app, "192.0.2.1", 1, {"X-Client": "alice"}) == [200]
    assert await statuses(app, "192.0.2.2", 1, {"X-Client": "alice"}) == [429]


async def test_huge_key_header_is_limited_like_any_other() -> None:
    app = middleware(key="header:X-Client")
    huge = {"X-Client": "z" * 20_000}
    assert await statuses(app, "192.0.2.1", 2, huge) == [200, 429]
    assert app.store is not None
    assert len(app.store) == 1  # type: ignore[arg-type]


# --- the ip key behind trusted proxies, remembered ------------------------------------------

PEERS = [None, "", "10.0.0.2", "10.0.0.9", "fd00::1", "203.0.113.9", "[fd00::2]", "junk"]
HOPS = ["192.0.2.60", "10.0.0.5", "unknown", "_hidden", "[2001:db8::1]:80", "", " ", '"x']
HOPS.append("1.1.1.1")


@settings(max_examples=300, deadline=None)
@given(
    requests=st.lists(
        st.tuples(
            st.sampled_from(PEERS),
            st.lists(
                st.tuples(
                    st.sampled_from(["x-forwarded-for", "forwarded", "x-real-ip"]),
                    st.lists(st.sampled_from(HOPS), max_size=4),
                ),
                max_size=3,
            ),
        ),
        min_size=1,
        max_size=30,
    ),
    header=st.sampled_from(["x-forwarded-for", "forwarded"]),
    long_value=st.booleans(),
)
def test_the_remembered_key_behind_proxies_is_the_one_the_walk_computes(
    requests: list[tuple[str | None, list[tuple[str, list[str]]]]], header: str, long_value: bool
) -> None:
    """The `ip` key behind trusted proxies remembers each (peer, forwarded value) it walked:
    every request, the first of its kind or one seen before (in any order, repeated headers,
    values long enough not to be remembered), gets the key `client_address` computes."""
    key = key_function("ip", TRUSTED, header)
    sent = []
    for peer, headers in requests:
        fields = [
            (name, ", ".join(f"for={h}" if name == "forwarded" else h for h in hops))
            for name, hops in headers
        ]
        if long_value:
            fields.append((header, "1.1.1.1," * 40))
        sent.append(scope(peer, fields))
    for request in sent + sent[::-1]:
        expected = "ip:" + bounded(client_address(request, TRUSTED, header))
        assert key(request.copy()) == expected


def test_remembered_keys_behind_proxies_are_bounded_whatever_the_clients_send() -> None:
    """A client rotating its X-Forwarded-For can't grow what the key remembers: it is
    forgotten all at once when full, and a value too long is never remembered."""
    key = _resolving(TRUSTED, "x-forwarded-for")
    known = _tables(key)["known"]
    for i in range(3 * _CACHE_SIZE):
        key(scope("10.0.0.2", [("X-Forwarded-For", f"198.51.{i >> 8 & 255}.{i & 255}")]))
        assert len(known) <= _CACHE_SIZE
    known.clear()
    key(scope("10.0.0.2", [("X-Forwarded-For", "192.0.2.60," * 30)]))
    assert not known


def _tables(key: Any) -> dict[str, Any]:
    cells = (c.cell_contents for c in key.__closure__)
    return dict(zip(key.__code__.co_freevars, cells, strict=True))


def test_a_peer_that_is_no_trusted_proxy_is_keyed_without_reading_its_headers() -> None:
    """An untrusted peer is its own key whatever it sends: its headers are never read, even
    malformed, and rotating its X-Forwarded-For remembers nothing of them."""
    key = _resolving(TRUSTED, "x-forwarded-for")
    known = _tables(key)["known"]
    known.clear()
    malformed = [[(b"x-forwarded-for", "1.2.3.4")], [(b"x-forwarded-for", b"1.2.3.4", b"x")]]
    for headers in malformed:
        request = {"type": "http", "client": ("203.0.113.9", 1), "headers": headers}
        assert key(request) == "ip:" + client_address(request, TRUSTED) == "ip:203.0.113.9"
    for i in range(2 * _CACHE_SIZE):
        key(scope("198.51.100.7", [("X-Forwarded-For", f"192.0.2.{i & 255}, {i}")]))
    assert not known


def test_every_key_of_the_same_proxies_and_header_shares_one_memory() -> None:
    """The window's key (remembered), the rate limit's and a `header:` key's fallback walk a
    forwarded header once between them."""
    shared = _resolving(TRUSTED, "x-forwarded-for")
    assert shared is _resolving(TRUSTED, "x-forwarded-for")
    known = _tables(shared)["known"]
    known.clear()
    request = scope("10.0.0.2", [("X-Forwarded-For", "192.0.2.61")])
    keys = [
        key_function("ip", TRUSTED, remembered=True),
        key_function("ip", TRUSTED),
        key_function("header:X-Key", TRUSTED),
    ]
    assert {k(dict(request)) for k in keys} == {"ip:192.0.2.61"}
    assert len(known) == 1


def test_a_key_without_trusted_proxies_builds_whatever_the_header_name() -> None:
    key = key_function("header:X-Key", (), "X-Forwarded-For")
    assert key(scope("198.51.100.7", [("X-Forwarded-For", "1.1.1.1")])) == "ip:198.51.100.7"

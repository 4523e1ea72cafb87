"""admission.ratelimit.keys: which client a request comes from, as a rate-limit key.

`X-Forwarded-For` and `Forwarded` are written by whoever sends them, so one of them (the one
the proxies write) is believed, only when the peer is a trusted proxy, and only as far as the
chain of trusted proxies goes: walking from the right (the hop our proxy added) to the first
hop that is not a trusted proxy. This module is the one place that decides who the client is.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Callable, Sequence
from typing import Any

from admission.config.fields import Network
from admission.config.settings import Settings
from admission.types import Scope

KeyFunc = Callable[[Scope], str]

XFF = "x-forwarded-for"
FORWARDED = "forwarded"
# The forwarded headers a proxy may be trusted for, by their ADMISSION_FORWARDED_HEADER name.
_HEADER_NAMES = {XFF: b"x-forwarded-for", FORWARDED: b"forwarded"}
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# A client-chosen header value becomes a key; past this length it is hashed so that keys stay
# small in memory and in Redis whatever the client sends.
MAX_KEY_BYTES = 200


def make_key_func(settings: Settings) -> KeyFunc:
    """make_key_func builds the function that keys a request per `ADMISSION_KEY`, with the
    trusted proxies and forwarded header of `settings` (see `key_function`), for the window's
    fair shares: one that remembers the last request's key, as the rate limit's function does
    beside a window (`keyed_by_window`)."""
    return key_function(
        settings.key, settings.trusted_networks, settings.forwarded_header, remembered=True
    )


def keyed_by_window(settings: Settings) -> bool:
    """keyed_by_window: does a window of `settings` key each request by its client
    (`ADMISSION_WINDOW` or `ADMISSION_CLIENT_WINDOW`, keyed by `ADMISSION_KEY`)? Then the rate
    limit's key function should be the window's own (`remembered`), so that a request is
    keyed once between them."""
    return (settings.window is not None or settings.client_window is not None) and (
        settings.key != "global"
    )


def key_function(
    spec: str,
    networks: Sequence[Network] = (),
    forwarded_header: str = XFF,
    *,
    remembered: bool = False,
) -> KeyFunc:
    """key_function builds the function that keys a request per `spec`, an `ADMISSION_KEY`
    value; the one factory of client keys, for `ADMISSION_RATE` and every route policy alike.

    `global`: one key for everyone. `ip`: the client address (see `client_address`, which
    reads only `forwarded_header`, and only from the trusted proxies in `networks`).
    `header:<Name>`: that header's value; a request without it, or with it more than once
    (which value is the client's is then anyone's guess), is keyed by its address, so such
    clients are not lumped into one shared bucket.

    The same arguments give the same function, and one that reads headers remembers the key of
    the last request it keyed: the window's fair shares and the rate limit key a request once
    between them, whatever walking a forwarded header costs. `remembered`: so does the peer's
    address alone (`ip` without trusted proxies), for a key function the window shares;
    alone, remembering costs that key more than computing it again.
    """
    return _shared_key_function(spec, tuple(networks), forwarded_header, remembered)


@functools.lru_cache(maxsize=256)
def _shared_key_function(
    spec: str, networks: tuple[Network, ...], forwarded_header: str, remembered: bool
) -> KeyFunc:
    if spec == "global":
        return lambda scope: "global"

    address = _resolving(networks, forwarded_header)
    if spec == "ip":
        if not networks:
            # No proxy is trusted: the peer is the client, with nothing to parse.
            return _remembering_peer() if remembered else _peer_key
        return _remembering(address)
    header = spec[len("header:") :].lower().encode("latin-1")

    def by_header(scope: Scope) -> str:
        value = single_header(scope, header)
        if value is not None:
            text = value.decode("latin-1").strip()
            if text:
                return "h:" + bounded(text)
        return address(scope)

    return _remembering(by_header)


# A forwarded header longer than this is walked every time: clients writing long junk into
# it can't make `_resolving`'s memory big.
_REMEMBERED_VALUE_MAX = 256


@functools.lru_cache(maxsize=64)
def _resolving(networks: tuple[Network, ...], forwarded_header: str) -> KeyFunc:
    """_resolving is the `ip` key of `client_address` (behind the trusted proxies in
    `networks`), remembered: behind a proxy the same few clients' requests come with the same
    few forwarded values, and walking one costs about 24,000 instructions (benchmarks/
    overhead_instructions.py, admission-all, before and after in docs/performance.md), a
    lookup a few hundred.

    First by peer: a peer that is no trusted proxy is its own key, whatever headers it sends,
    so its headers are never read (nor remembered: a client can't push anyone's key out by
    rotating its own). Then, for a trusted peer, by the peer and the forwarded header's value,
    all that `client_address` reads, so a remembered key is the one it would compute. Each
    table holds at most `_CACHE_SIZE` (forgotten all at once when full), and a value over
    `_REMEMBERED_VALUE_MAX` bytes is never remembered. One per trusted networks and header:
    the window's key, the rate limit's and a `header:` key's fallback share it."""
    name = _HEADER_NAMES.get(forwarded_header)
    # peer -> its key when it is no trusted proxy; "" when it is one (its headers count).
    peers: dict[str | None, str] = {}
    known: dict[tuple[str, bytes | None], str] = {}

    def walk(scope: Scope) -> str:
        return "ip:" + bounded(client_address(scope, networks, forwarded_header))

    def key(scope: Scope) -> str:
        client = scope.get("client")
        peer = str(client[0]) if client else None
        own = peers.get(peer)
        if own is None:
            own = "" if from_trusted_peer(scope, networks) else walk(scope)
            _remember(peers, peer, own)
        if own:
            return own
        assert peer is not None  # a trusted peer has an address
        values = [value for header, value in scope.get("headers", ()) if header == name]
        value = b",".join(values) if values else None
        memo = (peer, value)
        found = known.get(memo)
        if found is None:
            found = walk(scope)
            if value is None or len(value) <= _REMEMBERED_VALUE_MAX:
                _remember(known, memo, found)
        return found

    return key


def _remember(table: dict[Any, Any], key: Any, value: Any) -> None:
    """_remember puts `key` in `table`, first forgetting everything if it holds
    `_CACHE_SIZE`."""
    if len(table) >= _CACHE_SIZE:
        table.clear()
    table[key] = value


def _remembering(compute: KeyFunc) -> KeyFunc:
    """_remembering is `compute` answering again for the same scope object without computing:
    a server makes a new scope for every request, and holding the last one alive costs one
    request's headers."""
    last: list[Any] = [None, ""]

    def key(scope: Scope) -> str:
        if scope is last[0]:
            return str(last[1])
        value = compute(scope)
        last[0], last[1] = scope, value
        return value

    return key


def _remembering_peer() -> KeyFunc:
    """_remembering_peer is the peer's address as a key, remembered for the last scope, in one
    frame (`_remembering` adds one): the window's fair shares and the rate limit of one request
    key it once between them, and the store hashes the string the window's count hashed
    already. Counted under callgrind: a request keyed twice costs about 740 instructions
    fewer; one keyed once (the rate limit alone) would cost about 260 more than `_peer_key`."""
    last_scope: Scope | None = None
    last_key = ""

    def key(scope: Scope) -> str:
        nonlocal last_scope, last_key
        if scope is last_scope:
            return last_key
        client = scope.get("client")
        value = "ip:" + (str(client[0]) if client else "unknown")
        last_scope, last_key = scope, value
        return value

    return key


def _peer_key(scope: Scope) -> str:
    client = scope.get("client")
    return "ip:" + (str(client[0]) if client else "unknown")


def client_key_of(value: str) -> str:
    """client_key_of is the client key `value` stands for when an operator names a client
    (`admission reset`): an IP address is `ip:<address>`, anything else a header value
    (`h:<value>`, bounded as requests' are); a key already in that form (`ip:...`, `h:...`,
    `c:...` for a policy keyed by a function's answer, `sha256:...`) or `global` is taken as
    it is."""
    if value == "global" or value.startswith(("ip:", "h:", "c:", "sha256:")):
        return value
    try:
        return "ip:" + str(ipaddress.ip_address(value))
    except ValueError:
        return "h:" + bounded(value.strip())


def single_header(scope: Scope, name: bytes) -> bytes | None:
    """single_header is the value of header `name` (lower case) when the request carries it
    exactly once; None when it is absent or repeated. A repeated header is ambiguous (a client
    can send its own copy beside the one a gateway writes), so it counts as absent: the one
    rule for `header:` keys, client classes and priorities."""
    found = None
    for key, value in scope.get("headers", ()):
        if key == name:
            if found is not None:
                return None
            found = value
    return found


def from_trusted_peer(scope: Scope, networks: Sequence[Network]) -> bool:
    """from_trusted_peer: did the request come straight from one of the trusted proxies in
    `networks`? A header that only a gateway may set (a class, a priority) counts only then."""
    client = scope.get("client")
    if not client:
        return False
    ip = _parse_ip(str(client[0]))
    return ip is not None and _trusted(ip, networks)


def bounded(text: str) -> str:
    """bounded is `text`, or its SHA-256 when longer than MAX_KEY_BYTES."""
    if len(text) <= MAX_KEY_BYTES:
        return text
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def client_address(scope: Scope, trusted: Sequence[Network], forwarded_header: str = XFF) -> str:
    """client_address is the address of the client that sent the request, as key material.

    Without trusted proxies, or when the peer is not one, it is the peer (`scope["client"]`),
    whatever headers the request carries. From a trusted peer, the one header named by
    `forwarded_header` is read (`x-forwarded-for`, or `forwarded` for RFC 7239 `for=`); the
    other is never looked at, since a proxy that writes one passes the other through from the
    client. The hops are walked from the right, each written by the trusted proxy to its
    right, past trusted proxies; the first other address is the client. If every hop is
    trusted, the leftmost is.

    A hop on that walk that is not an address (`unknown`, an obfuscated `_name`, junk, an
    element without `for=`) is the nearest trusted proxy's only word about its client: the
    result is that proxy's address and the hop as written, `"10.0.0.5/_hidden"` (never an
    address: there is a "/"). Falling back to the proxy's own address instead, as nginx's
    realip and Envoy do, would put that client in one bucket with everyone behind the proxy.

    A request with no peer at all (a unix socket) is "unknown".
    """
    client = scope.get("client")
    peer: str | None = str(client[0]) if client else None
    if not trusted or peer is None:
        return peer or "unknown"
    peer_ip = _parse_ip(peer)
    if peer_ip is None or not _trusted(peer_ip, trusted):
        return peer
    name = _HEADER_NAMES[forwarded_header]
    values = [value for key, value in scope.get("headers", ()) if key == name]
    if not values:
        return _ip_text(peer_ip)
    # Split on every comma, quoted or not: a proxy appends its hop after the last comma, and
    # nothing a client writes earlier in the header, even an unclosed quote, can move it.
    hops = b",".join(values).decode("latin-1").split(",")
    forwarded = name == b"forwarded"
    writer = peer_ip
    for hop in reversed(hops):
        node = _forwarded_for(hop) if forwarded else hop.strip()
        ip = _parse_ip(node)
        if ip is None:
            return f"{_ip_text(writer)}/{_node_name(node) if node else hop.strip()}"
        if not _trusted(ip, trusted):
            return _ip_text(ip)
        writer = ip
    return _ip_text(writer)


# Parsing an address with `ipaddress` costs microseconds, and behind a proxy every request
# parses the same few hops: results are cached. Only short texts are, so that clients writing
# long junk into X-Forwarded-For can't make the cache big.
_CACHED_TEXT_MAX = 64
_CACHE_SIZE = 4096


def _parse_ip(text: str) -> IPAddress | None:
    """_parse_ip reads an address, with or without brackets/port; None if it isn't one."""
    if len(text) <= _CACHED_TEXT_MAX:
        return _parse_ip_cached(text)
    return _parse_ip_uncached(text)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _ip_text(ip: IPAddress) -> str:
    return str(ip)


@functools.lru_cache(maxsize=_CACHE_SIZE)
def _parse_ip_cached(text: str) -> IPAddress | None:
    return _parse_ip_uncached(text)


def _parse_ip_uncached(text: str) -> IPAddress | None:
    text = text.strip().strip('"')
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            return None
        text = text[1:end]
    elif text.count(":") == 1:
        text = text.split(":", 1)[0]
    try:
        ip = ipaddress.ip_address(text)
    except ValueError:
        return None
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        return ip.ipv4_mapped
    return ip


def _node_name(node: str) -> str:
    """_node_name is a hop that is not an address, unquoted and without its port: the name a
    proxy gave its client (`_hidden`, `unknown`), whatever port it came from."""
    node = node.strip().strip('"')
    if node.startswith("["):
        end = node.find("]")
        return node[: end + 1] if end >= 0 else node
    return node.partition(":")[0]


def _trusted(ip: IPAddress, networks: Sequence[Network]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


def _forwarded_for(element: str) -> str:
    """_forwarded_for is the `for=` value of one `Forwarded` element (RFC 7239), unquoted; ""
    when it has none or more than one, which no address parses as."""
    found = None
    for pair in element.split(";"):
        name, sep, value = pair.partition("=")
        if sep and name.strip().lower() == "for":
            if found is not None:
                return ""
            found = value.strip()
    return found or ""

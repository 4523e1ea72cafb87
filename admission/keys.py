"""admission.keys: which client a request comes from, as a rate-limit key.

`X-Forwarded-For` and `Forwarded` are written by whoever sends them, so they are believed only
when the peer is a trusted proxy, and only as far as the chain of trusted proxies goes: walking
from the right (the hop our proxy added) to the first address that is not a trusted proxy.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
from collections.abc import Callable, Sequence

from admission.responses import Scope
from admission.settings import Network, Settings

KeyFunc = Callable[[Scope], str]
IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# A client-chosen header value becomes a key; past this length it is hashed so that keys stay
# small in memory and in Redis whatever the client sends.
MAX_KEY_BYTES = 200


def make_key_func(settings: Settings) -> KeyFunc:
    """make_key_func builds the function that keys a request per `ADMISSION_KEY`.

    `global`: one key for everyone. `ip`: the client address (see `client_address`).
    `header:<Name>`: that header's value; a request without it is keyed by its address, so
    clients lacking the header are not lumped into one shared bucket.
    """
    networks = settings.trusted_networks
    if settings.key == "global":
        return lambda scope: "global"

    def address(scope: Scope) -> str:
        return "ip:" + client_address(scope, networks)

    if settings.key == "ip":
        if not networks:
            # No proxy is trusted: the peer is the client, with nothing to parse.
            return _peer_key
        return address
    header = settings.key[len("header:") :].lower().encode("latin-1")

    def by_header(scope: Scope) -> str:
        for name, value in scope.get("headers", ()):
            if name == header:
                text = value.decode("latin-1").strip()
                if text:
                    return "h:" + bounded(text)
        return address(scope)

    return by_header


def _peer_key(scope: Scope) -> str:
    client = scope.get("client")
    return "ip:" + (str(client[0]) if client else "unknown")


def bounded(text: str) -> str:
    """bounded is `text`, or its SHA-256 when longer than MAX_KEY_BYTES."""
    if len(text) <= MAX_KEY_BYTES:
        return text
    return "sha256:" + hashlib.sha256(text.encode("utf-8", "surrogateescape")).hexdigest()


def client_address(scope: Scope, trusted: Sequence[Network]) -> str:
    """client_address is the address of the client that sent the request.

    Without trusted proxies, or when the peer is not one, it is the peer (`scope["client"]`).
    From a trusted peer, the forwarding chain (`Forwarded` if present, else `X-Forwarded-For`)
    is walked from the right past trusted proxies; the first other address is the client. A
    malformed hop on that walk means the chain can't be believed: the peer address is used.
    A request with no peer at all (a unix socket) is keyed "unknown".
    """
    client = scope.get("client")
    peer: str | None = str(client[0]) if client else None
    if not trusted or peer is None:
        return peer or "unknown"
    peer_ip = _parse_ip(peer)
    if peer_ip is None or not _trusted(peer_ip, trusted):
        return peer
    forwarded: list[bytes] = []
    xff: list[bytes] = []
    for name, value in scope.get("headers", ()):
        if name == b"forwarded":
            forwarded.append(value)
        elif name == b"x-forwarded-for":
            xff.append(value)
    if forwarded:
        hops = _forwarded_for(b",".join(forwarded).decode("latin-1"))
    elif xff:
        hops = [h.strip() for h in b",".join(xff).decode("latin-1").split(",")]
    else:
        return peer
    if hops is None:
        return peer
    chosen = peer_ip
    for hop in reversed(hops):
        ip = _parse_ip(hop)
        if ip is None:
            return peer
        chosen = ip
        if not _trusted(ip, trusted):
            break
    return _ip_text(chosen)


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


def _trusted(ip: IPAddress, networks: Sequence[Network]) -> bool:
    return any(ip.version == net.version and ip in net for net in networks)


def _forwarded_for(value: str) -> list[str] | None:
    """_forwarded_for lists the `for=` values of a `Forwarded` header (RFC 7239), in order;
    None when an element has no `for=`, since the chain then has a gap."""
    hops = []
    for element in value.split(","):
        found = None
        for pair in element.split(";"):
            name, sep, val = pair.strip().partition("=")
            if sep and name.strip().lower() == "for":
                found = val.strip()
        if found is None:
            return None
        hops.append(found)
    return hops

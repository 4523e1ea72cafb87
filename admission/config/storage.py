"""admission.config.storage: `ADMISSION_STORAGE` URIs: which schemes there are, how one is
checked before anything connects, and how one is shown with its credentials hidden."""

from __future__ import annotations

import re
import urllib.parse
from typing import Any

from admission.config.parsers import WHOLE_DIGITS, Invalid

STORAGE_SCHEMES = (
    "memory",
    "redis",
    "rediss",
    "redis+unix",
    "redis+cluster",
    "redis+sentinel",
)


# A query parameter whose name contains one of these holds a credential (password,
# sentinel_password, ssl_password, token, auth, api_key, ...): its value is never shown.
_SECRET_PARAM = re.compile(r"pass|pwd|secret|token|auth|key|cred", re.IGNORECASE)


def redact_uri(uri: str) -> str:
    """redact_uri is `uri` with every credential replaced by '***': the password of the
    userinfo (everything before the last '@', so that an unencoded '#', '/', '?' or '@' in a
    password never shows; the user name only when a ':' separates it), every query parameter
    whose name suggests a secret, and any fragment. It works on malformed URIs too, erring on
    the side of hiding more."""
    scheme, sep, rest = uri.partition("://")
    if not sep:
        scheme, rest = "", uri
    head = f"{scheme}{sep}"
    if "@" in rest:
        userinfo, _, rest = rest.rpartition("@")
        user, colon, _password = userinfo.partition(":")
        if not sep and not colon:
            head = ""
        safe_user = user if colon and "/" not in user and "?" not in user else ""
        head += f"{safe_user}:***@" if colon else "***@"
    if "#" in rest:
        rest = rest.split("#", 1)[0] + "#***"
    if "?" in rest:
        path, _, query = rest.partition("?")
        fragment = ""
        if query.endswith("#***"):
            query, fragment = query[: -len("#***")], "#***"
        params = []
        for param in query.split("&"):
            name, eq, _value = param.partition("=")
            params.append(f"{name}=***" if eq and _SECRET_PARAM.search(name) else param)
        rest = f"{path}?{'&'.join(params)}{fragment}"
    return head + rest


def check_storage(uri: str) -> str:
    """check_storage is `uri` as a valid `ADMISSION_STORAGE` (memory:// normalised); Invalid
    when redis-py would refuse it or connect somewhere else than it says."""
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in STORAGE_SCHEMES:
        raise Invalid()
    if scheme == "memory":
        if rest not in ("", "/"):
            raise Invalid()
        return "memory://"
    if "#" in uri:
        # A fragment means nothing to Redis: it is a password with an unencoded '#'.
        raise Invalid("a '#' must be percent-encoded as %23 in a password")
    parts = urllib.parse.urlsplit(uri)
    if "@" in uri and "@" not in parts.netloc:
        # The userinfo ended early at an unencoded '/' or '?': redis-py would connect to the
        # wrong host with part of the password.
        raise Invalid("a '/' or '?' must be percent-encoded (%2F, %3F) in a password")
    try:
        if scheme in ("redis+cluster", "redis+sentinel"):
            hosts = parts.netloc.rpartition("@")[2]
            for loc in hosts.split(","):
                sub = urllib.parse.urlsplit("fake://" + loc.strip())
                if not sub.hostname or sub.port is None:
                    raise ValueError(loc)
            if scheme == "redis+sentinel":
                path = [p for p in parts.path.split("/") if p]
                if not 1 <= len(path) <= 2 or (
                    len(path) == 2 and not WHOLE_DIGITS.fullmatch(path[1])
                ):
                    raise ValueError("service name and db")
        elif scheme == "redis+unix":
            if not parts.path:
                raise ValueError("socket path")
            _check_redis_options("unix://" + rest)
        else:
            _ = parts.port  # raises ValueError on a bad port
            db = parts.path.strip("/")
            if db and not WHOLE_DIGITS.fullmatch(db):
                raise ValueError("db")
            _check_redis_options(uri)
    except ValueError:
        raise Invalid() from None
    return uri


def _check_redis_options(uri: str) -> None:
    """_check_redis_options raises ValueError when redis-py would refuse the URI's query options
    (an unknown name, a bad value) on first connection, long after start-up."""
    from redis.asyncio.connection import Connection, parse_url
    from redis.exceptions import RedisError

    try:
        kwargs: dict[str, Any] = dict(parse_url(uri))
    except (TypeError, RedisError) as exc:
        raise ValueError(str(exc)) from None
    connection_class = kwargs.pop("connection_class", Connection)
    try:
        connection_class(**kwargs)  # builds the object only; nothing connects
    except (TypeError, RedisError) as exc:
        raise ValueError(str(exc)) from None

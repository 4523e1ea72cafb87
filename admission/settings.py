"""admission.settings: the frozen, validated configuration and its `ADMISSION_*` variables."""

from __future__ import annotations

import dataclasses
import ipaddress
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal

import limits

from admission.errors import ConfigError

ENV_PREFIX = "ADMISSION_"
STORAGE_SCHEMES = (
    "memory",
    "redis",
    "rediss",
    "redis+unix",
    "redis+cluster",
    "redis+sentinel",
)
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
# One rate only: `limits` would also take "1/second;5/minute" (keeping only the first) and
# "10 per 0 seconds" (as per 1 second), both silently not what was written.
_ONE_RATE = re.compile(r"^\s*[0-9]+\s*(?:/|\s*per\s*)\s*([0-9]+)?\s*[a-z]+\s*$", re.IGNORECASE)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def _fail(field: str, value: object, accepted: str) -> ConfigError:
    return ConfigError(_env_name(field), value, accepted)


def _number(field: str, raw: object, accepted: str, *, minimum: float, inclusive: bool) -> float:
    """_number turns `raw` into a finite float of at least `minimum`, or fails naming `field`."""
    if isinstance(raw, bool):
        raise _fail(field, raw, accepted)
    try:
        value = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise _fail(field, raw, accepted) from None
    if not math.isfinite(value) or value < minimum or (value == minimum and not inclusive):
        raise _fail(field, raw, accepted)
    return value


def _whole(field: str, raw: object, accepted: str, *, minimum: int) -> int:
    """_whole turns `raw` into an int of at least `minimum`, or fails naming `field`."""
    if isinstance(raw, bool | float):
        raise _fail(field, raw, accepted)
    try:
        value = int(str(raw).strip()) if not isinstance(raw, int) else raw
    except ValueError:
        raise _fail(field, raw, accepted) from None
    if value < minimum:
        raise _fail(field, raw, accepted)
    return value


def _split(raw: str | Iterable[str]) -> tuple[str, ...]:
    items = raw.split(",") if isinstance(raw, str) else list(raw)
    return tuple(item.strip() for item in items if item.strip())


ACCEPTED: dict[str, str] = {
    "rate": "a rate in limits notation such as '100/second', '6000/minute' or '10 per 2 seconds'",
    "burst": "a whole number of tokens >= 1, set together with ADMISSION_RATE",
    "key": "'ip', 'global' or 'header:<Header-Name>'",
    "trusted_proxies": "comma-separated IP addresses or CIDRs such as '10.0.0.0/8,::1'",
    "storage": "'memory://' or a Redis URI: redis://, rediss://, redis+unix://, "
    "redis+cluster://host:port[,host:port], redis+sentinel://host:port[,host:port]/service",
    "storage_timeout": "a number of seconds > 0 such as '0.05'",
    "on_storage_error": "'local', 'allow' or 'deny'",
    "window": "a whole number of requests >= 1, or empty for no window",
    "window_status": "429 or 503",
    "queue_timeout": "a number of seconds >= 0 (0: reject at once when the window is full)",
    "max_waiters": "a whole number >= 0 of requests that may wait for a slot at once",
    "websocket_window": "a whole number of websocket connections >= 1, or empty for the same as "
    "ADMISSION_WINDOW",
    "read_timeout": "a number of seconds > 0, or empty for none",
    "write_timeout": "a number of seconds > 0, or empty for none",
    "idle_timeout": "a number of seconds > 0, or empty for none",
    "request_timeout": "a number of seconds > 0, or empty for none",
    "drain_delay": "a number of seconds >= 0",
    "drain_timeout": "a number of seconds > 0",
    "cleanup_timeout": "a number of seconds > 0",
    "exempt": "comma-separated path prefixes, each starting with '/', such as '/static,/docs'",
    "max_keys": "a whole number of keys >= 1",
    "key_prefix": "a non-empty string without spaces or braces, such as 'admission'",
}


@dataclasses.dataclass(frozen=True)
class Settings:
    """Settings is the whole configuration, frozen and validated at construction.

    Every field has an `ADMISSION_<FIELD>` environment variable; `Settings.from_env()` reads them.
    Durations are seconds. `None` means "off" for `rate`, `window` and the four timeouts.
    A bad value raises `ConfigError` naming the variable, the value and the accepted form.
    """

    rate: str | None = None
    burst: int | None = None
    key: str = "ip"
    trusted_proxies: tuple[str, ...] | str = ()
    storage: str = "memory://"
    storage_timeout: float = 0.05
    on_storage_error: Literal["local", "allow", "deny"] = "local"
    window: int | None = None
    window_status: int = 429
    queue_timeout: float = 0.0
    max_waiters: int | None = None
    websocket_window: int | None = None
    read_timeout: float | None = None
    write_timeout: float | None = None
    idle_timeout: float | None = None
    request_timeout: float | None = None
    drain_delay: float = 0.0
    drain_timeout: float = 30.0
    cleanup_timeout: float = 5.0
    exempt: tuple[str, ...] | str = ()
    max_keys: int = 1_000_000
    key_prefix: str = "admission"

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        if self.rate is not None:
            rate = str(self.rate).strip()
            if not rate:
                set_(self, "rate", None)
            else:
                one = _ONE_RATE.match(rate)
                if one is None or (one.group(1) is not None and int(one.group(1)) == 0):
                    raise _fail("rate", self.rate, ACCEPTED["rate"])
                try:
                    item = limits.parse(rate)
                except ValueError:
                    raise _fail("rate", self.rate, ACCEPTED["rate"]) from None
                if item.amount < 1:
                    raise _fail("rate", self.rate, ACCEPTED["rate"])
                set_(self, "rate", rate)
        if self.burst is not None:
            if self.rate is None:
                raise _fail("burst", self.burst, "no burst while ADMISSION_RATE is unset: set both")
            set_(self, "burst", _whole("burst", self.burst, ACCEPTED["burst"], minimum=1))
        key = str(self.key).strip()
        if key not in ("ip", "global"):
            name = key[len("header:") :].strip() if key.lower().startswith("header:") else ""
            if not _HEADER_NAME.match(name):
                raise _fail("key", self.key, ACCEPTED["key"])
            key = "header:" + name
        set_(self, "key", key)
        proxies = _split(self.trusted_proxies)
        for proxy in proxies:
            try:
                ipaddress.ip_network(proxy, strict=True)
            except ValueError:
                raise _fail(
                    "trusted_proxies", self.trusted_proxies, ACCEPTED["trusted_proxies"]
                ) from None
        set_(self, "trusted_proxies", proxies)
        set_(self, "storage", _check_storage(str(self.storage).strip()))
        set_(
            self,
            "storage_timeout",
            _number(
                "storage_timeout",
                self.storage_timeout,
                ACCEPTED["storage_timeout"],
                minimum=0,
                inclusive=False,
            ),
        )
        if self.on_storage_error not in ("local", "allow", "deny"):
            raise _fail("on_storage_error", self.on_storage_error, ACCEPTED["on_storage_error"])
        for name in ("window", "websocket_window"):
            value = getattr(self, name)
            if value is not None:
                set_(self, name, _whole(name, value, ACCEPTED[name], minimum=1))
        status = _whole("window_status", self.window_status, ACCEPTED["window_status"], minimum=0)
        if status not in (429, 503):
            raise _fail("window_status", self.window_status, ACCEPTED["window_status"])
        set_(self, "window_status", status)
        set_(
            self,
            "queue_timeout",
            _number(
                "queue_timeout",
                self.queue_timeout,
                ACCEPTED["queue_timeout"],
                minimum=0,
                inclusive=True,
            ),
        )
        if self.queue_timeout > 0 and self.window is None:
            # Without a window nothing ever waits: the setting would silently do nothing.
            raise _fail(
                "queue_timeout",
                self.queue_timeout,
                "no queue timeout while ADMISSION_WINDOW is unset",
            )
        if self.max_waiters is not None:
            raw = self.max_waiters
            set_(
                self, "max_waiters", _whole("max_waiters", raw, ACCEPTED["max_waiters"], minimum=0)
            )
            if self.window is None or self.queue_timeout <= 0:
                accepted = (
                    "no waiter cap unless ADMISSION_WINDOW and ADMISSION_QUEUE_TIMEOUT are set"
                )
                raise _fail("max_waiters", raw, accepted)
        for name in ("read_timeout", "write_timeout", "idle_timeout", "request_timeout"):
            value = getattr(self, name)
            if value is not None:
                set_(self, name, _number(name, value, ACCEPTED[name], minimum=0, inclusive=False))
        set_(
            self,
            "drain_delay",
            _number(
                "drain_delay", self.drain_delay, ACCEPTED["drain_delay"], minimum=0, inclusive=True
            ),
        )
        for name in ("drain_timeout", "cleanup_timeout"):
            set_(
                self,
                name,
                _number(name, getattr(self, name), ACCEPTED[name], minimum=0, inclusive=False),
            )
        exempt = _split(self.exempt)
        if any(not prefix.startswith("/") for prefix in exempt):
            raise _fail("exempt", self.exempt, ACCEPTED["exempt"])
        set_(self, "exempt", exempt)
        set_(self, "max_keys", _whole("max_keys", self.max_keys, ACCEPTED["max_keys"], minimum=1))
        prefix = str(self.key_prefix)
        if not prefix or any(c in prefix for c in " {}\t\r\n"):
            raise _fail("key_prefix", self.key_prefix, ACCEPTED["key_prefix"])

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings.from_env builds settings from `ADMISSION_*` variables in `environ`
        (default: the process environment); `overrides` win over the environment. An empty
        variable counts as unset. Unknown `ADMISSION_*` variables are refused, since a typo
        would otherwise silently leave a limit off."""
        env = os.environ if environ is None else environ
        known = {_env_name(f.name): f.name for f in dataclasses.fields(cls)}
        values: dict[str, Any] = {}
        for var, raw in env.items():
            if not var.startswith(ENV_PREFIX):
                continue
            if var not in known:
                raise ConfigError(var, raw, "one of " + ", ".join(sorted(known)))
            if raw.strip() == "":
                continue
            values[known[var]] = raw.strip()
        values.update(overrides)
        return cls(**values)

    @property
    def rate_item(self) -> limits.RateLimitItem | None:
        """rate_item is the parsed `rate`, or None when there is no rate limit."""
        return limits.parse(self.rate) if self.rate else None

    @property
    def emission_interval_s(self) -> float:
        """emission_interval_s is the seconds one token takes to refill; inf without a rate."""
        item = self.rate_item
        if item is None:
            return math.inf
        return item.get_expiry() / item.amount

    @property
    def capacity(self) -> int:
        """capacity is the bucket size: `burst`, else the rate's amount; 0 without a rate."""
        item = self.rate_item
        if item is None:
            return 0
        return self.burst if self.burst is not None else item.amount

    @property
    def trusted_networks(self) -> tuple[Network, ...]:
        """trusted_networks is `trusted_proxies` parsed into networks."""
        return tuple(ipaddress.ip_network(p, strict=True) for p in self.trusted_proxies)

    @property
    def waiters_cap(self) -> int:
        """waiters_cap is how many requests may wait for a slot at once: `max_waiters`, else the
        window size (so waiters never outnumber the requests being served), 0 without a wait."""
        if self.queue_timeout <= 0 or self.window is None:
            return 0
        return self.max_waiters if self.max_waiters is not None else self.window

    def describe(self) -> list[tuple[str, str]]:
        """describe lists each variable with its effective value, secrets redacted."""
        rows = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if f.name == "storage":
                shown = redact_uri(value)
            elif isinstance(value, tuple):
                shown = ",".join(value)
            elif f.name == "max_waiters" and value is None and self.waiters_cap:
                shown = f"{self.waiters_cap} (the window size)"
            elif f.name == "websocket_window" and value is None and self.window is not None:
                shown = f"{self.window} (the window size)"
            elif f.name == "burst" and value is None and self.rate is not None:
                shown = f"{self.capacity} (the rate's amount)"
            elif value is None:
                shown = "(unset)"
            else:
                shown = str(value)
            rows.append((_env_name(f.name), shown))
        return rows


def redact_uri(uri: str) -> str:
    """redact_uri replaces the password in a storage URI with '***'."""
    parts = urllib.parse.urlsplit(uri)
    if parts.password is None:
        return uri
    userinfo, _, hostinfo = parts.netloc.rpartition("@")
    user = userinfo.split(":", 1)[0]
    return urllib.parse.urlunsplit(parts._replace(netloc=f"{user}:***@{hostinfo}"))


def _check_storage(uri: str) -> str:
    accepted = ACCEPTED["storage"]
    scheme, sep, rest = uri.partition("://")
    if not sep or scheme not in STORAGE_SCHEMES:
        raise _fail("storage", redact_uri(uri), accepted)
    if scheme == "memory":
        if rest not in ("", "/"):
            raise _fail("storage", redact_uri(uri), accepted)
        return "memory://"
    try:
        parts = urllib.parse.urlsplit(uri)
        if scheme in ("redis+cluster", "redis+sentinel"):
            hosts = parts.netloc.rpartition("@")[2]
            for loc in hosts.split(","):
                sub = urllib.parse.urlsplit("fake://" + loc.strip())
                if not sub.hostname or sub.port is None:
                    raise ValueError(loc)
            if scheme == "redis+sentinel":
                path = [p for p in parts.path.split("/") if p]
                if not 1 <= len(path) <= 2 or (len(path) == 2 and not path[1].isdigit()):
                    raise ValueError("service name and db")
        elif scheme == "redis+unix":
            if not parts.path:
                raise ValueError("socket path")
            _check_redis_options("unix://" + rest)
        else:
            _ = parts.port  # raises ValueError on a bad port
            if parts.path.strip("/") and not parts.path.strip("/").isdigit():
                raise ValueError("db")
            _check_redis_options(uri)
    except ValueError:
        raise _fail("storage", redact_uri(uri), accepted) from None
    return uri


def _check_redis_options(uri: str) -> None:
    """_check_redis_options raises ValueError when redis-py would refuse the URI's query options
    (an unknown name, a bad value) on first connection, long after start-up."""
    from redis.asyncio.connection import Connection, parse_url
    from redis.exceptions import RedisError

    kwargs: dict[str, Any] = dict(parse_url(uri))  # raises ValueError on a bad value
    connection_class = kwargs.pop("connection_class", Connection)
    try:
        connection_class(**kwargs)  # builds the object only; nothing connects
    except (TypeError, RedisError) as exc:
        raise ValueError(str(exc)) from None


ParseFn = Callable[[str], Any]

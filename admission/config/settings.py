"""admission.config.settings: the frozen, validated configuration and its `ADMISSION_*` variables.

Every setting is one entry in the body of `Settings`: its name, type and default, and a
`setting(...)` spec holding the parser (which also states the accepted form and its range)
and, for secrets, the redaction. Adding a setting is adding one such entry (and, when it only
makes sense together with another, one `Rule` in `RULES`). The tests then ask for what every
setting must have: good and bad values (`GOOD`, `BAD` in tests/test_settings.py, `FIRST_BAD` in
tests/test_cli.py), and the regenerated table of accepted values in docs/configuration.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import logging
import math
import os
import re
import urllib.parse
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any, Literal, cast

import limits

from admission.config.parsers import (
    MAX_RATE_AMOUNT,
    MAX_RATE_PERIOD_S,
    WHOLE_DIGITS,
    Choice,
    Invalid,
    Parser,
    Rate,
    Seconds,
    Whole,
    fmt,
    is_unset,
    under_prefix,
)
from admission.config.policies import Policy, check_policies, load_policies
from admission.errors import ConfigError, PolicyError, Problem, as_text, quote

ENV_PREFIX = "ADMISSION_"
STORAGE_SCHEMES = (
    "memory",
    "redis",
    "rediss",
    "redis+unix",
    "redis+cluster",
    "redis+sentinel",
)

Network = ipaddress.IPv4Network | ipaddress.IPv6Network


def _env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


_HEADER_NAME = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]{1,100}")


class Key(Parser):
    """Key is what identifies a client."""

    accepted = "'ip', 'global' or 'header:<Header-Name>'"

    def __call__(self, raw: object) -> str:
        if not isinstance(raw, str):
            raise Invalid()
        key = raw.strip()
        if key in ("ip", "global"):
            return key
        name = key[len("header:") :].strip() if key.lower().startswith("header:") else ""
        if not _HEADER_NAME.fullmatch(name):
            raise Invalid()
        return "header:" + name


MAX_LIST_ITEMS = 256


def _items(raw: object) -> tuple[str, ...]:
    if isinstance(raw, str):
        items: list[object] = list(raw.split(","))
    elif isinstance(raw, tuple | list):
        items = list(raw)
    else:
        raise Invalid()
    if not all(isinstance(item, str) for item in items):
        raise Invalid()
    found = tuple(str(item).strip() for item in items if str(item).strip())
    if len(found) > MAX_LIST_ITEMS:
        raise Invalid(f"more than {MAX_LIST_ITEMS} entries")
    return found


class Networks(Parser):
    """Networks is a list of IP addresses or CIDRs, none of which is everything."""

    accepted = (
        "comma-separated IP addresses or CIDRs such as '10.0.0.0/8,::1', at most "
        f"{MAX_LIST_ITEMS}, none of them '/0', or empty to trust none"
    )

    def __call__(self, raw: object) -> tuple[str, ...]:
        proxies = _items(raw)
        for proxy in proxies:
            try:
                network = ipaddress.ip_network(proxy, strict=True)
            except ValueError:
                raise Invalid() from None
            if network.prefixlen == 0:
                raise Invalid(
                    f"{proxy} trusts every address, so any client could choose its own key"
                )
        return proxies


class Prefixes(Parser):
    """Prefixes is a list of URL path prefixes, none of which is every path."""

    accepted = (
        "comma-separated path prefixes, each starting with '/' such as '/static,/docs', "
        f"at most {MAX_LIST_ITEMS}, not '/' alone, or empty for none"
    )
    _PATH = re.compile(r"/[!-~]{1,1023}")

    def __call__(self, raw: object) -> tuple[str, ...]:
        prefixes = _items(raw)
        for prefix in prefixes:
            if prefix == "/":
                raise Invalid(
                    "'/' exempts every path, which turns off the rate limit, the window "
                    "and the drain"
                )
            if not self._PATH.fullmatch(prefix):
                raise Invalid()
        return prefixes


class KeyPrefix(Parser):
    """KeyPrefix is the Redis key prefix."""

    accepted = "1 to 64 letters, digits or '.', '_', ':', '-', such as 'admission' or 'svc:prod'"
    _PREFIX = re.compile(r"[A-Za-z0-9._:-]{1,64}")

    def __call__(self, raw: object) -> str:
        if not isinstance(raw, str) or not self._PREFIX.fullmatch(raw):
            raise Invalid()
        return raw


class EndpointPath(Parser):
    """EndpointPath is the path of one of admission's own endpoints, or 'off'."""

    accepted = "a path such as '/healthz', other than '/' alone, or 'off' for none"
    _PATH = re.compile(r"/[!-~]{1,255}")

    def __call__(self, raw: object) -> str | None:
        if raw is None or (isinstance(raw, str) and raw.strip() == "off"):
            return None
        if not isinstance(raw, str):
            raise Invalid()
        path = raw.strip()
        if path == "/":
            raise Invalid("'/' would answer every request for the application's root")
        if not self._PATH.fullmatch(path) or "?" in path or "#" in path:
            raise Invalid()
        return path


MAX_URI_LENGTH = 4096
_PRINTABLE = re.compile(r"[!-~]+")


class Storage(Parser):
    """Storage is 'memory://' or a Redis URI that redis-py would accept."""

    accepted = (
        "'memory://' or a Redis URI: redis://, rediss://, redis+unix://, "
        "redis+cluster://host:port[,host:port], redis+sentinel://host:port[,host:port]/service"
    )

    def __call__(self, raw: object) -> str:
        if not isinstance(raw, str) or len(raw) > MAX_URI_LENGTH:
            raise Invalid()
        if not _PRINTABLE.fullmatch(raw.strip()):
            raise Invalid("only printable ASCII: percent-encode other characters")
        return _check_storage(raw.strip())


class WindowSize(Parser):
    """WindowSize is a whole number of requests, or 'auto' for a window that sizes itself."""

    def __init__(self) -> None:
        self.whole = Whole(1, 1_000_000, "requests")
        self.accepted = (
            f"{self.whole.accepted}, 'auto' to follow the service's measured capacity, "
            "or empty for no window"
        )

    def __call__(self, raw: object) -> int | str | None:
        if is_unset(raw):
            return None
        if isinstance(raw, str) and raw.strip().lower() == "auto":
            return "auto"
        return self.whole(raw)


class PriorityFrom(Parser):
    """PriorityFrom is where a request's priority class is read from."""

    accepted = (
        "'header:<Header-Name>' such as 'header:X-Priority', or empty for every request 'default'"
    )

    def __call__(self, raw: object) -> str | None:
        if is_unset(raw):
            return None
        if not isinstance(raw, str):
            raise Invalid()
        text = raw.strip()
        name = text[len("header:") :].strip() if text.lower().startswith("header:") else ""
        if not _HEADER_NAME.fullmatch(name):
            raise Invalid()
        return "header:" + name


class ShedAt(Parser):
    """ShedAt is the share of the window each class below critical may fill, as
    'class:fraction' pairs, normalised to 'sheddable:F,default:F'."""

    accepted = (
        "comma-separated 'class:fraction' for 'sheddable' and 'default', each fraction from "
        "0.01 to 1, sheddable's at most default's, such as 'sheddable:0.8,default:0.9'"
    )
    _PAIR = re.compile(r"(sheddable|default)\s*:\s*(0(?:\.[0-9]{1,6})?|1(?:\.0{1,6})?)")

    def __call__(self, raw: object) -> str:
        if not isinstance(raw, str):
            raise Invalid()
        found: dict[str, float] = {}
        for item in raw.split(","):
            pair = self._PAIR.fullmatch(item.strip().lower())
            if pair is None or pair.group(1) in found:
                raise Invalid()
            found[pair.group(1)] = float(pair.group(2))
        fractions = {"sheddable": 1.0, "default": 1.0, **found}
        if not all(0.01 <= f <= 1.0 for f in fractions.values()):
            raise Invalid("each fraction must be from 0.01 to 1")
        if fractions["sheddable"] > fractions["default"]:
            raise Invalid("sheddable work must not get more of the window than default work")
        return f"sheddable:{fmt(fractions['sheddable'])},default:{fmt(fractions['default'])}"


MAX_SHOWN_PATH = 256


class Policies(Parser):
    """Policies is the route policies: the path of a TOML policy file, or (in code) a sequence
    of `Policy`; empty for none. A bad file is refused naming the policy and the field."""

    accepted = "the path of a TOML file of [[policy]] tables (docs/policies.md), or empty for none"

    def __call__(self, raw: object) -> PolicySet | None:
        if is_unset(raw) or (isinstance(raw, tuple | list) and not raw):
            return None
        if isinstance(raw, PolicySet):
            return raw
        try:
            if isinstance(raw, str):
                return PolicySet(load_policies(raw.strip()), raw.strip())
            if isinstance(raw, tuple | list) and all(isinstance(p, Policy) for p in raw):
                return PolicySet(check_policies(raw), "Settings.policies")
        except PolicyError as exc:
            # The file named in full (it is the operator's own path), but never a password
            # should a URI land here by mistake, and never without bound.
            shown = redact_uri(exc.source)
            if len(shown) > MAX_SHOWN_PATH:
                shown = shown[:MAX_SHOWN_PATH] + f"… ({len(shown)} characters)"
            raise Invalid(f"{shown}: {exc.where}") from None
        raise Invalid()


class PolicySet(Sequence[Any]):
    """PolicySet is the validated policies (each a `Policy`), in order, and where they came
    from; shown as the source and the policies' names."""

    def __init__(self, policies: Iterable[Any], source: str) -> None:
        self._policies = tuple(policies)
        self.source = source

    def __getitem__(self, index: Any) -> Any:
        return self._policies[index]

    def __len__(self) -> int:
        return len(self._policies)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PolicySet) and self._policies == other._policies

    def __hash__(self) -> int:
        return hash(self._policies)

    def __str__(self) -> str:
        names = ", ".join(p.name for p in self._policies)
        return f"{self.source} ({len(self)} policies: {names})"

    __repr__ = __str__


class OnRefuse(Parser):
    """OnRefuse is an ASGI app answering refusals instead of problem+json; code only."""

    accepted = "an ASGI app, given in code as Settings(on_refuse=app); none by default"

    def __call__(self, raw: object) -> Any:
        if raw is None:
            return None
        if not callable(raw):
            raise Invalid("set it in code, as Settings(on_refuse=app)")
        return raw


@dataclasses.dataclass(frozen=True)
class Spec:
    """Spec is how one setting is read, checked and shown: `parse` (with its accepted form),
    `meaning` (one line for the docs and help), `redact` (how a value is shown when it may
    hold a secret), and `fallback` (how an unset value that follows another setting is shown
    by `admission config`)."""

    parse: Parser
    meaning: str
    redact: Callable[[str], str] | None = None
    fallback: Callable[[Settings], str | None] | None = None

    def show(self, value: object) -> str:
        """show is `value` as any output may print it: secrets redacted."""
        if isinstance(value, tuple):
            text = ",".join(as_text(v) for v in value)
        elif isinstance(value, float) and math.isfinite(value):
            text = fmt(value)  # as it would be written: 30, 0.05
        else:
            text = "" if value is None else as_text(value)
        return self.redact(text) if self.redact is not None else text


def setting(
    default: Any,
    parse: Parser,
    meaning: str,
    *,
    redact: Callable[[str], str] | None = None,
    fallback: Callable[[Settings], str | None] | None = None,
) -> Any:
    """setting is one entry of the table: a dataclass field whose metadata is its `Spec`."""
    return dataclasses.field(
        default=default, metadata={"spec": Spec(parse, meaning, redact, fallback)}
    )


def _burst_fallback(s: Settings) -> str | None:
    return f"{s.capacity} (the rate's amount)" if s.rate is not None else None


def _waiters_fallback(s: Settings) -> str | None:
    return f"{s.waiters_cap} (the window size)" if s.waiters_cap else None


def _ws_fallback(s: Settings) -> str | None:
    if s.window == "auto":
        return f"{s.window_bounds[1]} (ADMISSION_WINDOW_MAX)"
    return f"{s.window} (the window size)" if s.window is not None else None


def _window_min_fallback(s: Settings) -> str | None:
    return f"{s.window_bounds[0]}" if s.window == "auto" else None


def _window_max_fallback(s: Settings) -> str | None:
    return f"{s.window_bounds[1]}" if s.window == "auto" else None


def _off(s: Settings) -> str:
    return "off"


_TIMEOUT_LIMIT_S = 86400.0
# The bounds of ADMISSION_WINDOW=auto when ADMISSION_WINDOW_MIN/MAX are unset.
AUTO_WINDOW_MIN = 1
AUTO_WINDOW_MAX = 1000
# Each class's share of the window when ADMISSION_SHED_AT is unset.
_SHED_AT_DEFAULT = "sheddable:0.8,default:0.9"


@dataclasses.dataclass(frozen=True, repr=False)
class Settings:
    """Settings is the whole configuration, frozen and validated at construction.

    Every field has an `ADMISSION_<FIELD>` environment variable; `Settings.from_env()` reads them.
    Durations are seconds. `None` means "off" for `rate`, `window` and the four timeouts.
    Bad values raise one `ConfigError` with a line per bad variable, secrets redacted.
    Values given in code are parsed like the environment's (a string or the field's type).
    """

    rate: str | None = setting(None, Rate(), "token refill rate per client key")
    burst: int | None = setting(
        None,
        Whole(1, MAX_RATE_AMOUNT, "tokens", unset="for the rate's amount"),
        "bucket capacity in tokens",
        fallback=_burst_fallback,
    )
    key: str = setting("ip", Key(), "what identifies a client")
    trusted_proxies: tuple[str, ...] | str = setting(
        (), Networks(), "proxies whose X-Forwarded-For/Forwarded is believed"
    )
    forwarded_header: Literal["x-forwarded-for", "forwarded"] = setting(
        "x-forwarded-for",
        Choice("x-forwarded-for", "forwarded"),
        "the one forwarded header believed from trusted proxies",
    )
    storage: str = setting(
        "memory://", Storage(), "where the buckets live", redact=lambda v: redact_uri(v)
    )
    storage_timeout: float = setting(0.05, Seconds(0.001, 60), "seconds one store call may take")
    on_storage_error: Literal["local", "allow", "deny"] = setting(
        "local", Choice("local", "allow", "deny"), "what a store failure means for a request"
    )
    window: int | Literal["auto"] | None = setting(
        None, WindowSize(), "max requests in flight per process, or 'auto'"
    )
    window_min: int | None = setting(
        None,
        Whole(1, 1_000_000, "requests", unset=f"for {AUTO_WINDOW_MIN}"),
        "smallest size of ADMISSION_WINDOW=auto",
        fallback=_window_min_fallback,
    )
    window_max: int | None = setting(
        None,
        Whole(1, 1_000_000, "requests", unset=f"for {AUTO_WINDOW_MAX}"),
        "largest size of ADMISSION_WINDOW=auto",
        fallback=_window_max_fallback,
    )
    window_status: int = setting(429, Choice(429, 503), "status when the window is full")
    queue_timeout: float = setting(
        0.0,
        Seconds(0.001, 3600, zero="to refuse at once when the window is full"),
        "seconds a request may wait for a free slot",
    )
    max_waiters: int | None = setting(
        None,
        Whole(0, 1_000_000, "requests", unset="for the window size"),
        "requests that may wait for a slot at once",
        fallback=_waiters_fallback,
    )
    queue_order: Literal["fifo", "lifo"] = setting(
        "fifo", Choice("fifo", "lifo"), "which waiter of a class a freed slot goes to first"
    )
    priority: str | None = setting(
        None, PriorityFrom(), "where a request's class (critical, default, sheddable) is read"
    )
    shed_at: str = setting(_SHED_AT_DEFAULT, ShedAt(), "share of the window each class may fill")
    websocket_window: int | None = setting(
        None,
        Whole(1, 1_000_000, "websocket connections", unset="for the same as ADMISSION_WINDOW"),
        "max websocket connections open per process",
        fallback=_ws_fallback,
    )
    read_timeout: float | None = setting(
        None, Seconds(0.001, _TIMEOUT_LIMIT_S, unset="for none"), "seconds to read the body"
    )
    buffer_body: int | None = setting(
        None,
        Whole(1, 1 << 30, "bytes", unset="for none"),
        "bytes of body read before a request takes a slot and a token",
    )
    write_timeout: float | None = setting(
        None, Seconds(0.001, _TIMEOUT_LIMIT_S, unset="for none"), "seconds one send may block"
    )
    idle_timeout: float | None = setting(
        None,
        Seconds(0.001, _TIMEOUT_LIMIT_S, unset="for none"),
        "max seconds between two body chunks or messages",
    )
    request_timeout: float | None = setting(
        None, Seconds(0.001, _TIMEOUT_LIMIT_S, unset="for none"), "handler deadline in seconds"
    )
    # Go's http.DefaultMaxHeaderBytes is 1 MiB, nginx's large_client_header_buffers 4 x 8 KiB:
    # 64 KiB is ample for real requests (large cookies included) and cheap to refuse beyond.
    max_header_bytes: int = setting(
        64 * 1024,
        Whole(1024, 16 * 1024 * 1024, "bytes"),
        "largest request head under admission serve (else 431)",
    )
    drain_delay: float = setting(
        0.0,
        Seconds(0.001, 3600, zero="for no delay"),
        "seconds of failing readiness while still serving",
    )
    drain_timeout: float = setting(
        30.0, Seconds(0.001, 3600), "seconds to wait for in-flight requests to finish"
    )
    cleanup_timeout: float = setting(
        5.0, Seconds(0.001, 600), "seconds the release of resources may take"
    )
    exempt: tuple[str, ...] | str = setting((), Prefixes(), "path prefixes never limited")
    max_keys: int = setting(
        1_000_000, Whole(1, 100_000_000, "keys"), "client keys the memory store remembers"
    )
    key_prefix: str = setting("admission", KeyPrefix(), "prefix of the Redis keys")
    health_path: str | None = setting(
        "/healthz",
        EndpointPath(),
        "path of the liveness endpoint (GET and HEAD only)",
        fallback=_off,
    )
    ready_path: str | None = setting(
        "/readyz",
        EndpointPath(),
        "path of the readiness endpoint (GET and HEAD only)",
        fallback=_off,
    )
    metrics_path: str | None = setting(
        "/metrics",
        EndpointPath(),
        "path of the Prometheus endpoint (GET and HEAD only)",
        fallback=_off,
    )
    headers: Literal["all", "refused", "off"] = setting(
        "all",
        Choice("all", "refused", "off"),
        "which responses carry the RateLimit fields: all, refusals only, or none",
    )
    # `setting` is a dataclasses.field (ruff only knows that for fields of immutable types).
    policies: PolicySet | str | tuple[Any, ...] | None = setting(  # noqa: RUF009
        None, Policies(), "route policies: a TOML policy file"
    )
    # An ASGI app: (scope, receive, send) -> awaitable.
    on_refuse: Callable[..., Any] | None = setting(  # noqa: RUF009
        None, OnRefuse(), "an ASGI app answering refusals (code only)"
    )

    def __post_init__(self) -> None:
        problems: list[Problem] = []
        failed: set[str] = set()
        for field, spec in specs().items():
            raw = getattr(self, field)
            try:
                object.__setattr__(self, field, spec.parse(raw))
            except Invalid as exc:
                failed.add(field)
                reason = f"{exc.reason}; " if exc.reason else ""
                shown = _shown_in_error(spec, raw)
                problems.append(
                    Problem(_env_name(field), shown, f"{reason}expected {spec.parse.accepted}")
                )
        for rule in RULES:
            if failed.isdisjoint(rule.fields):
                why = rule.check(self)
                if why is not None:
                    field = rule.fields[0]
                    shown = _shown_in_error(specs()[field], getattr(self, field))
                    problems.append(Problem(_env_name(field), shown, why))
        if problems:
            raise ConfigError.of(problems)
        # Derived values, computed once here rather than on every access.
        item = limits.parse(self.rate) if self.rate is not None else None
        object.__setattr__(self, "_rate_item", item)
        object.__setattr__(
            self, "_interval_s", math.inf if item is None else item.get_expiry() / item.amount
        )
        capacity = 0 if item is None else self.burst if self.burst is not None else item.amount
        object.__setattr__(self, "_capacity", capacity)
        object.__setattr__(
            self,
            "_networks",
            tuple(ipaddress.ip_network(p, strict=True) for p in self.trusted_proxies),
        )
        low = self.window_min if self.window_min is not None else AUTO_WINDOW_MIN
        high = self.window_max if self.window_max is not None else max(AUTO_WINDOW_MAX, low)
        object.__setattr__(self, "_window_bounds", (low, high))
        # The largest the window can be: its size, or the adaptive window's maximum.
        largest = high if self.window == "auto" else self.window
        waiters = 0
        if self.queue_timeout > 0 and largest is not None:
            waiters = self.max_waiters if self.max_waiters is not None else largest
        object.__setattr__(self, "_waiters_cap", waiters)
        shares = dict(pair.split(":") for pair in self.shed_at.split(","))
        object.__setattr__(self, "_shed_fractions", {k: float(v) for k, v in shares.items()})

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None, **overrides: Any) -> Settings:
        """Settings.from_env builds settings from `ADMISSION_*` variables in `environ`
        (default: the process environment); `overrides` win over the environment. An empty
        variable counts as unset. Unknown `ADMISSION_*` variables are refused (a typo would
        otherwise silently leave a limit off), with the closest known name. Every bad
        variable is reported in the one `ConfigError`."""
        env = os.environ if environ is None else environ
        names = {_env_name(name): name for name in specs()}
        values: dict[str, Any] = {}
        unknown: list[Problem] = []
        for var, raw in env.items():
            if not var.startswith(ENV_PREFIX):
                continue
            if var not in names:
                unknown.append(Problem(var, redact_uri(raw), _unknown_reason(var, names)))
            elif raw.strip() != "":
                values[names[var]] = raw.strip()
        values.update(overrides)
        try:
            settings = cls(**values)
        except ConfigError as exc:
            raise ConfigError.of([*unknown, *exc.problems]) from None
        if unknown:
            raise ConfigError.of(unknown)
        return settings

    @property
    def rate_item(self) -> limits.RateLimitItem | None:
        """rate_item is the parsed `rate`, or None when there is no rate limit."""
        return self._rate_item  # type: ignore[no-any-return,attr-defined]

    @property
    def emission_interval_s(self) -> float:
        """emission_interval_s is the seconds one token takes to refill; inf without a rate."""
        return self._interval_s  # type: ignore[no-any-return,attr-defined]

    @property
    def capacity(self) -> int:
        """capacity is the bucket size: `burst`, else the rate's amount; 0 without a rate."""
        return self._capacity  # type: ignore[no-any-return,attr-defined]

    def exempts(self, path: str) -> bool:
        """exempts: is `path` under `ADMISSION_EXEMPT`, by whole segments (`under_prefix`)?"""
        # Parsed: always a tuple once constructed.
        prefixes = cast(tuple[str, ...], self.exempt)
        return bool(prefixes) and path.startswith(prefixes) and under_prefix(path, prefixes)

    def client_chosen(self) -> list[tuple[str, str]]:
        """client_chosen lists the headers that pick a request's priority or client class,
        as ("priority" or "class", header), when no trusted proxy is set: any client may then
        send them. Empty with ADMISSION_TRUSTED_PROXIES, which makes them count only from a
        trusted proxy."""
        if self.trusted_proxies:
            return []
        found = []
        if self.priority is not None:
            found.append(("priority", self.priority[len("header:") :]))
        if isinstance(self.policies, PolicySet):
            for policy in self.policies:
                if policy.class_header and policy.classes:
                    found.append(("class", policy.class_header))
        return list(dict.fromkeys(found))

    @property
    def trusted_networks(self) -> tuple[Network, ...]:
        """trusted_networks is `trusted_proxies` parsed into networks."""
        return self._networks  # type: ignore[no-any-return,attr-defined]

    @property
    def waiters_cap(self) -> int:
        """waiters_cap is how many requests may wait for a slot at once: `max_waiters`, else the
        window size (so waiters never outnumber the requests being served), 0 without a wait."""
        return self._waiters_cap  # type: ignore[no-any-return,attr-defined]

    @property
    def window_bounds(self) -> tuple[int, int]:
        """window_bounds is the smallest and largest size of `window='auto'`: `window_min` and
        `window_max`, else 1 and 1000 (or the minimum, if that is larger)."""
        return self._window_bounds  # type: ignore[no-any-return,attr-defined]

    @property
    def shed_fractions(self) -> dict[str, float]:
        """shed_fractions is `shed_at` as a mapping from class name to fraction."""
        return dict(self._shed_fractions)  # type: ignore[attr-defined]

    def describe(self) -> list[tuple[str, str]]:
        """describe lists each variable with its effective value, secrets redacted; an unset
        value that follows another setting says which value it takes."""
        rows = []
        for field, spec in specs().items():
            value = getattr(self, field)
            shown = spec.fallback(self) if value is None and spec.fallback else None
            if shown is None:
                shown = "(unset)" if value is None else spec.show(value)
            rows.append((_env_name(field), shown))
        return rows

    def summary(self) -> str:
        """summary is one line of the settings that differ from their defaults, secrets
        redacted, as start-up logs it."""
        changed = [
            f"{_env_name(f.name)}={quote(f.metadata['spec'].show(getattr(self, f.name)))}"
            for f in dataclasses.fields(self)
            if getattr(self, f.name) != f.default
        ]
        if not changed:
            return "settings in effect: all defaults (no rate limit, no window, no timeouts)"
        return f"settings in effect: {' '.join(changed)}; the rest at their defaults"

    def overridden(self, environ: Mapping[str, str] | None = None) -> list[str]:
        """overridden lists the `ADMISSION_*` variables of `environ` (default: the process
        environment) that these settings, given in code, override: each set to another value
        than the one in effect (or not valid, or not a setting at all), as `VAR='value'`.
        Empty when the two agree."""
        env = os.environ if environ is None else environ
        names = {_env_name(name): name for name in specs()}
        found = []
        for var, raw in sorted(env.items()):
            if not var.startswith(ENV_PREFIX) or raw.strip() == "":
                continue
            field = names.get(var)
            if field is not None:
                try:
                    if specs()[field].parse(raw.strip()) == getattr(self, field):
                        continue
                except Invalid:
                    pass
            found.append(f"{var}={quote(redact_uri(raw.strip()))}")
        return found

    def __repr__(self) -> str:
        """__repr__ shows the fields that differ from their defaults, secrets redacted, so
        that a settings object in a log or a traceback never shows a password."""
        parts = []
        for f in dataclasses.fields(self):
            value = getattr(self, f.name)
            if value == f.default:
                continue
            spec: Spec = f.metadata["spec"]
            shown = spec.show(value) if spec.redact is not None else value
            parts.append(f"{f.name}={shown!r}")
        return f"Settings({', '.join(parts)})"


def announce(settings: Settings, *, in_code: bool, log: logging.Logger) -> None:
    """announce logs, once at start-up, the one line of settings in effect, and a warning when
    settings given in code override `ADMISSION_*` variables set to something else (code wins:
    the variables are then ignored, whatever `admission config` shows)."""
    log.info("%s", settings.summary())
    chosen = settings.client_chosen()
    if chosen:
        log.warning(
            "any client can choose its own %s (%s): set ADMISSION_TRUSTED_PROXIES to believe "
            "them only from the gateway that sets them",
            " and ".join(dict.fromkeys(kind for kind, _ in chosen)),
            ", ".join(header for _, header in chosen),
        )
    ignored = settings.overridden() if in_code else []
    if ignored:
        log.warning(
            "settings given in code win over the environment: %s ignored",
            ", ".join(ignored),
        )


def specs() -> dict[str, Spec]:
    """specs is the table: every setting's field name and its `Spec`, in declaration order."""
    return _SPECS


_SPECS: dict[str, Spec] = {f.name: f.metadata["spec"] for f in dataclasses.fields(Settings)}
ACCEPTED: dict[str, str] = {name: spec.parse.accepted for name, spec in _SPECS.items()}
"""ACCEPTED is each field's accepted form, as the messages state it."""


def accepted_markdown() -> str:
    """accepted_markdown is the table of every variable, its default and its accepted values
    (with their ranges), as docs/configuration.md shows it between its `accepted` markers."""
    rows = ["| variable | default | accepted |", "|---|---|---|"]
    for f in dataclasses.fields(Settings):
        spec: Spec = f.metadata["spec"]
        default = spec.show(f.default) if f.default not in (None, ()) else "unset"
        accepted = spec.parse.accepted.replace("|", "\\|")
        rows.append(f"| `{_env_name(f.name)}` | `{default}` | {accepted} |")
    return "\n".join(rows)


@dataclasses.dataclass(frozen=True)
class Rule:
    """Rule is a check across settings: `check` returns why the first of `fields` is refused
    (a setting that would do nothing, or everything, given the others), or None."""

    fields: tuple[str, ...]
    check: Callable[[Settings], str | None]


def _same_path(field: str, other: str) -> Rule:
    def check(s: Settings) -> str | None:
        path = getattr(s, field)
        if path is None or path != getattr(s, other):
            return None
        return f"{_env_name(other)} is the same path: give each endpoint its own, or 'off'"

    return Rule((field, other), check)


def _burst_refills_within_a_year(s: Settings) -> str | None:
    if s.burst is None or s.rate is None:
        return None
    item = limits.parse(s.rate)
    if s.burst * item.get_expiry() / item.amount <= MAX_RATE_PERIOD_S:
        return None
    most = int(MAX_RATE_PERIOD_S * item.amount / item.get_expiry())
    return (
        f"a bucket of {s.burst} tokens at {s.rate} takes more than a year to fill again: "
        f"at this rate the burst can be at most {most}"
    )


def _default_policy_taken(s: Settings) -> str | None:
    found = s.policies
    if s.rate is None or not isinstance(found, PolicySet):
        return None
    if not any(p.name == "default" for p in found):
        return None
    return (
        f"{found.source}: policy 'default' has the name of ADMISSION_RATE's own policy "
        "(two policies of one name share their buckets): rename it"
    )


def _shed_at_applies(s: Settings) -> str | None:
    if s.shed_at == _SHED_AT_DEFAULT or (s.priority is not None and s.window is not None):
        return None
    missing = "ADMISSION_PRIORITY" if s.priority is None else "ADMISSION_WINDOW"
    return f"shares of the window do nothing without {missing}: set it too, or unset this"


RULES: tuple[Rule, ...] = (
    Rule(("burst", "rate"), _burst_refills_within_a_year),
    Rule(("policies", "rate"), _default_policy_taken),
    Rule(("shed_at", "priority", "window"), _shed_at_applies),
    _same_path("ready_path", "health_path"),
    _same_path("metrics_path", "health_path"),
    _same_path("metrics_path", "ready_path"),
    Rule(
        ("window_min", "window"),
        lambda s: (
            "a minimum window does nothing unless ADMISSION_WINDOW=auto"
            if s.window_min is not None and s.window != "auto"
            else None
        ),
    ),
    Rule(
        ("window_max", "window"),
        lambda s: (
            "a maximum window does nothing unless ADMISSION_WINDOW=auto"
            if s.window_max is not None and s.window != "auto"
            else None
        ),
    ),
    Rule(
        ("window_max", "window_min"),
        lambda s: (
            f"the maximum is below ADMISSION_WINDOW_MIN={s.window_min}"
            if s.window_max is not None and s.window_min is not None and s.window_max < s.window_min
            else None
        ),
    ),
    Rule(
        ("priority", "window"),
        lambda s: (
            "priority classes do nothing without ADMISSION_WINDOW: they share out its slots"
            if s.priority is not None and s.window is None
            else None
        ),
    ),
    Rule(
        ("queue_order", "queue_timeout"),
        lambda s: (
            "a queue order does nothing unless requests wait: set ADMISSION_QUEUE_TIMEOUT too"
            if s.queue_order != "fifo" and (s.queue_timeout <= 0 or s.window is None)
            else None
        ),
    ),
    Rule(
        ("burst", "rate"),
        lambda s: (
            "a burst without ADMISSION_RATE does nothing: set both, or neither"
            if s.burst is not None and s.rate is None
            else None
        ),
    ),
    Rule(
        ("queue_timeout", "window"),
        lambda s: (
            "a queue timeout without ADMISSION_WINDOW does nothing: nothing ever waits"
            if s.queue_timeout > 0 and s.window is None
            else None
        ),
    ),
    Rule(
        ("max_waiters", "window", "queue_timeout"),
        lambda s: (
            "a waiter cap does nothing unless ADMISSION_WINDOW and ADMISSION_QUEUE_TIMEOUT are set"
            if s.max_waiters is not None and (s.window is None or s.queue_timeout <= 0)
            else None
        ),
    ),
    Rule(
        ("max_waiters", "queue_timeout"),
        lambda s: (
            "0 waiters with ADMISSION_QUEUE_TIMEOUT set means no request ever waits: "
            "set ADMISSION_MAX_WAITERS to 1 or more, or ADMISSION_QUEUE_TIMEOUT=0"
            if s.max_waiters == 0 and s.queue_timeout > 0 and s.window is not None
            else None
        ),
    ),
)


def _shown_in_error(spec: Spec, raw: object) -> str:
    # A refused value may be a secret in the wrong variable (a Redis URI given to
    # ADMISSION_KEY): every refused value is shown as a URI would be, credentials hidden.
    return redact_uri(spec.show(raw))


def _unknown_reason(var: str, names: Iterable[str]) -> str:
    # Compared without the common prefix, which would make every name look close.
    tails = {name[len(ENV_PREFIX) :]: name for name in names}
    tail = var[len(ENV_PREFIX) :]
    # A known name with something added at its end (RATE_LIMIT, WINDOW_SIZE) is the likeliest
    # meaning; otherwise the closest spelling.
    close = sorted(
        (t for t in tails if tail.startswith(t + "_")),
        key=len,
        reverse=True,
    )[:1] or difflib.get_close_matches(tail, list(tails), n=1, cutoff=0.6)
    hint = (
        f"did you mean {tails[close[0]]}?"
        if close
        else "the settings are listed in docs/configuration.md"
    )
    return f"not an admission setting: {hint}"


# --- redaction -----------------------------------------------------------------------------

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


def _check_storage(uri: str) -> str:
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


__all__ = ["ACCEPTED", "ConfigError", "Settings", "quote", "redact_uri", "setting", "specs"]

"""admission.config.settings: the frozen, validated configuration and its `ADMISSION_*` variables.

Every setting is one entry in the body of `Settings`: its name, type and default, and a
`setting(...)` spec holding the parser (which also states the accepted form and its range)
and, for secrets, the redaction. Adding a setting is adding one such entry (with its parser in
`admission.config.fields` when it needs one of its own and, when it only makes sense together
with another, one `Rule` in `admission.config.rules`). The tests then ask for what every
setting must have: good and bad values (`GOOD`, `BAD` in tests/test_settings.py, `FIRST_BAD` in
tests/test_cli.py), and the regenerated table of accepted values in docs/configuration.md.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import math
import os
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Literal, cast

import limits

from admission.bucket import Bucket
from admission.config.fields import (
    BUFFER_BODY_TOTAL_DEFAULT,
    ENV_PREFIX,
    SHED_AT_DEFAULT,
    EndpointPath,
    Exporters,
    Key,
    KeyPrefix,
    KeySecret,
    Network,
    Networks,
    OnRefuse,
    Policies,
    PolicySet,
    Prefixes,
    PriorityFrom,
    ShedAt,
    Storage,
    WindowSize,
    env_name,
)
from admission.config.parsers import (
    MAX_RATE_AMOUNT,
    Choice,
    Invalid,
    Parser,
    Rate,
    Seconds,
    Whole,
    fmt,
    under_prefix,
)
from admission.config.rules import RULES
from admission.config.storage import redact_uri
from admission.errors import ConfigError, Problem, as_text, quote


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
    shed_at: str = setting(SHED_AT_DEFAULT, ShedAt(), "share of the window each class may fill")
    client_window: int | None = setting(
        None,
        Whole(1, 1_000_000, "requests", unset="for none"),
        "max requests in flight, and open websockets, per client key (ADMISSION_KEY)",
    )
    ws_message_rate: str | None = setting(
        None, Rate(), "messages one websocket connection may send (limits notation)"
    )
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
    buffer_body_total: int = setting(
        BUFFER_BODY_TOTAL_DEFAULT,
        Whole(1, 1 << 36, "bytes"),
        "bytes of body every request read ahead holds at once, in all",
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
    key_secret: str | None = setting(
        None,
        KeySecret(),
        "secret keying the client digests in Redis key names",
        redact=lambda v: "***",
        fallback=lambda s: "derived from ADMISSION_KEY_PREFIX",
    )
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
    metrics: Literal["prometheus", "otel", "both"] = setting(
        "prometheus",
        Exporters(),
        "where the metrics go: the Prometheus endpoint, OpenTelemetry, or both",
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
                    Problem(env_name(field), shown, f"{reason}expected {spec.parse.accepted}")
                )
        for rule in RULES:
            if failed.isdisjoint(rule.fields):
                why = rule.check(self)
                if why is not None:
                    field = rule.fields[0]
                    shown = _shown_in_error(specs()[field], getattr(self, field))
                    problems.append(Problem(env_name(field), shown, why))
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
        names = {env_name(name): name for name in specs()}
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
    def ws_message_bucket(self) -> Bucket | None:
        """ws_message_bucket is each websocket connection's bucket of messages
        (`ws_message_rate`: its amount is the burst), None without one."""
        if self.ws_message_rate is None:
            return None
        item = limits.parse(self.ws_message_rate)
        return Bucket(item.get_expiry() / item.amount, item.amount)

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
            rows.append((env_name(field), shown))
        return rows

    def summary(self) -> str:
        """summary is one line of the settings that differ from their defaults, secrets
        redacted, as start-up logs it."""
        changed = [
            f"{env_name(f.name)}={quote(f.metadata['spec'].show(getattr(self, f.name)))}"
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
        names = {env_name(name): name for name in specs()}
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


def specs() -> dict[str, Spec]:
    """specs is the table: every setting's field name and its `Spec`, in declaration order."""
    return _SPECS


_SPECS: dict[str, Spec] = {f.name: f.metadata["spec"] for f in dataclasses.fields(Settings)}
ACCEPTED: dict[str, str] = {name: spec.parse.accepted for name, spec in _SPECS.items()}
"""ACCEPTED is each field's accepted form, as the messages state it."""


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


__all__ = ["ACCEPTED", "Settings", "Spec", "setting", "specs"]

"""admission.config.fields: the parser of each setting that needs one of its own (a client
key, proxies, paths, the storage URI, window sizes, priority shares, the policy file), and the
names the settings go by in the environment."""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable, Sequence
from typing import Any

from admission.config.parsers import (
    Choice,
    Invalid,
    Parser,
    Whole,
    fmt,
    is_unset,
)
from admission.config.policies import Policy, check_policies, load_policies
from admission.config.storage import check_storage, redact_uri
from admission.errors import PolicyError

ENV_PREFIX = "ADMISSION_"
Network = ipaddress.IPv4Network | ipaddress.IPv6Network
# What the bodies read ahead (ADMISSION_BUFFER_BODY) may hold in all when
# ADMISSION_BUFFER_BODY_TOTAL is unset: a small share of a small container's memory.
BUFFER_BODY_TOTAL_DEFAULT = 32 * 1024 * 1024
# Each class's share of the window when ADMISSION_SHED_AT is unset.
SHED_AT_DEFAULT = "sheddable:0.8,default:0.9"


def env_name(field: str) -> str:
    """env_name is the environment variable of the setting `field`."""
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


class KeySecret(Parser):
    """KeySecret is the secret that keys the digests in Redis key names, or None (unset: one
    derived from the key prefix, see `admission.stores.naming`)."""

    accepted = "16 to 256 characters without spaces, such as the output of 'openssl rand -hex 32'"
    _SECRET = re.compile(r"[!-~]{16,256}")

    def __call__(self, raw: object) -> str | None:
        if is_unset(raw):
            return None
        if not isinstance(raw, str) or not self._SECRET.fullmatch(raw.strip()):
            raise Invalid()
        return raw.strip()


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
        return check_storage(raw.strip())


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


class Exporters(Choice):
    """Exporters is where admission's metrics go: 'prometheus' (the metrics endpoint), 'otel'
    (the OpenTelemetry metrics API) or 'both'. The last two are refused when the OpenTelemetry
    API is not installed, so a service never starts believing it exports what it can't."""

    def __init__(self) -> None:
        super().__init__("prometheus", "otel", "both")

    def __call__(self, raw: object) -> Any:
        chosen = super().__call__(raw)
        if chosen != "prometheus":
            try:
                import opentelemetry.metrics  # noqa: F401
            except ImportError:
                raise Invalid(
                    "OpenTelemetry is not installed: pip install 'admission[otel]'"
                ) from None
        return chosen


class OnRefuse(Parser):
    """OnRefuse is an ASGI app answering refusals instead of problem+json; code only."""

    accepted = "an ASGI app, given in code as Settings(on_refuse=app); none by default"

    def __call__(self, raw: object) -> Any:
        if raw is None:
            return None
        if not callable(raw):
            raise Invalid("set it in code, as Settings(on_refuse=app)")
        return raw

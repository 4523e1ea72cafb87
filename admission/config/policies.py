"""admission.config.policies: route policies, their validation and the TOML file that holds them.

A policy says which requests it covers (`match`), how many of them a client may make (one or
more `limits`, every one of which must admit), who the client is (`key`), and optionally a
burst, a cost per request, limits per client class, shadow mode, and the response statuses
that alone are charged (`charge_when`). `load_policies` reads the file `ADMISSION_POLICIES`
names; any mistake in it is one `PolicyError` line naming the file, the policy and the field.
"""

from __future__ import annotations

import dataclasses
import os
import re
import stat
import sys
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any, NoReturn

import limits

from admission.bucket import Bucket
from admission.config.parsers import MAX_RATE_AMOUNT, Invalid, Rate
from admission.errors import PolicyError
from admission.types import Scope

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.10 only
    import tomli as tomllib

KeySpec = str | Callable[[Scope], "str | None"]
CostSpec = int | Callable[[Scope], int]

DEFAULT = "default"
# Policy and class names appear in headers (Structured Field strings), metric labels and store
# keys: a conservative alphabet keeps all three simple and unambiguous.
_NAME = re.compile(r"^[A-Za-z0-9_.\-]{1,64}$")
_HEADER_NAME = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_METHOD = re.compile(r"^[A-Z]+$")
_SEGMENT_PARAM = re.compile(r"^\{[A-Za-z_][A-Za-z0-9_]*\}$")
FIELDS = (
    "name",
    "match",
    "limits",
    "message_limits",
    "key",
    "burst",
    "cost",
    "class_header",
    "classes",
    "enforce",
    "charge_when",
)
# A policy file is a few kilobytes; reading stops here (a path to /dev/zero must not hang).
MAX_FILE_BYTES = 1 << 20
ACCEPTED_LIMIT = (
    "a rate in limits notation such as '5/minute' or '100 per 10 seconds', of 1 to "
    "1000000000 per period, a period of at most a year"
)
_RATE = Rate()
# A status ("401") or a class of statuses ("4xx"), as `charge_when` lists them.
_STATUS = re.compile(r"^([1-5])(\d\d|xx)$")
ACCEPTED_STATUS = "a status such as '401' or a class such as '4xx', from 100 to 599"


@dataclasses.dataclass(frozen=True)
class Limit:
    """Limit is one rate of a policy: `text` as written, its `bucket` (capacity: the policy's
    burst, else the rate's amount), and the sustained quota `amount` per `window_s` seconds
    that RateLimit-Policy announces."""

    text: str
    amount: int
    window_s: int
    bucket: Bucket


@dataclasses.dataclass(frozen=True)
class Policy:
    """Policy is one route policy; see docs/policies.md for every field.

    `match`: patterns "[METHOD ]PATH", PATH literal, a prefix ending in "*", or a template with
    `{name}` segments; "*" alone matches every request. `limits`: rates that must all admit.
    `key`: "ip", "global", "header:<Name>" or a callable (scope) -> str | None (None: the
    policy does not apply to that request). `burst`: every limit's capacity (default: each
    limit's amount). `cost`: tokens per request, or a callable (scope) -> int. `class_header`
    and `classes`: limits per client class, named by that header; an unlisted or missing class
    uses `limits`. `enforce=False` is shadow mode: would-be refusals are counted, not made.
    `charge_when`: statuses ("401") or classes ("4xx"); when set, a request is admitted if the
    policy's buckets hold its cost now, and charged only once its response starts with one
    of them (empty: every request is charged before the handler, as usual).
    `message_limits`: rates every one of which must admit each message a client sends on a
    websocket the policy matches, counted per client key across its sockets (each rate's
    amount is its capacity: `burst`, `cost`, `classes` and `charge_when` are the requests').
    A policy needs `limits`, `message_limits` or both; one without `limits` limits no
    request. Validated at construction: a bad field raises `PolicyError`. `source` says where
    the policy was written, for that error.
    """

    name: str
    match: Sequence[str] | str
    limits: Sequence[str] | str = ()
    key: KeySpec = "ip"
    burst: int | None = None
    cost: CostSpec = 1
    class_header: str | None = None
    classes: Mapping[str, Sequence[str] | str] = dataclasses.field(default_factory=dict)
    enforce: bool = True
    charge_when: Sequence[str | int] | str = ()
    message_limits: Sequence[str] | str = ()
    source: str = dataclasses.field(default="Settings.policies", compare=False)

    def __post_init__(self) -> None:
        set_ = object.__setattr__
        name = self.name
        if not isinstance(name, str) or not _NAME.match(name):
            self._fail(
                "name", f"{name!r} is not 1 to 64 letters, digits, '_', '.' or '-'", repr(name)
            )
        set_(self, "match", tuple(self._patterns()))
        if self.burst is not None and (
            isinstance(self.burst, bool)
            or not isinstance(self.burst, int)
            or not 1 <= self.burst <= MAX_RATE_AMOUNT
        ):
            self._fail("burst", f"{self.burst!r} is not a whole number of tokens from 1 to 1e9")
        message_limits = self.message_limits
        if not message_limits:
            set_(self, "limits", self._limit_texts("limits", self.limits))
            set_(self, "message_limits", ())
        else:
            set_(self, "message_limits", self._limit_texts("message_limits", message_limits))
            # Messages alone: the policy limits no request, and so needs no `limits`.
            given = self.limits
            set_(self, "limits", self._limit_texts("limits", given) if given else ())
        key = self.key
        if not callable(key):
            set_(self, "key", self._key(key))
        cost = self.cost
        if not callable(cost) and (isinstance(cost, bool) or not isinstance(cost, int) or cost < 0):
            self._fail("cost", f"{cost!r} is not a whole number of tokens >= 0")
        header = self.class_header
        if header is not None and (not isinstance(header, str) or not _HEADER_NAME.match(header)):
            self._fail("class_header", f"{header!r} is not a header name")
        if not isinstance(self.classes, Mapping):
            self._fail("classes", "expected a table of class name = [limits]")
        classes: dict[str, tuple[str, ...]] = {}
        for cls, texts in self.classes.items():
            if not isinstance(cls, str) or not _NAME.match(cls):
                self._fail(
                    "classes", f"class {cls!r} is not 1 to 64 letters, digits, '_', '.' or '-'"
                )
            classes[cls] = self._limit_texts(f"classes.{cls}", texts)
        if classes and header is None:
            self._fail("classes", "classes need class_header, the header that names the class")
        if header is not None and not classes:
            self._fail("class_header", "class_header needs [policy.classes]")
        set_(self, "classes", classes)
        if not isinstance(self.enforce, bool):
            self._fail("enforce", f"{self.enforce!r} is not true or false")
        set_(self, "charge_when", self._statuses())
        if not self.limits:
            # A policy of message_limits alone: nothing of it applies to requests.
            if classes:
                self._fail("classes", "needs limits: message_limits alone limit no request")
            if self.charge_when:
                self._fail("charge_when", "needs limits: message_limits alone limit no request")
        if not callable(cost):
            for field, texts in (("limits", self.limits), *classes.items()):
                for limit in self.resolve(texts):
                    if cost > limit.bucket.capacity:
                        self._fail(
                            "cost" if field == "limits" else f"classes.{field}",
                            f"cost {cost} exceeds the capacity {limit.bucket.capacity} of "
                            f"{limit.text!r}: no request could ever be admitted",
                        )

    def _fail(self, field: str, problem: str, name: str | None = None) -> NoReturn:
        raise PolicyError(self.source, name or repr(self.name), field, problem)

    def _patterns(self) -> Iterable[str]:
        raw = self.match
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, Sequence) or not items:
            self._fail("match", "expected one or more patterns such as 'POST /login'")
        for item in items:
            if not isinstance(item, str):
                self._fail("match", f"{item!r} is not a string")
            method, path = split_pattern(item)
            if method is not None and not _METHOD.match(method):
                self._fail("match", f"{item!r}: {method!r} is not an HTTP method in capitals")
            problem = _path_problem(path)
            if problem:
                self._fail("match", f"{item!r}: {problem}")
            yield item.strip()

    def _limit_texts(self, field: str, raw: object) -> tuple[str, ...]:
        items = [raw] if isinstance(raw, str) else raw
        if not isinstance(items, Sequence) or not items:
            also = " (or message_limits for websocket messages)" if field == "limits" else ""
            self._fail(field, f"expected one or more rates{also}, {ACCEPTED_LIMIT}")
        out = []
        for item in items:
            if not isinstance(item, str) or parse_limit(item, 1) is None:
                self._fail(field, f"{item!r} is not {ACCEPTED_LIMIT}")
            out.append(item.strip())
        return tuple(out)

    def _statuses(self) -> tuple[str, ...]:
        raw = self.charge_when
        if raw is None:
            return ()
        items = [raw] if isinstance(raw, (str, int)) else raw
        if not isinstance(items, Sequence):
            self._fail("charge_when", f"expected a list of statuses: {ACCEPTED_STATUS}")
        out: list[str] = []
        for item in items:
            text = str(item).strip().lower() if isinstance(item, (str, int)) else ""
            if isinstance(item, bool) or not _STATUS.match(text):
                self._fail("charge_when", f"{item!r} is not {ACCEPTED_STATUS}")
            if text not in out:
                out.append(text)
        return tuple(out)

    def _key(self, key: object) -> str:
        accepted = "expected 'ip', 'global' or 'header:<Header-Name>'"
        if not isinstance(key, str):
            self._fail("key", f"{key!r}: {accepted}")
        text = key.strip()
        if text in ("ip", "global"):
            return text
        name = text[len("header:") :].strip() if text.lower().startswith("header:") else ""
        if not _HEADER_NAME.match(name):
            self._fail("key", f"{key!r}: {accepted}")
        return "header:" + name

    def resolve(self, texts: Sequence[str]) -> tuple[Limit, ...]:
        """resolve turns limit texts (already validated) into limits with this policy's burst."""
        out = []
        for text in texts:
            limit = parse_limit(text, self.burst)
            assert limit is not None
            out.append(limit)
        return tuple(out)

    def describe(self) -> str:
        """describe is the policy on one line, as `admission config` prints it."""
        parts = [
            f"match={','.join(self.match)}",
            f"limits={','.join(self.limits) or '(none: messages only)'}",
            f"key={self.key if isinstance(self.key, str) else _callable_name(self.key)}",
            f"burst={self.burst if self.burst is not None else '(each limit amount)'}",
            f"cost={self.cost if isinstance(self.cost, int) else _callable_name(self.cost)}",
        ]
        if self.class_header:
            parts.append(f"class_header={self.class_header}")
            for cls, texts in self.classes.items():
                parts.append(f"class {cls}={','.join(texts)}")
        if self.message_limits:
            parts.append(f"message_limits={','.join(self.message_limits)}")
        parts.append(f"enforce={'true' if self.enforce else 'false (shadow)'}")
        if self.charge_when:
            parts.append(f"charge_when={','.join(map(str, self.charge_when))}")
        return " ".join(parts)


def _callable_name(fn: object) -> str:
    return "callable " + getattr(fn, "__qualname__", type(fn).__name__)


def parse_limit(text: str, burst: int | None) -> Limit | None:
    """parse_limit reads one rate such as '5/minute', checked as `ADMISSION_RATE` is; None if
    it is not exactly one valid rate. The bucket's capacity is `burst`, else the amount."""
    try:
        rate = _RATE(text)
    except Invalid:
        return None
    if rate is None:
        return None
    item = limits.parse(rate)
    window = int(item.get_expiry())
    capacity = burst if burst is not None else item.amount
    return Limit(rate, item.amount, window, Bucket(window / item.amount, capacity))


def status_set(texts: Sequence[str | int] | str) -> frozenset[int]:
    """status_set is every status that `charge_when` texts (already validated) name: "401"
    itself, "4xx" each of 400 to 499; empty for none."""
    out: set[int] = set()
    for item in (texts,) if isinstance(texts, str) else texts:
        text = str(item)
        if text.endswith("xx"):
            first = int(text[0]) * 100
            out.update(range(first, first + 100))
        else:
            out.add(int(text))
    return frozenset(out)


def split_pattern(pattern: str) -> tuple[str | None, str]:
    """split_pattern splits "[METHOD ]PATH" into the method (None: any) and the path."""
    method, sep, path = pattern.strip().partition(" ")
    if not sep:
        return None, method
    return method, path.strip()


def _path_problem(path: str) -> str | None:
    """_path_problem says what is wrong with a match path, or None when it is fine."""
    if path == "*":
        return None
    if not path.startswith("/"):
        return "the path must start with '/' (or be '*' for every path)"
    if "*" in path[:-1]:
        return "'*' may only end a prefix"
    if any(c in path for c in " \t?#"):
        return "the path may not hold spaces, '?' or '#'"
    if path.endswith("*") and "{" in path:
        return "a prefix may not hold '{...}' segments"
    for segment in path.split("/"):
        if ("{" in segment or "}" in segment) and not _SEGMENT_PARAM.match(segment):
            return f"{segment!r}: a template segment is '{{name}}', the whole segment"
    return None


def load_policies(path: str | Path) -> tuple[Policy, ...]:
    """load_policies reads a TOML policy file: `[[policy]]` tables, nothing else.

    Raises PolicyError (one line naming the file, the policy and the field) on anything wrong,
    an unreadable file, a TOML syntax error, an unknown field or a duplicated name included.
    """
    source = str(path)
    try:
        # Opened without blocking and checked before reading: a FIFO or a device would
        # otherwise hang start-up (and `admission config`) waiting for a writer, silently.
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
        with open(fd, "rb") as file:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise PolicyError(source, "-", "file", "is not a regular file")
            data = file.read(MAX_FILE_BYTES + 1)
    except PolicyError:
        raise
    except (OSError, ValueError) as exc:
        problem = getattr(exc, "strerror", None) or str(exc)
        raise PolicyError(source, "-", "file", f"cannot be read: {problem}") from None
    if len(data) > MAX_FILE_BYTES:
        raise PolicyError(source, "-", "file", f"is larger than {MAX_FILE_BYTES} bytes")
    try:
        doc = tomllib.loads(data.decode("utf-8"))
    except UnicodeDecodeError:
        raise PolicyError(source, "-", "file", "is not UTF-8 text") from None
    except tomllib.TOMLDecodeError as exc:
        raise PolicyError(source, "-", "file", f"is not valid TOML: {exc}") from None
    extra = sorted(set(doc) - {"policy"})
    if extra:
        raise PolicyError(
            source, "-", extra[0], "unknown top-level field: a policy file holds [[policy]] tables"
        )
    tables = doc.get("policy", [])
    if not isinstance(tables, list):
        raise PolicyError(source, "-", "policy", "expected [[policy]] tables")
    if not tables:
        raise PolicyError(source, "-", "policy", "no [[policy]] tables: the file limits nothing")
    return check_policies(
        [_from_table(source, i, table) for i, table in enumerate(tables, 1)], source
    )


def _from_table(source: str, index: int, table: Any) -> Policy:
    label = repr(table.get("name")) if isinstance(table, dict) and "name" in table else f"#{index}"
    if not isinstance(table, dict):
        raise PolicyError(source, label, "policy", "expected a [[policy]] table")
    for field in table:
        if field not in FIELDS or field == "source":
            raise PolicyError(
                source, label, field, "unknown field; known fields: " + ", ".join(FIELDS)
            )
    for field in ("name", "match"):
        if field not in table:
            raise PolicyError(source, label, field, "missing: every policy needs it")
    if "limits" not in table and "message_limits" not in table:
        raise PolicyError(
            source, label, "limits", "missing: every policy needs limits, message_limits or both"
        )
    if table.get("charge_when") == []:
        # Written but empty: most likely a list half filled in, not "charge every request".
        raise PolicyError(
            source, label, "charge_when", f"expected one or more statuses: {ACCEPTED_STATUS}"
        )
    return Policy(**table, source=source)


def check_policies(
    policies: Sequence[Policy], source: str = "Settings.policies"
) -> tuple[Policy, ...]:
    """check_policies refuses two policies of one name; it returns them as a tuple."""
    seen: set[str] = set()
    for policy in policies:
        if not isinstance(policy, Policy):
            raise PolicyError(source, "-", "policies", f"{policy!r} is not a Policy")
        if policy.name in seen:
            raise PolicyError(source, repr(policy.name), "name", "two policies have this name")
        seen.add(policy.name)
    return tuple(policies)


def message_buckets(policy: Policy) -> tuple[tuple[str, Limit], ...]:
    """message_buckets names each limit of `policy.message_limits` among its client's buckets:
    `<policy>:@msg:<i>`. A request limit's name is `<policy>:<class>:<i>`, and no class name
    holds "@", so a message bucket never shares a request's (the policy's `limits` count the
    websocket handshakes, its `message_limits` the messages). Starting with the policy's name,
    `admission reset KEY --policy NAME` clears them with the rest. Each holds its own amount."""
    limits = (parse_limit(text, None) for text in policy.message_limits)
    return tuple((f"{policy.name}:@msg:{i}", limit) for i, limit in enumerate(limits) if limit)


def generation_bucket(policies: Sequence[Policy]) -> Bucket:
    """generation_bucket is a bucket that fills as slowly as the slowest limit of `policies`
    (their message limits included):
    a memory store built on it keeps each generation of keys that long, so no key is
    forgotten before its bucket is full again (the bucket itself decides nothing)."""
    slowest = 1.0
    for policy in policies:
        for texts in (policy.limits, *policy.classes.values()):
            for limit in policy.resolve(texts):
                slowest = max(slowest, limit.bucket.fill_time_s)
        for _, limit in message_buckets(policy):
            slowest = max(slowest, limit.bucket.fill_time_s)
    return Bucket(slowest, 1)

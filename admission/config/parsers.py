"""admission.config.parsers: the vocabulary settings and policies are parsed with.

A `Parser` turns a value from the environment (a string) or from code into its final type, or
raises `Invalid`; its `accepted` states the form and its range once, for every message and
for docs/configuration.md. The general ones live here, below both `admission.config.settings` and
`admission.config.policies`, which use them.
"""

from __future__ import annotations

import math
import re
from typing import Any

import limits


class Invalid(ValueError):
    """Invalid is a parser's refusal; `reason` says what is wrong beyond "not the accepted
    form" (for example "the amount must be at least 1"), or is empty."""

    def __init__(self, reason: str = "") -> None:
        super().__init__(reason)
        self.reason = reason


# --- parsers: each turns a value from the environment (a string) or from code into the
# field's final type, or raises Invalid; `accepted` states the form and its range.


class Parser:
    """Parser is one field's parsing and its accepted form, stated once."""

    accepted: str = ""

    def __call__(self, raw: object) -> Any:
        raise NotImplementedError


def is_unset(raw: object) -> bool:
    return raw is None or (isinstance(raw, str) and raw.strip() == "")


def fmt(number: float) -> str:
    # As the number would be written in the variable: 1000000 and 0.001, never 1e+06.
    return str(int(number)) if float(number).is_integer() else repr(float(number))


# Plain decimal ASCII only: no sign, exponent, underscore, Unicode digit, nan or inf, and few
# enough digits that nothing absurd is even converted.
_DECIMAL = re.compile(r"[0-9]{1,12}(?:\.[0-9]{1,9})?")
WHOLE_DIGITS = re.compile(r"[0-9]{1,12}")


class Seconds(Parser):
    """Seconds is a duration from `low` to `high` seconds; `zero` (when not None) says what 0
    means, and allows it; `unset` (when not None) says what no value means, and allows it."""

    def __init__(
        self, low: float, high: float, *, zero: str | None = None, unset: str | None = None
    ) -> None:
        self.low, self.high, self.zero, self.unset = low, high, zero, unset
        self.accepted = f"a number of seconds from {fmt(low)} to {fmt(high)}"
        if zero is not None:
            self.accepted += f", or 0 {zero}"
        if unset is not None:
            self.accepted += f", or empty {unset}"

    def __call__(self, raw: object) -> float | None:
        if self.unset is not None and is_unset(raw):
            return None
        if isinstance(raw, str):
            if not _DECIMAL.fullmatch(raw.strip()):
                raise Invalid()
            value = float(raw.strip())
        elif isinstance(raw, int) and not isinstance(raw, bool):
            if raw != 0 and not self.low <= raw <= self.high:
                raise Invalid("out of range")  # before float(), which overflows past 1e308
            value = float(raw)
        elif isinstance(raw, float):
            value = raw
        else:
            raise Invalid()
        if value == 0 and self.zero is not None:
            return 0.0
        if not (math.isfinite(value) and self.low <= value <= self.high):
            raise Invalid("out of range")
        return value


class Whole(Parser):
    """Whole is a whole number from `low` to `high` of `unit`; `unset` (when not None) says
    what no value means, and allows it."""

    def __init__(self, low: int, high: int, unit: str, *, unset: str | None = None) -> None:
        self.low, self.high, self.unset = low, high, unset
        self.accepted = f"a whole number of {unit} from {low} to {fmt(high)}"
        if unset is not None:
            self.accepted += f", or empty {unset}"

    def __call__(self, raw: object) -> int | None:
        if self.unset is not None and is_unset(raw):
            return None
        if isinstance(raw, str):
            if not WHOLE_DIGITS.fullmatch(raw.strip()):
                raise Invalid()
            value = int(raw.strip())
        elif isinstance(raw, int) and not isinstance(raw, bool):
            value = raw
        else:
            raise Invalid()
        if not self.low <= value <= self.high:
            raise Invalid("out of range")
        return value


class Choice(Parser):
    """Choice is one of a few exact words or numbers."""

    def __init__(self, *options: str | int) -> None:
        self.options = options
        shown = [f"'{o}'" if isinstance(o, str) else str(o) for o in options]
        self.accepted = ", ".join(shown[:-1]) + " or " + shown[-1] if len(shown) > 1 else shown[0]

    def __call__(self, raw: object) -> Any:
        for option in self.options:
            if isinstance(option, int):
                if isinstance(raw, str) and raw.strip() == str(option):
                    return option
                if type(raw) is int and raw == option:
                    return option
            elif isinstance(raw, str) and raw.strip() == option:
                return option
        raise Invalid()


# One rate only: `limits` would also take "1/second;5/minute" (keeping only the first) and
# "10 per 0 seconds" (as per 1 second), both silently not what was written.
_ONE_RATE = re.compile(
    r"\s*([0-9]{1,12})\s*(?:/|\s*per\s*)\s*([0-9]{1,12})?\s*[a-z]+\s*", re.I | re.ASCII
)
MAX_RATE_AMOUNT = 1_000_000_000
MAX_RATE_PERIOD_S = 366 * 86400


class Rate(Parser):
    """Rate is a token refill rate in limits notation, kept as written (stripped)."""

    accepted = (
        "a rate in limits notation such as '100/second', '6000/minute' or '10 per 2 seconds', "
        f"of 1 to {fmt(MAX_RATE_AMOUNT)} per period, a period of at most a year, "
        "or empty for no rate limit"
    )

    def __call__(self, raw: object) -> str | None:
        if is_unset(raw):
            return None
        if not isinstance(raw, str):
            raise Invalid()
        rate = raw.strip()
        one = _ONE_RATE.fullmatch(rate)
        if one is None:
            raise Invalid()
        if int(one.group(1)) < 1:
            raise Invalid("the amount must be at least 1")
        if one.group(2) is not None and int(one.group(2)) == 0:
            raise Invalid("the period must be at least 1")
        try:
            item = limits.parse(rate)
        except ValueError:
            raise Invalid() from None
        if item.amount > MAX_RATE_AMOUNT:
            raise Invalid(f"the amount must be at most {fmt(MAX_RATE_AMOUNT)}")
        if item.get_expiry() > MAX_RATE_PERIOD_S:
            raise Invalid("the period must be at most a year")
        return rate


def under_prefix(path: str, prefixes: tuple[str, ...]) -> bool:
    """under_prefix: is `path` one of `prefixes` or below one, by whole segments? `/health`
    covers `/health` and `/health/live`, not `/healthcare`; a prefix ending in "/" covers
    what follows it."""
    for prefix in prefixes:
        if path.startswith(prefix) and (
            len(path) == len(prefix) or prefix[-1] == "/" or path[len(prefix)] == "/"
        ):
            return True
    return False

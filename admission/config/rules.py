"""admission.config.rules: the checks across settings: a setting that would do nothing, or
everything, given the others, is refused like a bad value."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import TYPE_CHECKING

import limits

from admission.config.fields import (
    BUFFER_BODY_TOTAL_DEFAULT,
    SHED_AT_DEFAULT,
    PolicySet,
    env_name,
)
from admission.config.parsers import MAX_RATE_PERIOD_S

if TYPE_CHECKING:
    from admission.config.settings import Settings


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
        return f"{env_name(other)} is the same path: give each endpoint its own, or 'off'"

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
    if s.shed_at == SHED_AT_DEFAULT or (s.priority is not None and s.window is not None):
        return None
    missing = "ADMISSION_PRIORITY" if s.priority is None else "ADMISSION_WINDOW"
    return f"shares of the window do nothing without {missing}: set it too, or unset this"


def _buffer_total_applies(s: Settings) -> str | None:
    if s.buffer_body is None:
        if s.buffer_body_total != BUFFER_BODY_TOTAL_DEFAULT:
            return "a total for bodies read ahead does nothing without ADMISSION_BUFFER_BODY"
        return None
    if s.buffer_body > s.buffer_body_total:
        return (
            f"below ADMISSION_BUFFER_BODY={s.buffer_body}: one body read ahead could never fit; "
            "raise this or lower that"
        )
    return None


RULES: tuple[Rule, ...] = (
    Rule(("buffer_body_total", "buffer_body"), _buffer_total_applies),
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
        ("client_window", "key"),
        lambda s: (
            "with ADMISSION_KEY=global every request is one client's: set ADMISSION_WINDOW instead"
            if s.client_window is not None and s.key == "global"
            else None
        ),
    ),
    Rule(
        ("client_window", "window"),
        lambda s: (
            f"a client window as large as ADMISSION_WINDOW={s.window} does nothing: the window "
            "already caps every client there"
            if s.client_window is not None
            and isinstance(s.window, int)
            and s.client_window >= s.window
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

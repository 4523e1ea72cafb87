"""admission.errors: the one exception tree of the library, and how a bad value is quoted."""

from __future__ import annotations

from collections.abc import Iterable
from typing import NamedTuple

# Longest part of a value shown in a message: a 400-digit number is named, not printed.
QUOTE_LIMIT = 60


def as_text(value: object) -> str:
    """as_text is `str(value)`, except for an integer too large to print (Python refuses
    more than a few thousand digits), which is described by its size instead."""
    if isinstance(value, int) and value.bit_length() > 10_000:
        return f"<a whole number of {value.bit_length()} bits>"
    return value if isinstance(value, str) else str(value)


def quote(value: object) -> str:
    """quote is how every message shows a value: in single quotes, control and non-ASCII
    characters escaped (a Unicode digit such as '٣' shows as '\\u0663', so it is not mistaken
    for an ASCII one), cut after `QUOTE_LIMIT` characters with the full length said."""
    text = as_text(value)
    cut = ""
    if len(text) > QUOTE_LIMIT:
        cut = f"… ({len(text)} characters)"
        text = text[:QUOTE_LIMIT]
    escaped = text.encode("unicode_escape").decode("ascii").replace("'", "\\'")
    return f"'{escaped}'{cut}"


class Problem(NamedTuple):
    """Problem is one bad variable: its name, its value as shown (already redacted), and the
    reason it is refused."""

    variable: str
    shown: str
    reason: str

    @property
    def line(self) -> str:
        """line is the problem as the one line start-up prints."""
        return f"{self.variable}={quote(self.shown)} is invalid: {self.reason}"


class AdmissionError(Exception):
    """AdmissionError is the base of every error the library raises on purpose."""


class ConfigError(AdmissionError, ValueError):
    """ConfigError is one or more bad settings: its message has one line per bad variable,
    naming the variable, the value (secrets redacted) and why it is refused, so that start-up
    can print it and stop. `variable`, `value` and `accepted` describe the first problem;
    `problems` lists them all.

    `ConfigError(variable, value, accepted)` is one value that is not of the accepted form;
    `reason=` replaces "expected <accepted>" with a reason of its own.
    """

    def __init__(
        self, variable: str, value: object, accepted: str = "", *, reason: str | None = None
    ) -> None:
        self.problems: tuple[Problem, ...] = (Problem(variable, as_text(value), reason or ""),)
        if reason is None:
            self.problems = (self.problems[0]._replace(reason=f"expected {accepted}"),)
        self.variable = variable
        self.value = self.problems[0].shown
        self.accepted = accepted
        super().__init__(self.problems[0].line)

    @classmethod
    def of(cls, problems: Iterable[Problem]) -> ConfigError:
        """ConfigError.of gathers several problems into one error, in the order given."""
        gathered = tuple(problems)
        if not gathered:
            raise ValueError("ConfigError.of needs at least one problem")
        first = gathered[0]
        error = cls(first.variable, first.shown, reason=first.reason)
        error.problems = gathered
        error.args = ("\n".join(p.line for p in gathered),)
        return error

    @property
    def lines(self) -> list[str]:
        """lines is one line per bad variable."""
        return [p.line for p in self.problems]


class StackError(AdmissionError):
    """StackError is an application stack admission can't serve as it is put together (the
    middleware added twice): `lines` says how, one line each, as start-up prints them."""

    def __init__(self, *lines: str) -> None:
        self.lines = list(lines)
        super().__init__("\n".join(lines))


class StorageError(AdmissionError):
    """StorageError is a store call that failed: the underlying error is its `__cause__`."""


class StorageTimeout(StorageError):
    """StorageTimeout is a store call that took longer than `ADMISSION_STORAGE_TIMEOUT`."""


class PolicyError(ConfigError):
    """PolicyError is a bad route policy: one line naming where it came from (the policy file,
    or `Settings.policies`), the policy and the field, and what is wrong with it. `where` is
    the same without the source, as `ADMISSION_POLICIES`'s own error line shows it."""

    def __init__(self, source: str, policy: str, field: str, problem: str) -> None:
        self.source = source
        self.policy = policy
        self.field = field
        self.problem = problem
        # "-": a mistake in the file as a whole, outside any one policy.
        self.where = (
            f"{field}: {problem}" if policy == "-" else f"policy {policy}: {field}: {problem}"
        )
        super().__init__("ADMISSION_POLICIES", source, reason=self.where)
        self.args = (f"{source}: {self.where}",)

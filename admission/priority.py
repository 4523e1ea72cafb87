"""admission.priority: which priority class a request belongs to.

Classes are `critical`, `default` and `sheddable` (admission.window's CRITICAL, DEFAULT and
SHEDDABLE): as the window fills, sheddable work is refused first, then default work. A request
says its class in a header (`ADMISSION_PRIORITY=header:X-Priority`); a route policy's
`priority` field is meant to set it where route policies exist.
"""

from __future__ import annotations

from collections.abc import Callable

from admission.responses import Scope
from admission.window import CLASSES, DEFAULT

# Header values as sent, in any case: anything else is `default`.
_BY_VALUE = {name.encode(): index for index, name in enumerate(CLASSES)}


def priority_from(source: str | None) -> Callable[[Scope], int] | None:
    """priority_from is the function reading a request's class from `source`
    ('header:<Name>'), or None when every request is `default`. A missing header, a repeated
    one, or a value that is not a class name (compared without case, surrounding spaces
    ignored) is `default`: a client can claim any class, so the classes rank the work of
    clients that all play by the same rules, not a defence against one that doesn't."""
    if source is None:
        return None
    name = source[len("header:") :].lower().encode("latin-1")

    def priority(scope: Scope) -> int:
        found = DEFAULT
        seen = False
        for key, value in scope["headers"]:
            if key == name:
                if seen:
                    return DEFAULT
                seen = True
                found = _BY_VALUE.get(value.strip().lower(), DEFAULT)
        return found

    return priority

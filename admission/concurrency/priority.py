"""admission.concurrency.priority: which priority class a request belongs to.

Classes are `critical`, `default` and `sheddable` (admission.concurrency.window's CRITICAL,
DEFAULT and SHEDDABLE): as the window fills, sheddable work is refused first, then default work.
A request says its class in a header (`ADMISSION_PRIORITY=header:X-Priority`); a route policy's
`priority` field is meant to set it where route policies exist. Where trusted proxies are
set, only they may say it (see `priority_from`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from admission.concurrency.window import CLASSES, DEFAULT
from admission.config.fields import Network
from admission.ratelimit.keys import from_trusted_peer, single_header
from admission.types import Scope

# Header values as sent, in any case: anything else is `default`.
_BY_VALUE = {name.encode(): index for index, name in enumerate(CLASSES)}


def priority_from(
    source: str | None, trusted: Sequence[Network] = ()
) -> Callable[[Scope], int] | None:
    """priority_from is the function reading a request's class from `source`
    ('header:<Name>'), or None when every request is `default`. A missing header, a repeated
    one, or a value that is not a class name (compared without case, surrounding spaces
    ignored) is `default`. With `trusted` proxies (`ADMISSION_TRUSTED_PROXIES`), the header
    counts only on requests straight from one of them, the gateway that sets it; without, any
    client can claim any class (start-up says so), and the classes then rank the work of
    clients that all play by the same rules, not a defence against one that doesn't."""
    if source is None:
        return None
    name = source[len("header:") :].lower().encode("latin-1")
    networks = tuple(trusted)

    def priority(scope: Scope) -> int:
        if networks and not from_trusted_peer(scope, networks):
            return DEFAULT
        value = single_header(scope, name)
        if value is None:
            return DEFAULT
        return _BY_VALUE.get(value.strip().lower(), DEFAULT)

    return priority

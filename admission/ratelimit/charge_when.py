"""admission.ratelimit.charge_when: charging a request by its outcome (a policy's `charge_when`).

A policy with `charge_when` admits a request when its buckets hold the request's cost now,
without taking it (a peek, decided with every other matching policy in the one store call),
and takes the cost only once the response starts with a status it names: a login policy with
`charge_when = ["4xx"]` counts failed logins alone. `ChargeOnStatus` is what an admitted
request carries for that: it wraps the response's `send`, and when the response starts it
charges, in a second store call, the buckets whose policy names the status, before the start
goes out; a response that matches none costs nothing more.

Bound on concurrent over-admission: the peek and the charge are two store calls, so requests
of one client in flight together are all admitted by the same tokens; each is charged in full
when its response matches (`Bucket.charge`, below empty if need be). Beyond a policy's limit,
at most the requests of that client key in flight at once get through, and the bucket then
owes no more than they cost: it refuses until that is paid back, so over a longer time the
rate holds.

A store failure during the charge never breaks the response: `GuardedStore.charge` applies
`ADMISSION_ON_STORAGE_ERROR` (`local` charges the per-process buckets; `allow` and `deny` drop
the charge), and anything else that goes wrong is logged and the response goes out.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable, Sequence

from admission.charges import Charge
from admission.types import Message, Send

__all__ = ["ChargeOnStatus"]

log = logging.getLogger("admission")

# The messages that start a response and carry its status: an HTTP response, or the HTTP
# response a websocket handshake is denied with (the ASGI denial-response extension).
_STARTS = frozenset(("http.response.start", "websocket.http.response.start"))


class ChargeOnStatus:
    """ChargeOnStatus charges `pending` once a response starts: each pair is a peek charge
    of an admitted request and the statuses its policy's `charge_when` names. `charge` is the
    store's `charge` (a coroutine function). One per admitted request that has such charges;
    `wrap(send)` is its `Outcome.after`."""

    __slots__ = ("_charge", "_pending")

    def __init__(
        self,
        pending: Sequence[tuple[Charge, frozenset[int]]],
        charge: Callable[[Sequence[Charge]], Awaitable[None]],
    ) -> None:
        self._pending = pending
        self._charge = charge

    def due(self, status: int) -> list[Charge]:
        """due is the charges a response of `status` takes, as charges (no longer peeks)."""
        return [c._replace(peek=False) for c, statuses in self._pending if status in statuses]

    def wrap(self, send: Send) -> Send:
        """wrap is `send` that, at the start of the response, first charges what its status
        makes due (once), then sends the start on."""
        charged = False

        async def charging_send(message: Message) -> None:
            nonlocal charged
            if not charged and message["type"] in _STARTS:
                charged = True
                due = self.due(message["status"])
                if due:
                    try:
                        await self._charge(due)
                    except Exception:
                        # The store's guard answers storage failures; whatever else fails,
                        # the response still goes out.
                        log.exception("charging a response's outcome failed; not charged")
            await send(message)

        return charging_send

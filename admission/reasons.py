"""admission.reasons: why admission refused or cut short a request, each reason in one place.

A `Reason` carries everything said about it: the HTTP status of the answer (when one can still
be sent), the websocket close code, the problem detail, the metric label and the fixed header
fields of the answer. The refusals, the aborts, the metrics and the answers all take one.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

RawHeaders = tuple[tuple[bytes, bytes], ...]

CLOSE = (b"connection", b"close")
RETRY_1 = (b"retry-after", b"1")


@dataclass(frozen=True, slots=True)
class Reason:
    """Reason is one cause of a refusal or an abort.

    `label` names it in the `admission_rejected` metric and in the problem document's `reason`
    member. `status` is the HTTP answer when nothing was sent yet; None when nothing is said
    (the client is gone) and, with `drop_connection`, when the connection is dropped instead (a
    client that stopped reading would never take a closing answer). `ws_close` is the close code
    for a websocket. `headers` are the fixed fields of the HTTP answer (a rate refusal adds its
    computed ones to them).
    """

    label: str
    status: int | None
    ws_close: int
    detail: str
    headers: RawHeaders = ()
    drop_connection: bool = False

    def with_status(self, status: int) -> Reason:
        """with_status is this reason answered with `status` instead (the window's status is a
        setting)."""
        return dataclasses.replace(self, status=status)


# Websocket close codes: 1013 "try again later" for refusals, 1001 "going away" for drains,
# 1000 normal closure on idle, 1011 "unexpected condition" otherwise.
RATE = Reason(
    "rate", 429, 1013, "Too many requests from this client; retry after the indicated delay."
)
WINDOW = Reason(
    "window", 429, 1013, "The service is at capacity; retry after the indicated delay.", (RETRY_1,)
)
SHED = Reason(
    "shed",
    429,
    1013,
    "The service is near capacity and keeps the rest for more important work; retry after "
    "the indicated delay.",
    (RETRY_1,),
)
# One client holds ADMISSION_CLIENT_WINDOW requests in flight already (nginx's limit_conn): the
# client, not the service, is the cause, so always 429.
CLIENT_WINDOW = Reason(
    "client_window",
    429,
    1013,
    "Too many requests in flight from this client; retry after one of them completes.",
    (RETRY_1,),
)
# The window is contended and this client holds more than its fair share of it: the slots went
# to clients holding fewer. Answered with the window's status, as a full window is.
FAIR_SHARE = Reason(
    "fair_share",
    429,
    1013,
    "The service is at capacity and this client holds more than its share of it; retry "
    "after the indicated delay.",
    (RETRY_1,),
)
# The rate-limit store failed and ADMISSION_ON_STORAGE_ERROR=deny: the service, not the client,
# is the cause, so 503 rather than 429.
STORAGE = Reason(
    "storage",
    503,
    1013,
    "The rate-limit store is unavailable; retry after the indicated delay.",
)
# Every body read ahead together holds ADMISSION_BUFFER_BODY_TOTAL: one more can't be held
# without the service's memory growing with what clients send. Shed, as the window sheds.
BUFFERS_FULL = Reason(
    "buffers_full",
    503,
    1013,
    "The service holds as many request bodies as it can; retry after the indicated delay.",
    (RETRY_1, CLOSE),
)
DRAINING = Reason(
    "draining",
    503,
    1001,
    "The service is shutting down; retry on another instance.",
    (RETRY_1, CLOSE),
)
READ_TIMEOUT = Reason(
    "read_timeout", 408, 1011, "The request body did not arrive in time.", (CLOSE,)
)
IDLE_TIMEOUT = Reason(
    "idle_timeout",
    408,
    1000,
    "The request body stalled for too long between two chunks.",
    (CLOSE,),
)
WRITE_TIMEOUT = Reason(
    "write_timeout",
    None,
    1011,
    "The client did not take the response in time.",
    drop_connection=True,
)
DEADLINE = Reason("deadline", 504, 1011, "The request did not complete within its deadline.")
DISCONNECT = Reason("disconnect", None, 1011, "The client went away.")
# ADMISSION_WS_MESSAGE_RATE: a websocket sent more messages than its connection may. 1008,
# "policy violation": the client broke the service's terms, not the service.
WS_MESSAGE_RATE = Reason(
    "ws_message_rate", None, 1008, "Too many messages on this websocket; slow down."
)
# A route policy's `message_limits`: a client sent more messages than the policy allows it,
# across all its websockets. 1008, as for ADMISSION_WS_MESSAGE_RATE; the metrics name the policy.
WS_MESSAGE_LIMIT = Reason(
    "ws_message_limit", None, 1008, "Too many messages from this client; slow down."
)
DRAIN_DEADLINE = Reason(
    "drain_deadline",
    503,
    1001,
    "The service shut down before the request completed.",
    (CLOSE, RETRY_1),
)
# Answered by `admission serve`'s server (admission.server.protocol) before any application,
# the middleware included, sees the request: not in the middleware's metrics.
HEADER_TIMEOUT = Reason(
    "header_timeout", 408, 1011, "The request head did not arrive in time.", (CLOSE,)
)
HEADER_TOO_LARGE = Reason(
    "header_too_large", 431, 1011, "The request head is larger than the server accepts.", (CLOSE,)
)
# Not a refusal of a request: the middleware's own settings were bad, so nothing is served.
CONFIGURATION = Reason("configuration", 500, 1011, "The service is misconfigured.")

#: Every reason a request is refused or cut short for, in the order the metrics list them.
ALL = (
    RATE,
    STORAGE,
    WINDOW,
    SHED,
    CLIENT_WINDOW,
    FAIR_SHARE,
    BUFFERS_FULL,
    DRAINING,
    READ_TIMEOUT,
    IDLE_TIMEOUT,
    WRITE_TIMEOUT,
    DEADLINE,
    DISCONNECT,
    WS_MESSAGE_RATE,
    WS_MESSAGE_LIMIT,
    DRAIN_DEADLINE,
)

"""admission.ratelimit.messages: route policies' `message_limits`, on websocket messages.

A policy's `message_limits` count the messages a client sends on the websockets the policy
matches, per client key, so across all of that client's sockets, in the store every other
limit lives in (memory or Redis). `MessageLimiter.charges` works out once, when a websocket is
admitted, which buckets its messages are charged to (the matching policies, the client key of
each); then every message is one store call for all of them, all or nothing
(`admission.charges`): `take_now` without a coroutine on the memory store, `take` on the others.
On the memory store, a message every bucket admits is decided in `MemoryStore.take_all_at`'s
one pass, as an HTTP request is (`admission.ratelimit.limiter`); only a refusal, or a shadow
policy among those matched, takes the general path. `admission.ratelimit.gate.message_limiter`
builds it from the settings. A message over a
limit is answered with `WS_MESSAGE_LIMIT` (the exchange closes the socket with
1008); one the store could not decide under `ADMISSION_ON_STORAGE_ERROR=deny` with `STORAGE`
(closed with 1013, "try again later"). A policy's handshakes are its `limits`' and its messages
its `message_limits`': separate buckets (`admission.config.policies.message_buckets`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import cast

from admission.charges import ENFORCED, Charge, Verdict
from admission.config.fields import Network
from admission.config.policies import Policy, message_buckets
from admission.ratelimit.keys import XFF
from admission.ratelimit.limiter import policy_key_function
from admission.ratelimit.routes import Router
from admission.reasons import STORAGE, WS_MESSAGE_LIMIT, Reason
from admission.stores.base import ChargesStore, Store
from admission.stores.guard import StorageDenial
from admission.stores.memory import BucketSpec, MemoryStore, bucket_spec
from admission.types import Scope, route_path

__all__ = ["UNMETERED", "MessageLimiter", "Meter"]

log = logging.getLogger("admission")

# Shadow refusals of one policy's messages are logged at most this often.
SHADOW_LOG_INTERVAL_S = 60.0


class Meter:
    """Meter is what each message of one websocket costs (`MessageLimiter.meter`): `charges`,
    a token from each bucket, and, for the memory store's one pass, `runs` (each client key
    with its buckets' specs; None where the general path decides every message)."""

    __slots__ = ("charges", "runs")

    def __init__(
        self,
        charges: tuple[Charge, ...],
        runs: tuple[tuple[str, tuple[BucketSpec[None], ...]], ...] | None,
    ) -> None:
        self.charges = charges
        self.runs = runs


# The meter of a websocket no policy's message limits apply to: it charges nothing.
UNMETERED = Meter((), None)


class _Compiled:
    """_Compiled is one policy's message limits ready for connections: its key function, its
    charge group (0 enforced, else its own shadow group) and its buckets."""

    __slots__ = ("buckets", "group", "key", "name", "specs")

    def __init__(self, policy: Policy, group: int, key: Callable[[Scope], str | None]) -> None:
        self.name = policy.name
        self.group = group
        self.key = key
        self.buckets = message_buckets(policy)
        # For the memory store's one pass: each bucket charged one token.
        self.specs = tuple(bucket_spec(name, limit.bucket, 1, None) for name, limit in self.buckets)


class MessageLimiter:
    """MessageLimiter decides websocket messages against the `message_limits` of `policies`
    through `store` (a `ChargesStore`, or one guarded by `ADMISSION_ON_STORAGE_ERROR`).

    `synchronous`: the store is the memory store, and `take_now` may be called instead of
    awaiting `take`. `refusals[policy]` counts the messages each policy refused,
    `shadow_refusals[policy]` those a shadow policy (`enforce = false`) would have: every
    policy with message limits is in them from the start, for the metrics.
    """

    def __init__(
        self,
        policies: Sequence[Policy],
        store: Store,
        *,
        trusted: Sequence[Network] = (),
        forwarded_header: str = XFF,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.policies = tuple(p for p in policies if p.message_limits)
        self.store = cast(ChargesStore, store)
        memory = store if type(store) is MemoryStore else None
        self.synchronous = memory is not None
        self._sync = memory.decide_charges_at if memory is not None else None
        self._take = memory.take_all_at if memory is not None else None
        self.clock: Callable[[], float] = clock or (
            memory.clock if memory is not None else time.monotonic
        )
        compiled = []
        shadow = 0
        for policy in self.policies:
            group = ENFORCED
            if not policy.enforce:
                shadow += 1
                group = shadow
            key = policy_key_function(policy.key, trusted, forwarded_header)
            compiled.append(_Compiled(policy, group, key))
        routes = [(c, p.match) for c, p in zip(compiled, self.policies, strict=True)]
        self._router: Router[_Compiled] = Router(routes)
        self.refusals = {p.name: 0 for p in self.policies if p.enforce}
        self.shadow_refusals = {p.name: 0 for p in self.policies if not p.enforce}
        self._shadow_logged: dict[str, float] = {}

    def meter(self, scope: Scope) -> Meter:
        """meter is what each message of the websocket `scope` costs: a token from each
        message bucket of each policy it matches, for that policy's client key (a policy whose
        key callable answers None does not apply); UNMETERED when none applies."""
        matched = self._router.match(scope.get("method") or "GET", route_path(scope))
        charges: list[Charge] = []
        runs: list[tuple[str, tuple[BucketSpec[None], ...]]] | None = []
        for policy in matched:
            client = policy.key(scope)
            if client is None:
                continue
            for name, limit in policy.buckets:
                charges.append(Charge(client, name, limit.bucket, 1, policy.group))
            if policy.group != ENFORCED or self._take is None:
                runs = None
            elif runs is not None:
                runs.append((client, policy.specs))
        if not charges:
            return UNMETERED
        return Meter(tuple(charges), None if runs is None else tuple(runs))

    def take_now(self, meter: Meter) -> Reason | None:
        """take_now is `take` without a coroutine, for the memory store (`synchronous`): a
        message every bucket admits in `take_all_at`'s one pass, any other in the general
        path, which decides the same and tells the refusal."""
        assert self._sync is not None and self._take is not None
        now = self.clock()
        runs = meter.runs
        if runs is not None and self._take(runs, now) is not None:
            return None
        return self._answer(meter.charges, self._sync(meter.charges, now))

    async def take(self, meter: Meter) -> Reason | None:
        """take charges one message to `meter` (from `meter(scope)`), in one store call: None
        when every enforced limit admits it, else why the socket is closed."""
        return self._answer(meter.charges, await self.store.decide_charges(meter.charges))

    def _answer(self, charges: Sequence[Charge], verdict: Verdict) -> Reason | None:
        """_answer turns the store's verdict into the reason to close the socket, or None,
        counting the refusal (or a shadow policy's would-be refusal) by policy."""
        if not verdict.refused_groups:
            return None
        if verdict.admitted:
            self._count_shadow(charges, verdict.refused_groups)
            return None
        for charge, decision in zip(charges, verdict.decisions, strict=True):
            if charge.group == ENFORCED and not decision.allowed:
                if type(decision) is StorageDenial:
                    # ADMISSION_ON_STORAGE_ERROR=deny: the store, not the client, is the cause.
                    return STORAGE
                # A bucket's name begins with its policy's, which holds no ":".
                self.refusals[charge.name.partition(":")[0]] += 1
                return WS_MESSAGE_LIMIT
        return WS_MESSAGE_LIMIT  # pragma: no cover - a refused verdict has a refused bucket

    def _count_shadow(self, charges: Sequence[Charge], groups: frozenset[int]) -> None:
        seen: set[str] = set()
        for charge in charges:
            name = charge.name.partition(":")[0]
            if charge.group in groups and name not in seen:
                seen.add(name)
                self.shadow_refusals[name] += 1
                now = self.clock()
                last = self._shadow_logged.get(name)
                if last is None or now - last >= SHADOW_LOG_INTERVAL_S:
                    self._shadow_logged[name] = now
                    log.warning(
                        "shadow policy %r would have closed a websocket for its messages "
                        "(%d so far); logged at most once a minute",
                        name,
                        self.shadow_refusals[name],
                    )

"""admission.ratelimit.gate: the one rate gate, which decides a request's rate limits
whatever defines them: `ADMISSION_RATE` alone, route policies, or both.

`rate_gate` builds it from the settings. The single rate is the policy `default` (matching
every request, keyed by `ADMISSION_KEY`); with route policies it is one of them and the
`PolicyLimiter` decides them all together. Alone, it goes through `SingleRate`, the same
policy on its cheapest path: one bucket per client, no matching, no plan (see
docs/performance.md, "rate"). Both answer an `Outcome` with the same fields for the same
request, keyed by the one factory of client keys (`admission.ratelimit.keys.key_function`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence
from typing import Protocol

from admission.bucket import Decision
from admission.config.fields import Network, PolicySet
from admission.config.policies import DEFAULT, Policy
from admission.config.settings import Settings
from admission.errors import PolicyError
from admission.ratelimit.decorator import route_policies
from admission.ratelimit.fields import policy_header, ratelimit_header, retry_after_seconds
from admission.ratelimit.keys import key_function, keyed_by_window
from admission.ratelimit.limiter import PolicyLimiter
from admission.ratelimit.messages import MessageLimiter
from admission.ratelimit.outcome import Outcome, refused
from admission.stores import MemoryStore, Store
from admission.stores.guard import StorageDenial
from admission.types import Scope

__all__ = [
    "RateGate",
    "SingleRate",
    "default_policy",
    "message_limiter",
    "rate_gate",
    "resolved_policies",
    "with_route_limits",
]

# The most admitted outcomes a SingleRate keeps (`SingleRate._admitted`).
_OUTCOMES_MAX = 4096


class RateGate(Protocol):
    """RateGate decides a request's rate limits. `synchronous`: `decide_now` may be called
    instead of awaiting `decide` (a memory store, which needs no coroutine). `refusals` and
    `shadow_refusals` count by policy, for the metrics."""

    synchronous: bool
    refusals: dict[str, int]
    shadow_refusals: dict[str, int]

    def decide_now(self, scope: Scope) -> Outcome: ...

    async def decide(self, scope: Scope) -> Outcome: ...

    def unserved(self, app: object) -> list[tuple[str, str]]: ...


def rate_gate(settings: Settings, store: Store | None) -> RateGate | None:
    """rate_gate is the gate of every rate limit the settings define, deciding through
    `store`; None when they define none."""
    if store is None:
        return None
    trusted = settings.trusted_networks
    forwarded = settings.forwarded_header
    policies = resolved_policies(settings)
    if not policies:
        default = default_policy(settings)
        if default is None:
            return None
        return SingleRate(
            default,
            store,
            trusted=trusted,
            forwarded_header=forwarded,
            remembered=keyed_by_window(settings),
        )
    return PolicyLimiter(policies, store, trusted=trusted, forwarded_header=forwarded)


def message_limiter(settings: Settings, store: Store | None) -> MessageLimiter | None:
    """message_limiter is the limiter of every policy's `message_limits` (websocket messages),
    deciding through `store`, the rate gate's; None when no policy has any."""
    if store is None:
        return None
    policies = [p for p in resolved_policies(settings) if p.message_limits]
    if not policies:
        return None
    return MessageLimiter(
        policies,
        store,
        trusted=settings.trusted_networks,
        forwarded_header=settings.forwarded_header,
    )


class SingleRate:
    """SingleRate is the gate of one policy that matches every request with one limit (the
    `default` of `ADMISSION_RATE` alone): the client's one bucket, decided by the store's own
    `decide` (`decide_at` without a coroutine, in memory). Its answers are the
    `PolicyLimiter`'s for the same policy: the same fields, the same Refusal."""

    def __init__(
        self,
        policy: Policy,
        store: Store,
        *,
        trusted: Sequence[Network] = (),
        forwarded_header: str = "x-forwarded-for",
        remembered: bool = False,
    ) -> None:
        (limit,) = policy.resolve(policy.limits)
        bucket = limit.bucket
        self.name = policy.name
        # `remembered` beside a window keying clients: its key function, the same object.
        self.key = key_function(str(policy.key), trusted, forwarded_header, remembered=remembered)
        self.field = policy_header(bucket.capacity, bucket.fill_time_s)
        # A refusal's Retry-After when its delay is infinite (a cost over the capacity).
        self._fallback_s = bucket.interval_s
        self.store = store
        self.refusals = {policy.name: 0}
        self.shadow_refusals: dict[str, int] = {}
        # Admitted outcomes by their RateLimit field (`_admitted`).
        self._outcomes: dict[tuple[bytes, bytes], Outcome] = {}
        # The memory store decides synchronously: no coroutine per request. Its subclasses
        # keep `decide`, which they may override.
        memory = store if type(store) is MemoryStore else None
        self.synchronous = memory is not None
        self.decide_now: Callable[[Scope], Outcome] = _not_synchronous
        if memory is not None:
            self.decide_now = self._deciding_now(memory)

    def _deciding_now(self, memory: MemoryStore) -> Callable[[Scope], Outcome]:
        """_deciding_now is `decide_now` for `memory`: `decide` without a coroutine, a closure
        over what it reads, since it runs for every rate-limited request (fewer instructions
        than a method's attribute reads: docs/performance.md, "rate")."""
        decide_at, key, outcomes = memory.decide_at, self.key, self._outcomes
        admitted, refused = self._admitted, self._refused

        def decide_now(scope: Scope) -> Outcome:
            # The store's clock read from it each time (a test may give it another), and
            # loaded before the call: Python 3.11 specialises no call of an instance's
            # attribute written as a method call.
            clock = memory.clock
            decision = decide_at(key(scope), clock())
            if decision.allowed:
                # `_admitted`'s answer when it has it already, without its call.
                field = ratelimit_header(decision)
                outcome = outcomes.get(field)
                return admitted(field) if outcome is None else outcome
            return refused(decision)

        return decide_now

    async def decide(self, scope: Scope) -> Outcome:
        """decide is the request's outcome under the one limit."""
        decision = await self.store.decide(self.key(scope))
        if decision.allowed:
            return self._admitted(ratelimit_header(decision))
        return self._refused(decision)

    def _admitted(self, field: tuple[bytes, bytes]) -> Outcome:
        """_admitted is the Outcome of an admitted decision whose RateLimit field is `field`:
        one per field, kept and handed out again, since a handful of fields recur for every
        client (immutable: its headers are a tuple). Bounded: forgotten all at once when
        full."""
        outcome = self._outcomes.get(field)
        if outcome is None:
            if len(self._outcomes) >= _OUTCOMES_MAX:
                self._outcomes.clear()
            outcome = Outcome(None, (self.field, field), None)
            self._outcomes[field] = outcome
        return outcome

    def unserved(self, app: object) -> list[tuple[str, str]]:
        """unserved is empty: the single rate matches every request."""
        return []

    def _refused(self, decision: Decision) -> Outcome:
        retry = retry_after_seconds(decision.retry_after_s, self._fallback_s)
        if type(decision) is not StorageDenial:
            self.refusals[self.name] += 1
        return refused(decision, self.name, retry, (self.field, ratelimit_header(decision)))


def _not_synchronous(scope: Scope) -> Outcome:
    raise TypeError("only a memory store decides requests synchronously")


def with_route_limits(settings: Settings, app: object) -> Settings | None:
    """with_route_limits is `settings` with a policy for every route of `app` that `@limit`
    marked (`route_policies`), after the policies already set; None when there is none."""
    found = route_policies(app)
    if not found:
        return None
    given = tuple(settings.policies) if isinstance(settings.policies, PolicySet) else ()
    names = {p.name for p in given} | ({DEFAULT} if settings.rate is not None else set())
    for policy in found:
        if policy.name in names:
            raise PolicyError(
                "@limit",
                repr(policy.name),
                "name",
                "another policy has this name: give the route's its own, @limit(..., name=...)",
            )
    return dataclasses.replace(settings, policies=(*given, *found))


def default_policy(settings: Settings) -> Policy | None:
    """default_policy is `ADMISSION_RATE`/`BURST`/`KEY` as the policy "default", which matches
    every request; None without a rate."""
    if settings.rate is None:
        return None
    return Policy(
        name=DEFAULT,
        match=("*",),
        limits=(settings.rate,),
        key=settings.key,
        burst=settings.burst,
        source="ADMISSION_RATE",
    )


def resolved_policies(settings: Settings) -> tuple[Policy, ...]:
    """resolved_policies is every route policy the settings define, in the order they apply:
    those of `ADMISSION_POLICIES`, then the implicit `default` of `ADMISSION_RATE` if set.
    Empty without route policies (the rate alone is then `SingleRate`'s)."""
    found = settings.policies
    policies: tuple[Policy, ...] = tuple(found) if isinstance(found, PolicySet) else ()
    if not policies:
        return ()
    default = default_policy(settings)
    return (*policies, default) if default is not None else policies

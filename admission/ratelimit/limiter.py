"""admission.ratelimit.limiter: one request against every policy it matches, in one store call.

`PolicyLimiter` finds the matching policies (`admission.ratelimit.routes`), works out each
one's client key, class, limits and cost, and asks the store to decide every charge at once, all
or nothing (`admission.charges`). Its `Outcome` carries the RateLimit fields for the response,
and on a refusal the `Refusal`: the policy that refused, the decision and the headers of the
429.

With the memory store, a request whose policies are all enforced and of a fixed cost is first
tried in one pass (`MemoryStore.take_all_at`) on data worked out once per policy, class and
tuple of matching policies (`_Plan`): no Charge or Decision per limit. When a bucket refuses,
or a shadow policy, a cost callable or a policy's `charge_when` is involved, the request takes
the general path (`charges`, `decide_charges_at`, `outcome`), which decides the same.

A policy with `charge_when` is a peek in that decision; an admitted request then carries the
charge its response may make (`Outcome.after`, `admission.ratelimit.charge_when`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from typing import cast

from admission.bucket import Decision
from admission.charges import ENFORCED, Charge, Verdict
from admission.config.fields import Network
from admission.config.policies import Limit, Policy, status_set
from admission.ratelimit.charge_when import ChargeOnStatus
from admission.ratelimit.fields import policy_item, ratelimit_header, retry_after_seconds
from admission.ratelimit.keys import XFF, bounded, from_trusted_peer, key_function, single_header
from admission.ratelimit.outcome import Outcome, refused
from admission.ratelimit.routes import Router
from admission.served import unserved
from admission.stores.base import ChargeAfterStore, ChargesStore, Store
from admission.stores.guard import GuardedStore, StorageDenial
from admission.stores.memory import BucketSpec, MemoryStore, bucket_spec
from admission.types import RawHeaders, Scope, route_path

log = logging.getLogger("admission")

# Shadow refusals of one policy are logged at most this often.
SHADOW_LOG_INTERVAL_S = 60.0
ADMIT_PLAIN = Outcome(None, [], None)
_FIELD_CACHE_MAX = 4096
# Named tuples built directly, skipping their Python-level __new__ (as in admission.bucket).
_new_tuple = tuple.__new__


class _Applied:
    """_Applied is one limit of one policy as it applies to a client class. A plain class with
    slots: it is hashed by identity, as part of the key of the RateLimit-Policy cache."""

    __slots__ = ("bucket", "group", "label", "limit", "name", "policy", "policy_item")

    def __init__(self, policy: _Compiled, limit: Limit, name: str, label: str) -> None:
        self.policy = policy
        self.limit = limit
        self.bucket = limit.bucket
        self.group = policy.group
        self.name = name  # the bucket's name among the client's buckets
        self.label = label  # its name in the RateLimit fields
        self.policy_item = policy_item(label, limit.bucket.capacity, limit.bucket.fill_time_s)


class _Compiled:
    """_Compiled is a policy ready for requests: key function, class lookup, limits."""

    def __init__(
        self,
        policy: Policy,
        group: int,
        key: Callable[[Scope], str | None],
        trusted: Sequence[Network] = (),
    ) -> None:
        self.policy = policy
        # With trusted proxies, only they may name a request's class (see `class_of`).
        self.trusted = tuple(trusted)
        self.name = policy.name
        self.group = group
        self.enforce = policy.enforce
        self.key = key
        cost = policy.cost
        self.cost_fn: Callable[[Scope], int] | None = cost if callable(cost) else None
        self.cost = cost if isinstance(cost, int) else 1
        # charge_when: the statuses that are charged after the response; none: charged now.
        self.statuses = status_set(policy.charge_when)
        self.peek = bool(self.statuses)
        header = policy.class_header
        self.class_header = header.lower().encode("latin-1") if header else None
        self.limits: dict[str, list[_Applied]] = {"": self._applied("", policy.limits)}
        for cls, texts in policy.classes.items():
            self.limits[cls] = self._applied(cls, texts)
        self.plain = self.limits[""]
        # For the memory store's one pass (see `with_specs`): the limits of each class.
        self.specs: dict[str, Specs] = {}
        self.plain_specs: Specs = ()

    def with_specs(self) -> None:
        """with_specs works out the memory store's data for each class's limits
        (`bucket_spec`), once; only a policy of a fixed cost has any."""
        if self.cost_fn is None:
            for cls, limits in self.limits.items():
                self.specs[cls] = tuple(bucket_spec(a.name, a.bucket, self.cost, a) for a in limits)
            self.plain_specs = self.specs[""]

    def _applied(self, cls: str, texts: Sequence[str]) -> list[_Applied]:
        limits = self.policy.resolve(texts)
        out = []
        for i, limit in enumerate(limits):
            label = self.name + ("/" + cls if cls else "")
            if len(limits) > 1:
                label += f"#{i + 1}"
            out.append(_Applied(self, limit, f"{self.name}:{cls}:{i}", label))
        return out

    def class_of(self, scope: Scope) -> str:
        """class_of is the request's listed class, or "" (the policy's own limits): the class
        header's value when the request carries it once and, where trusted proxies are set,
        came straight from one of them; anything else is no class."""
        header = self.class_header
        if header is None or (self.trusted and not from_trusted_peer(scope, self.trusted)):
            return ""
        value = single_header(scope, header)
        if value is None:
            return ""
        text = value.decode("latin-1").strip()
        return text if text in self.limits else ""


Specs = tuple[BucketSpec[_Applied], ...]
Runs = Sequence[tuple[str, Specs]]


class _Plan:
    """_Plan is how the memory store's one pass decides requests matching one tuple of
    policies (`PolicyLimiter.decide_now`), worked out the first time that tuple matches.

    `general`: a shadow policy, a cost callable or a `charge_when` is among them, and every
    such request takes the general path. Else `field` is their RateLimit-Policy field when it
    is the same for every request (no classes, no key callable that may skip a policy), and
    `key`, when every one of them is keyed by that same key function (and `field` is set),
    makes a request one run of `specs`, the limits of them all. Otherwise `policies` are
    walked per request.
    """

    __slots__ = ("field", "general", "key", "policies", "specs")

    def __init__(self, policies: tuple[_Compiled, ...]) -> None:
        self.policies = policies
        self.general = any(not p.enforce or p.cost_fn is not None or p.peek for p in policies)
        fixed = not self.general and not any(
            p.class_header or callable(p.policy.key) for p in policies
        )
        self.field: tuple[bytes, bytes] | None = None
        self.key: Callable[[Scope], str] | None = None
        self.specs: Specs = ()
        if fixed:
            items = [a.policy_item for p in policies for a in p.plain]
            self.field = (b"ratelimit-policy", ", ".join(items).encode())
            if len({p.key for p in policies}) == 1:
                # Not a key callable (`fixed`): a key function of `key_function`, never None.
                self.key = cast(Callable[[Scope], str], policies[0].key)
                self.specs = tuple(spec for p in policies for spec in p.plain_specs)


class PolicyLimiter:
    """PolicyLimiter decides requests against `policies` through `store`.

    `store` has `decide_charges(charges)` (a coroutine), or is a `MemoryStore`, whose
    `decide_charges_at` is called directly. `trusted` (`ADMISSION_TRUSTED_PROXIES`) are the
    proxies believed for "ip" keys, through `forwarded_header`, and the only peers whose class
    headers count (from anyone when empty). Counters: `refusals[policy]` and
    `shadow_refusals[policy]`.
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
        self.policies = tuple(policies)
        inner = store.store if isinstance(store, GuardedStore) else store
        if not isinstance(inner, ChargesStore):
            raise TypeError(
                f"route policies need a store that decides several buckets at once "
                f"(decide_charges); {type(inner).__name__} does not"
            )
        self.store: ChargesStore = cast(ChargesStore, store)
        # A policy with charge_when: admitted requests may be charged after their response.
        self._charge_when = any(p.charge_when for p in self.policies)
        if self._charge_when and not isinstance(inner, ChargeAfterStore):
            raise TypeError(
                f"charge_when needs a store that charges after a response (charge); "
                f"{type(inner).__name__} does not"
            )
        # The memory store's own clock, so that its buckets and the shadow log agree.
        # The memory store decides synchronously (`decide_now`); its subclasses keep `decide`.
        memory = store if type(store) is MemoryStore else None
        self.clock: Callable[[], float] = clock or (
            memory.clock if memory is not None else time.monotonic
        )
        compiled = []
        shadow = 0
        # Policies keyed alike share one key function: a request computes its key once for
        # all of them (see `charges`).
        keys: dict[object, Callable[[Scope], str | None]] = {}
        for policy in self.policies:
            group = ENFORCED
            if not policy.enforce:
                shadow += 1
                group = shadow
            key = keys.get(policy.key)
            if key is None:
                key = keys[policy.key] = policy_key_function(policy.key, trusted, forwarded_header)
            compiled.append(_Compiled(policy, group, key, trusted))
        # A policy of message limits alone limits no request: it is the MessageLimiter's.
        routed = [(c, c.policy.match) for c in compiled if c.policy.limits]
        self._router: Router[_Compiled] = Router(routed)
        self._sync = memory.decide_charges_at if memory is not None else None
        self._take = memory.take_all_at if memory is not None else _no_take
        self.synchronous = self._sync is not None
        if self.synchronous:
            for c in compiled:
                c.with_specs()
        self._plans: dict[tuple[_Compiled, ...], _Plan] = {}
        self._run_fields: dict[tuple[_Applied, ...], tuple[bytes, bytes]] = {}
        self.refusals = dict.fromkeys((p.name for p in self.policies), 0)
        self.shadow_refusals = {p.name: 0 for p in self.policies if not p.enforce}
        self._shadow_logged: dict[str, float] = {}
        self._policy_fields: dict[tuple[_Applied, ...], tuple[bytes, bytes]] = {}

    def unserved(self, app: object) -> list[tuple[str, str]]:
        """unserved lists (policy, pattern) for each pattern that matches no route of `app`'s
        router (see `admission.served`)."""
        return unserved(app, self.policies)

    def charges(self, scope: Scope) -> tuple[list[Charge], list[_Applied]]:
        """charges lists what the request costs in each bucket of each policy it matches, and
        the limit behind each charge; both empty when none matches."""
        matched = self._router.match(scope.get("method") or "GET", route_path(scope))
        charges: list[Charge] = []
        applied: list[_Applied] = []
        key = None
        client = None
        for policy in matched:
            if policy.key is not key:
                key = policy.key
                client = key(scope)
            if client is None:
                continue
            cost = policy.cost if policy.cost_fn is None else _checked_cost(policy, scope)
            limits = policy.limits[policy.class_of(scope)] if policy.class_header else policy.plain
            group = policy.group
            peek = policy.peek
            for limit in limits:
                charge = (client, limit.name, limit.bucket, cost, group, peek)
                charges.append(_new_tuple(Charge, charge))
            applied += limits
        return charges, applied

    async def decide(self, scope: Scope) -> Outcome:
        """decide is the request's outcome under every policy it matches."""
        if self._sync is not None:
            return self.decide_now(scope)
        charges, applied = self.charges(scope)
        if not charges:
            return ADMIT_PLAIN
        verdict = await self.store.decide_charges(charges)
        if self._charge_when and verdict.admitted:
            return self._after(charges, applied, verdict)
        return self.outcome(applied, verdict)

    def decide_now(self, scope: Scope) -> Outcome:
        """decide_now is `decide` without a coroutine, for a memory store (`synchronous`):
        the middleware calls it directly, as it calls the memory store's `decide_at`.

        A request admitted by every bucket is decided in the store's one pass, without a
        Charge or a Decision per limit; any other takes the general path, which tells the
        refusal (benchmarks/policy_instructions.py, variant 3x2)."""
        matched = self._router.match(scope.get("method") or "GET", route_path(scope))
        if not matched:
            return ADMIT_PLAIN
        plan = self._plans.get(matched)
        if plan is None:
            plan = self._plan(matched)
        key = plan.key
        if key is not None:
            # The common case: one client key for every policy matched, a fixed field.
            runs: Runs = ((key(scope), plan.specs),)
            field = plan.field
        elif plan.general:
            charges, applied = self.charges(scope)
            if not charges:
                return ADMIT_PLAIN
            assert self._sync is not None
            verdict = self._sync(charges, self.clock())
            if self._charge_when and verdict.admitted:
                return self._after(charges, applied, verdict)
            return self.outcome(applied, verdict)
        else:
            runs, field = self._runs(plan, scope)
            if not runs:
                return ADMIT_PLAIN
        now = self.clock()
        found = self._take(runs, now)
        if found is None:
            return self._decide_runs(runs, now)
        decision, limit = found
        headers = [field, ratelimit_header(decision, limit.label)]
        return _new_tuple(Outcome, (None, headers, None))

    def _plan(self, matched: tuple[_Compiled, ...]) -> _Plan:
        """_plan is the plan of a tuple of policies, worked out once. A few tuples recur (one
        per route, more only with patterns that overlap): the cache that holds them is
        cleared should it ever grow large."""
        plan = _Plan(matched)
        if len(self._plans) >= _FIELD_CACHE_MAX:
            self._plans.clear()
        self._plans[matched] = plan
        return plan

    def _runs(
        self, plan: _Plan, scope: Scope
    ) -> tuple[list[tuple[str, Specs]], tuple[bytes, bytes]]:
        """_runs is the request's client keys, each with the limits it applies to, for a plan
        of several key functions or of classes, and the RateLimit-Policy field of them."""
        runs: list[tuple[str, Specs]] = []
        key = None
        client = None
        for policy in plan.policies:
            if policy.key is not key:
                key = policy.key
                client = key(scope)
            if client is None:
                continue
            specs = (
                policy.specs[policy.class_of(scope)] if policy.class_header else policy.plain_specs
            )
            runs.append((client, specs))
        field = plan.field
        if field is None:
            # A run's first limit stands for its policy and class, hashed by identity.
            which = tuple([specs[0][6] for _, specs in runs])
            field = self._run_fields.get(which)
            if field is None:
                items = [spec[6].policy_item for _, specs in runs for spec in specs]
                field = (b"ratelimit-policy", ", ".join(items).encode())
                if len(self._run_fields) >= _FIELD_CACHE_MAX:
                    self._run_fields.clear()
                self._run_fields[which] = field
        return runs, field

    def _decide_runs(self, runs: Runs, now: float) -> Outcome:
        """_decide_runs is the general path for `runs` the one pass did not admit: their
        charges, as `charges` lists them, decided by the store's `decide_charges_at`."""
        charges: list[Charge] = []
        applied: list[_Applied] = []
        for client, specs in runs:
            for spec in specs:
                limit = spec[6]
                charge = (client, limit.name, limit.bucket, limit.policy.cost, ENFORCED, False)
                charges.append(_new_tuple(Charge, charge))
                applied.append(limit)
        assert self._sync is not None
        return self.outcome(applied, self._sync(charges, now))

    def _after(
        self, charges: Sequence[Charge], applied: Sequence[_Applied], verdict: Verdict
    ) -> Outcome:
        """_after is the outcome of an admitted request, carrying the charges its response may
        make: each peek of a group that was charged (a shadow policy that would have refused
        takes nothing, now or later), with its policy's statuses."""
        outcome = self.outcome(applied, verdict)
        refused = verdict.refused_groups
        pending = [
            (charge, limit.policy.statuses)
            for charge, limit in zip(charges, applied, strict=True)
            if charge.peek and charge.group not in refused
        ]
        if not pending:
            return outcome
        # Only a ChargeAfterStore has charge_when policies (checked when built).
        charge = cast(ChargeAfterStore, self.store).charge
        return outcome._replace(after=ChargeOnStatus(pending, charge).wrap)

    def outcome(self, applied: Sequence[_Applied], verdict: Verdict) -> Outcome:
        """outcome turns a store's verdict into headers, counters and, if refused, a Refusal."""
        decisions = verdict.decisions
        admitted = verdict.admitted
        if verdict.refused_groups and admitted:
            self._count_shadow(applied, verdict.refused_groups)
        closest = -1
        shadow = False
        if admitted:
            # Fewest tokens left, then the later reset: compared inline, since this runs for
            # every admitted request and a call per limit costs more than the comparison.
            best = None
            for i, limit in enumerate(applied):
                if limit.group != ENFORCED:
                    shadow = True
                    continue
                d = decisions[i]
                if (
                    best is None
                    or d.remaining < best.remaining
                    or (d.remaining == best.remaining and d.reset_after_s > best.reset_after_s)
                ):
                    best = d
                    closest = i
        else:
            for i, limit in enumerate(applied):
                if limit.group != ENFORCED:
                    shadow = True
                elif closest < 0 or _closer(decisions[i], decisions[closest], admitted):
                    closest = i
        if closest < 0:
            return ADMIT_PLAIN
        decision = decisions[closest]
        headers: RawHeaders = [
            self._policy_field(applied, shadow),
            ratelimit_header(decision, applied[closest].label),
        ]
        if admitted:
            return _new_tuple(Outcome, (None, headers, None))
        limit = applied[closest]
        policy = limit.policy.name
        retry = retry_after_seconds(decision.retry_after_s, limit.bucket.fill_time_s)
        if type(decision) is not StorageDenial:
            self.refusals[policy] += 1
        return refused(decision, policy, retry, headers)

    def _policy_field(self, applied: Sequence[_Applied], shadow: bool) -> tuple[bytes, bytes]:
        """_policy_field is the RateLimit-Policy field listing the enforced limits applied.
        The same few combinations recur for every request: formatted once each, kept in a
        cache that configuration bounds (and that is cleared should it ever grow large)."""
        key = tuple(applied)
        field = self._policy_fields.get(key)
        if field is None:
            items = [a.policy_item for a in applied if a.group == ENFORCED]
            field = (b"ratelimit-policy", ", ".join(items).encode())
            if len(self._policy_fields) >= _FIELD_CACHE_MAX:
                self._policy_fields.clear()
            self._policy_fields[key] = field
        return field

    def _count_shadow(self, applied: Sequence[_Applied], groups: frozenset[int]) -> None:
        seen: set[int] = set()
        for limit in applied:
            policy = limit.policy
            if policy.group in groups and policy.group not in seen:
                seen.add(policy.group)
                self.shadow_refusals[policy.name] += 1
                now = self.clock()
                last = self._shadow_logged.get(policy.name)
                if last is None or now - last >= SHADOW_LOG_INTERVAL_S:
                    self._shadow_logged[policy.name] = now
                    log.warning(
                        "shadow policy %r would have refused a request (%d so far); "
                        "logged at most once a minute",
                        policy.name,
                        self.shadow_refusals[policy.name],
                    )


def policy_key_function(
    spec: object, trusted: Sequence[Network], forwarded_header: str
) -> Callable[[Scope], str | None]:
    """policy_key_function is the client key of a policy's `key`: a callable's answer (None: the
    policy does not apply), bounded in length, or the ADMISSION_KEY-style key it names."""
    if callable(spec):
        custom = spec

        def by_callable(scope: Scope) -> str | None:
            value = custom(scope)
            return None if value is None else "c:" + bounded(str(value))

        return by_callable
    return key_function(str(spec), trusted, forwarded_header)


def _closer(a: Decision, b: Decision, admitted: bool) -> bool:
    """_closer: is `a` closer to refusing than `b`? Among refusals, the later retry is the one
    the client must wait for; otherwise fewer tokens left, then the later reset."""
    if not admitted:
        if a.allowed != b.allowed:
            return not a.allowed
        if not a.allowed:
            return a.retry_after_s > b.retry_after_s
    if a.remaining != b.remaining:
        return a.remaining < b.remaining
    return a.reset_after_s > b.reset_after_s


def _checked_cost(policy: _Compiled, scope: Scope) -> int:
    assert policy.cost_fn is not None
    cost = policy.cost_fn(scope)
    if isinstance(cost, bool) or not isinstance(cost, int) or cost < 0:
        raise ValueError(
            f"policy {policy.name!r}: cost callable returned {cost!r}, not an int >= 0"
        )
    return cost


def _no_take(runs: Runs, now: float) -> None:
    """_no_take stands for `MemoryStore.take_all_at` with any other store (never called)."""
    raise TypeError("only a memory store decides requests synchronously")

"""admission.limiter: one request against every policy it matches, in one store call.

`PolicyLimiter` finds the matching policies (`admission.routes`), works out each one's client
key, class, limits and cost, and asks the store to decide every charge at once, all or nothing
(`admission.charges`). Its `Outcome` carries the RateLimit fields for the response, and on a
refusal the `Refusal`: the policy that refused, the decision and the headers of the 429.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import NamedTuple

from admission.bucket import Bucket, Decision
from admission.charges import ENFORCED, Charge, Verdict
from admission.headers import retry_after_seconds
from admission.keys import bounded, make_key_func
from admission.policies import DEFAULT, Limit, Policy
from admission.responses import Scope
from admission.routes import Router
from admission.settings import Settings

log = logging.getLogger("admission")

RawHeaders = list[tuple[bytes, bytes]]
REFUSAL_STATE_KEY = "admission_refusal"
# Shadow refusals of one policy are logged at most this often.
SHADOW_LOG_INTERVAL_S = 60.0


class Refusal(NamedTuple):
    """Refusal is why admission turned a request down, as the `on_refuse` app sees it.

    `reason`: "rate" (the metric label and problem `reason`). `status`: 429. `policy`: the name
    of the policy that refused. `decision`: the refusing limit's decision. `headers`: the
    Retry-After and RateLimit fields the default answer carries.
    """

    reason: str
    status: int
    policy: str
    decision: Decision
    headers: RawHeaders


class Outcome(NamedTuple):
    """Outcome is a request's answer from the policies: `refusal` is None when admitted;
    `headers` are the RateLimit fields for an admitted response."""

    refusal: Refusal | None
    headers: RawHeaders


ADMIT_PLAIN = Outcome(None, [])


class _Applied(NamedTuple):
    """_Applied is one limit of one policy as it applies to a client class."""

    limit: Limit
    name: str  # the bucket's name among the client's buckets
    label: str  # its name in the RateLimit fields
    policy_item: str  # its RateLimit-Policy list member


class _Compiled:
    """_Compiled is a policy ready for requests: key function, class lookup, limits."""

    def __init__(self, policy: Policy, group: int, trusted_proxies: Sequence[str]) -> None:
        self.policy = policy
        self.name = policy.name
        self.group = group
        self.enforce = policy.enforce
        key = policy.key
        if callable(key):
            custom = key

            def by_callable(scope: Scope) -> str | None:
                value = custom(scope)
                return None if value is None else "c:" + bounded(str(value))

            self.key: Callable[[Scope], str | None] = by_callable
        else:
            self.key = make_key_func(Settings(key=key, trusted_proxies=tuple(trusted_proxies)))
        cost = policy.cost
        self.cost_fn: Callable[[Scope], int] | None = cost if callable(cost) else None
        self.cost = cost if isinstance(cost, int) else 1
        header = policy.class_header
        self.class_header = header.lower().encode("latin-1") if header else None
        self.limits: dict[str, list[_Applied]] = {"": self._applied("", policy.limits)}
        for cls, texts in policy.classes.items():
            self.limits[cls] = self._applied(cls, texts)

    def _applied(self, cls: str, texts: Sequence[str]) -> list[_Applied]:
        limits = self.policy.resolve(texts)
        out = []
        for i, limit in enumerate(limits):
            label = self.name + ("/" + cls if cls else "")
            if len(limits) > 1:
                label += f"#{i + 1}"
            item = f'"{label}";q={limit.amount};w={limit.window_s}'
            out.append(_Applied(limit, f"{self.name}:{cls}:{i}", label, item))
        return out

    def class_of(self, scope: Scope) -> str:
        """class_of is the request's listed class, or "" (the policy's own limits)."""
        header = self.class_header
        if header is None:
            return ""
        for name, value in scope.get("headers", ()):
            if name == header:
                text = value.decode("latin-1").strip()
                return text if text in self.limits else ""
        return ""


class PolicyLimiter:
    """PolicyLimiter decides requests against `policies` through `store`.

    `store` has `decide_charges(charges)` (a coroutine), or is a `MemoryStore`, whose
    `decide_charges_at` is called directly. `trusted_proxies` are believed for "ip" keys as in
    `ADMISSION_TRUSTED_PROXIES`. Counters: `refusals[policy]` and `shadow_refusals[policy]`.
    """

    def __init__(
        self,
        policies: Sequence[Policy],
        store: object,
        *,
        trusted_proxies: Sequence[str] = (),
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.policies = tuple(policies)
        self.store = store
        self.clock = clock
        compiled = []
        shadow = 0
        for policy in self.policies:
            group = ENFORCED
            if not policy.enforce:
                shadow += 1
                group = shadow
            compiled.append(_Compiled(policy, group, trusted_proxies))
        self._router: Router[_Compiled] = Router([(c, c.policy.match) for c in compiled])
        self._sync = getattr(store, "decide_charges_at", None) if _is_memory(store) else None
        self.refusals = dict.fromkeys((p.name for p in self.policies), 0)
        self.shadow_refusals = {p.name: 0 for p in self.policies if not p.enforce}
        self._shadow_logged: dict[str, float] = {}

    def charges(self, scope: Scope) -> tuple[list[Charge], list[_Compiled], list[_Applied]]:
        """charges lists what the request costs in each bucket of each policy it matches,
        with the policy and limit behind each charge; all three empty when none matches."""
        method = scope.get("method") or "GET"
        matched = self._router.match(method, scope["path"])
        charges: list[Charge] = []
        owners: list[_Compiled] = []
        applied: list[_Applied] = []
        for policy in matched:
            client = policy.key(scope)
            if client is None:
                continue
            cost = policy.cost if policy.cost_fn is None else _checked_cost(policy, scope)
            for limit in policy.limits[policy.class_of(scope) if policy.class_header else ""]:
                charges.append(Charge(client, limit.name, limit.limit.bucket, cost, policy.group))
                owners.append(policy)
                applied.append(limit)
        return charges, owners, applied

    async def decide(self, scope: Scope) -> Outcome:
        """decide is the request's outcome under every policy it matches."""
        charges, owners, applied = self.charges(scope)
        if not charges:
            return ADMIT_PLAIN
        sync = self._sync
        if sync is not None:
            verdict: Verdict = sync(charges, self.clock())
        else:
            verdict = await self.store.decide_charges(charges)  # type: ignore[attr-defined]
        return self.outcome(charges, owners, applied, verdict)

    def outcome(
        self,
        charges: Sequence[Charge],
        owners: Sequence[_Compiled],
        applied: Sequence[_Applied],
        verdict: Verdict,
    ) -> Outcome:
        """outcome turns a store's verdict into headers, counters and, if refused, a Refusal."""
        decisions = verdict.decisions
        if verdict.refused_groups and verdict.admitted:
            self._count_shadow(owners, verdict.refused_groups)
        items: list[str] = []
        closest = -1
        for i, charge in enumerate(charges):
            if charge.group != ENFORCED:
                continue
            items.append(applied[i].policy_item)
            if closest < 0 or _closer(decisions[i], decisions[closest], verdict.admitted):
                closest = i
        if closest < 0:
            return ADMIT_PLAIN
        decision = decisions[closest]
        headers: RawHeaders = [
            (b"ratelimit-policy", ", ".join(items).encode()),
            (b"ratelimit", _ratelimit_item(applied[closest].label, decision).encode()),
        ]
        if verdict.admitted:
            return Outcome(None, headers)
        policy = owners[closest].name
        self.refusals[policy] += 1
        retry = retry_after_seconds(decision.retry_after_s, charges[closest].bucket.fill_time_s)
        headers.insert(0, (b"retry-after", str(retry).encode()))
        return Outcome(Refusal("rate", 429, policy, decision, headers), headers)

    def _count_shadow(self, owners: Sequence[_Compiled], groups: frozenset[int]) -> None:
        seen: set[int] = set()
        for policy in owners:
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


def _ratelimit_item(label: str, decision: Decision) -> str:
    reset = decision.reset_after_s
    seconds = math.ceil(reset) if 0 < reset < math.inf else 0
    return f'"{label}";r={decision.remaining};t={seconds}'


def _checked_cost(policy: _Compiled, scope: Scope) -> int:
    assert policy.cost_fn is not None
    cost = policy.cost_fn(scope)
    if isinstance(cost, bool) or not isinstance(cost, int) or cost < 0:
        raise ValueError(
            f"policy {policy.name!r}: cost callable returned {cost!r}, not an int >= 0"
        )
    return cost


def _is_memory(store: object) -> bool:
    from admission.stores.memory import MemoryStore

    return type(store) is MemoryStore


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


def generation_bucket(policies: Sequence[Policy]) -> Bucket:
    """generation_bucket is a bucket that fills as slowly as the slowest limit of `policies`:
    a memory store built on it keeps each generation of keys that long, so no key is
    forgotten before its bucket is full again (the bucket itself decides nothing)."""
    slowest = 1.0
    for policy in policies:
        for texts in (policy.limits, *policy.classes.values()):
            for limit in policy.resolve(texts):
                slowest = max(slowest, limit.bucket.fill_time_s)
    return Bucket(slowest, 1)

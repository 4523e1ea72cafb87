"""The memory store's one pass for requests every bucket admits (`MemoryStore.take_all_at`,
used by `PolicyLimiter.decide_now`) against the general path (`decide_charges_at`, and the
limiter's `charges` and `outcome`): the same verdicts, headers, counters, TATs, entries and
order of use, on many random inputs with a manual clock that also goes backwards."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from admission.bucket import Bucket, Decision
from admission.charges import Charge
from admission.config.policies import Policy, generation_bucket
from admission.ratelimit.limiter import ADMIT_PLAIN, PolicyLimiter
from admission.ratelimit.outcome import Outcome
from admission.stores.memory import MemoryStore, bucket_spec


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def state(store: MemoryStore) -> tuple[object, ...]:
    """state is everything a decision may change: each entry in order of use (least recent
    first) with its digest and TAT, the count, and the index slots."""
    order = []
    entry = store._newer[0]
    while entry:
        order.append((entry, store._digests[entry], store._tats[entry]))
        entry = store._newer[entry]
    return (tuple(order), len(store), store._overflowing, bytes(store._index))


def closest(decisions: list[Decision]) -> int:
    """closest is the position of the decision the limiter reports for an admitted request:
    fewest tokens left, then the later reset, the first of equals."""
    best = 0
    for i, d in enumerate(decisions):
        b = decisions[best]
        if d.remaining < b.remaining or (
            d.remaining == b.remaining and d.reset_after_s > b.reset_after_s
        ):
            best = i
    return best


# --- the store: take_all_at against decide_charges_at ---------------------------------------

BUCKETS = [Bucket(0.1, 3), Bucket(0.5, 2), Bucket(1.0, 1), Bucket(2.5, 4), Bucket(0.3, 5)]
CLIENTS = ["ip:a", "ip:b", "h:c"]


@st.composite
def requests(draw: st.DrawFn) -> list[tuple[str, list[tuple[str, Bucket, int]]]]:
    """requests is a request's runs: a client key and its buckets (name, bucket, cost), each
    (client, name) once; a cost from 0 to the bucket's capacity."""
    clients = draw(st.lists(st.sampled_from(CLIENTS), min_size=1, max_size=3, unique=True))
    runs = []
    for client in clients:
        names = draw(st.lists(st.integers(0, len(BUCKETS) - 1), min_size=1, max_size=3))
        buckets = []
        for n in dict.fromkeys(names):
            bucket = BUCKETS[n]
            buckets.append((f"p{n}", bucket, draw(st.integers(0, bucket.capacity))))
        runs.append((client, buckets))
    return runs


def both_stores(
    steps: list[tuple[float, list[tuple[str, list[tuple[str, Bucket, int]]]]]], max_keys: int
) -> None:
    clock = ManualClock()
    fast = MemoryStore(Bucket(10.0, 1), max_keys=max_keys, clock=clock)
    general = MemoryStore(Bucket(10.0, 1), max_keys=max_keys, clock=clock)
    for gap, request in steps:
        clock.now += gap
        now = clock.now
        charges = [Charge(c, name, b, cost) for c, bs in request for name, b, cost in bs]
        # Each bucket tagged with its charge's position.
        tagged = []
        for c, bs in request:
            first = len([t for _, specs in tagged for t in specs])
            specs = tuple(bucket_spec(n, b, cost, first + k) for k, (n, b, cost) in enumerate(bs))
            tagged.append((c, specs))
        expected = general.decide_charges_at(charges, now)
        before = state(fast)
        found = fast.take_all_at(tagged, now)
        if found is None:
            assert not expected.admitted
            assert state(fast) == before  # a refusal changes nothing
            assert fast.decide_charges_at(charges, now) == expected
        else:
            assert expected.admitted
            decision, tag = found
            assert tag == closest(expected.decisions)
            assert decision == expected.decisions[tag]
        assert state(fast) == state(general)


@settings(max_examples=300, deadline=None)
@given(
    steps=st.lists(st.tuples(st.floats(-1.0, 2.0), requests()), min_size=1, max_size=30),
    max_keys=st.integers(1, 12),
)
def test_take_all_at_decides_and_keeps_what_decide_charges_at_does(
    steps: list[tuple[float, list[tuple[str, list[tuple[str, Bucket, int]]]]]], max_keys: int
) -> None:
    """Few keys held, so that inserts forget the least recently used, an entry found in the
    request among them; gaps below 0, so that the clock also goes backwards."""
    both_stores(steps, max_keys)


@settings(max_examples=100, deadline=None)
@given(
    request=requests(),
    repeats=st.integers(2, 12),
    gap=st.sampled_from([0.0, 0.05, 0.3]),
)
def test_a_client_repeating_one_request_keeps_the_order_of_use(
    request: list[tuple[str, list[tuple[str, Bucket, int]]]], repeats: int, gap: float
) -> None:
    """The same request again and again: its buckets are then the most recent, in order, and
    no other key's place may move."""
    others = [("ip:z", [("q", Bucket(5.0, 9), 1)]), ("ip:y", [("q", Bucket(5.0, 9), 1)])]
    steps = [(0.0, [r]) for r in others] + [(gap, request)] * repeats
    both_stores(steps, 20)


def test_a_request_whose_buckets_are_held_in_another_order_moves_them() -> None:
    # Held in the order p0, p1 (p1 the most recent); charged as p1, p0: each must be moved,
    # p0 ending the most recent.
    clock = ManualClock()
    store = MemoryStore(Bucket(10.0, 1), clock=clock)
    a, b = Bucket(1.0, 5), Bucket(1.0, 5)
    store.decide_charges_at([Charge("c", "p0", a, 1), Charge("c", "p1", b, 1)], clock.now)
    store.decide_charges_at([Charge("c", "other", a, 1)], clock.now)
    runs = [("c", (bucket_spec("p1", b, 1, 0), bucket_spec("p0", a, 1, 1)))]
    assert store.take_all_at(runs, clock.now) is not None
    digests = [d for _, d, _ in state(store)[0]]  # type: ignore[attr-defined]
    reference = MemoryStore(Bucket(10.0, 1), clock=clock)
    reference.decide_charges_at([Charge("c", "p0", a, 1), Charge("c", "p1", b, 1)], clock.now)
    reference.decide_charges_at([Charge("c", "other", a, 1)], clock.now)
    reference.decide_charges_at([Charge("c", "p1", b, 1), Charge("c", "p0", a, 1)], clock.now)
    assert state(store) == state(reference)
    assert len(digests) == 3


def test_bucket_spec_refuses_a_cost_no_request_could_pay() -> None:
    with pytest.raises(ValueError, match="capacity 3"):
        bucket_spec("p", Bucket(1.0, 3), 4, None)
    with pytest.raises(ValueError):
        bucket_spec("p", Bucket(1.0, 3), -1, None)


def test_take_all_at_with_no_bucket_decides_nothing() -> None:
    store = MemoryStore(Bucket(10.0, 1))
    assert store.take_all_at([], 0.0) is None
    assert store.take_all_at([("c", ())], 0.0) is None
    assert len(store) == 0


# --- the limiter: decide_now against charges + decide_charges_at + outcome ------------------

LIMITS = ["2/second", "3 per 10 seconds", "5/minute", "1/second"]


def user_key(scope: dict[str, Any]) -> str | None:
    return scope.get("user")


def request_cost(scope: dict[str, Any]) -> int:
    cost: int = scope.get("cost", 1)
    return cost


@st.composite
def policies(draw: st.DrawFn) -> list[Policy]:
    """policies is one to four policies on two paths, of every kind: keyed by address,
    header or callable (which may skip the policy), with classes, a burst, a fixed cost
    (0 too) or a cost callable (which may exceed a capacity), enforced or shadow."""
    out = []
    for i in range(draw(st.integers(1, 4))):
        limits = draw(st.lists(st.sampled_from(LIMITS), min_size=1, max_size=2))
        burst = draw(st.sampled_from([None, 1, 3]))
        capacity = min(burst or int(text.split("/")[0].split()[0]) for text in limits)
        classes: dict[str, list[str]] = {}
        if draw(st.integers(0, 3)) == 0:
            classes = {"free": draw(st.lists(st.sampled_from(LIMITS), min_size=1, max_size=2))}
            capacity = min(
                [capacity] + [burst or int(t.split("/")[0].split()[0]) for t in classes["free"]]
            )
        cost: Any = request_cost if draw(st.booleans()) else draw(st.integers(0, min(capacity, 2)))
        out.append(
            Policy(
                name=f"p{i}",
                match=draw(st.sampled_from(["*", "GET /x", "/x*", "/y"])),
                limits=limits,
                key=draw(st.sampled_from(["ip", "header:X-Key", "global", user_key])),
                burst=burst,
                cost=cost,
                class_header="X-Plan" if classes else None,
                classes=classes,
                enforce=draw(st.booleans()) or draw(st.booleans()),
            )
        )
    return out


@st.composite
def scopes(draw: st.DrawFn) -> tuple[float, dict[str, Any]]:
    """scopes is a gap in time (below 0 too) and a request."""
    headers = []
    if draw(st.booleans()):
        headers.append((b"x-key", draw(st.sampled_from([b"k1", b"k2"]))))
    if draw(st.booleans()):
        headers.append((b"x-plan", draw(st.sampled_from([b"free", b"gold"]))))
    scope: dict[str, Any] = {
        "type": "http",
        "method": draw(st.sampled_from(["GET", "POST"])),
        "path": draw(st.sampled_from(["/x", "/y", "/x/1"])),
        "headers": headers,
        "client": (draw(st.sampled_from(["10.0.0.1", "10.0.0.2"])), 5000),
    }
    user = draw(st.sampled_from([None, "u1", "u2"]))
    if user is not None:
        scope["user"] = user
    scope["cost"] = draw(st.integers(0, 6))
    return draw(st.sampled_from([0.0, 0.0, 0.1, 0.7, 3.0, -0.5])), scope


def general_outcome(lim: PolicyLimiter, scope: dict[str, Any]) -> Outcome:
    """general_outcome is the request's outcome the general way, as before the one pass."""
    charges, applied = lim.charges(scope)
    if not charges:
        return ADMIT_PLAIN
    store: MemoryStore = lim.store  # type: ignore[assignment]
    return lim.outcome(applied, store.decide_charges_at(charges, lim.clock()))


def limiters(chosen: list[Policy], clock: ManualClock) -> tuple[PolicyLimiter, PolicyLimiter]:
    bucket = generation_bucket(chosen)
    return (
        PolicyLimiter(chosen, MemoryStore(bucket, max_keys=6, clock=clock), clock=clock),
        PolicyLimiter(chosen, MemoryStore(bucket, max_keys=6, clock=clock), clock=clock),
    )


def same_as_general(chosen: list[Policy], steps: list[tuple[float, dict[str, Any]]]) -> None:
    """same_as_general drives `decide_now` and the general path through `steps` side by side,
    each with a store of its own, and holds everything they answer and keep equal."""
    clock = ManualClock()
    fast, general = limiters(chosen, clock)
    for gap, scope in steps:
        clock.now += gap
        got = fast.decide_now(dict(scope, state={}))
        want = general_outcome(general, dict(scope, state={}))
        assert got == want
        assert state(fast.store) == state(general.store)  # type: ignore[arg-type]
        assert fast.refusals == general.refusals
        assert fast.shadow_refusals == general.shadow_refusals


@settings(max_examples=400, deadline=None)
@given(chosen=policies(), steps=st.lists(scopes(), min_size=1, max_size=25))
def test_decide_now_is_the_general_path(
    chosen: list[Policy], steps: list[tuple[float, dict[str, Any]]]
) -> None:
    same_as_general(chosen, steps)


def request(client: str = "10.0.0.1", key: bytes | None = None) -> dict[str, Any]:
    headers = [(b"x-key", key)] if key is not None else []
    return {
        "type": "http",
        "method": "GET",
        "path": "/x",
        "headers": headers,
        "client": (client, 1),
    }


def test_policies_keyed_apart_charge_each_client_key_in_one_request() -> None:
    chosen = [
        Policy(name="a", match="*", limits="3/second"),
        Policy(name="g", match="*", limits="4/second", key="global"),
        Policy(name="h", match="*", limits="2/second", key="header:X-Key"),
        Policy(name="b", match="*", limits="5/second"),
    ]
    steps = [
        (0.0, request("10.0.0.1", b"k1")),
        (0.0, request("10.0.0.2", b"k1")),
        (0.0, request("10.0.0.2", b"k2")),
        (0.0, request("10.0.0.1")),
        (0.0, request("10.0.0.3", b"k2")),
        (0.5, request("10.0.0.3", b"k2")),
        (0.0, request("10.0.0.1", b"k1")),
    ]
    same_as_general(chosen, steps)


def test_refusals_of_costs_other_than_one_are_told_as_the_general_path_tells_them() -> None:
    chosen = [
        Policy(name="heavy", match="*", limits=["3/second", "5/minute"], cost=2),
        Policy(name="free", match="*", limits="1/minute", cost=0),
    ]
    same_as_general(chosen, [(gap, request()) for gap in (0.0, 0.0, 0.0, 0.4, 0.4, 1.0, 0.0)])


def test_decide_now_reports_the_closest_limit_among_three_policies() -> None:
    clock = ManualClock()
    chosen = [
        Policy(name="a", match="*", limits=["10/second", "100/minute"]),
        Policy(name="b", match="*", limits=["5/second", "20/minute"]),
        Policy(name="c", match="*", limits=["7/second", "50/minute"]),
    ]
    fast, general = limiters(chosen, clock)
    scope = {"type": "http", "method": "GET", "path": "/", "headers": [], "client": ("1", 1)}
    for _ in range(8):
        got = fast.decide_now(scope)
        assert got == general_outcome(general, scope)
    assert fast.refusals == {"a": 0, "b": 3, "c": 0}
    refused = fast.decide_now(scope).refusal
    assert refused is not None and refused.policy == "b"
    assert dict(refused.headers)[b"ratelimit"].startswith(b'"b#1";r=0')

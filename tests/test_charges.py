"""Several buckets for one request, all or nothing: `decide_all`, `decide_charges` and the
memory store's `decide_charges_at`, on a manual clock."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from admission.bucket import Bucket
from admission.charges import Charge, decide_charges
from admission.stores.memory import MemoryStore

PER_SECOND = Bucket(0.1, 10)  # 10/second
PER_MINUTE = Bucket(4.0, 15)  # 15/minute


class Tats:
    """Tats holds the TATs of a fixed list of charges, as a store would."""

    def __init__(self, charges: list[Charge]) -> None:
        self.charges = charges
        self.tats: list[float | None] = [None] * len(charges)

    def decide(self, now: float):  # type: ignore[no-untyped-def]
        verdict, self.tats = decide_charges(self.charges, self.tats, now)
        return verdict


def two_limits(cost: int = 1) -> list[Charge]:
    return [
        Charge("c", "p:s", PER_SECOND, cost),
        Charge("c", "p:m", PER_MINUTE, cost),
    ]


def test_two_limits_admit_ten_then_five_a_second_later() -> None:
    state = Tats(two_limits())
    first = [state.decide(100.0).admitted for _ in range(40)]
    assert first.count(True) == 10 and first[:10] == [True] * 10
    second = [state.decide(101.0).admitted for _ in range(40)]
    assert second.count(True) == 5 and second[:5] == [True] * 5


def test_a_refused_request_takes_no_token_from_any_bucket() -> None:
    state = Tats(two_limits())
    for _ in range(10):
        assert state.decide(0.0).admitted
    before = list(state.tats)
    # The per-second bucket refuses; the per-minute one would admit but must not be charged.
    verdict = state.decide(0.0)
    assert not verdict.admitted
    assert state.tats == before
    assert [d.allowed for d in verdict.decisions] == [False, True]
    assert verdict.decisions[1].remaining == 5  # 15 - 10: what it holds, not 4
    assert verdict.decisions[0].retry_after_s > 0


def test_no_charges_admit() -> None:
    verdict, tats = decide_charges([], [], 0.0)
    assert verdict.admitted and verdict.decisions == [] and tats == []


def test_a_shadow_group_never_refuses_and_is_charged_only_with_the_request() -> None:
    shadow = Bucket(60.0, 1)  # 1/minute
    charges = [Charge("c", "a:0", PER_SECOND, 1), Charge("c", "s:0", shadow, 1, group=1)]
    state = Tats(charges)
    v1 = state.decide(0.0)
    assert v1.admitted and v1.refused_groups == frozenset()
    shadow_tat = state.tats[1]
    v2 = state.decide(0.0)
    assert v2.admitted and v2.refused_groups == frozenset({1})
    assert state.tats[1] == shadow_tat  # its refusal took nothing from it
    for _ in range(8):
        state.decide(0.0)
    # Enforced bucket empty: the request is refused, and the shadow bucket (full again a minute
    # later) is not charged for a request that never went through.
    v3 = state.decide(0.0)
    assert not v3.admitted
    later = state.decide(60.0)
    assert later.admitted and 1 not in later.refused_groups


def test_a_shadow_group_is_not_charged_when_the_enforced_group_refuses() -> None:
    shadow = Bucket(60.0, 5)
    charges = [Charge("c", "a:0", Bucket(60.0, 1), 1), Charge("c", "s:0", shadow, 1, group=1)]
    state = Tats(charges)
    assert state.decide(0.0).admitted
    tats = list(state.tats)
    verdict = state.decide(0.0)
    assert not verdict.admitted
    assert state.tats == tats
    assert verdict.decisions[1].allowed and verdict.decisions[1].remaining == 4


def test_a_cost_above_one_limits_capacity_refuses_with_an_infinite_retry() -> None:
    state = Tats([Charge("c", "a", Bucket(1.0, 3), 4), Charge("c", "b", Bucket(1.0, 10), 4)])
    verdict = state.decide(0.0)
    assert not verdict.admitted
    assert verdict.decisions[0].retry_after_s == float("inf")
    assert state.tats == [None, None]


@settings(max_examples=200, deadline=None)
@given(
    steps=st.lists(
        st.tuples(st.floats(0, 5), st.integers(0, 4), st.integers(0, 4)), min_size=1, max_size=40
    )
)
def test_all_or_nothing_matches_separate_buckets_taken_only_together(
    steps: list[tuple[float, int, int]],
) -> None:
    """The reference: each bucket's own `decide`, applied only when both admit; floats in
    the TATs and the decisions alike are the same, not merely close."""
    a, b = Bucket(0.3, 4), Bucket(1.1, 6)
    state = Tats([Charge("c", "a", a, 1), Charge("c", "b", b, 1)])
    ref_a: float | None = None
    ref_b: float | None = None
    now = 0.0
    for gap, cost_a, cost_b in steps:
        now += gap
        state.charges = [Charge("c", "a", a, cost_a), Charge("c", "b", b, cost_b)]
        verdict = state.decide(now)
        new_a, da = a.decide(ref_a, now, cost_a)
        new_b, db = b.decide(ref_b, now, cost_b)
        assert verdict.admitted == (da.allowed and db.allowed)
        if verdict.admitted:
            ref_a, ref_b = new_a, new_b
            # An admitted request gives what each bucket's `decide` gives, exactly.
            assert verdict.decisions == [da, db]
        assert state.tats == [ref_a, ref_b]


# --- the memory store -----------------------------------------------------------------------


def held(store: MemoryStore) -> dict[int, float]:
    """held is every key the store holds (as its digest) with its TAT: entries 1..len."""
    return {store._digests[e]: store._tats[e] for e in range(1, len(store) + 1)}


def test_memory_store_keeps_each_clients_buckets_apart() -> None:
    store = MemoryStore(Bucket(60.0, 1))
    one = [Charge("ip:1", n, b, 1) for n, b in (("p:s", PER_SECOND), ("p:m", PER_MINUTE))]
    two = [Charge("ip:2", n, b, 1) for n, b in (("p:s", PER_SECOND), ("p:m", PER_MINUTE))]
    assert sum(store.decide_charges_at(one, 0.0).admitted for _ in range(20)) == 10
    assert sum(store.decide_charges_at(two, 0.0).admitted for _ in range(20)) == 10
    assert sum(store.decide_charges_at(one, 1.0).admitted for _ in range(20)) == 5


def test_memory_store_refusal_leaves_every_bucket_as_it_was() -> None:
    store = MemoryStore(Bucket(60.0, 1))
    charges = two_limits()
    for _ in range(10):
        store.decide_charges_at(charges, 0.0)
    snapshot = held(store)
    for _ in range(5):
        assert not store.decide_charges_at(charges, 0.0).admitted
    assert held(store) == snapshot


def test_memory_store_forgets_keys_only_once_their_buckets_are_full() -> None:
    # The store's bucket fills in 60 s, as slowly as the slowest limit (15/minute).
    store = MemoryStore(Bucket(60.0, 1), clock=lambda: 0.0)
    charges = two_limits()
    for _ in range(10):
        store.decide_charges_at(charges, 0.0)
    # 30 s later the minute bucket (TAT 40 s) is not full yet: the key must still be held.
    assert store.decide_charges_at(charges, 30.0).decisions[1].remaining < 14
    assert len(store) > 0
    store.decide_charges_at([], 200.0)
    assert len(store) == 0


def test_memory_store_finds_a_key_again_after_an_insert_reused_its_entry() -> None:
    # The store finds each charge's entry once, before deciding; inserting a new key may then
    # take the place of the least recently used one, if its bucket is full again. Here the new
    # key "b" takes the entry of "a", charged in the same request right after it: "a" must
    # be found afresh (and held anew), not written into the entry that is now "b"'s.
    bucket = Bucket(1.0, 2)
    store = MemoryStore(Bucket(60.0, 1))
    assert store.decide_charges_at([Charge("c", "a", bucket, 1)], 0.0).admitted
    # At 5 s "a" is full again and the least recently used key.
    verdict = store.decide_charges_at(
        [Charge("c", "b", bucket, 1), Charge("c", "a", bucket, 2)], 5.0
    )
    assert verdict.admitted and [d.remaining for d in verdict.decisions] == [1, 0]
    assert len(store) == 2
    # "a" holds no token now, and "b" one.
    assert not store.decide_charges_at([Charge("c", "a", bucket, 1)], 5.0).admitted
    assert store.decide_charges_at([Charge("c", "b", bucket, 1)], 5.0).admitted
    assert not store.decide_charges_at([Charge("c", "b", bucket, 1)], 5.0).admitted


def test_memory_store_keeps_two_clients_of_one_request_apart() -> None:
    # The store digests a request's client once for its run of charges; a charge of another
    # client (a policy keyed otherwise) must get that client's digest, not the previous one's.
    bucket = Bucket(1.0, 1)
    store = MemoryStore(Bucket(60.0, 1))
    both = [
        Charge("ip:1", "p", bucket, 1),
        Charge("h:x", "p", bucket, 1),
        Charge("ip:1", "q", bucket, 1),
    ]
    assert store.decide_charges_at(both, 0.0).admitted
    assert len(store) == 3
    for client, name in (("ip:1", "p"), ("h:x", "p"), ("ip:1", "q")):
        assert not store.decide_charges_at([Charge(client, name, bucket, 1)], 0.0).admitted

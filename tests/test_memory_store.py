"""The memory store under pressure: least recently used keys go first, long keys cost what
short ones do, and a flood of keys through a real server forgets the oldest."""

from __future__ import annotations

import gc
import logging
import os
import subprocess
import sys
import tracemalloc
from collections import OrderedDict
from collections.abc import Callable

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from admission.bucket import Bucket
from admission.charges import Charge
from admission.stores.memory import (
    BYTES_PER_KEY,
    MemoryStore,
    _name_digest,
    bucket_spec,
    digest_of,
)
from tests.support import admission_serve, run_server


class ManualClock:
    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


# One token a minute: every key used stays held for a minute, so with a frozen clock only the
# cap ever forgets one.
ONE_A_MINUTE = Bucket(interval_s=60.0, capacity=1)


@pytest.mark.parametrize("already_full", [False, True])
@pytest.mark.parametrize("fresh_between", [1, 2, 5, 8])
def test_a_client_interleaving_fresh_keys_stays_limited(
    fresh_between: int, already_full: bool
) -> None:
    clock = ManualClock()
    store = MemoryStore(ONE_A_MINUTE, max_keys=10, clock=clock)
    for i in range(10 if already_full else 0):
        store.decide_at(f"other-{i}", clock.now)
    admitted = 0
    fresh = 0
    for _ in range(100):
        admitted += store.decide_at("abuser", clock.now).allowed
        for _ in range(fresh_between):
            assert store.decide_at(f"fresh-{fresh}", clock.now).allowed
            fresh += 1
        assert len(store) <= 10
    assert admitted == 1


def test_the_oldest_keys_go_first_under_a_flood() -> None:
    clock = ManualClock()
    store = MemoryStore(ONE_A_MINUTE, max_keys=100, clock=clock)
    for i in range(100):
        store.decide_at(f"old-{i}", clock.now)
    store.decide_at("old-0", clock.now)  # used again: now the most recent
    for i in range(30):
        store.decide_at(f"flood-{i}", clock.now)
    held = [i for i in range(100) if f"old-{i}" in store]
    assert held == [0, *range(31, 100)]
    assert all(f"flood-{i}" in store for i in range(30))
    # A key still held is still limited; a forgotten one has its full bucket back.
    assert not store.decide_at("old-99", clock.now).allowed
    assert store.decide_at("old-1", clock.now).allowed


@settings(max_examples=300, deadline=None)
@given(
    max_keys=st.integers(min_value=1, max_value=12),
    uses=st.lists(st.integers(min_value=0, max_value=30), min_size=1, max_size=200),
)
def test_the_store_holds_exactly_the_most_recently_used_keys(
    max_keys: int, uses: list[int]
) -> None:
    """Against a reference LRU list: after every decision the store holds the same keys."""
    clock = ManualClock()
    store = MemoryStore(ONE_A_MINUTE, max_keys=max_keys, clock=clock)
    reference: OrderedDict[str, None] = OrderedDict()
    for who in uses:
        key = f"k{who}"
        store.decide_at(key, clock.now)
        reference[key] = None
        reference.move_to_end(key)
        if len(reference) > max_keys:
            reference.popitem(last=False)
        assert len(store) == len(reference)
        assert all(k in store for k in reference)


def test_a_refused_request_counts_as_a_use() -> None:
    clock = ManualClock()
    store = MemoryStore(ONE_A_MINUTE, max_keys=3, clock=clock)
    for key in ("a", "b", "c"):
        store.decide_at(key, clock.now)
    assert not store.decide_at("a", clock.now).allowed
    store.decide_at("d", clock.now)
    assert "a" in store
    assert "b" not in store


def test_forgetting_full_buckets_still_works_with_the_cap() -> None:
    clock = ManualClock()
    bucket = Bucket(interval_s=1.0, capacity=2)
    store = MemoryStore(bucket, max_keys=4, clock=clock)
    for i in range(20):
        store.decide_at(f"k{i}", clock.now)
        assert len(store) <= 4
    clock.now += 2 * bucket.fill_time_s
    store.decide_at("probe", clock.now, cost=0)
    assert len(store) == 0


def test_a_full_bucket_stays_held_until_the_cap_needs_its_place(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(0.0)
    store = MemoryStore(Bucket(interval_s=1.0, capacity=1), max_keys=2, clock=clock)
    store.decide_at("a", 0.0)
    store.decide_at("b", 0.9)
    with caplog.at_level(logging.WARNING, logger="admission.store"):
        # "a" is full again at 1.0: "c" takes its place; no live key is forgotten, no warning.
        store.decide_at("c", 1.0)
        store.decide_at("d", 1.9)
    assert "b" not in store  # full again at 1.9: "d" took its place
    assert "c" in store and "d" in store
    assert not caplog.records
    wide = MemoryStore(Bucket(interval_s=1.0, capacity=1), max_keys=3, clock=clock)
    wide.decide_at("a", 0.0)
    wide.decide_at("b", 0.9)
    wide.decide_at("c", 1.0)
    # Below the cap "a", full again at 1.0, is held on: found, not forgotten and re-held.
    assert len(wide) == 3 and "a" in wide


@pytest.mark.parametrize("max_keys", [1, 2, 3, 1000, 1024, 1025, 1_000_000])
def test_a_store_never_holds_more_than_its_bytes_per_key(max_keys: int) -> None:
    """Everything a store can ever hold is its arrays, made once: at most BYTES_PER_KEY bytes
    per key of the cap (plus a fixed few for the smallest caps)."""
    store = MemoryStore(ONE_A_MINUTE, max_keys=max_keys, clock=ManualClock())
    total = sum(array.nbytes for array in store._arrays)
    assert total <= BYTES_PER_KEY * max_keys + 64


def _traced_bytes_held_for(n: int, make_key: Callable[[int], str]) -> int:
    """_traced_bytes_held_for is what Python objects a store holding `n` keys allocated for
    them; each key is a new string, as each request's key is, and dropped once decided."""
    store = MemoryStore(ONE_A_MINUTE, max_keys=n, clock=ManualClock())
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for i in range(n):
            store.decide_at(make_key(i), 1000.0)
        gc.collect()
        assert len(store) == n
        return tracemalloc.get_traced_memory()[0] - before
    finally:
        tracemalloc.stop()


@pytest.mark.parametrize("length", [9, 16, 200, 10_000])
def test_a_key_of_any_length_is_held_without_a_python_object(length: int) -> None:
    """Keys live as digests in the store's arrays (their memory measured by
    benchmarks/memory_store.py as resident memory): no string, int or float per key."""
    n = 2000
    held = _traced_bytes_held_for(n, lambda i: f"k{i:08d}".ljust(length, "x"))
    assert held < 4096, f"{held / n:.1f} bytes of Python objects per key"


@settings(max_examples=200, deadline=None)
@given(
    max_keys=st.integers(min_value=1, max_value=40),
    events=st.lists(
        st.tuples(st.integers(min_value=0, max_value=80), st.sampled_from([0.0, 0.0, 0.7])),
        min_size=1,
        max_size=300,
    ),
)
def test_evicting_and_forgetting_keep_every_held_key_findable(
    max_keys: int, events: list[tuple[int, float]]
) -> None:
    """Keys leave the index (eviction at the cap, a full bucket's place taken) and the rest
    stay findable: the store decides like a reference LRU of TATs at the same cap."""
    bucket = Bucket(interval_s=1.0, capacity=2)
    clock = ManualClock(0.0)
    store = MemoryStore(bucket, max_keys=max_keys, clock=clock)
    reference: OrderedDict[str, float] = OrderedDict()
    for who, dt in events:
        clock.now += dt
        key = f"k{who}"
        tat, expected = bucket.decide(reference.pop(key, None), clock.now)
        got = store.decide_at(key, clock.now)
        if tat is not None and tat > clock.now:
            reference[key] = tat
        # Keys whose bucket is full again may go at any time; the cap takes the oldest.
        for k in [k for k, t in reference.items() if t <= clock.now]:
            if k not in store:
                del reference[k]
        while len(reference) > max_keys:
            reference.popitem(last=False)
        assert got == expected
        assert all(k in store for k in reference)
        assert len(store) <= max_keys


@pytest.mark.process
def test_a_header_key_flood_through_a_server_forgets_the_oldest_keys_first() -> None:
    env = {
        "ADMISSION_RATE": "1/minute",
        "ADMISSION_KEY": "header:X-API-Key",
        "ADMISSION_MAX_KEYS": "50",
    }
    with (
        run_server(admission_serve(), env) as server,
        httpx.Client(base_url=server.url, timeout=5) as client,
    ):

        def status(key: str) -> int:
            return client.get("/", headers={"X-API-Key": key}).status_code

        assert [status(f"old-{i}") for i in range(50)] == [200] * 50
        assert status("old-0") == 429  # used again: the most recent now
        assert [status(f"flood-{i}") for i in range(20)] == [200] * 20
        # old-1 .. old-20 were forgotten, oldest first; the rest are still limited.
        assert status("old-49") == 429
        assert status("old-21") == 429
        assert status("old-0") == 429
        assert status("old-20") == 200
        assert "forgetting the least recently used" in server.log()


def test_keys_are_digested_with_a_keyed_hash_even_without_hash_randomisation() -> None:
    code = (
        "from admission.stores import memory\n"
        "from admission.bucket import Bucket\n"
        "assert not memory._HASH_IS_KEYED\n"
        "s = memory.MemoryStore(Bucket(interval_s=60.0, capacity=1), clock=lambda: 0.0)\n"
        "a, b = 'a' * 100, 'b' * 100\n"
        "assert s.decide_at(a, 0.0).allowed and not s.decide_at(a, 0.0).allowed\n"
        "assert s.decide_at(b, 0.0).allowed\n"
        "print(memory.digest_of(a))\n"
    )
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    runs = [
        subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True)
        for _ in range(2)
    ]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr
    # The same key digests differently in two processes: the secret is the store's own.
    assert runs[0].stdout != runs[1].stdout


def _charge(client: str, cost: int, bucket: Bucket) -> Charge:
    return Charge(client, "limit", bucket, cost)


def _tokens_left(store: MemoryStore, client: str, bucket: Bucket) -> int:
    """_tokens_left probes `client`'s bucket at 0 without taking a token."""
    verdict = store.decide_charges_at([_charge(client, 0, bucket)], 0.0)
    return verdict.decisions[0].remaining


def test_a_bucket_whose_entry_an_insert_reused_is_found_afresh() -> None:
    bucket = Bucket(1.0, 10)
    store = MemoryStore(bucket, max_keys=2, clock=lambda: 0.0)
    store.decide_charges_at([_charge("a", 1, bucket)], 0.0)
    store.decide_charges_at([_charge("b", 1, bucket)], 0.0)
    # "c" is new: holding it forgets "a", the least recently used, and reuses its entry; "a"
    # (decided on what it held before) is then held anew, in the place of "b".
    store.decide_charges_at([_charge("c", 1, bucket), _charge("a", 5, bucket)], 0.0)
    assert _tokens_left(store, "c", bucket) == 9
    assert _tokens_left(store, "a", bucket) == 4


def test_a_refused_request_moves_its_buckets_as_a_use() -> None:
    bucket = Bucket(1.0, 10)
    store = MemoryStore(bucket, max_keys=2, clock=lambda: 0.0)
    store.decide_charges_at([_charge("a", 1, bucket)], 0.0)
    store.decide_charges_at([_charge("b", 1, bucket)], 0.0)
    # Refused as a whole ("a" cannot pay 10 more): neither bucket takes, but both are used,
    # in order, as `decide_at` counts a refusal: "b", then "a", the most recent.
    refused = store.decide_charges_at([_charge("b", 1, bucket), _charge("a", 10, bucket)], 0.0)
    assert not refused.admitted
    # So "b" is now the least recently used, and goes first; "a" keeps what it took.
    store.decide_charges_at([_charge("c", 1, bucket)], 0.0)
    assert _tokens_left(store, "b", bucket) == 10
    assert _tokens_left(store, "a", bucket) == 9


@pytest.mark.parametrize("fresh_between", [1, 5, 8])
def test_a_client_interleaving_fresh_keys_stays_limited_on_the_charges_path(
    fresh_between: int,
) -> None:
    """The key flood of `test_a_client_interleaving_fresh_keys_stays_limited`, through
    `decide_charges_at` (route policies, or any policy file): a refused request keeps the
    abuser's place in the order of use, so the fresh keys never push it out."""
    clock = ManualClock()
    store = MemoryStore(ONE_A_MINUTE, max_keys=10, clock=clock)
    admitted = 0
    fresh = 0
    for _ in range(40):
        admitted += store.decide_charges_at(
            [_charge("abuser", 1, ONE_A_MINUTE)], clock.now
        ).admitted
        for _ in range(fresh_between):
            verdict = store.decide_charges_at(
                [_charge(f"fresh-{fresh}", 1, ONE_A_MINUTE)], clock.now
            )
            assert verdict.admitted
            fresh += 1
        assert len(store) <= 10
    assert admitted == 1


def _order_of_use(store: MemoryStore, names: dict[int, str]) -> list[str]:
    """_order_of_use is the keys `store` holds, least recently used first, named by `names`
    (digest -> key)."""
    order = []
    entry = store._newer[0]
    while entry:
        order.append(names[store._digests[entry]])
        entry = store._newer[entry]
    return order


@settings(max_examples=300, deadline=None)
@given(
    max_keys=st.integers(min_value=1, max_value=6),
    events=st.lists(
        st.tuples(
            st.integers(min_value=0, max_value=9),
            st.sampled_from([0.0, 0.0, 0.1, 0.5, 1.0, 3.0]),
            st.integers(min_value=0, max_value=3),
        ),
        min_size=1,
        max_size=150,
    ),
)
def test_the_single_rate_and_the_charges_path_decide_and_order_alike(
    max_keys: int, events: list[tuple[int, float, int]]
) -> None:
    """For any sequence of keys, times and costs under a small cap, `decide_at` (the single
    rate), `decide_charges_at` (route policies' general path) and `take_all_at` falling back
    to it (their one pass, as the limiter asks) give the same verdicts and hold the same keys
    in the same order of use, refusals included."""
    bucket = Bucket(interval_s=1.0, capacity=2)
    clock = ManualClock(0.0)
    single = MemoryStore(bucket, max_keys=max_keys, clock=clock)
    charged = MemoryStore(bucket, max_keys=max_keys, clock=clock)
    passed = MemoryStore(bucket, max_keys=max_keys, clock=clock)
    single_names: dict[int, str] = {}
    charged_names: dict[int, str] = {}
    for who, dt, cost in events:
        clock.now += dt
        key = f"k{who}"
        single_names[digest_of(key)] = key
        charged_names[digest_of(key) ^ _name_digest("limit")] = key
        decision = single.decide_at(key, clock.now, cost)
        verdict = charged.decide_charges_at([_charge(key, cost, bucket)], clock.now)
        assert verdict.admitted == decision.allowed
        assert verdict.decisions == [decision]
        taken = None
        if cost <= bucket.capacity:
            taken = passed.take_all_at(
                [(key, (bucket_spec("limit", bucket, cost, None),))], clock.now
            )
        if taken is None:
            assert passed.decide_charges_at([_charge(key, cost, bucket)], clock.now) == verdict
        else:
            assert decision.allowed and taken[0] == decision
        order = _order_of_use(single, single_names)
        assert _order_of_use(charged, charged_names) == order
        assert _order_of_use(passed, charged_names) == order

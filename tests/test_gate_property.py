"""tests.test_gate_property: the rate gate decides alike on every path. `ADMISSION_RATE` alone
goes through `SingleRate`, its one-bucket fast path; beside route policies the same policy
`default` goes through the `PolicyLimiter` (its one pass, and its general path on a refusal).
For any sequence of clients and times, on a manual clock and a store small enough that keys
are forgotten, both give the same verdicts and the same headers: a difference in which keys
the store keeps (its LRU order) would show as a client refused on one path and not the other.
"""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from admission import Policy, Settings
from admission.config.policies import generation_bucket
from admission.ratelimit.gate import SingleRate, default_policy
from admission.ratelimit.limiter import PolicyLimiter
from admission.stores import bucket_for
from admission.stores.memory import MemoryStore


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _scope(client: int) -> dict[str, object]:
    return {
        "type": "http",
        "method": "GET",
        "path": "/x",
        "headers": [],
        "client": (f"10.0.0.{client}", 1),
    }


STEPS = st.lists(
    st.tuples(st.integers(0, 11), st.sampled_from([0.0, 0.0, 0.01, 0.3, 1.0, 7.0])),
    min_size=1,
    max_size=120,
)


@settings(max_examples=300, deadline=None)
@given(
    steps=STEPS,
    rate=st.sampled_from(["1/minute", "1/second", "3/second", "2/minute", "5/10 seconds"]),
    burst=st.sampled_from([None, 1, 4]),
    max_keys=st.integers(2, 6),
)
def test_the_single_rate_and_the_policy_path_decide_alike(
    steps: list[tuple[int, float]], rate: str, burst: int | None, max_keys: int
) -> None:
    config = Settings(rate=rate, burst=burst, max_keys=max_keys)
    policy = default_policy(config)
    assert isinstance(policy, Policy)
    clock = Clock()
    bucket = bucket_for(config)
    assert bucket is not None
    single = SingleRate(policy, MemoryStore(bucket, max_keys=max_keys, clock=clock))
    store = MemoryStore(generation_bucket([policy]), max_keys=max_keys, clock=clock)
    limiter = PolicyLimiter([policy], store, clock=clock)
    for client, step in steps:
        clock.now += step
        scope = _scope(client)
        one, other = single.decide_now(scope), limiter.decide_now(scope)
        assert (one.refusal is None) == (other.refusal is None), (client, clock.now)
        if one.refusal is None:
            assert list(one.headers) == list(other.headers)
        else:
            assert other.refusal is not None
            assert one.refusal.headers == other.refusal.headers
            assert one.refusal.policy == other.refusal.policy == "default"


def test_the_single_rates_admitted_outcomes_kept_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Each admitted outcome is kept by its RateLimit field and handed out again: a client can
    # make as many fields as a bucket has tokens (and seconds), so what is kept is bounded.
    from admission.ratelimit import gate

    monkeypatch.setattr(gate, "_OUTCOMES_MAX", 8)
    config = Settings(rate="1000/minute")
    policy = default_policy(config)
    assert isinstance(policy, Policy)
    clock = Clock()
    bucket = bucket_for(config)
    assert bucket is not None
    single = SingleRate(policy, MemoryStore(bucket, clock=clock))
    seen: set[object] = set()
    for _ in range(100):
        outcome = single.decide_now(_scope(1))
        assert outcome.refusal is None
        seen.add(outcome.headers)
        assert len(single._outcomes) <= 8
    # Every field was a new one (the bucket counts down), each outcome its own.
    assert len(seen) == 100

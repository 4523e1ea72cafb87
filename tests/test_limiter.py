"""The policy limiter: matching, keys, classes, cost, shadow mode and the RateLimit fields."""

from __future__ import annotations

import logging
from typing import Any

import pytest

from admission.config.policies import Policy, generation_bucket
from admission.config.settings import Settings
from admission.ratelimit.gate import default_policy
from admission.ratelimit.limiter import SHADOW_LOG_INTERVAL_S, PolicyLimiter
from admission.stores.memory import MemoryStore


class ManualClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def scope(
    method: str = "GET",
    path: str = "/",
    headers: dict[str, str] | None = None,
    client: str = "10.0.0.1",
    kind: str = "http",
) -> dict[str, Any]:
    raw = [(k.lower().encode(), v.encode()) for k, v in (headers or {}).items()]
    out: dict[str, Any] = {"type": kind, "path": path, "headers": raw, "client": (client, 5000)}
    if kind == "http":
        out["method"] = method
    return out


def limiter(*policies: Policy, clock: ManualClock | None = None) -> PolicyLimiter:
    clock = clock or ManualClock()
    store = MemoryStore(generation_bucket(policies), clock=clock)
    return PolicyLimiter(policies, store, clock=clock)


def header(outcome: Any, name: bytes) -> str | None:
    headers = outcome.refusal.headers if outcome.refusal else outcome.headers
    values = [v.decode() for k, v in headers if k == name]
    return values[0] if values else None


LOGIN = Policy(name="login", match=["POST /login"], limits=["5/minute", "20/hour"])
API = Policy(
    name="api",
    match=["/api/*"],
    key="header:X-API-Key",
    limits=["100/second"],
    class_header="X-Plan",
    classes={"free": ["10/second", "1000/day"], "pro": ["200/second"]},
)
EXPORT = Policy(name="export-trial", match=["GET /export"], limits=["1/minute"], enforce=False)


async def admitted(lim: PolicyLimiter, s: dict[str, Any], n: int) -> int:
    return sum([(await lim.decide(s)).refusal is None for _ in range(n)])


async def test_login_admits_five_a_minute_and_get_is_not_limited_by_it() -> None:
    lim = limiter(LOGIN, API, EXPORT)
    assert await admitted(lim, scope("POST", "/login"), 20) == 5
    assert await admitted(lim, scope("GET", "/login"), 20) == 20
    assert await admitted(lim, scope("POST", "/login", client="10.0.0.2"), 20) == 5


async def test_classes_have_their_own_limits_and_unlisted_ones_use_the_policy_limits() -> None:
    lim = limiter(API)
    key = {"X-API-Key": "k1"}
    assert await admitted(lim, scope(path="/api/x", headers={**key, "X-Plan": "free"}), 300) == 10
    assert await admitted(lim, scope(path="/api/x", headers={**key, "X-Plan": "pro"}), 300) == 200
    assert await admitted(lim, scope(path="/api/x", headers={**key, "X-Plan": "gold"}), 300) == 100


async def test_a_client_changing_an_unlisted_class_value_gets_no_fresh_bucket() -> None:
    lim = limiter(API)
    key = {"X-API-Key": "k2"}
    assert await admitted(lim, scope(path="/api/x", headers={**key, "X-Plan": "a"}), 100) == 100
    assert await admitted(lim, scope(path="/api/x", headers={**key, "X-Plan": "b"}), 10) == 0
    assert await admitted(lim, scope(path="/api/x", headers=key), 10) == 0
    # A listed class is another set of limits, with buckets of its own: never mixed.
    assert await admitted(lim, scope(path="/api/x", headers={**key, "X-Plan": "free"}), 20) == 10


async def test_shadow_policy_never_refuses_counts_and_logs_once_a_minute(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock()
    lim = limiter(EXPORT, clock=clock)
    with caplog.at_level(logging.WARNING, logger="admission"):
        assert await admitted(lim, scope("GET", "/export"), 10) == 10
        assert lim.shadow_refusals == {"export-trial": 9}
        assert len([r for r in caplog.records if "export-trial" in r.getMessage()]) == 1
        clock.now += SHADOW_LOG_INTERVAL_S
        assert await admitted(lim, scope("GET", "/export"), 3) == 3
    assert lim.shadow_refusals == {"export-trial": 11}
    assert len([r for r in caplog.records if "export-trial" in r.getMessage()]) == 2
    # Shadow limits are not announced to clients.
    assert (await lim.decide(scope("GET", "/export"))).headers == []


async def test_headers_list_every_enforced_limit_and_report_the_closest_to_refusing() -> None:
    every = Policy(name="all", match="*", limits="100/minute")
    lim = limiter(LOGIN, every)
    outcome = await lim.decide(scope("POST", "/login"))
    assert header(outcome, b"ratelimit-policy") == (
        '"login#1";q=5;w=60, "login#2";q=20;w=3600, "all";q=100;w=60'
    )
    assert header(outcome, b"ratelimit") == '"login#1";r=4;t=12'
    for _ in range(4):
        outcome = await lim.decide(scope("POST", "/login"))
    refused = await lim.decide(scope("POST", "/login"))
    assert refused.refusal is not None and refused.refusal.policy == "login"
    assert header(refused, b"ratelimit") == '"login#1";r=0;t=60'
    assert header(refused, b"retry-after") == "12"
    assert lim.refusals == {"login": 1, "all": 0}
    # The refusal took nothing from "all": 5 taken, 95 left.
    assert header(await lim.decide(scope("GET", "/other")), b"ratelimit") == '"all";r=94;t=4'


async def test_retry_after_is_when_every_refusing_limit_admits_again() -> None:
    short = Policy(name="short", match="/x", limits="1/second")
    long = Policy(name="long", match="/x", limits="1/minute")
    lim = limiter(short, long)
    assert (await lim.decide(scope(path="/x"))).refusal is None
    refused = await lim.decide(scope(path="/x"))
    assert refused.refusal is not None and refused.refusal.policy == "long"
    assert header(refused, b"retry-after") == "60"


async def test_a_key_callable_returning_none_skips_the_policy_and_long_keys_are_bounded() -> None:
    users = Policy(name="users", match="*", limits="1/minute", key=lambda s: s.get("user"))
    lim = limiter(users)
    assert await admitted(lim, scope(), 5) == 5
    s = scope()
    s["user"] = "u" * 10_000
    assert await admitted(lim, s, 5) == 1
    charges, _ = lim.charges(s)
    assert len(charges[0].client) < 100


async def test_cost_callable_takes_that_many_tokens_and_a_bad_one_is_an_error() -> None:
    heavy = Policy(name="heavy", match="*", limits="10/minute", cost=lambda s: s.get("cost", 1))
    lim = limiter(heavy)
    s = scope()
    s["cost"] = 4
    assert await admitted(lim, s, 5) == 2
    s["cost"] = -1
    with pytest.raises(ValueError, match="cost callable returned -1"):
        await lim.decide(s)


async def test_websocket_handshakes_match_like_get_requests() -> None:
    ws = Policy(name="ws", match="GET /ws", limits="2/minute")
    lim = limiter(ws)
    assert await admitted(lim, scope(path="/ws", kind="websocket"), 5) == 2


async def test_the_implicit_default_policy_matches_everything_with_the_settings_key() -> None:
    policy = default_policy(Settings(rate="3/minute", burst=2, key="header:X-User"))
    assert policy is not None and policy.name == "default"
    lim = limiter(policy)
    assert await admitted(lim, scope("DELETE", "/a/b/c", headers={"X-User": "u"}), 5) == 2
    assert default_policy(Settings()) is None


async def test_hostile_class_and_key_headers_never_reach_store_keys() -> None:
    lim = limiter(API)
    s = scope(path="/api/x", headers={"X-API-Key": "k" * 5000, "X-Plan": "p" * 5000 + "|:{}"})
    charges, _ = lim.charges(s)
    assert all(len(c.client) < 100 and len(c.name) < 100 for c in charges)
    assert [c.name for c in charges] == ["api::0"]

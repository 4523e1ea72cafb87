"""A policy's `charge_when`: admitted when its buckets hold the cost now, charged only when the
response's status is listed. Through the middleware in process (TestClient and httpx's ASGI
transport), over the memory store on a manual clock, fakeredis and a real Redis."""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import fakeredis.aioredis
import httpx
import pytest
import redis.asyncio as aioredis
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, PlainTextResponse
from starlette.routing import Route
from starlette.testclient import TestClient

from admission import AdmissionMiddleware, Policy, Settings, limit
from admission.bucket import Bucket
from admission.charges import Charge, charge_after, decide_charges
from admission.config.policies import generation_bucket, load_policies, status_set
from admission.errors import PolicyError, StorageError
from admission.lifecycle.drain import Phase
from admission.ratelimit.gate import resolved_policies
from admission.stores.guard import GuardedStore
from admission.stores.memory import MemoryStore
from admission.stores.redis import RedisStore
from tests.apps.login import app as login_app
from tests.asgi import ManualClock
from tests.structured_fields import parse_sf_list

LOGIN = Policy(name="login", match="POST /login", limits="3/minute", charge_when=["4xx"])
RIGHT = {"X-Password": "right"}
WRONG = {"X-Password": "wrong"}
MINUTE_3 = Bucket(20.0, 3)  # 3/minute


# --- the field ------------------------------------------------------------------------------


def test_charge_when_takes_statuses_and_classes() -> None:
    policy = Policy(name="p", match="/x", limits="1/second", charge_when=["401", "5XX", 429])
    assert policy.charge_when == ("401", "5xx", "429")
    assert status_set(policy.charge_when) == {401, 429, *range(500, 600)}
    assert "charge_when=401,5xx,429" in policy.describe()
    assert Policy(name="p", match="/x", limits="1/second").charge_when == ()
    assert Policy(name="p", match="/x", limits="1/second", charge_when="4xx").charge_when == (
        "4xx",
    )


@pytest.mark.parametrize("bad", [["600"], ["4x"], ["40"], ["4xx", "099"], [True], [None], 3.5])
def test_a_bad_charge_when_entry_is_refused_naming_the_policy(bad: Any) -> None:
    with pytest.raises(
        PolicyError, match=r"policy 'p': charge_when: .*(is not a status|expected a list)"
    ):
        Policy(name="p", match="/x", limits="1/second", charge_when=bad)


@pytest.mark.parametrize(
    ("value", "problem"),
    [('["4xx", "6xx"]', "'6xx' is not a status"), ("[]", "expected one or more statuses")],
)
def test_a_bad_charge_when_in_a_file_is_one_line_naming_file_and_policy(
    tmp_path: Any, value: str, problem: str
) -> None:
    path = tmp_path / "login.toml"
    path.write_text(
        f'[[policy]]\nname = "login"\nmatch = ["POST /login"]\nlimits = ["3/minute"]\n'
        f"charge_when = {value}\n"
    )
    with pytest.raises(PolicyError) as raised:
        load_policies(path)
    message = str(raised.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: policy 'login': charge_when: ")
    assert problem in message


# --- the arithmetic, on a manual `now` ------------------------------------------------------


def test_a_peek_admits_without_taking_and_reports_as_if_charged() -> None:
    charges = [Charge("c", "a", MINUTE_3, 1), Charge("c", "l", MINUTE_3, 1, peek=True)]
    verdict, tats = decide_charges(charges, [None, None], 100.0)
    assert verdict.admitted
    assert tats == [120.0, None]
    # Both report what their bucket holds once charged: the peek as if it were.
    assert [d.remaining for d in verdict.decisions] == [2, 2]


def test_a_peek_that_cannot_take_its_cost_refuses_and_nothing_is_taken() -> None:
    charges = [Charge("c", "a", MINUTE_3, 1), Charge("c", "l", MINUTE_3, 1, peek=True)]
    verdict, tats = decide_charges(charges, [None, 160.0], 100.0)
    assert not verdict.admitted
    assert tats == [None, 160.0]
    assert verdict.decisions[0].remaining == 3
    assert verdict.decisions[1].retry_after_s == pytest.approx(20.0)


def test_a_charge_after_the_response_is_taken_in_full_even_below_empty() -> None:
    charges = [Charge("c", "l", MINUTE_3, 1), Charge("c", "m", MINUTE_3, 2)]
    assert charge_after(charges, [None, 155.0], 100.0) == [120.0, 195.0]
    # 195 is 95 s ahead: the bucket of 60 s owes 35 s, refused until it is paid back.
    _, decision = MINUTE_3.decide(195.0, 100.0)
    assert not decision.allowed
    assert decision.retry_after_s == pytest.approx(55.0)


def test_the_memory_store_keeps_a_bucket_that_owes_past_its_idle_forgetting() -> None:
    """The memory store forgets every key once idle for a fill time after its most recent use;
    a bucket charged below empty is full again only later, and is kept until then."""
    clock = ManualClock(0.0)
    store = MemoryStore(MINUTE_3, clock=clock)
    owes = Charge("ip:a", "login::0", MINUTE_3, 1)
    store.charge_at([owes] * 8, 0.0)  # 160 s ahead: 5 tokens owed
    store.decide_at("ip:b", 10.0)  # the most recent use, full again at 90
    decided = store.decide_charges_at([owes._replace(peek=True)], 100.0)
    assert not decided.admitted
    assert decided.decisions[0].retry_after_s == pytest.approx(20.0)


# --- every store -------------------------------------------------------------------------


class Kind:
    """Kind is one store under test, and the service of the login app in front of it."""

    def __init__(self, store: Any, clock: ManualClock | None = None) -> None:
        self.store = store
        self.clock = clock

    def middleware(self, *policies: Policy, app: Any = login_app, **settings: Any) -> Any:
        return AdmissionMiddleware(
            app,
            settings=Settings(policies=policies, **settings),
            store=self.store,
            handle_signals=False,
        )


@pytest.fixture(params=["memory", "fakeredis", "redis"])
async def kind(request: pytest.FixtureRequest) -> AsyncIterator[Kind]:
    if request.param == "memory":
        clock = ManualClock(1000.0)
        yield Kind(MemoryStore(Bucket(60.0, 1), clock=clock), clock)
        return
    prefix = f"admission-test-{uuid.uuid4().hex}"
    if request.param == "fakeredis":
        client: Any = fakeredis.aioredis.FakeRedis()
        store = RedisStore(client, Bucket(60.0, 1), timeout_s=5.0, prefix=prefix)
    else:
        url = request.getfixturevalue("redis_url")
        store = RedisStore.from_uri(url, Bucket(60.0, 1), timeout_s=5.0, prefix=prefix)
        client = aioredis.Redis.from_url(url)
    yield Kind(store)
    keys = [k async for k in client.scan_iter(match=f"{prefix}:*")]
    if keys:
        await client.delete(*keys)
    await store.close()
    if request.param == "redis":
        await client.aclose()


async def test_every_store_peeks_charges_the_others_and_charges_after(kind: Kind) -> None:
    store = kind.store
    other = Charge("ip:s", "a::0", Bucket(20.0, 3), 1)
    peek = Charge("ip:s", "login::0", Bucket(20.0, 3), 1, peek=True)
    verdict = await store.decide_charges([other, peek])
    assert verdict.admitted
    assert [(d.allowed, d.remaining) for d in verdict.decisions] == [(True, 2), (True, 2)]
    # The peek took nothing, the other bucket one token.
    verdict = await store.decide_charges([other, peek])
    assert [d.remaining for d in verdict.decisions] == [1, 2]
    # Four charged after their responses, of a bucket of 3: taken in full, one owed.
    await store.charge([peek._replace(peek=False)] * 4)
    verdict = await store.decide_charges([other, peek])
    assert not verdict.admitted
    assert [d.allowed for d in verdict.decisions] == [True, False]
    # The refusal took nothing from the other bucket either; it still holds 1 token.
    assert verdict.decisions[0].remaining == 1
    # 80 s ahead of a 60 s bucket: a token in 40 s (Redis's clock has moved a little since).
    assert verdict.decisions[1].retry_after_s == pytest.approx(40.0, abs=1.0)


def test_the_login_example_through_a_test_client(kind: Kind) -> None:
    """The issue's done-when line: six successful logins pass, then failed ones get 401,
    401, 401, 429, 429, 429."""
    with TestClient(kind.middleware(LOGIN)) as client:
        ok = [client.post("/login", headers=RIGHT) for _ in range(6)]
        failed = [client.post("/login", headers=WRONG) for _ in range(6)]
    assert [r.status_code for r in ok] == [200] * 6
    assert [r.status_code for r in failed] == [401, 401, 401, 429, 429, 429]
    assert failed[3].json()["policy"] == "login"
    # RateLimit counts the request as if it were charged: successes leave it where it was.
    assert {r.headers["ratelimit"] for r in ok} == {'"login";r=2;t=20'}
    remaining = [parse_sf_list(r.headers["ratelimit"])[0][1]["r"] for r in failed]
    assert remaining == [2, 1, 0, 0, 0, 0]
    assert all(r.headers["ratelimit-policy"] == '"login";q=3;w=60' for r in ok + failed)
    # One token back in 20 s (3 a minute), whole seconds rounded up.
    assert 19 <= int(failed[3].headers["retry-after"]) <= 20


def test_a_status_not_listed_is_never_charged(kind: Kind) -> None:
    only_401 = Policy(name="login", match="POST /login", limits="1/minute", charge_when=["401"])

    async def forbidden(request: Request) -> PlainTextResponse:
        return PlainTextResponse("no", 403 if request.headers.get("x-kind") == "403" else 401)

    app = Starlette(routes=[Route("/login", forbidden, methods=["POST"])])
    with TestClient(kind.middleware(only_401, app=app)) as client:
        assert [client.post("/login", headers={"x-kind": "403"}).status_code for _ in range(5)] == [
            403
        ] * 5
        assert [client.post("/login").status_code for _ in range(3)] == [401, 429, 429]


async def test_the_check_is_one_store_call_with_every_policy_and_the_charge_a_second(
    redis_url: str,
) -> None:
    prefix = f"admission-test-{uuid.uuid4().hex}"
    settings = Settings(policies=(LOGIN,), storage=redis_url, key_prefix=prefix, rate="100/minute")
    middleware = AdmissionMiddleware(login_app, settings=settings, handle_signals=False)
    redis_store = middleware.store.store  # type: ignore[union-attr]
    calls: list[str] = []
    eval_many, charge = redis_store._eval_many, redis_store.charge

    async def counted_eval(keys: list[bytes], args: list[bytes]) -> Any:
        calls.append(f"decide {len(keys)}")
        return await eval_many(keys, args)

    async def counted_charge(charges: Any) -> None:
        calls.append(f"charge {len(charges)}")
        await charge(charges)

    redis_store._eval_many, redis_store.charge = counted_eval, counted_charge
    transport = httpx.ASGITransport(app=middleware, client=("192.0.2.7", 1))
    try:
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            ok = [await client.post("/login", headers=RIGHT) for _ in range(2)]
            failed = [await client.post("/login", headers=WRONG) for _ in range(4)]
    finally:
        await middleware.store.close()  # type: ignore[union-attr]
        cleaner = aioredis.Redis.from_url(redis_url)
        keys = [k async for k in cleaner.scan_iter(match=f"{prefix}:*")]
        if keys:
            await cleaner.delete(*keys)
        await cleaner.aclose()
    assert [r.status_code for r in ok + failed] == [200, 200, 401, 401, 401, 429]
    # login's peek and default's charge in one script call for each request; a second call
    # for each failed login only; nothing more for the refused one.
    assert calls == ["decide 2"] * 2 + ["decide 2", "charge 1"] * 3 + ["decide 2"]
    # The default policy took a token from every admitted request, login only from failures.
    assert [r.headers["ratelimit"] for r in ok] == ['"login";r=2;t=20'] * 2
    assert failed[-1].json()["policy"] == "login"


# --- the bound on concurrent over-admission ---------------------------------------------


class HeldLogins:
    """HeldLogins is a login endpoint that fails every request, each held in the handler until
    `release` is set; `entered` is set once `expected` requests are inside."""

    def __init__(self, expected: int) -> None:
        self.expected = expected
        self.inside = 0
        self.entered = asyncio.Event()
        self.release = asyncio.Event()
        self.app = Starlette(routes=[Route("/login", self.login, methods=["POST"])])

    async def login(self, request: Request) -> JSONResponse:
        self.inside += 1
        if self.inside == self.expected:
            self.entered.set()
        await self.release.wait()
        return JSONResponse({"error": "wrong password"}, status_code=401)


@pytest.mark.parametrize("held", [3, 5, 8])
async def test_over_admission_is_at_most_the_requests_in_flight_for_the_key(
    kind: Kind, held: int
) -> None:
    """`held` failing logins of one client, held in the handler at once, against 3/minute: all
    were admitted by the same tokens; once they fail the bucket owes at most what they cost
    beyond its capacity (at most `held` tokens over), and the next attempt is refused."""
    logins = HeldLogins(held)
    middleware = kind.middleware(LOGIN, app=logins.app)
    transport = httpx.ASGITransport(app=middleware, client=("192.0.2.9", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://t", timeout=30) as client:
        sent = [asyncio.ensure_future(client.post("/login")) for _ in range(held)]
        await asyncio.wait_for(logins.entered.wait(), 10)
        logins.release.set()
        responses = await asyncio.gather(*sent)
        assert [r.status_code for r in responses] == [401] * held
        refused = await client.post("/login")
        assert refused.status_code == 429
    # What the bucket owes: each failure charged in full, `held` tokens from a bucket of 3.
    peek = Charge("ip:192.0.2.9", "login::0", MINUTE_3, 0)
    verdict = await kind.store.decide_charges([peek])
    owed_s = verdict.decisions[0].reset_after_s - MINUTE_3.fill_time_s
    assert owed_s == pytest.approx(max(0, held - 3) * 20.0, abs=1.0)
    assert owed_s <= held * 20.0 + 1.0
    assert verdict.decisions[0].remaining == 0


# --- storage failures during the charge ------------------------------------------------


class ChargeFails(MemoryStore):
    """ChargeFails decides as the memory store does, and fails every charge after a response."""

    def __init__(self, error: Exception, clock: ManualClock) -> None:
        super().__init__(Bucket(60.0, 1), clock=clock)
        self.error = error

    async def decide_charges(self, charges: Any) -> Any:
        return self.decide_charges_at(charges, self.clock())

    async def charge(self, charges: Any) -> None:
        raise self.error


@pytest.mark.parametrize("on_error", ["local", "allow", "deny"])
async def test_a_store_failing_the_charge_never_breaks_the_response(
    on_error: str, caplog: pytest.LogCaptureFixture
) -> None:
    clock = ManualClock(1000.0)
    failing = ChargeFails(StorageError("down"), clock)
    guard = GuardedStore(failing, Bucket(60.0, 1), on_error, clock=clock)  # type: ignore[arg-type]
    middleware = AdmissionMiddleware(
        login_app, settings=Settings(policies=(LOGIN,)), store=guard, handle_signals=False
    )
    transport = httpx.ASGITransport(app=middleware, client=("192.0.2.11", 1))
    with caplog.at_level(logging.WARNING, logger="admission.store"):
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            failed = await client.post("/login", headers=WRONG)
    assert failed.status_code == 401
    assert failed.json() == {"error": "wrong password"}
    assert guard.errors == 1 and guard.degraded
    assert "storage failed (down)" in caplog.text
    # `local` charged the per-process buckets that decide while the store is down.
    held = guard._local.decide_charges_at(
        [Charge("ip:192.0.2.11", "login::0", MINUTE_3, 0)], clock()
    )
    assert held.decisions[0].remaining == (2 if on_error == "local" else 3)


async def test_any_other_failure_of_the_charge_is_logged_and_the_response_goes_out(
    caplog: pytest.LogCaptureFixture,
) -> None:
    clock = ManualClock(1000.0)
    failing = ChargeFails(RuntimeError("bug"), clock)
    middleware = AdmissionMiddleware(
        login_app, settings=Settings(policies=(LOGIN,)), store=failing, handle_signals=False
    )
    transport = httpx.ASGITransport(app=middleware, client=("192.0.2.12", 1))
    with caplog.at_level(logging.ERROR, logger="admission"):
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            failed = await client.post("/login", headers=WRONG)
    assert failed.status_code == 401
    assert "charging a response's outcome failed" in caplog.text


# --- with other features ---------------------------------------------------------------


def test_a_shadow_policy_with_charge_when_counts_would_be_refusals_of_failures() -> None:
    clock = ManualClock(1000.0)
    shadow = Policy(
        name="login", match="POST /login", limits="2/minute", charge_when="4xx", enforce=False
    )
    settings = Settings(policies=(shadow,))
    store = MemoryStore(generation_bucket(resolved_policies(settings)), clock=clock)
    middleware = AdmissionMiddleware(
        login_app, settings=settings, store=store, handle_signals=False
    )
    with TestClient(middleware) as client:
        assert [client.post("/login", headers=RIGHT).status_code for _ in range(4)] == [200] * 4
        assert [client.post("/login", headers=WRONG).status_code for _ in range(4)] == [401] * 4
        assert middleware.gate.shadow_refusals == {"login": 2}  # type: ignore[union-attr]
        # The two it would have refused took nothing after their responses either: a minute
        # later the bucket is full again, and the next failure is one it would admit.
        clock.now += 60.0
        assert client.post("/login", headers=WRONG).status_code == 401
    assert middleware.gate.shadow_refusals == {"login": 2}  # type: ignore[union-attr]


def test_limit_on_the_route_takes_charge_when() -> None:
    async def sign_in(request: Request) -> PlainTextResponse:
        ok = request.headers.get("x-password") == "right"
        return PlainTextResponse("ok" if ok else "no", 200 if ok else 401)

    endpoint = limit("2/minute", charge_when=["401"])(sign_in)
    app = Starlette(routes=[Route("/sign-in", endpoint, methods=["POST"])])
    with TestClient(AdmissionMiddleware(app, settings=Settings(), handle_signals=False)) as c:
        assert [c.post("/sign-in", headers=RIGHT).status_code for _ in range(4)] == [200] * 4
        assert [c.post("/sign-in").status_code for _ in range(3)] == [401, 401, 429]
    with pytest.raises(PolicyError, match="charge_when"):
        limit("2/minute", charge_when=["4x"])


async def test_charges_after_responses_over_several_cluster_slots(redis_cluster_url: str) -> None:
    """In Redis Cluster, charges of clients in distinct slots go one call per slot, each
    bucket charged once."""
    store = RedisStore.from_uri(
        redis_cluster_url, Bucket(60.0, 1), timeout_s=5.0, prefix=f"cw{uuid.uuid4().hex[:8]}"
    )
    try:
        clients = [f"ip:10.0.0.{i}" for i in range(12)]
        charges = [Charge(c, "login::0", MINUTE_3, 1) for c in clients]
        await store.charge([*charges, charges[0]])
        verdict = await store.decide_charges([c._replace(peek=True, cost=0) for c in charges])
        assert [d.remaining for d in verdict.decisions] == [1] + [2] * 11
        keys = [store.redis_key(c) for c in clients]
        assert len({store.client.get_node_from_key(k).port for k in keys}) > 1
    finally:
        await store.close()


async def test_a_request_refused_for_the_drain_after_its_check_is_not_charged() -> None:
    """A request whose store check was still under way when the drain began is refused 503
    `draining` before the application sees it: that refusal is the drain's, not an outcome of
    the application's, so a policy charging 5xx takes nothing for it."""
    policy = Policy(name="errors", match="/x", limits="1/minute", charge_when=["5xx"])
    settings = Settings(policies=(policy,))
    # A store whose check is awaited (Redis's way), so the drain can begin during it.
    store = RedisStore(fakeredis.aioredis.FakeRedis(), Bucket(60.0, 1), timeout_s=5.0)
    app = Starlette(routes=[Route("/x", lambda request: PlainTextResponse("ok"))])
    middleware = AdmissionMiddleware(app, settings=settings, store=store, handle_signals=False)
    charged: list[Any] = []
    gate = middleware.gate
    assert gate is not None and not gate.synchronous
    decide = gate.decide

    async def decide_then_drain(scope: Any) -> Any:
        outcome = await decide(scope)
        middleware.drain_state.phase = Phase.DRAINING
        return outcome

    async def recorded(charges: Any) -> None:
        charged.append(charges)

    gate.decide = decide_then_drain  # type: ignore[method-assign]
    store.charge = recorded  # type: ignore[method-assign]
    transport = httpx.ASGITransport(app=middleware, client=("192.0.2.7", 1))
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        response = await client.get("/x")
    assert response.status_code == 503
    assert response.json()["reason"] == "draining"
    assert charged == []

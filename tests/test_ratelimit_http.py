"""Rate limiting as an HTTP client sees it, through the middleware in process.

The middleware runs with a memory store on a manual clock, so every `Retry-After` and
`RateLimit` value is exact.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from admission import AdmissionMiddleware, Settings
from admission.bucket import Bucket
from admission.stores.memory import MemoryStore
from tests.asgi import CountingApp, ManualClock
from tests.structured_fields import BareItem, parse_sf_list


@pytest.mark.parametrize(
    "bad", ['"default";q=', "default;;q=1", '"default" q=1', '"a",', '"default";Q=1', "1.2345"]
)
def test_structured_field_check_refuses_what_is_not_one(bad: str) -> None:
    with pytest.raises(ValueError):
        parse_sf_list(bad)


def ratelimit_fields(response: httpx.Response) -> tuple[dict[str, BareItem], dict[str, BareItem]]:
    """ratelimit_fields are the parameters of the one `RateLimit-Policy` and `RateLimit` items,
    both named "default", after checking that the fields are valid Structured Fields."""
    policy = parse_sf_list(response.headers["ratelimit-policy"])
    limit = parse_sf_list(response.headers["ratelimit"])
    assert len(policy) == len(limit) == 1
    assert policy[0][0] == limit[0][0] == "default"
    return policy[0][1], limit[0][1]


# --- fixtures -----------------------------------------------------------------------------


class Service:
    """Service is the middleware around a counting app, with a memory store on a manual clock."""

    def __init__(self, rate: str, **settings: Any) -> None:
        self.clock = ManualClock(500.0)
        self.app = CountingApp()
        self.settings = Settings(rate=rate, **settings)
        bucket = Bucket(self.settings.emission_interval_s, self.settings.capacity)
        self.middleware = AdmissionMiddleware(
            self.app,
            settings=self.settings,
            store=MemoryStore(bucket, clock=self.clock),
            handle_signals=False,
        )

    def client(self, peer: str = "192.0.2.10") -> httpx.AsyncClient:
        transport = httpx.ASGITransport(app=self.middleware, client=(peer, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://testserver")


# --- 429 responses ------------------------------------------------------------------------


async def test_over_limit_request_gets_429_with_retry_after_and_ratelimit_fields() -> None:
    service = Service("2/minute")
    async with service.client() as client:
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/")).status_code == 200
        refused = await client.get("/")
    assert refused.status_code == 429
    assert refused.headers["retry-after"] == "30"
    policy, limit = ratelimit_fields(refused)
    assert policy == {"q": 2, "w": 60}
    assert limit == {"r": 0, "t": 60}


@pytest.mark.parametrize(
    ("rate", "burst", "q", "w"),
    [
        ("5/second", 10, 10, 2),  # the case: r=9 with q=5 read as -4 used
        ("5/second", 2, 2, 1),
        ("5/second", None, 5, 1),
        ("6000/minute", 200, 200, 2),
        ("3/second", 10, 10, 4),  # 3.33 s to fill, rounded up
    ],
)
async def test_remaining_never_exceeds_the_quota_a_buckets_quota_is_its_burst(
    rate: str, burst: int | None, q: int, w: int
) -> None:
    service = Service(rate, burst=burst)
    async with service.client() as client:
        used = 0
        for _ in range(q + 2):
            response = await client.get("/")
            policy, limit = ratelimit_fields(response)
            assert policy == {"q": q, "w": w}
            assert isinstance(limit["r"], int) and 0 <= limit["r"] <= q
            if response.status_code == 200:
                used += 1
                assert q - limit["r"] == used  # "used = q - r" counts what was sent
            else:
                assert limit["r"] == 0


async def test_retry_after_is_whole_seconds_rounded_up_and_at_least_one() -> None:
    service = Service("2/minute")
    async with service.client() as client:
        await client.get("/")
        await client.get("/")
        seen = []
        for advance in (0.0, 0.4, 19.1, 10.4):  # 30, 29.6, 10.5, 0.1 seconds left
            service.clock.advance(advance)
            response = await client.get("/")
            assert response.status_code == 429
            seen.append(response.headers["retry-after"])
        assert seen == ["30", "30", "11", "1"]
        service.clock.advance(0.1)
        assert (await client.get("/")).status_code == 200


async def test_waiting_retry_after_is_enough_to_be_admitted() -> None:
    service = Service("6/minute", burst=1)
    async with service.client() as client:
        assert (await client.get("/")).status_code == 200
        refused = await client.get("/")
        service.clock.advance(int(refused.headers["retry-after"]))
        assert (await client.get("/")).status_code == 200


async def test_rejection_body_is_an_rfc9457_problem_document() -> None:
    service = Service("1/minute")
    async with service.client() as client:
        await client.get("/")
        refused = await client.get("/")
    assert refused.headers["content-type"] == "application/problem+json"
    body = json.loads(refused.content)
    assert body["status"] == 429
    assert body["title"] == "Too Many Requests"
    assert isinstance(body["type"], str) and body["type"]
    assert isinstance(body["detail"], str) and body["detail"]
    assert body["reason"] == "rate"
    assert int(refused.headers["content-length"]) == len(refused.content)


async def test_rejected_requests_never_reach_the_application() -> None:
    service = Service("3/minute")
    async with service.client() as client:
        statuses = [(await client.get("/")).status_code for _ in range(10)]
    assert statuses == [200] * 3 + [429] * 7
    assert service.app.calls == 3


# --- admitted responses -------------------------------------------------------------------


async def test_admitted_responses_carry_the_ratelimit_fields_counting_down() -> None:
    service = Service("4/minute")
    async with service.client() as client:
        responses = [await client.get("/") for _ in range(4)]
    fields = [ratelimit_fields(r) for r in responses]
    assert all(r.status_code == 200 and r.headers["x-app"] == "yes" for r in responses)
    assert all(p == {"q": 4, "w": 60} for p, _ in fields)
    assert [limit["r"] for _, limit in fields] == [3, 2, 1, 0]
    assert [limit["t"] for _, limit in fields] == [15, 30, 45, 60]
    assert all("retry-after" not in r.headers for r in responses)


async def test_policy_states_the_bucket_burst_over_its_fill_time() -> None:
    service = Service("10 per 2 seconds", burst=25)
    async with service.client() as client:
        response = await client.get("/")
    policy, limit = ratelimit_fields(response)
    assert policy == {"q": 25, "w": 5}  # 25 tokens at 5 a second: the configured rate
    assert limit["r"] == 24
    assert limit["t"] == 1  # 0.2 s until full, rounded up


async def test_each_client_address_has_its_own_bucket() -> None:
    service = Service("1/minute")
    async with service.client("192.0.2.1") as alice, service.client("192.0.2.2") as bob:
        assert (await alice.get("/")).status_code == 200
        assert (await alice.get("/")).status_code == 429
        assert (await bob.get("/")).status_code == 200


async def test_global_key_limits_every_client_together() -> None:
    service = Service("1/minute", key="global")
    async with service.client("192.0.2.1") as alice, service.client("192.0.2.2") as bob:
        assert (await alice.get("/")).status_code == 200
        assert (await bob.get("/")).status_code == 429


# --- exempt paths and the middleware's own endpoints --------------------------------------


async def test_exempt_paths_pass_untouched_and_take_no_tokens() -> None:
    service = Service("1/minute", exempt="/static,/docs")
    async with service.client() as client:
        for _ in range(5):
            response = await client.get("/static/app.js")
            assert response.status_code == 200
            assert "ratelimit" not in response.headers
            assert "ratelimit-policy" not in response.headers
        assert (await client.get("/")).status_code == 200
        assert (await client.get("/")).status_code == 429
        assert (await client.get("/docs")).status_code == 200
    assert service.app.paths == ["/static/app.js"] * 5 + ["/", "/docs"]


async def test_own_endpoints_answer_even_when_the_client_is_over_its_limit() -> None:
    service = Service("1/minute")
    async with service.client() as client:
        await client.get("/")
        assert (await client.get("/")).status_code == 429
        health = await client.get("/healthz")
        ready = await client.get("/readyz")
    assert health.status_code == 200
    assert health.json()["status"] == "ok"
    assert ready.status_code == 200
    assert ready.json()["status"] == "ready"
    assert ready.json()["in_flight"] == 0
    assert service.app.calls == 1


async def test_readyz_counts_requests_in_flight() -> None:
    service = Service("10/minute")
    async with service.client() as client:
        held = asyncio.create_task(client.get("/hold"))
        deadline = asyncio.get_running_loop().time() + 5
        while service.app.paths != ["/hold"]:
            assert asyncio.get_running_loop().time() < deadline, "the held request never arrived"
            await asyncio.sleep(0.001)
        during = (await client.get("/readyz")).json()
        service.app.release.set()
        assert (await held).status_code == 200
        after = (await client.get("/readyz")).json()
    assert during["in_flight"] == 1
    assert after["in_flight"] == 0


def metric_samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            samples[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return samples


async def test_metrics_count_rate_rejections_and_admissions() -> None:
    service = Service("2/minute")
    async with service.client() as client:
        for _ in range(7):
            await client.get("/")
        response = await client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    samples = metric_samples(response.text)
    assert samples[("admission_rejected_total", (("policy", "default"), ("reason", "rate")))] == 5
    assert samples[("admission_rejected_total", (("policy", ""), ("reason", "window")))] == 0
    assert samples[("admission_admitted_total", ())] == 2
    assert samples[("admission_in_flight", ())] == 0


# --- ADMISSION_HEADERS: which responses carry the fields -----------------------------------


@pytest.mark.parametrize(
    ("mode", "on_admitted", "on_refused"),
    [("all", True, True), ("refused", False, True), ("off", False, False)],
)
async def test_admission_headers_chooses_which_responses_carry_the_ratelimit_fields(
    mode: str, on_admitted: bool, on_refused: bool
) -> None:
    service = Service("1/minute", headers=mode)
    async with service.client() as client:
        admitted = await client.get("/")
        refused = await client.get("/")
    assert (admitted.status_code, refused.status_code) == (200, 429)
    for response, carries in ((admitted, on_admitted), (refused, on_refused)):
        present = {"ratelimit", "ratelimit-policy"} & set(response.headers)
        assert present == ({"ratelimit", "ratelimit-policy"} if carries else set()), response
    # Retry-After is the refusal's own answer, whatever the mode.
    assert refused.headers["retry-after"] == "60"
    assert service.app.calls == 1

"""`charge_when` under a real `admission serve` process: the login example of docs/policies.md,
its TOML block as written, in front of tests/apps/login.py, with the memory store and with a
real Redis."""

from __future__ import annotations

import re
import uuid
from pathlib import Path

import httpx
import pytest

from tests.support import REPO, admission_serve, run_server

pytestmark = pytest.mark.process


def docs_login_policy() -> str:
    """docs_login_policy is the TOML block of docs/policies.md's "Count by outcome" section."""
    page = (REPO / "docs" / "policies.md").read_text()
    section = page.split("## Count by outcome", 1)[1].split("\n## ", 1)[0]
    found = re.search(r"```toml\n(.*?)```", section, re.DOTALL)
    assert found is not None, "the section has no TOML block"
    return found.group(1)


@pytest.mark.parametrize("storage", ["memory", "redis"])
def test_the_login_example_under_admission_serve(
    storage: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Six successful logins all pass; then failed ones get 401, 401, 401, 429, 429, 429, and
    the handler never ran for the refused ones."""
    policies = tmp_path / "login.toml"
    policies.write_text(docs_login_policy())
    env = {"ADMISSION_POLICIES": str(policies)}
    if storage == "redis":
        env["ADMISSION_STORAGE"] = request.getfixturevalue("redis_url")
        env["ADMISSION_KEY_PREFIX"] = f"admission-test-{uuid.uuid4().hex}"
    with (
        run_server(admission_serve("tests.apps.login:app"), env) as server,
        httpx.Client(base_url=server.url, timeout=10) as client,
    ):
        ok = [client.post("/login", headers={"X-Password": "right"}) for _ in range(6)]
        failed = [client.post("/login", headers={"X-Password": "wrong"}) for _ in range(6)]
        ran = client.get("/ran").json()
    assert [r.status_code for r in ok] == [200] * 6
    assert [r.status_code for r in failed] == [401, 401, 401, 429, 429, 429]
    assert [r.json().get("policy") for r in failed[3:]] == ["login"] * 3
    assert ran == {"login": 9}
    assert {r.headers["ratelimit"] for r in ok} == {'"login";r=2;t=20'}
    if storage == "redis":
        # The bucket lives in Redis, under the key prefix: one client, one policy.
        import redis

        client = redis.Redis.from_url(env["ADMISSION_STORAGE"])
        keys = client.keys(env["ADMISSION_KEY_PREFIX"] + ":*")
        assert len(keys) == 1
        client.delete(*keys)
        client.close()


def test_a_bad_charge_when_stops_admission_serve_with_one_line(tmp_path: Path) -> None:
    import subprocess
    import sys

    policies = tmp_path / "login.toml"
    policies.write_text(docs_login_policy().replace('["4xx"]', '["4xx", "6xx"]'))
    result = subprocess.run(
        [sys.executable, "-m", "admission", "serve", "tests.apps.login:app", "--port", "1"],
        env={"ADMISSION_POLICIES": str(policies), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert f"{policies}: policy 'login': charge_when: '6xx' is not a status" in lines[0]

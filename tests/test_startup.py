"""Start-up under a plain server: bad settings stop it; import-time registrations are kept."""

from __future__ import annotations

import asyncio
import signal
import subprocess
from pathlib import Path

import pytest

from admission import AdmissionMiddleware, ConfigError, Lifetime, service_lifetime
from admission.bench.process import free_port, served
from admission.lifecycle.context import adopt_service_lifetime
from tests.support import REPO, plain_uvicorn, run_server


def test_bad_variable_stops_plain_uvicorn_with_the_one_line(tmp_path: Path) -> None:
    # add_middleware defers building the middleware to uvicorn's first call (the lifespan),
    # where uvicorn's default lifespan mode would otherwise swallow the error and serve 500s.
    argv = [
        a.replace("{port}", str(free_port())) for a in plain_uvicorn("tests.apps.import_time:app")
    ]
    env = {"ADMISSION_WINDOW": "zero", "IMPORT_TIME_MARK": str(tmp_path / "mark"), "PATH": ""}
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode != 0
    assert "ADMISSION_WINDOW='zero' is invalid" in done.stderr
    assert "Traceback" not in done.stderr


def test_constructing_outside_a_server_raises_at_once(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ADMISSION_RATE", "often")

    async def app(scope: object, receive: object, send: object) -> None:
        pass

    with pytest.raises(ConfigError, match="ADMISSION_RATE"):
        AdmissionMiddleware(app)  # type: ignore[arg-type]


def test_cleanup_registered_at_import_runs_at_the_drain(tmp_path: Path) -> None:
    mark = tmp_path / "mark"
    with run_server(
        plain_uvicorn("tests.apps.import_time:app"), {"IMPORT_TIME_MARK": str(mark)}
    ) as server:
        server.process.send_signal(signal.SIGTERM)
        server.process.wait(timeout=20)
        assert mark.read_text() == "cleanup ran\n", server.log()


def test_the_middleware_adopts_the_lifetime_handed_out_before_it() -> None:
    # Start from a clean slate: earlier tests in this process built middlewares of their own.
    asyncio.run(service_lifetime().close())
    early = service_lifetime()
    assert adopt_service_lifetime(5.0) is early
    # A second middleware in the same process gets a lifetime of its own.
    assert adopt_service_lifetime(5.0) is not early


def test_a_closed_lifetime_is_never_handed_out_again() -> None:
    first = service_lifetime()
    asyncio.run(first.close())
    fresh = service_lifetime()
    assert isinstance(fresh, Lifetime) and fresh is not first and not fresh.closed


@pytest.mark.process
@pytest.mark.parametrize("lifespan", [[], ["--lifespan", "on"]])
def test_bad_variables_under_plain_uvicorn_exit_3_with_one_prefixed_line_each(
    lifespan: list[str],
) -> None:
    # What docs/deployment.md says: Starlette builds the middleware in the lifespan, whose
    # start-up admission fails; uvicorn then exits 3, under --lifespan auto (the default) too.
    argv = [
        a.replace("{port}", str(free_port()))
        for a in plain_uvicorn("tests.apps.counted:app", *lifespan)
    ]
    env = {"ADMISSION_WINDOW": "zero", "ADMISSION_RATE": "0/second", "PATH": ""}
    done = subprocess.run(argv, env=env, cwd=REPO, capture_output=True, text=True, timeout=30)
    assert done.returncode == 3, done.stderr
    lines = [line for line in done.stderr.splitlines() if "is invalid" in line]
    assert len(lines) == 2, done.stderr
    assert all("admission: ADMISSION_" in line for line in lines)
    assert "Traceback" not in done.stderr


@pytest.mark.process
def test_bad_variables_with_lifespan_off_answer_500_without_the_configuration() -> None:
    import httpx

    argv = plain_uvicorn("tests.apps.counted:app", "--lifespan", "off")
    env = {"ADMISSION_WINDOW": "zero", "PATH": ""}
    # Any answer will do: without a lifespan the middleware is built at the first request.
    with served(
        argv, env, cwd=REPO, ready_path="/", ready=lambda status: True, start_timeout_s=20
    ) as server:
        response = httpx.get(server.url + "/", timeout=2)
        server.process.terminate()
        server.process.wait(timeout=20)
        output = server.log()
    assert response.status_code == 500
    assert response.json()["reason"] == "configuration"
    assert "ADMISSION_WINDOW" not in response.text
    assert "admission: ADMISSION_WINDOW='zero' is invalid" in output

"""`admission serve` and uvicorn's flags: passed through, refused naming the ADMISSION_*
variable that owns them, and usage errors answered with the serve usage."""

from __future__ import annotations

import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import httpx
import pytest

from admission.bench.process import free_port
from admission.cli import build_parser, main
from admission.config.policies import Policy
from admission.config.settings import Settings
from admission.middleware import AdmissionMiddleware
from admission.server import flags
from admission.server.serve import server_config
from admission.types import Receive, Scope, Send
from tests.support import REPO, admission_serve, run_server, wait_until
from tests.test_cli import clean_env


def test_log_level_and_root_path_pass_through_to_a_serving_server() -> None:
    argv = admission_serve("tests.apps.rooted:app", "--log-level", "warning", "--root-path", "/api")
    with run_server(argv) as server:
        seen = httpx.get(server.url + "/items", timeout=5).json()
        health = httpx.get(server.url + "/healthz", timeout=5)
        log = server.log()
    assert seen == {"root_path": "/api", "path": "/api/items"}
    # Admission's own endpoints sit below the root path too, as the app's routes do.
    assert health.status_code == 200
    # At warning, neither uvicorn's nor admission's start-up lines (INFO) are printed.
    assert "Uvicorn running on" not in log
    assert "admission" not in log


def test_an_owned_flag_fails_with_one_line_naming_its_variable() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "admission", "serve", "--timeout-keep-alive", "65"],
        env=clean_env(),
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode != 0
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1, done.stderr
    assert "ADMISSION_IDLE_TIMEOUT=65" in lines[0]
    assert "--timeout-keep-alive" in lines[0]


@pytest.mark.parametrize(("flag", "takes_value", "variable"), flags.OWNED)
def test_every_owned_flag_names_its_variable(
    flag: str, takes_value: bool, variable: str, capsys: pytest.CaptureFixture[str]
) -> None:
    argv = ["serve", flag, "1"] if takes_value else ["serve", flag]
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and variable in err[0] and flag in err[0]


@pytest.mark.parametrize(
    "argv",
    [["serve", "--no-such-flag"], ["serve", "--log-level", "loud"], ["serve", "--http", "h11"]],
)
def test_a_usage_error_prints_the_serve_usage(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exc:
        main(argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: admission serve"), err


def test_passed_flags_reach_uvicorns_config() -> None:
    args = build_parser().parse_args(
        [
            "serve",
            "--root-path",
            "/api",
            "--log-level",
            "debug",
            "--ssl-certfile",
            "cert.pem",
            "--ssl-keyfile",
            "key.pem",
            "--ssl-cert-reqs",
            "2",
            "--reload",
            "--reload-dir",
            str(REPO / "admission"),
            "--reload-dir",
            str(REPO / "tests"),
            "--fd",
            "3",
        ]
    )
    config = server_config("x:app", "127.0.0.1", 8000, 1, Settings(), True, flags.passed(args))
    assert config.root_path == "/api"
    assert config.log_level == "debug"
    assert (config.ssl_certfile, config.ssl_keyfile, config.ssl_cert_reqs) == (
        "cert.pem",
        "key.pem",
        2,
    )
    assert config.reload and config.fd == 3
    assert {Path(d).name for d in config.reload_dirs} == {"admission", "tests"}
    # Admission's own choices stand.
    assert config.proxy_headers is False


def test_no_proxy_headers_is_accepted_as_what_admission_serve_already_does() -> None:
    args = build_parser().parse_args(["serve", "--no-proxy-headers"])
    assert flags.passed(args) == {}


def test_a_unix_socket_server_serves() -> None:
    with tempfile.TemporaryDirectory(prefix="admission-uds-") as tmp:
        path = str(Path(tmp) / "admission.sock")
        process = subprocess.Popen(
            [sys.executable, "-m", "admission", "serve", "--uds", path, "--log-level", "warning"],
            env=clean_env(),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            transport = httpx.HTTPTransport(uds=path)
            with httpx.Client(transport=transport, base_url="http://admission") as client:

                def answers() -> bool:
                    assert process.poll() is None, process.stderr and process.stderr.read()
                    try:
                        return client.get("/healthz", timeout=1).status_code == 200
                    except httpx.TransportError:
                        return False

                wait_until(answers, 20, "the server to answer on its unix socket")
                assert client.get("/").status_code == 200
        finally:
            process.terminate()
            assert process.wait(timeout=30) == 0


async def test_endpoints_exempt_paths_and_policies_are_matched_below_the_root_path() -> None:
    reached: list[str] = []

    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        reached.append(scope["path"])
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    settings = Settings(rate="1/minute", exempt="/static")
    middleware = AdmissionMiddleware(app, settings=settings, handle_signals=False)
    # As uvicorn --root-path /api hands a request for /healthz on: the root path, then the path.
    transport = httpx.ASGITransport(app=middleware, root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        health = await client.get("/api/healthz")
        statics = [(await client.get("/api/static/a.css")).status_code for _ in range(3)]
        limited = [(await client.get("/api/items")).status_code for _ in range(2)]
    assert health.status_code == 200 and reached[0] == "/api/static/a.css"
    assert statics == [200, 200, 200]
    assert limited == [200, 429]


async def test_route_policies_are_matched_below_the_root_path() -> None:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"ok"})

    login = Policy(name="login", match="POST /login", limits="1/minute")
    middleware = AdmissionMiddleware(app, settings=Settings(policies=[login]), handle_signals=False)
    transport = httpx.ASGITransport(app=middleware, root_path="/api")
    async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
        logins = [(await client.post("/api/login")).status_code for _ in range(2)]
        others = [(await client.post("/api/other")).status_code for _ in range(2)]
    assert logins == [200, 429]
    assert others == [200, 200]


def test_the_ssl_flags_serve_https() -> None:
    openssl = shutil.which("openssl")
    assert openssl, "openssl is needed to make the test's certificate"
    with tempfile.TemporaryDirectory(prefix="admission-tls-") as tmp:
        key, cert = str(Path(tmp) / "key.pem"), str(Path(tmp) / "cert.pem")
        subprocess.run(
            [
                *(openssl, "req", "-x509", "-newkey", "rsa:2048", "-nodes"),
                *("-keyout", key, "-out", cert, "-days", "1", "-subj", "/CN=127.0.0.1"),
            ],
            check=True,
            capture_output=True,
            timeout=60,
        )
        port = free_port()
        process = subprocess.Popen(
            [
                *(sys.executable, "-m", "admission", "serve", "--port", str(port)),
                *("--ssl-certfile", cert, "--ssl-keyfile", key, "--log-level", "warning"),
            ],
            env=clean_env(),
            cwd=REPO,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        try:
            with httpx.Client(verify=False, timeout=1) as client:

                def answers() -> bool:
                    assert process.poll() is None, process.stderr and process.stderr.read()
                    try:
                        return client.get(f"https://127.0.0.1:{port}/healthz").status_code == 200
                    except httpx.TransportError:
                        return False

                wait_until(answers, 20, "the server to answer over TLS")
                assert client.get(f"https://127.0.0.1:{port}/").status_code == 200
        finally:
            process.terminate()
            assert process.wait(timeout=30) == 0

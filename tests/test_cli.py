"""The `admission config` and `admission serve` commands on good and bad configuration."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from admission.bench.process import free_port
from admission.cli import main
from admission.config.settings import ACCEPTED
from tests.settings_values import GARBAGE, NEEDS
from tests.support import REPO

# One bad value per variable (test_settings.py tries several each).
FIRST_BAD = {
    "rate": "fast",
    "burst": "0",
    "key": "cookie",
    "trusted_proxies": "not-an-ip",
    "storage": "memcached://localhost:11211",
    "storage_timeout": "0",
    "on_storage_error": "ignore",
    "window": "0",
    "window_min": "0",
    "window_max": "0",
    "window_status": "404",
    "queue_timeout": "-1",
    "max_waiters": "-1",
    "queue_order": "random",
    "priority": "cookie:x",
    "shed_at": "sheddable:1.5",
    "websocket_window": "0",
    "client_window": "0",
    "read_timeout": "0",
    "buffer_body": "0",
    "buffer_body_total": "0",
    "ws_message_rate": "fast",
    "forwarded_header": "x-real-ip",
    "write_timeout": "0",
    "idle_timeout": "0",
    "request_timeout": "0",
    "max_header_bytes": "1000",
    "drain_delay": "-1",
    "drain_timeout": "0",
    "cleanup_timeout": "0",
    "exempt": "static",
    "max_keys": "0",
    "key_prefix": "has space",
    "key_secret": "short",
    "health_path": "/",
    "ready_path": "readyz",
    "metrics_path": "/a b",
    "metrics": "opentelemetry",
    "headers": "some",
    "policies": "/nonexistent/policies.toml",
    "on_refuse": "app",
}


def clean_env(**variables: str) -> dict[str, str]:
    """clean_env is this process's environment without ADMISSION_*, plus `variables`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADMISSION_")}
    env.update(variables)
    return env


def run_cli(
    *args: str, env: dict[str, str], timeout_s: float = 30
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "admission", *args],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=timeout_s,
    )


def test_every_variable_has_a_bad_value_listed() -> None:
    assert set(FIRST_BAD) == set(ACCEPTED)


@pytest.mark.parametrize("field", sorted(FIRST_BAD))
def test_config_exits_2_with_one_line_naming_the_bad_variable(
    field: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith("ADMISSION_"):
            monkeypatch.delenv(name)
    if field == "burst":
        monkeypatch.setenv("ADMISSION_RATE", "10/second")
    variable = "ADMISSION_" + field.upper()
    monkeypatch.setenv(variable, FIRST_BAD[field])
    with pytest.raises(SystemExit) as info:
        main(["config"])
    assert info.value.code == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert len(err.splitlines()) == 1
    assert variable + "=" in err


def test_config_prints_every_variable_with_its_effective_value(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith("ADMISSION_"):
            monkeypatch.delenv(name)
    monkeypatch.setenv("ADMISSION_RATE", "100/second")
    monkeypatch.setenv("ADMISSION_WINDOW", "64")
    assert main(["config"]) == 0
    lines = {}
    for line in capsys.readouterr().out.splitlines():
        name, _, value = line.partition(" ")
        lines[name] = value.strip()
    assert set(lines) == {"ADMISSION_" + f.upper() for f in ACCEPTED}
    assert lines["ADMISSION_RATE"] == "100/second"
    assert lines["ADMISSION_WINDOW"] == "64"
    assert lines["ADMISSION_STORAGE"] == "memory://"
    assert lines["ADMISSION_READ_TIMEOUT"] == "(unset)"
    assert lines["ADMISSION_TRUSTED_PROXIES"] == ""


def test_config_process_redacts_the_redis_password() -> None:
    env = clean_env(
        ADMISSION_RATE="10/second", ADMISSION_STORAGE="redis://app:hunter2@db.internal:6379/0"
    )
    result = run_cli("config", env=env)
    assert result.returncode == 0, result.stderr
    assert "hunter2" not in result.stdout + result.stderr
    assert "redis://app:***@db.internal:6379/0" in result.stdout


def test_config_process_exits_2_with_one_line_and_no_password_on_a_bad_uri() -> None:
    env = clean_env(ADMISSION_STORAGE="redis://app:hunter2@db.internal:port/0")
    result = run_cli("config", env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1
    assert "ADMISSION_STORAGE" in result.stderr
    assert "hunter2" not in result.stderr


def test_config_process_refuses_an_unknown_admission_variable() -> None:
    result = run_cli("config", env=clean_env(ADMISSION_RATELIMIT="10/second"))
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1
    assert "ADMISSION_RATELIMIT" in result.stderr


@pytest.mark.process
@pytest.mark.parametrize(
    ("variable", "value"),
    [
        ("ADMISSION_RATE", "100/fortnight"),
        ("ADMISSION_STORAGE", "redis+sentinel://127.0.0.1:26379/mymaster/notadb"),
        ("ADMISSION_WINDOW", "many"),
    ],
)
def test_serve_with_a_bad_value_exits_2_with_one_line_and_no_traceback(
    variable: str, value: str
) -> None:
    port = free_port()
    result = run_cli(
        "serve", "--host", "127.0.0.1", "--port", str(port), env=clean_env(**{variable: value})
    )
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert result.stderr.startswith(f"admission: {variable}=")
    assert "Traceback" not in result.stdout + result.stderr
    assert "Uvicorn running" not in result.stdout + result.stderr


@pytest.mark.process
def test_serve_with_an_app_that_does_not_load_exits_2_with_one_line() -> None:
    result = run_cli(
        "serve", "no_such_module_here:app", "--port", str(free_port()), env=clean_env()
    )
    assert result.returncode == 2
    assert len(result.stderr.splitlines()) == 1, result.stderr
    assert "no_such_module_here:app" in result.stderr


def test_config_reports_every_bad_variable_at_once_one_line_each() -> None:
    env = clean_env(ADMISSION_WINDOW="0", ADMISSION_DRAIN_DELAY="1e308", ADMISSION_WINDOE="8")
    result = run_cli("config", env=env)
    assert result.returncode == 2
    assert result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 3, result.stderr
    assert all(line.startswith("admission: ADMISSION_") for line in lines)
    assert "did you mean ADMISSION_WINDOW?" in result.stderr


@pytest.mark.parametrize("field", sorted(FIRST_BAD))
def test_config_over_garbage_values_exits_0_or_2_with_one_line_each_and_no_traceback(
    field: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    for name in list(os.environ):
        if name.startswith("ADMISSION_"):
            monkeypatch.delenv(name)
    variable = "ADMISSION_" + field.upper()
    for name, value in NEEDS.get(field, {}).items():
        monkeypatch.setenv(name, value)
    for raw in [*GARBAGE, " "]:
        if "\x00" in raw:
            continue  # an environment can't hold it
        monkeypatch.setenv(variable, raw)
        try:
            code = main(["config"])
        except SystemExit as exc:
            code = exc.code  # type: ignore[assignment]
        out, err = capsys.readouterr()
        if code == 0:
            assert err == "" and len(out.splitlines()) == len(FIRST_BAD), raw
        else:
            assert code == 2 and out == "", raw
            assert err.startswith(f"admission: {variable}=") and len(err.splitlines()) == 1, err
        assert "Traceback" not in out + err and "s3cret" not in out + err


def test_config_process_with_every_variable_bad_prints_one_line_for_each() -> None:
    env = clean_env(**{"ADMISSION_" + f.upper(): "1" * 310 for f in FIRST_BAD})
    result = run_cli("config", env=env)
    assert result.returncode == 2
    lines = result.stderr.splitlines()
    assert len(lines) == len(FIRST_BAD), result.stderr
    assert {line.split("=", 1)[0] for line in lines} == {
        "admission: ADMISSION_" + f.upper() for f in FIRST_BAD
    }


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    from importlib.metadata import version

    with pytest.raises(SystemExit) as info:
        main(["--version"])
    assert info.value.code == 0
    assert capsys.readouterr().out.strip() == f"admission {version('admission')}"


@pytest.mark.parametrize("command", ["serve", "config", "bench"])
def test_every_option_says_what_it_does_and_its_default(command: str) -> None:
    import argparse

    from admission.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    commands = sub.choices
    assert commands[command].description or command == "bench"
    for action in commands[command]._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, (command, action.dest)
        if not action.option_strings or (action.default is not None and action.nargs != 0):
            assert "default" in action.help.lower(), (command, action.dest, action.help)


def test_overload_benchmark_help_is_complete() -> None:
    done = subprocess.run(
        [sys.executable, "benchmarks/overload.py", "--help"],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    description = done.stdout.split("\n\n")[1]
    assert description.rstrip().endswith("processes."), description
    for option in ("--duration", "--sweep-duration", "--unloaded-duration", "--factor"):
        block = done.stdout.split(option, 2)[2].split("\n  -")[0]
        assert "default" in block, (option, block)

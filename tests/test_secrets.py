"""Secrets: no credential in any storage URI form reaches any output a setting can surface."""

from __future__ import annotations

import logging
import os
import subprocess
import sys

import pytest

from admission.config.settings import Settings
from admission.config.storage import redact_uri
from admission.errors import ConfigError
from tests.support import REPO

SECRET = "hunter2Zq9"

# Every form a credential takes in a storage URI; accepted ones and refused ones alike.
FORMS = [
    f"redis://user:{SECRET}@db:6379/0",
    f"redis://:{SECRET}@db:6379/0",
    f"rediss://:{SECRET}@db:6380/1",
    f"redis://{SECRET}@db:6379/0",  # a password given as a bare user name
    f"redis://db:6379/0?password={SECRET}",
    f"redis://db:6379/0?socket_timeout=1&password={SECRET}",
    f"redis://db:6379/0?PASSWORD={SECRET}",
    f"redis://user:{SECRET}@db:6379/0?password={SECRET}",
    f"redis+unix://:{SECRET}@/run/redis.sock?db=0",
    f"redis+unix:///run/redis.sock?db=0&password={SECRET}",
    f"redis+sentinel://:{SECRET}@h1:26379,h2:26379/mymaster",
    f"redis+sentinel://h1:26379,h2:26379/mymaster?sentinel_password={SECRET}",
    f"redis+cluster://:{SECRET}@h1:7000,h2:7001",
    f"redis+cluster://:{SECRET}@h1:7000,:{SECRET}@h2:7001",
    f"redis://:{SECRET[:2]}%40{SECRET[2:]}@db:6379/0",  # percent-encoded '@'
    # Malformed: an unencoded '#', '/', '?' or '@' in the password.
    f"redis://:{SECRET[:2]}#{SECRET[2:]}@db:6379/0",
    f"redis://:{SECRET[:2]}/{SECRET[2:]}@db:6379/0",
    f"redis://:{SECRET[:2]}?{SECRET[2:]}@db:6379/0",
    f"redis://:{SECRET[:2]}@{SECRET[2:]}@db:6379/0",
    f"redis://user:{SECRET}@db:port/0",
    f"reddis://user:{SECRET}@db:6379/0",
    f"redis://:{SECRET}@db:6379/0?socket_timeout=soon",
    f"redis:{SECRET}@db:6379",
    f"{SECRET}@db:6379",
]
# The pieces a redaction must hide: the whole secret and its halves around a separator.
PIECES = (SECRET, SECRET[:2] + "#", "#" + SECRET[2:], "/" + SECRET[2:], "?" + SECRET[2:])


def leaks(text: str) -> bool:
    return SECRET in text or SECRET[2:] in text


def outcome(uri: str) -> str:
    """outcome is everything a Settings with `uri` can show: its repr, str, description,
    summary; or the refusal's message."""
    try:
        settings = Settings(storage=uri)
    except ConfigError as exc:
        return f"{exc}\n{exc.value}\n{exc.problems!r}"
    return "\n".join([repr(settings), str(settings), repr(settings.describe()), settings.summary()])


@pytest.mark.parametrize("uri", FORMS)
def test_redaction_hides_every_credential_form(uri: str) -> None:
    shown = redact_uri(uri)
    assert not leaks(shown), shown
    assert "***" in shown


@pytest.mark.parametrize("uri", FORMS)
def test_no_credential_in_repr_description_summary_or_error(uri: str) -> None:
    assert not leaks(outcome(uri)), outcome(uri)


@pytest.mark.parametrize("uri", FORMS)
def test_no_credential_when_the_uri_is_given_to_the_wrong_variable(uri: str) -> None:
    for env in ({"ADMISSION_KEY": uri}, {"ADMISSION_STORAG": uri}, {"ADMISSION_EXEMPT": uri}):
        with pytest.raises(ConfigError) as info:
            Settings.from_env(env)
        assert not leaks(str(info.value)), str(info.value)


def test_redaction_keeps_what_is_not_secret() -> None:
    assert redact_uri("redis://user:pw@db:6379/0?socket_timeout=1&password=pw") == (
        "redis://user:***@db:6379/0?socket_timeout=1&password=***"
    )
    assert redact_uri("redis://db:6379/0") == "redis://db:6379/0"
    assert redact_uri("memory://") == "memory://"


@pytest.mark.parametrize("uri", FORMS)
def test_admission_config_never_prints_a_credential(uri: str) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("ADMISSION_")}
    env["ADMISSION_STORAGE"] = uri
    done = subprocess.run(
        [sys.executable, "-m", "admission", "config"],
        env=env,
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert done.returncode in (0, 2), done.stderr
    assert not leaks(done.stdout + done.stderr), done.stdout + done.stderr
    assert "Traceback" not in done.stderr


def test_a_password_with_an_unencoded_separator_is_refused_not_misread() -> None:
    # Read as written, each of these would connect to another host, or with half a password.
    for uri in FORMS[15:18]:
        with pytest.raises(ConfigError, match="percent-encoded"):
            Settings(storage=uri)
    # An unencoded '@' is read right (the userinfo ends at the last one), as redis-py does.
    from redis.asyncio.connection import parse_url

    assert parse_url(FORMS[18])["password"] == SECRET[:2] + "@" + SECRET[2:]
    assert Settings(storage=FORMS[18]).storage == FORMS[18]


def test_log_records_of_settings_hold_no_credential(caplog: pytest.LogCaptureFixture) -> None:
    settings = Settings(storage=FORMS[7])
    with caplog.at_level(logging.INFO):
        logging.getLogger("admission.test").info("settings %s / %r", settings, settings)
    assert not leaks(caplog.text)


@pytest.mark.parametrize(
    "url", [f"http://user:{SECRET}@127.0.0.1:8000", f"http://127.0.0.1:8000/?token={SECRET}"]
)
def test_admission_bench_never_prints_a_credential_of_its_target(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    import argparse

    from admission.bench import command

    parser = argparse.ArgumentParser()
    command.add_arguments(parser)
    assert command.run(parser.parse_args([url])) == 2
    err = capsys.readouterr().err
    assert "admission bench: " in err and not leaks(err), err

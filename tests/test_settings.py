"""Settings: every `ADMISSION_*` variable parses its good values and refuses its bad ones."""

from __future__ import annotations

import dataclasses
import math

import pytest

from admission.errors import ConfigError
from admission.settings import ACCEPTED, Settings, redact_uri
from admission.stores import open_store

# Bad values per field, as they arrive from the environment. Every field must have some, so a
# new setting without refusal tests fails `test_every_field_has_bad_values_listed`.
BAD: dict[str, list[str]] = {
    "rate": [
        "fast",
        "100",
        "0/second",
        "-5/second",
        "1.5/second",
        "100/fortnight",
        "10 per 0 seconds",
        "1/second;1000/minute",
        "1/second,2/minute",
    ],
    "burst": ["0", "-1", "ten", "1.5", "1e3"],
    "key": ["cookie", "header:", "header:X Client", "header:X-Client:2", "ipv6", "header"],
    "trusted_proxies": ["not-an-ip", "10.0.0.0/33", "10.0.0.1/8", "10.0.0.0/8,garbage", "::1/129"],
    "storage": [
        "memcached://localhost:11211",
        "localhost:6379",
        "memory://elsewhere",
        "redis://localhost:notaport",
        "redis://localhost:99999",
        "redis://localhost:6379/db1",
        "redis+unix://",
        "redis+cluster://hostonly",
        "redis+sentinel://127.0.0.1:26379",
        "redis+sentinel://127.0.0.1:26379/mymaster/notadb",
        "redis://localhost:6379/0?socket_timeout=soon",
        "redis://localhost:6379/0?no_such_option=1",
        "rediss://localhost:6380/0?ssl_cert_reqs=bogus",
    ],
    "storage_timeout": ["0", "-0.05", "nan", "inf", "soon"],
    "on_storage_error": ["ignore", "LOCAL", "fail-open", "1"],
    "window": ["0", "-3", "1.5", "many"],
    "window_status": ["404", "500", "200", "abc", "429.0"],
    "queue_timeout": ["-0.1", "nan", "inf", "later"],
    "max_waiters": ["-1", "2.5", "x"],
    "websocket_window": ["0", "-1", "x"],
    "read_timeout": ["0", "-1", "inf", "x"],
    "write_timeout": ["0", "-1", "nan", "x"],
    "idle_timeout": ["0", "-5", "inf", "x"],
    "request_timeout": ["0", "-30", "nan", "x"],
    "drain_delay": ["-1", "inf", "nan", "x"],
    "drain_timeout": ["0", "-1", "inf", "x"],
    "cleanup_timeout": ["0", "-1", "nan", "x"],
    "exempt": ["static", "/ok,bad", "healthz"],
    "max_keys": ["0", "-1", "x", "1.5"],
    "key_prefix": ["has space", "pre{fix", "fix}", "a\tb"],
}

# Good values per field, the design's examples first.
GOOD: dict[str, list[tuple[str, object]]] = {
    "rate": [
        ("100/second", "100/second"),
        ("6000/minute", "6000/minute"),
        ("10 per 2 seconds", "10 per 2 seconds"),
    ],
    "burst": [("200", 200), ("1", 1)],
    "key": [
        ("header:X-API-Key", "header:X-API-Key"),
        ("ip", "ip"),
        ("global", "global"),
        ("header: X-Client", "header:X-Client"),
    ],
    "trusted_proxies": [
        ("10.0.0.0/8", ("10.0.0.0/8",)),
        ("10.0.0.0/8, ::1", ("10.0.0.0/8", "::1")),
        ("127.0.0.1", ("127.0.0.1",)),
    ],
    "storage": [
        ("redis://localhost:6379/0", "redis://localhost:6379/0"),
        ("memory://", "memory://"),
        ("rediss://:secret@localhost:6380/2", "rediss://:secret@localhost:6380/2"),
        ("redis+unix:///run/redis.sock", "redis+unix:///run/redis.sock"),
        (
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
            "redis+cluster://127.0.0.1:7000,127.0.0.1:7001",
        ),
        (
            "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/1",
            "redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/mymaster/1",
        ),
        ("redis://localhost:6379/0?socket_keepalive=true", None),
    ],
    "storage_timeout": [("0.05", 0.05), ("2", 2.0)],
    "on_storage_error": [("local", "local"), ("allow", "allow"), ("deny", "deny")],
    "window": [("64", 64), ("1", 1)],
    "window_status": [("429", 429), ("503", 503)],
    "queue_timeout": [("0.1", 0.1), ("0", 0.0)],
    "max_waiters": [("0", 0), ("10", 10)],
    "websocket_window": [("8", 8)],
    "read_timeout": [("5", 5.0)],
    "write_timeout": [("3", 3.0)],
    "idle_timeout": [("60", 60.0)],
    "request_timeout": [("30", 30.0), ("0.25", 0.25)],
    "drain_delay": [("5", 5.0), ("0", 0.0)],
    "drain_timeout": [("30", 30.0)],
    "cleanup_timeout": [("5", 5.0)],
    "exempt": [
        ("/healthz,/readyz,/metrics", ("/healthz", "/readyz", "/metrics")),
        ("/static", ("/static",)),
    ],
    "max_keys": [("1000", 1000)],
    "key_prefix": [("admission", "admission"), ("svc:prod", "svc:prod")],
}

# Variables that only make sense together with others: those others, set to good values.
NEEDS = {
    "burst": {"ADMISSION_RATE": "10/second"},
    "queue_timeout": {"ADMISSION_WINDOW": "8"},
    "max_waiters": {"ADMISSION_WINDOW": "8", "ADMISSION_QUEUE_TIMEOUT": "0.1"},
}


def _env(field: str, raw: str) -> dict[str, str]:
    return {"ADMISSION_" + field.upper(): raw, **NEEDS.get(field, {})}


def test_every_field_has_bad_and_good_values_listed() -> None:
    fields = {f.name for f in dataclasses.fields(Settings)}
    assert set(ACCEPTED) == fields
    assert set(BAD) == fields
    assert set(GOOD) == fields


@pytest.mark.parametrize(
    ("field", "raw"), [(field, raw) for field, values in BAD.items() for raw in values]
)
def test_bad_value_is_refused_with_one_line_naming_the_variable(field: str, raw: str) -> None:
    variable = "ADMISSION_" + field.upper()
    with pytest.raises(ConfigError) as info:
        Settings.from_env(_env(field, raw))
    message = str(info.value)
    assert info.value.variable == variable
    assert message.startswith(variable + "=")
    assert "\n" not in message
    assert ACCEPTED[field] in message


@pytest.mark.parametrize(
    ("field", "raw", "expected"),
    [(field, raw, expected) for field, values in GOOD.items() for raw, expected in values],
)
def test_good_value_parses(field: str, raw: str, expected: object) -> None:
    settings = Settings.from_env(_env(field, raw))
    if expected is not None:
        assert getattr(settings, field) == expected


@pytest.mark.parametrize(
    "storage", [raw for raw, _ in GOOD["storage"] if raw != "memory://"], ids=lambda s: s[:24]
)
async def test_every_accepted_storage_uri_builds_a_store_without_connecting(storage: str) -> None:
    # Whatever the settings accept must also build: a URI that passed validation and then
    # fails in the worker would crash start-up with a traceback instead of one line.
    store = open_store(Settings(rate="10/second", storage=storage))
    assert store is not None
    await store.close()


def test_burst_without_a_rate_is_refused() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"ADMISSION_BURST": "20"})
    assert info.value.variable == "ADMISSION_BURST"


def test_unknown_admission_variable_is_refused_by_name() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"ADMISSION_RATE_LIMIT": "10/second"})
    assert info.value.variable == "ADMISSION_RATE_LIMIT"
    assert "ADMISSION_RATE" in str(info.value)


def test_empty_variable_counts_as_unset_and_other_variables_are_ignored() -> None:
    settings = Settings.from_env({"ADMISSION_WINDOW": "  ", "PATH": "/bin", "RATE": "x"})
    assert settings == Settings()


def test_overrides_win_over_the_environment() -> None:
    settings = Settings.from_env({"ADMISSION_WINDOW": "bad"}, window=4)
    assert settings.window == 4


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("burst", True),
        ("window", 2.5),
        ("window", 0),
        ("storage_timeout", math.nan),
        ("storage_timeout", False),
        ("request_timeout", -1.0),
        ("max_keys", 0),
    ],
)
def test_bad_python_value_is_refused_like_an_environment_value(field: str, value: object) -> None:
    kwargs: dict[str, object] = {field: value}
    needs = {"burst": {"rate": "10/second"}, "queue_timeout": {"window": 8}}
    kwargs.update(needs.get(field, {}))
    if field == "max_waiters":
        kwargs.update(window=8, queue_timeout=0.1)
    with pytest.raises(ConfigError) as info:
        Settings(**kwargs)  # type: ignore[arg-type]
    assert info.value.variable == "ADMISSION_" + field.upper()


def test_derived_values_follow_rate_and_burst() -> None:
    settings = Settings(rate="6000/minute", burst=200)
    assert settings.emission_interval_s == pytest.approx(0.01)
    assert settings.capacity == 200
    assert Settings(rate="10 per 2 seconds").emission_interval_s == pytest.approx(0.2)
    assert Settings(rate="10/second").capacity == 10
    assert Settings().capacity == 0
    assert Settings().emission_interval_s == math.inf


@pytest.mark.parametrize(
    ("uri", "shown"),
    [
        ("redis://user:s3cret@db:6379/0", "redis://user:***@db:6379/0"),
        ("rediss://:s3cret@db:6380/1", "rediss://:***@db:6380/1"),
        (
            "redis+sentinel://:s3cret@h1:26379,h2:26379/mymaster",
            "redis+sentinel://:***@h1:26379,h2:26379/mymaster",
        ),
        ("redis://db:6379/0", "redis://db:6379/0"),
    ],
)
def test_storage_password_is_redacted_in_the_description(uri: str, shown: str) -> None:
    assert redact_uri(uri) == shown
    described = dict(Settings(storage=uri).describe())
    assert described["ADMISSION_STORAGE"] == shown
    assert "s3cret" not in repr(Settings(storage=uri).describe())


@pytest.mark.parametrize(
    "uri",
    [
        "redis://user:s3cret@db:notaport/0",
        "reddis://user:s3cret@db:6379/0",
        "redis://:s3cret@db:6379/0?socket_timeout=soon",
    ],
)
def test_refused_storage_uri_does_not_show_its_password(uri: str) -> None:
    with pytest.raises(ConfigError) as info:
        Settings(storage=uri)
    assert "s3cret" not in str(info.value)
    assert info.value.variable == "ADMISSION_STORAGE"


def test_description_lists_every_variable_once() -> None:
    names = [name for name, _ in Settings(rate="10/second", exempt="/a,/b").describe()]
    assert names == ["ADMISSION_" + f.name.upper() for f in dataclasses.fields(Settings)]
    described = dict(Settings(rate="10/second", exempt="/a,/b").describe())
    assert described["ADMISSION_EXEMPT"] == "/a,/b"
    assert described["ADMISSION_WINDOW"] == "(unset)"


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"ADMISSION_BURST": "10"}, "ADMISSION_BURST"),
        ({"ADMISSION_QUEUE_TIMEOUT": "0.1"}, "ADMISSION_QUEUE_TIMEOUT"),
        ({"ADMISSION_MAX_WAITERS": "4", "ADMISSION_WINDOW": "8"}, "ADMISSION_MAX_WAITERS"),
    ],
)
def test_a_setting_that_would_do_nothing_alone_is_refused(
    env: dict[str, str], variable: str
) -> None:
    # Accepting it would start a service that silently ignores what its operator asked for.
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.variable == variable
    # The line names what is missing, not only the variable that was given.
    assert str(info.value).count("ADMISSION_") >= 2


def test_config_shows_the_effective_defaults_that_follow_other_settings() -> None:
    rows = dict(
        Settings.from_env(
            {"ADMISSION_RATE": "20/second", "ADMISSION_WINDOW": "8", "ADMISSION_QUEUE_TIMEOUT": "1"}
        ).describe()
    )
    assert rows["ADMISSION_BURST"].startswith("20")
    assert rows["ADMISSION_MAX_WAITERS"].startswith("8")
    assert rows["ADMISSION_WEBSOCKET_WINDOW"].startswith("8")

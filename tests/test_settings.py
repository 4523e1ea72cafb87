"""Settings: every `ADMISSION_*` variable parses its good values and refuses its bad ones."""

from __future__ import annotations

import dataclasses
import math

import pytest

from admission.config.settings import ACCEPTED, Settings
from admission.config.storage import redact_uri
from admission.errors import ConfigError
from admission.stores import open_store
from tests.settings_values import GARBAGE, NEEDS
from tests.support import REPO

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
        "1000000001/second",
        "1/100000 days",
        "\u0663/second",
        "1/\u017fecond",
    ],
    "burst": ["0", "-1", "ten", "1.5", "1e3", "1" * 310, "1000000001", "+5", "1_0", "\u0663"],
    "key": ["cookie", "header:", "header:X Client", "header:X-Client:2", "ipv6", "header"],
    "trusted_proxies": [
        "not-an-ip",
        "10.0.0.0/33",
        "10.0.0.1/8",
        "10.0.0.0/8,garbage",
        "::1/129",
        "0.0.0.0/0",
        "::/0",
    ],
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
        "redis://localhost:\u0663\u0663/0",
        "redis://:pa#ss@localhost:6379/0",
        "redis://localhost:6379/" + "0" * 5000,
    ],
    "storage_timeout": ["0", "-0.05", "nan", "inf", "soon", "1e-300", "0.0001", "61", "5e-2"],
    "on_storage_error": ["ignore", "LOCAL", "fail-open", "1"],
    "window": [
        "0",
        "-3",
        "1.5",
        "many",
        "1" + "0" * 399,
        "1000001",
        "+5",
        "1_0",
        "\u0663",
        "automatic",
        "auto:5",
    ],
    "window_min": ["0", "-1", "x", "1.5", "1000001"],
    "window_max": ["0", "-1", "x", "1000001"],
    "queue_order": ["random", "FIFO ", "stack", "1"],
    "priority": ["cookie:x", "header:", "header:X Priority", "X-Priority", "query:p"],
    "shed_at": [
        "sheddable:1.5",
        "sheddable:0.9,default:0.8",
        "critical:0.5",
        "sheddable:0",
        "sheddable:0.005",
        "sheddable:0.8,sheddable:0.7",
        "sheddable=0.8",
        "sheddable:nan",
        "sheddable:-0.5",
        "default:1e-1",
    ],
    "window_status": ["404", "500", "200", "abc", "429.0"],
    "queue_timeout": ["-0.1", "nan", "inf", "later", "1e-300", "3601", "+1"],
    "max_waiters": ["-1", "2.5", "x", "1000001"],
    "websocket_window": ["0", "-1", "x", "9" * 20],
    "client_window": ["0", "-1", "x", "2.5", "1000001"],
    "read_timeout": ["0", "-1", "inf", "x", "1e-300", "86401", "\u0663"],
    "buffer_body": ["0", "-1", "x", "1.5", "1e3", "1073741825"],
    "ws_message_rate": ["fast", "100", "0/second", "1/second;2/minute", "1000000001/second"],
    "buffer_body_total": ["0", "-1", "x", "1.5", "1e3", "68719476737"],
    "forwarded_header": ["x-real-ip", "X-Forwarded-For", "both", "x-forwarded-for,forwarded"],
    "write_timeout": ["0", "-1", "nan", "x"],
    "idle_timeout": ["0", "-5", "inf", "x"],
    "request_timeout": ["0", "-30", "nan", "x"],
    "max_header_bytes": ["0", "1023", "-1", "x", "1.5", "16777217", "64KiB"],
    "drain_delay": ["-1", "inf", "nan", "x", "1e308", "3601", "0.0000001"],
    "drain_timeout": ["0", "-1", "inf", "x", "1e308", "3601"],
    "cleanup_timeout": ["0", "-1", "nan", "x"],
    "exempt": ["static", "/ok,bad", "healthz", "/", "/a b", ",".join(["/x"] * 257)],
    "max_keys": ["0", "-1", "x", "1.5", "100000001"],
    "health_path": ["/", "healthz", "/a b", "/x?y", "none", "/" + "x" * 300],
    "ready_path": ["/", "readyz", "OFF"],
    "metrics_path": ["/", "metrics", "\u0663"],
    "key_prefix": ["has space", "pre{fix", "fix}", "a\tb", "x" * 65, "caf\u00e9"],
    "key_secret": ["short", "has a space in it somewhere", "x" * 257, "caf\u00e9" * 8],
    "metrics": ["Prometheus", "opentelemetry", "otel,prometheus", "none", "0"],
    "headers": ["some", "ALL", "none", "0", "refused,all"],
    "policies": ["/nonexistent/policies.toml", "/dev/null", str(REPO / "pyproject.toml")],
    "on_refuse": ["app", "module:app"],
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
    "window": [("64", 64), ("1", 1), ("auto", "auto"), ("AUTO", "auto")],
    "window_min": [("4", 4)],
    "window_max": [("256", 256)],
    "queue_order": [("fifo", "fifo"), ("lifo", "lifo")],
    "priority": [("header:X-Priority", "header:X-Priority"), ("header: X-Class", "header:X-Class")],
    "shed_at": [
        ("sheddable:0.8,default:0.9", "sheddable:0.8,default:0.9"),
        ("default:0.95, sheddable:0.5", "sheddable:0.5,default:0.95"),
        ("sheddable:0.7", "sheddable:0.7,default:1"),
        ("sheddable:1,default:1", "sheddable:1,default:1"),
    ],
    "window_status": [("429", 429), ("503", 503)],
    "queue_timeout": [("0.1", 0.1), ("0", 0.0), ("3600", 3600.0)],
    "max_waiters": [("1", 1), ("10", 10)],
    "websocket_window": [("8", 8)],
    "client_window": [("2", 2), ("1", 1)],
    "read_timeout": [("5", 5.0)],
    "buffer_body": [("65536", 65536), (" 1 ", 1), ("", None)],
    "ws_message_rate": [("10/minute", "10/minute"), ("5 per 1 second", "5 per 1 second")],
    "buffer_body_total": [("8388608", 8388608), ("68719476736", 68719476736)],
    "forwarded_header": [("forwarded", "forwarded"), ("x-forwarded-for", "x-forwarded-for")],
    "write_timeout": [("3", 3.0)],
    "idle_timeout": [("60", 60.0)],
    "request_timeout": [("30", 30.0), ("0.25", 0.25)],
    "max_header_bytes": [("1024", 1024), ("65536", 65536), ("16777216", 16 * 1024 * 1024)],
    "drain_delay": [("5", 5.0), ("0", 0.0), ("0.5", 0.5), ("3600", 3600.0)],
    "drain_timeout": [("30", 30.0)],
    "cleanup_timeout": [("5", 5.0)],
    "exempt": [
        ("/healthz,/readyz,/metrics", ("/healthz", "/readyz", "/metrics")),
        ("/static", ("/static",)),
    ],
    "max_keys": [("1000", 1000)],
    "key_prefix": [("admission", "admission"), ("svc:prod", "svc:prod")],
    "key_secret": [("", None), ("0123456789abcdef", "0123456789abcdef"), ("k" * 256, "k" * 256)],
    "health_path": [("/livez", "/livez"), ("off", None), ("/-/health", "/-/health")],
    "ready_path": [("/ready", "/ready"), ("off", None)],
    "metrics_path": [("/internal/metrics", "/internal/metrics"), ("off", None)],
    "metrics": [("prometheus", "prometheus"), ("otel", "otel"), (" both ", "both")],
    "headers": [("all", "all"), ("refused", "refused"), ("off", "off"), (" off ", "off")],
    "policies": [(str(REPO / "tests" / "apps" / "policies.toml"), None)],
    # Code only: an ASGI app can't come from the environment.
    "on_refuse": [],
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


# --- every number bounded, every field against garbage ---------------------------------------

# The range each numeric field documents; accepted values must fall inside.
RANGES: dict[str, tuple[float, float]] = {
    "burst": (1, 1_000_000_000),
    "storage_timeout": (0.001, 60),
    "window": (1, 1_000_000),
    "window_min": (1, 1_000_000),
    "window_max": (1, 1_000_000),
    "queue_timeout": (0, 3600),
    "max_waiters": (0, 1_000_000),
    "websocket_window": (1, 1_000_000),
    "client_window": (1, 1_000_000),
    "read_timeout": (0.001, 86400),
    "write_timeout": (0.001, 86400),
    "idle_timeout": (0.001, 86400),
    "request_timeout": (0.001, 86400),
    "max_header_bytes": (1024, 16 * 1024 * 1024),
    "drain_delay": (0, 3600),
    "drain_timeout": (0.001, 3600),
    "cleanup_timeout": (0.001, 600),
    "max_keys": (1, 100_000_000),
}


def _assert_sane(settings: Settings) -> None:
    for field, (low, high) in RANGES.items():
        value = getattr(settings, field)
        if value is None or (field == "window" and value == "auto"):
            continue
        assert isinstance(value, int | float) and not isinstance(value, bool), field
        assert math.isfinite(value) and low <= value <= high, (field, value)
        assert value == 0 or value >= 0.001, (field, value)
    assert settings.emission_interval_s > 0 or settings.rate is None
    if settings.rate is not None:
        assert 1e-9 <= settings.emission_interval_s <= 366 * 86400
        assert 1 <= settings.capacity <= 1_000_000_000
        # Every bucket fills within a year: the RateLimit fields stay within 15 digits.
        assert settings.capacity * settings.emission_interval_s <= 366 * 86400
    assert "\n" not in "".join(value for _, value in settings.describe())


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Settings)])
def test_every_field_refuses_garbage_in_one_line_or_accepts_a_sane_value(field: str) -> None:
    variable = "ADMISSION_" + field.upper()
    for raw in [*GARBAGE, " ", "\t"]:
        try:
            settings = Settings.from_env(_env(field, raw))
        except ConfigError as exc:
            assert str(exc).startswith(variable + "="), (raw, str(exc))
            assert "\n" not in str(exc), raw
            assert len(str(exc)) < 800, raw
            assert "s3cret" not in str(exc)
            continue
        _assert_sane(settings)
        shown = getattr(settings, field)
        # Empty-but-present is unset; anything else accepted must have been a plain value.
        assert raw.strip() == "" or raw in ("0", "-0") or shown is not None, (raw, shown)


@pytest.mark.parametrize("field", [f.name for f in dataclasses.fields(Settings)])
@pytest.mark.parametrize(
    "value",
    [10**400, 10**5000, -1, math.nan, math.inf, -math.inf, 1e308, 1e-300, True, 2.5, b"1", [1]],
    ids=lambda v: repr(v)[:20] if not isinstance(v, int) or v < 10**50 else "huge",
)
def test_every_field_refuses_garbage_from_code_or_accepts_a_sane_value(
    field: str, value: object
) -> None:
    kwargs: dict[str, object] = {field: value}
    try:
        settings = Settings(**kwargs)  # type: ignore[arg-type]
    except ConfigError as exc:
        assert exc.variable == "ADMISSION_" + field.upper()
        assert "\n" not in str(exc)
        return
    _assert_sane(settings)


def test_all_bad_variables_are_reported_at_once_one_line_each() -> None:
    env = {
        "ADMISSION_WINDOW": "0",
        "ADMISSION_BURST": "1" * 310,
        "ADMISSION_DRAIN_DELAY": "1e308",
        "ADMISSION_WINDOE": "8",
        "ADMISSION_RATE": "10/second",
    }
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    lines = str(info.value).splitlines()
    assert len(lines) == 4
    assert {line.split("=", 1)[0] for line in lines} == {
        "ADMISSION_WINDOW",
        "ADMISSION_BURST",
        "ADMISSION_DRAIN_DELAY",
        "ADMISSION_WINDOE",
    }
    assert info.value.lines == lines


def test_a_typo_gets_the_closest_name_not_a_list_of_all() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"ADMISSION_WINDOE": "8"})
    message = str(info.value)
    assert "did you mean ADMISSION_WINDOW?" in message
    assert "ADMISSION_RATE" not in message
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"ADMISSION_FROBNICATE": "1"})
    assert "did you mean" not in str(info.value)
    assert str(info.value).count("ADMISSION_") <= 2


def test_a_typo_with_a_uri_value_does_not_show_the_password() -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"ADMISSION_STORAG": "redis://:s3cret@db:6379/0"})
    assert "s3cret" not in str(info.value)
    assert "did you mean ADMISSION_STORAGE?" in str(info.value)


def test_a_zero_rate_says_the_amount_must_be_at_least_1() -> None:
    with pytest.raises(ConfigError, match="the amount must be at least 1"):
        Settings.from_env({"ADMISSION_RATE": "0/second"})


@pytest.mark.parametrize(
    ("env", "variable", "why"),
    [
        ({"ADMISSION_EXEMPT": "/"}, "ADMISSION_EXEMPT", "every path"),
        ({"ADMISSION_EXEMPT": "/static, /"}, "ADMISSION_EXEMPT", "every path"),
        ({"ADMISSION_TRUSTED_PROXIES": "0.0.0.0/0"}, "ADMISSION_TRUSTED_PROXIES", "every"),
        (
            {"ADMISSION_RATE": "1/day", "ADMISSION_BURST": "1000"},
            "ADMISSION_BURST",
            "more than a year to fill again: at this rate the burst can be at most 366",
        ),
        ({"ADMISSION_READY_PATH": "/healthz"}, "ADMISSION_READY_PATH", "same path"),
        ({"ADMISSION_METRICS_PATH": "/readyz"}, "ADMISSION_METRICS_PATH", "same path"),
        (
            {"ADMISSION_HEALTH_PATH": "/metrics", "ADMISSION_METRICS_PATH": "/metrics"},
            "ADMISSION_METRICS_PATH",
            "ADMISSION_HEALTH_PATH is the same path",
        ),
        (
            {"ADMISSION_WINDOW": "8", "ADMISSION_QUEUE_TIMEOUT": "1", "ADMISSION_MAX_WAITERS": "0"},
            "ADMISSION_MAX_WAITERS",
            "no request ever waits",
        ),
        (
            {"ADMISSION_CLIENT_WINDOW": "2", "ADMISSION_KEY": "global"},
            "ADMISSION_CLIENT_WINDOW",
            "every request is one client's",
        ),
        (
            {"ADMISSION_CLIENT_WINDOW": "8", "ADMISSION_WINDOW": "8"},
            "ADMISSION_CLIENT_WINDOW",
            "as large as ADMISSION_WINDOW=8 does nothing",
        ),
    ],
)
def test_a_setting_that_would_do_nothing_or_everything_is_refused_with_its_reason(
    env: dict[str, str], variable: str, why: str
) -> None:
    with pytest.raises(ConfigError) as info:
        Settings.from_env(env)
    assert info.value.variable == variable
    assert why in str(info.value)


def test_values_are_quoted_the_same_way_from_code_and_from_the_environment() -> None:
    messages = []
    for attempt in (
        lambda: Settings.from_env({"ADMISSION_WINDOW": "many"}),
        lambda: Settings(window="many"),  # type: ignore[arg-type]
    ):
        with pytest.raises(ConfigError) as info:
            attempt()
        messages.append(str(info.value))
    assert (
        messages[0]
        == messages[1]
        == ("ADMISSION_WINDOW='many' is invalid: expected " + ACCEPTED["window"])
    )
    with pytest.raises(ConfigError) as info:
        Settings(window=0)
    assert str(info.value).startswith("ADMISSION_WINDOW='0' is invalid")
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"ADMISSION_WINDOW": "\u0663"})
    assert str(info.value).startswith("ADMISSION_WINDOW='\\u0663' is invalid")
    with pytest.raises(ConfigError) as info:
        Settings.from_env({"ADMISSION_BURST": "1" * 310, "ADMISSION_RATE": "1/second"})
    assert "(310 characters)" in str(info.value) and "1" * 61 not in str(info.value)


def test_derived_values_are_computed_once_not_per_access(monkeypatch: pytest.MonkeyPatch) -> None:
    import admission.config.settings as module

    settings = Settings(rate="10 per 2 seconds", burst=4, trusted_proxies="10.0.0.0/8")

    def no_parse(*args: object) -> None:
        raise AssertionError("parsed again")

    monkeypatch.setattr(module.limits, "parse", no_parse)
    monkeypatch.setattr(module.ipaddress, "ip_network", no_parse)
    for _ in range(3):
        assert settings.rate_item is not None and settings.rate_item.amount == 10
        assert settings.emission_interval_s == pytest.approx(0.2)
        assert settings.capacity == 4
        assert len(settings.trusted_networks) == 1


def test_adding_a_setting_is_one_entry() -> None:
    from admission.config.settings import Spec, specs

    # Every field carries its spec: parser with its accepted form, meaning, redaction.
    for f in dataclasses.fields(Settings):
        spec = f.metadata["spec"]
        assert isinstance(spec, Spec)
        assert spec.parse.accepted and spec.meaning
        assert specs()[f.name] is spec
        # The default is a value its own parser accepts.
        assert spec.parse(f.default) == f.default or f.default in ((), None)


def test_the_documented_ranges_are_the_ones_enforced() -> None:
    from admission.config.report import accepted_markdown
    from tests.support import REPO

    text = (REPO / "docs" / "configuration.md").read_text()
    start = text.index("\n", text.index("<!-- accepted:start")) + 1
    end = text.index("<!-- accepted:end -->")
    # Regenerate with the command in the marker when a setting is added or changed.
    assert text[start:end].strip() == accepted_markdown()


# --- precedence: code over environment ---------------------------------------------------------


def test_summary_is_one_line_of_what_differs_from_the_defaults() -> None:
    assert "all defaults" in Settings().summary()
    line = Settings(rate="10/second", window=8, storage="redis://:pw@db:6379/0").summary()
    assert "\n" not in line
    assert "ADMISSION_RATE='10/second'" in line and "ADMISSION_WINDOW='8'" in line
    assert "ADMISSION_STORAGE='redis://:***@db:6379/0'" in line
    assert "pw@" not in line and "ADMISSION_DRAIN_TIMEOUT" not in line


def test_code_settings_list_the_environment_they_override() -> None:
    settings = Settings(window=64, rate="10/second")
    env = {
        "ADMISSION_WINDOW": "8",  # differs: ignored
        "ADMISSION_RATE": "10/second",  # agrees
        "ADMISSION_BURST": "oops",  # not even valid
        "ADMISSION_STORAGE": "redis://:pw@db:6379/0",
        "ADMISSION_DRAIN_DELAY": "",  # empty is unset
        "PATH": "/bin",
    }
    assert settings.overridden(env) == [
        "ADMISSION_BURST='oops'",
        "ADMISSION_STORAGE='redis://:***@db:6379/0'",
        "ADMISSION_WINDOW='8'",
    ]
    assert Settings(window=8).overridden({"ADMISSION_WINDOW": "8"}) == []


def test_announce_logs_the_summary_and_warns_once_when_code_overrides_the_environment(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    import logging

    from admission.config.report import announce

    monkeypatch.setenv("ADMISSION_WINDOW", "8")
    log = logging.getLogger("admission.test.announce")
    with caplog.at_level(logging.INFO, logger="admission.test.announce"):
        announce(Settings(window=64), in_code=True, log=log)
    records = [(r.levelno, r.getMessage()) for r in caplog.records]
    assert records[0] == (logging.INFO, Settings(window=64).summary())
    assert records[1][0] == logging.WARNING
    assert "ADMISSION_WINDOW='8'" in records[1][1] and len(records) == 2
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="admission.test.announce"):
        announce(Settings.from_env(), in_code=False, log=log)
    assert [r.levelno for r in caplog.records] == [logging.INFO]


def test_a_client_window_needs_no_window_and_fits_below_one() -> None:
    # nginx's limit_conn caps each client without any total: so does ADMISSION_CLIENT_WINDOW.
    assert Settings.from_env({"ADMISSION_CLIENT_WINDOW": "2"}).client_window == 2
    assert Settings(client_window=7, window=8).client_window == 7
    assert Settings(client_window=50, window="auto").client_window == 50

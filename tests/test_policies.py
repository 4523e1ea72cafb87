"""Route policies: the model, its validation, and the TOML policy file."""

from __future__ import annotations

import textwrap
from pathlib import Path

import pytest

from admission.config.policies import Policy, load_policies
from admission.errors import ConfigError, PolicyError

EXAMPLE = textwrap.dedent(
    """
    [[policy]]
    name = "login"
    match = ["POST /login", "POST /password-reset"]
    limits = ["5/minute", "20/hour"]
    key = "ip"
    burst = 5
    cost = 1

    [[policy]]
    name = "api"
    match = ["/api/*"]
    key = "header:X-API-Key"
    limits = ["100/second"]
    class_header = "X-Plan"
    [policy.classes]
    free = ["10/second", "1000/day"]
    pro = ["200/second"]

    [[policy]]
    name = "export-trial"
    match = ["GET /export"]
    limits = ["1/minute"]
    enforce = false
    """
)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "policies.toml"
    path.write_text(textwrap.dedent(text))
    return path


def test_the_issue_example_loads_as_written(tmp_path: Path) -> None:
    login, api, export = load_policies(write(tmp_path, EXAMPLE))
    assert login.name == "login" and login.match == ("POST /login", "POST /password-reset")
    assert login.limits == ("5/minute", "20/hour") and login.burst == 5
    assert [
        (lim.amount, lim.window_s, lim.bucket.capacity) for lim in login.resolve(login.limits)
    ] == [
        (5, 60, 5),
        (20, 3600, 5),
    ]
    assert api.key == "header:X-API-Key" and api.class_header == "X-Plan"
    assert api.classes == {"free": ("10/second", "1000/day"), "pro": ("200/second",)}
    assert export.enforce is False


# Every field's mistake names the file, the policy and the field, on one line.
BAD = [
    ('name = "a"\nmatch = ["/x"]\nlimts = ["1/second"]', "'a'", "limts"),
    ('name = "a"\nmatch = ["/x"]', "'a'", "limits"),
    ('match = ["/x"]\nlimits = ["1/second"]', "#1", "name"),
    ('name = "a b"\nmatch = ["/x"]\nlimits = ["1/second"]', "'a b'", "name"),
    ('name = "a"\nmatch = []\nlimits = ["1/second"]', "'a'", "match"),
    ('name = "a"\nmatch = ["x"]\nlimits = ["1/second"]', "'a'", "match"),
    ('name = "a"\nmatch = ["post /x"]\nlimits = ["1/second"]', "'a'", "match"),
    ('name = "a"\nmatch = ["/x*/y"]\nlimits = ["1/second"]', "'a'", "match"),
    ('name = "a"\nmatch = ["/u/{id"]\nlimits = ["1/second"]', "'a'", "match"),
    ('name = "a"\nmatch = ["/u/x{id}"]\nlimits = ["1/second"]', "'a'", "match"),
    ('name = "a"\nmatch = ["/x"]\nlimits = ["1/fortnight"]', "'a'", "limits"),
    ('name = "a"\nmatch = ["/x"]\nlimits = ["1/second;5/minute"]', "'a'", "limits"),
    ('name = "a"\nmatch = ["/x"]\nlimits = ["0/second"]', "'a'", "limits"),
    ('name = "a"\nmatch = ["/x"]\nlimits = ["10 per 0 seconds"]', "'a'", "limits"),
    ('name = "a"\nmatch = ["/x"]\nlimits = []', "'a'", "limits"),
    ('name = "a"\nmatch = ["/x"]\nlimits = [5]', "'a'", "limits"),
    ('name = "a"\nmatch = ["/x"]\nlimits = ["1/second"]\nkey = "cookie"', "'a'", "key"),
    ('name = "a"\nmatch = ["/x"]\nlimits = ["1/second"]\nkey = "header:"', "'a'", "key"),
    ('name = "a"\nmatch = ["/x"]\nlimits = ["1/second"]\nburst = 0', "'a'", "burst"),
    ('name = "a"\nmatch = ["/x"]\nlimits = ["1/second"]\nburst = 1.5', "'a'", "burst"),
    ('name = "a"\nmatch = ["/x"]\nlimits = ["1/second"]\ncost = -1', "'a'", "cost"),
    ('name = "a"\nmatch = ["/x"]\nlimits = ["5/second"]\ncost = 6', "'a'", "cost"),
    ('name = "a"\nmatch = ["/x"]\nlimits = ["1/second"]\nenforce = "no"', "'a'", "enforce"),
    (
        'name = "a"\nmatch = ["/x"]\nlimits = ["1/second"]\nclass_header = "X Plan"',
        "'a'",
        "class_header",
    ),
    (
        'name = "a"\nmatch = ["/x"]\nlimits = ["1/second"]\nclass_header = "X-Plan"',
        "'a'",
        "class_header",
    ),
    (
        'name = "a"\nmatch = ["/x"]\nlimits = ["1/second"]\nclasses = {free = ["1/second"]}',
        "'a'",
        "classes",
    ),
    (
        'name = "a"\nmatch = ["/x"]\nlimits = ["1/second"]\nclass_header = "X-Plan"\n'
        'classes = {free = ["1/lightyear"]}',
        "'a'",
        "classes.free",
    ),
]


@pytest.mark.parametrize(("body", "policy", "field"), BAD)
def test_a_bad_policy_is_one_line_naming_file_policy_and_field(
    tmp_path: Path, body: str, policy: str, field: str
) -> None:
    path = write(tmp_path, "[[policy]]\n" + body + "\n")
    with pytest.raises(PolicyError) as info:
        load_policies(path)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: policy {policy}: {field}: "), message
    assert isinstance(info.value, ConfigError)


def test_two_policies_of_one_name_are_refused(tmp_path: Path) -> None:
    one = '[[policy]]\nname = "a"\nmatch = ["/x"]\nlimits = ["1/second"]\n'
    with pytest.raises(PolicyError, match=r": policy 'a': name: two policies"):
        load_policies(write(tmp_path, one + one))


@pytest.mark.parametrize(
    ("text", "field"),
    [
        ("[[policy]\n", "file"),
        ("rate = 1\n", "rate"),
        ("policy = 3\n", "policy"),
        ("policy = [1]\n", "policy #1: policy"),
    ],
)
def test_a_file_that_is_not_a_policy_file_is_refused(tmp_path: Path, text: str, field: str) -> None:
    path = write(tmp_path, text)
    with pytest.raises(PolicyError) as info:
        load_policies(path)
    assert str(info.value).startswith(f"{path}: {field}: "), str(info.value)


def test_a_missing_file_is_refused_naming_it(tmp_path: Path) -> None:
    with pytest.raises(PolicyError, match=r"nope\.toml: file: cannot be read"):
        load_policies(tmp_path / "nope.toml")


def test_python_policies_take_callables_for_key_and_cost() -> None:
    policy = Policy(
        name="upload",
        match="POST /upload",
        limits="100/minute",
        key=lambda scope: scope.get("user"),
        cost=lambda scope: 5,
    )
    assert policy.match == ("POST /upload",) and policy.limits == ("100/minute",)
    assert callable(policy.key) and callable(policy.cost)
    assert "callable" in policy.describe()


def test_python_policy_errors_name_settings_policies() -> None:
    with pytest.raises(PolicyError, match=r"^Settings.policies: policy 'x': limits: "):
        Policy(name="x", match="/x", limits="lots")

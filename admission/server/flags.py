"""admission.server.flags: which of uvicorn's command-line flags `admission serve` takes.

Three kinds, each named once here:

- `PASSED`: uvicorn's own flags, defined from uvicorn's command (`uvicorn.main`) so that their
  spelling, type and help stay uvicorn's, handed to uvicorn's Config unchanged;
- `OWNED`: flags whose job an `ADMISSION_*` variable does under admission. Each fails with one
  line naming that variable, so no flag silently fights a setting;
- everything else of uvicorn's is not offered (`--http` and `--factory` are how admission
  runs the app, `--log-config` would replace admission's logging): argparse refuses it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

import click

# uvicorn's flags passed through, by uvicorn's parameter names.
PASSED = (
    "uds",
    "fd",
    "reload",
    "reload_dirs",
    "reload_includes",
    "reload_excludes",
    "reload_delay",
    "log_level",
    "root_path",
    "ssl_keyfile",
    "ssl_certfile",
    "ssl_keyfile_password",
    "ssl_version",
    "ssl_cert_reqs",
    "ssl_ca_certs",
    "ssl_ciphers",
)

# uvicorn's flags admission owns: the flag, whether it takes a value, the variable to set instead.
OWNED: tuple[tuple[str, bool, str], ...] = (
    ("--timeout-keep-alive", True, "ADMISSION_IDLE_TIMEOUT"),
    ("--limit-concurrency", True, "ADMISSION_WINDOW"),
    ("--proxy-headers", False, "ADMISSION_TRUSTED_PROXIES"),
    ("--forwarded-allow-ips", True, "ADMISSION_TRUSTED_PROXIES"),
    ("--timeout-graceful-shutdown", True, "ADMISSION_DRAIN_TIMEOUT"),
    ("--h11-max-incomplete-event-size", True, "ADMISSION_MAX_HEADER_BYTES"),
)

# What the owned flags do under admission, for the one line they fail with.
_WHY = {
    "ADMISSION_IDLE_TIMEOUT": "it also closes idle kept-alive connections under admission serve",
    "ADMISSION_WINDOW": "admission's window bounds requests in flight, with a problem body",
    "ADMISSION_TRUSTED_PROXIES": "admission decides who the client is from trusted peers only",
    "ADMISSION_DRAIN_TIMEOUT": "uvicorn's graceful wait is set to outlast the drain",
    "ADMISSION_MAX_HEADER_BYTES": "admission's protocol bounds the request head",
}


def uvicorn_params() -> dict[str, click.Parameter]:
    """uvicorn_params is uvicorn's command-line parameters by name."""
    command: click.Command = sys.modules["uvicorn.main"].main
    return {p.name: p for p in command.params if p.name is not None}


class _Owned(argparse.Action):
    """_Owned fails, when its flag is given, with one line naming the variable to set."""

    def __init__(self, *args: Any, variable: str, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.variable = variable

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: str | Sequence[Any] | None,
        option_string: str | None = None,
    ) -> None:
        value = values if isinstance(values, str) else "..."
        print(
            f"admission: {option_string} is not taken by admission serve: set "
            f"{self.variable}={value} instead ({_WHY[self.variable]})",
            file=sys.stderr,
        )
        raise SystemExit(2)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """add_arguments adds the passed uvicorn flags, as uvicorn defines them, and the owned ones
    (hidden from help, which lists them in its epilog) to `parser`."""
    import uvicorn.main  # noqa: F401  (puts uvicorn.main in sys.modules)

    params = uvicorn_params()
    group = parser.add_argument_group("uvicorn's flags, passed to uvicorn")
    for name in PASSED:
        param = params[name]
        assert isinstance(param, click.Option), name
        kwargs: dict[str, Any] = {"dest": name, "default": None, "help": param.help}
        if param.is_flag:
            kwargs["action"] = "store_true"
        else:
            kwargs["metavar"] = param.opts[0].lstrip("-").upper().replace("-", "_")
            if isinstance(param.type, click.Choice):
                kwargs["choices"] = [str(c) for c in param.type.choices]
            else:
                kwargs["type"] = _PYTHON_TYPES.get(type(param.type), str)
            if param.multiple:
                kwargs["action"] = "append"
        group.add_argument(*param.opts, **kwargs)
    for flag, takes_value, variable in OWNED:
        parser.add_argument(
            flag,
            nargs="?" if takes_value else 0,
            action=_Owned,
            variable=variable,
            help=argparse.SUPPRESS,
            dest=f"_owned_{flag}",
        )
    # uvicorn's default is to believe proxy headers; admission serve never does, so saying
    # so is no conflict (docs show `uvicorn ... --no-proxy-headers`, and it may be copied).
    parser.add_argument("--no-proxy-headers", action="store_true", help=argparse.SUPPRESS)


_PYTHON_TYPES: dict[type, type] = {
    click.types.IntParamType: int,
    click.types.FloatParamType: float,
}


def owned_epilog() -> str:
    """owned_epilog is the help text listing the uvicorn flags admission owns."""
    lines = ", ".join(f"{flag} ({variable})" for flag, _, variable in OWNED)
    return (
        "uvicorn flags whose job an ADMISSION_* variable does are refused, naming the variable: "
        + lines
        + "."
    )


def passed(args: argparse.Namespace) -> dict[str, Any]:
    """passed is the uvicorn Config arguments the passed flags set (the ones given)."""
    return {name: getattr(args, name) for name in PASSED if getattr(args, name) is not None}

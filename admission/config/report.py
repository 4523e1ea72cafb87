"""admission.config.report: what start-up and the docs say of the settings: the line of
settings in effect and its warnings, and the table of every variable."""

from __future__ import annotations

import dataclasses
import logging
import os

from admission.config.fields import env_name
from admission.config.settings import Settings, Spec


def announce(settings: Settings, *, in_code: bool, log: logging.Logger) -> None:
    """announce logs, once at start-up, the one line of settings in effect, and a warning when
    settings given in code override `ADMISSION_*` variables set to something else (code wins:
    the variables are then ignored, whatever `admission config` shows)."""
    log.info("%s%s", settings.summary(), _per_worker(settings))
    chosen = settings.client_chosen()
    if chosen:
        log.warning(
            "any client can choose its own %s (%s): set ADMISSION_TRUSTED_PROXIES to believe "
            "them only from the gateway that sets them",
            " and ".join(dict.fromkeys(kind for kind, _ in chosen)),
            ", ".join(header for _, header in chosen),
        )
    ignored = settings.overridden() if in_code else []
    if ignored:
        log.warning(
            "settings given in code win over the environment: %s ignored",
            ", ".join(ignored),
        )


# Set by `admission serve --workers N` for its workers: how many processes share the service.
WORKERS_ENV = "_ADMISSION_WORKERS"


def _per_worker(settings: Settings) -> str:
    """_per_worker is what the settings line adds when several worker processes each keep
    their own memory store: every limit holds per worker, not per service."""
    workers = os.environ.get(WORKERS_ENV, "1")
    limited = settings.rate is not None or bool(settings.policies)
    if not limited or settings.storage != "memory://" or not workers.isdigit() or workers == "1":
        return ""
    return (
        f"; rate limits are per worker: each of the {workers} workers keeps its own memory "
        f"store, so a client may get up to {workers} times each limit (ADMISSION_STORAGE="
        "redis://... shares them)"
    )


def accepted_markdown() -> str:
    """accepted_markdown is the table of every variable, its default and its accepted values
    (with their ranges), as docs/configuration.md shows it between its `accepted` markers."""
    rows = ["| variable | default | accepted |", "|---|---|---|"]
    for f in dataclasses.fields(Settings):
        spec: Spec = f.metadata["spec"]
        default = spec.show(f.default) if f.default not in (None, ()) else "unset"
        accepted = spec.parse.accepted.replace("|", "\\|")
        rows.append(f"| `{env_name(f.name)}` | `{default}` | {accepted} |")
    return "\n".join(rows)

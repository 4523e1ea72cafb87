"""dev.py: the two commands of the README's quick start, from a fresh clone, with nothing but
Python 3.10+ (and the system's package manager, for what that Python lacks to make a virtual
environment, and for the tests' Redis, if it can install them).

    python3 dev.py serve [admission serve's options]   # set up, then serve the demo
    python3 dev.py test [pytest's options]             # set up, then run the tests

Setting up is creating `.venv` and installing the project with its test extra at the versions
CI pins (.ci/constraints.txt), once: it is skipped when `.venv` already has them. `serve` runs
`admission serve` on the demo app, each client allowed `ADMISSION_RATE` (10/minute unless set)
on in-memory storage. `test` runs the suite; the tests that need a `redis-server` start their
own, so one is installed with the system's package manager where that can be done without
asking (as root, or with sudo that needs no password); where it can't, those tests are
reported in one line as not run, and why.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import subprocess
import sys
import venv
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent
VENV = ROOT / ".venv"
BIN = VENV / ("Scripts" if os.name == "nt" else "bin")
PYTHON = BIN / ("python.exe" if os.name == "nt" else "python")
CONSTRAINTS = ROOT / ".ci" / "constraints.txt"


def main(argv: list[str]) -> int:
    """main runs `serve` or `test` with the rest of `argv` passed on."""
    if not argv or argv[0] not in ("serve", "test"):
        print(__doc__.strip().split("\n\n")[1], file=sys.stderr)
        return 2
    # Run by whichever python3 a machine has: older ones are told, not tracebacked.
    if sys.version_info < (3, 10):  # noqa: UP036
        print("dev.py: admission needs Python 3.10 or newer", file=sys.stderr)
        return 2
    set_up()
    command, rest = argv[0], argv[1:]
    if command == "serve":
        env = {**os.environ}
        env.setdefault("ADMISSION_RATE", "10/minute")
        return _run([str(BIN / "admission"), "serve", *rest], env)
    redis_server()
    return _run([str(PYTHON), "-m", "pytest", *rest], dict(os.environ))


def set_up() -> None:
    """set_up makes `.venv` with the project and its test extra, unless it has them."""
    if PYTHON.exists() and _quiet([str(PYTHON), "-c", "import admission, pytest, fakeredis"]):
        return
    print("dev.py: setting up .venv (once)", file=sys.stderr)
    venv_support()
    venv.EnvBuilder(with_pip=True).create(VENV)
    env = {**os.environ, "PIP_CONSTRAINT": str(CONSTRAINTS)} if CONSTRAINTS.exists() else None
    pip = [str(PYTHON), "-m", "pip", "install", "--quiet"]
    subprocess.run([*pip, "--upgrade", "pip"], check=True, env=env)
    subprocess.run([*pip, "-e", ".[test]"], check=True, cwd=ROOT, env=env)


def venv_support() -> None:
    """venv_support installs what this Python needs to make a virtual environment when it is
    missing (Debian and Ubuntu ship `ensurepip` apart, in python3.X-venv) and that can be done
    without a password; otherwise it says in one line what to install."""
    if importlib.util.find_spec("ensurepip") is not None:
        return
    package = f"python3.{sys.version_info.minor}-venv"
    steps = (("apt-get", "update", "-qq"), ("apt-get", "install", "-y", "-qq", package))
    if not install(package, [steps]) or importlib.util.find_spec("ensurepip") is None:
        print(
            f"dev.py: this Python can't make a virtual environment: install {package}"
            f" (e.g. `sudo apt install {package}`) and run it again",
            file=sys.stderr,
        )
        raise SystemExit(1)


def redis_server() -> None:
    """redis_server installs `redis-server` with the system's package manager when it is
    missing and that can be done without a password; otherwise it says what will not run."""
    if shutil.which("redis-server"):
        return
    if not install("redis-server", _MANAGERS) or not shutil.which("redis-server"):
        print(_NO_REDIS, file=sys.stderr)


def install(what: str, managers: Sequence[Sequence[Sequence[str]]]) -> bool:
    """install runs the steps of the first of `managers` this machine has, as root or with
    sudo that asks no password; True when every step succeeded."""
    sudo: list[str] = []
    if hasattr(os, "geteuid") and os.geteuid() != 0:
        if not shutil.which("sudo") or not _quiet(["sudo", "-n", "true"]):
            return False
        sudo = ["sudo", "-n"]
    for manager in managers:
        if shutil.which(manager[0][0]):
            print(f"dev.py: installing {what} with {manager[0][0]}", file=sys.stderr)
            return all(_quiet([*sudo, *step]) for step in manager)
    return False


# The package managers tried, each as the commands that install Redis's server with it.
_MANAGERS = (
    (("apt-get", "update", "-qq"), ("apt-get", "install", "-y", "-qq", "redis-server")),
    (("dnf", "install", "-y", "-q", "redis"),),
    (("apk", "add", "--quiet", "redis"),),
    (("brew", "install", "--quiet", "redis"),),
)
_NO_REDIS = (
    "dev.py: redis-server is not installed and could not be installed here: the tests that "
    "need one will be reported as not run (install it, e.g. `apt install redis-server`)"
)


def _quiet(argv: list[str]) -> bool:
    try:
        done = subprocess.run(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    except OSError:
        return False
    return done.returncode == 0


def _run(argv: list[str], env: dict[str, str]) -> int:
    """_run becomes `argv` (exec): its signals, Ctrl+C's drain included, are its own."""
    os.chdir(ROOT)
    sys.stdout.flush()
    sys.stderr.flush()
    os.execve(argv[0], argv, env)
    return 127  # not reached: execve replaces the process or raises


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

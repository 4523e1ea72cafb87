"""admission.bench.process: a server run as a child process on a free loopback port, for as
long as a `with` block.

`served` is the one way `admission bench`, the benchmarks and the tests start a server:
it fills the port into the command line, sends the child's output to a file (never a pipe:
nobody reads it while a load runs, and a full pipe would block the server on its own
logging), polls a path until its status counts as ready, and on leaving stops the child
with SIGTERM, then SIGKILL if it has not exited in time. A child that exits or does not get
ready in time is NotReady, which carries the child's output so that the caller can say why
in its own words.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence, Set
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

LOOPBACK = "127.0.0.1"

#: What `served` replaces with the port in every argument of the command line.
PORT = "{port}"

#: How long a server may take to get ready, by default, before `served` gives up.
START_TIMEOUT_S = 30.0

#: How long a server may take to exit after SIGTERM, by default, before it is killed.
STOP_TIMEOUT_S = 10.0

#: Interval between readiness polls while a server starts.
POLL_INTERVAL_S = 0.05

#: How long one readiness poll waits for an answer.
PROBE_TIMEOUT_S = 1.0


def free_port() -> int:
    """free_port asks the kernel for an unused loopback TCP port and returns its number.

    The port is released before returning, so another process could take it first; the
    server then fails to bind, exits, and `served` reports it as NotReady.
    """
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        port: int = sock.getsockname()[1]
        return port


def http_get(host: str, port: int, path: str, timeout_s: float) -> tuple[int, bytes]:
    """http_get makes one GET and returns (status, body); any status counts as an answer.

    Connection failures raise OSError (urllib.error.URLError is one).
    """
    url = f"http://{host}:{port}{path}"
    try:
        with urllib.request.urlopen(url, timeout=timeout_s) as response:
            return int(response.status), bytes(response.read())
    except urllib.error.HTTPError as exc:
        return int(exc.code), exc.read()


def answered_200(status: int) -> bool:
    """answered_200 is the default readiness: the path answered 200."""
    return status == 200


def without_settings(base: Mapping[str, str] | None = None) -> dict[str, str]:
    """without_settings is `base` (default os.environ) without any ADMISSION_* variable, so
    that a server started with it runs with the settings its caller adds and no others."""
    source = os.environ if base is None else base
    return {k: v for k, v in source.items() if not k.startswith("ADMISSION_")}


def last_lines(text: str, lines: int) -> list[str]:
    """last_lines is the last `lines` non-blank lines of `text`, stripped."""
    return [line.strip() for line in text.splitlines() if line.strip()][-lines:]


@dataclass(frozen=True)
class Server:
    """Server is a running child process listening on 127.0.0.1:`port`, everything it prints
    (stdout and stderr) going to `log_path`."""

    process: subprocess.Popen[bytes]
    port: int
    log_path: Path

    @property
    def url(self) -> str:
        """url is the server's base URL, without a trailing slash."""
        return f"http://{LOOPBACK}:{self.port}"

    def log(self) -> str:
        """log is everything the server printed so far."""
        return self.log_path.read_text(errors="replace")


class NotReady(Exception):
    """NotReady is a server that exited (`returncode` set) or did not get ready within
    `timeout_s` (`returncode` None) before `ready_path` answered a ready status; the process
    has been stopped. `last_status` is the status of the last poll (None: no answer) and
    `log` everything the process printed."""

    def __init__(
        self,
        ready_path: str,
        timeout_s: float,
        returncode: int | None,
        last_status: int | None,
        log: str,
    ) -> None:
        self.ready_path = ready_path
        self.timeout_s = timeout_s
        self.returncode = returncode
        self.last_status = last_status
        self.log = log
        if returncode is not None:
            what = f"exited with code {returncode} before {ready_path} answered"
        else:
            what = (
                f"was not ready on {ready_path} within {timeout_s:g} s "
                f"(last status {last_status or 'none'})"
            )
        super().__init__(f"the server {what}")


@contextmanager
def served(
    argv: Sequence[str],
    env: Mapping[str, str] | None = None,
    *,
    port: int | None = None,
    ready_path: str = "/healthz",
    ready: Callable[[int], bool] = answered_200,
    start_timeout_s: float = START_TIMEOUT_S,
    stop_timeout_s: float = STOP_TIMEOUT_S,
    cpus: Set[int] | None = None,
    cwd: str | Path | None = None,
    new_session: bool = False,
) -> Iterator[Server]:
    """served starts `argv`, with PORT in its arguments replaced by `port` (default: a free
    one), in `env` (default: this environment), and yields it once a GET of `ready_path`
    answers a status `ready` accepts, polling every POLL_INTERVAL_S until `start_timeout_s`.
    On leaving, the process gets SIGTERM and is killed if it has not exited within
    `stop_timeout_s`.

    `cpus` pins the process to those CPUs (Linux) before it starts a thread of its own;
    `new_session` makes it the leader of a process group of its own, which a caller may
    signal as a terminal would (`os.killpg(server.process.pid, ...)`). A process that exits
    or is not ready in time is stopped and raised as NotReady.
    """
    port = port or free_port()
    with tempfile.TemporaryDirectory(prefix="admission-served-") as tmp:
        log_path = Path(tmp) / "server.log"
        with log_path.open("wb") as log:
            process = subprocess.Popen(
                [arg.replace(PORT, str(port)) for arg in argv],
                env=None if env is None else dict(env),
                cwd=cwd,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=new_session,
            )
        server = Server(process, port, log_path)
        try:
            if cpus:
                # Popen returns once the child has exec'd, before the interpreter it runs has
                # started any thread: every thread it starts inherits this.
                os.sched_setaffinity(process.pid, cpus)
            _wait_ready(server, ready_path, ready, start_timeout_s, stop_timeout_s)
            yield server
        finally:
            stop(process, stop_timeout_s)


def _wait_ready(
    server: Server,
    ready_path: str,
    ready: Callable[[int], bool],
    timeout_s: float,
    stop_timeout_s: float,
) -> None:
    """_wait_ready polls `ready_path` until its status is ready, the process exits, or the
    deadline passes; in the last two cases it stops the process and raises NotReady."""
    deadline = time.monotonic() + timeout_s
    status: int | None = None
    while True:
        if server.process.poll() is not None:
            raise NotReady(ready_path, timeout_s, server.process.returncode, status, server.log())
        try:
            status, _ = http_get(LOOPBACK, server.port, ready_path, PROBE_TIMEOUT_S)
        except OSError:
            status = None
        if status is not None and ready(status):
            return
        if time.monotonic() >= deadline:
            # Stopped first, so that the log holds whatever it printed on its way out.
            stop(server.process, stop_timeout_s)
            raise NotReady(ready_path, timeout_s, None, status, server.log())
        time.sleep(POLL_INTERVAL_S)


def stop(process: subprocess.Popen[bytes], timeout_s: float = STOP_TIMEOUT_S) -> None:
    """stop sends SIGTERM and waits up to `timeout_s` for the process to exit, then kills it."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

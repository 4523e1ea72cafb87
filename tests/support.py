"""Shared helpers for tests that run real processes: servers (started with
admission.bench.process.served), redis-servers, and raw HTTP over sockets."""

from __future__ import annotations

import asyncio
import contextlib
import http.client
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from admission.bench.process import NotReady, Server, free_port, served, without_settings

REPO = Path(__file__).resolve().parent.parent


NO_REDIS = "redis-server is not installed (install it, e.g. `apt install redis-server`)"


def no_redis_server() -> str:
    """no_redis_server ends a test that needs a redis-server binary where there is none: not
    run, and why (`python3 dev.py test` then says so in one line); a failure under CI
    (`CI` set), which must run them all."""
    if os.environ.get("CI"):
        pytest.fail(NO_REDIS)
    pytest.skip(NO_REDIS)


def wait_until(predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
    """wait_until polls `predicate` every 20 ms until it holds, or fails after `timeout_s`."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout_s}s waiting for {what}")


@contextlib.contextmanager
def run_server(
    argv: list[str],
    env: Mapping[str, str] | None = None,
    *,
    port: int | None = None,
    ready_path: str = "/healthz",
    start_timeout_s: float = 20.0,
    new_session: bool = False,
    cwd: Path = REPO,
) -> Iterator[Server]:
    """run_server is `served` as the tests run a server: from `cwd`, with ADMISSION_*
    taken only from `env`, unbuffered output, and started once `ready_path` answers anything
    below 500; a server that does not start is an AssertionError with its log. `new_session`
    starts it as the leader of a process group of its own, which a test may signal as a
    terminal would (`os.killpg(server.process.pid, ...)`)."""
    full_env = without_settings()
    full_env.update(env or {})
    full_env.setdefault("PYTHONUNBUFFERED", "1")
    with contextlib.ExitStack() as stack:
        try:
            server = stack.enter_context(
                served(
                    argv,
                    full_env,
                    port=port,
                    ready_path=ready_path,
                    ready=lambda status: status < 500,
                    start_timeout_s=start_timeout_s,
                    cwd=cwd,
                    new_session=new_session,
                )
            )
        except NotReady as exc:
            if exc.returncode is not None:
                raise AssertionError(f"server exited with {exc.returncode}:\n{exc.log}") from exc
            raise AssertionError(f"server did not start in {start_timeout_s}s:\n{exc.log}") from exc
        yield server


def admission_serve(app: str | None = None, *extra: str) -> list[str]:
    """admission_serve is the argv of `admission serve [app] --port {port}`."""
    argv = [sys.executable, "-m", "admission", "serve"]
    if app:
        argv.append(app)
    return [*argv, "--host", "127.0.0.1", "--port", "{port}", *extra]


def plain_uvicorn(app: str, *extra: str) -> list[str]:
    """plain_uvicorn is the argv of `uvicorn app --port {port}` (no admission CLI)."""
    return [sys.executable, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", "{port}", *extra]


def plain_hypercorn(app: str, *extra: str) -> list[str]:
    """plain_hypercorn is the argv of the hypercorn command docs/deployment.md gives: one
    process (`--workers 0`), whose event loop hears the signals admission chains."""
    bind = "127.0.0.1:{port}"
    return [sys.executable, "-m", "hypercorn", app, "--bind", bind, "--workers", "0", *extra]


def plain_granian(app: str, *extra: str) -> list[str]:
    """plain_granian is the argv of the granian command docs/deployment.md gives: ASGI with
    lifespan, on asyncio's event loop."""
    return [
        sys.executable,
        "-m",
        "granian",
        "--interface",
        "asgi",
        "--loop",
        "asyncio",
        "--host",
        "127.0.0.1",
        "--port",
        "{port}",
        *extra,
        app,
    ]


@dataclass
class RedisServer:
    """RedisServer is a redis-server this test started on its own port."""

    port: int
    process: subprocess.Popen[bytes] | None = None
    dir: str = ""
    extra_args: tuple[str, ...] = ()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        """start launches redis-server (again) on the same port and waits for PING."""
        binary = shutil.which("redis-server")
        binary = binary or no_redis_server()
        self.process = subprocess.Popen(
            [
                binary,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                self.dir,
                *self.extra_args,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        wait_until(self.ping, 10, f"redis-server on port {self.port}")

    def ping(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as sock:
                sock.sendall(b"PING\r\n")
                return sock.recv(16).startswith(b"+PONG")
        except OSError:
            return False

    def kill(self) -> None:
        """kill stops the server at once (SIGKILL), as a crash would."""
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait(timeout=5)


@contextlib.contextmanager
def own_redis_server() -> Iterator[RedisServer]:
    """own_redis_server starts a throwaway redis-server on a free port and stops it after."""
    with tempfile.TemporaryDirectory(prefix="admission-redis-") as tmp:
        server = RedisServer(free_port(), dir=tmp)
        server.start()
        try:
            yield server
        finally:
            server.kill()


def pid_alive(pid: int) -> bool:
    """pid_alive is False once `pid` is gone or a zombie nobody reaped yet (killed all the same)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def redis_call(port: int, *args: str, timeout_s: float = 2.0) -> bytes:
    """redis_call sends one command to 127.0.0.1:`port` and returns the raw reply (one read,
    enough for the short replies the helpers below ask for)."""
    command = b"*%d\r\n" % len(args) + b"".join(
        b"$%d\r\n%s\r\n" % (len(a.encode()), a.encode()) for a in args
    )
    with socket.create_connection(("127.0.0.1", port), timeout=timeout_s) as sock:
        sock.sendall(command)
        return sock.recv(65536)


@dataclass
class RedisClusterNodes:
    """RedisClusterNodes is a Redis Cluster of masters this test started on free ports."""

    nodes: list[RedisServer]

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        return f"redis+cluster://{hosts}"


@contextlib.contextmanager
def own_redis_cluster(masters: int = 3, timeout_s: float = 30.0) -> Iterator[RedisClusterNodes]:
    """own_redis_cluster starts `masters` cluster-enabled redis-servers (each with a bus port of
    its own, `cluster-port`), joins them with `redis-cli --cluster create`, waits until every
    node reports `cluster_state:ok`, and stops them all after."""
    redis_cli = shutil.which("redis-cli")
    assert redis_cli, "redis-cli is not installed"
    with tempfile.TemporaryDirectory(prefix="admission-cluster-") as tmp:
        nodes: list[RedisServer] = []
        try:
            for i in range(masters):
                node_dir = Path(tmp) / str(i)
                node_dir.mkdir()
                node = RedisServer(
                    free_port(),
                    dir=str(node_dir),
                    extra_args=(
                        "--cluster-enabled",
                        "yes",
                        "--cluster-port",
                        str(free_port()),
                        "--cluster-config-file",
                        str(node_dir / "nodes.conf"),
                        "--cluster-node-timeout",
                        "5000",
                    ),
                )
                nodes.append(node)
                node.start()
            subprocess.run(
                [redis_cli, "--cluster", "create"]
                + [f"127.0.0.1:{node.port}" for node in nodes]
                + ["--cluster-replicas", "0", "--cluster-yes"],
                check=True,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
                timeout=timeout_s,
            )
            for node in nodes:

                def ok(port: int = node.port) -> bool:
                    return b"cluster_state:ok" in redis_call(port, "CLUSTER", "INFO")

                wait_until(ok, timeout_s, f"cluster node {node.port} to be ok")
            yield RedisClusterNodes(nodes)
        finally:
            for node in nodes:
                node.kill()


@dataclass
class RedisSentinelSetup:
    """RedisSentinelSetup is a master, optionally a replica, and one sentinel watching them
    as `mymaster`, all started by this test."""

    master: RedisServer
    replica: RedisServer | None
    sentinel_port: int
    sentinel: subprocess.Popen[bytes]

    @property
    def url(self) -> str:
        return f"redis+sentinel://127.0.0.1:{self.sentinel_port}/mymaster"

    def master_port(self) -> int | None:
        """master_port is the port the sentinel names as the master's now."""
        try:
            reply = redis_call(
                self.sentinel_port, "SENTINEL", "GET-MASTER-ADDR-BY-NAME", "mymaster"
            )
        except OSError:
            return None
        lines = reply.split(b"\r\n")
        return int(lines[4]) if len(lines) > 4 and lines[0] == b"*2" else None


@contextlib.contextmanager
def own_redis_sentinel(
    replica: bool = False, timeout_s: float = 30.0
) -> Iterator[RedisSentinelSetup]:
    """own_redis_sentinel starts a master (and a replica of it when asked) and a sentinel
    monitoring it with a quorum of one and a 500 ms down-after, so that a test may kill the
    master and see the replica promoted within seconds; stops them all after."""
    binary = shutil.which("redis-server")
    binary = binary or no_redis_server()
    with tempfile.TemporaryDirectory(prefix="admission-sentinel-") as tmp:
        started: list[RedisServer] = []
        sentinel_process: subprocess.Popen[bytes] | None = None
        try:
            master_dir = Path(tmp) / "master"
            master_dir.mkdir()
            master = RedisServer(free_port(), dir=str(master_dir))
            started.append(master)
            master.start()
            replica_server: RedisServer | None = None
            if replica:
                replica_dir = Path(tmp) / "replica"
                replica_dir.mkdir()
                replica_server = RedisServer(
                    free_port(),
                    dir=str(replica_dir),
                    extra_args=("--replicaof", "127.0.0.1", str(master.port)),
                )
                started.append(replica_server)
                replica_server.start()
            sentinel_port = free_port()
            conf = Path(tmp) / "sentinel.conf"
            conf.write_text(
                f"port {sentinel_port}\n"
                "bind 127.0.0.1\n"
                f"dir {tmp}\n"
                f"sentinel monitor mymaster 127.0.0.1 {master.port} 1\n"
                "sentinel down-after-milliseconds mymaster 500\n"
                "sentinel failover-timeout mymaster 5000\n"
            )
            sentinel_process = subprocess.Popen(
                [binary, str(conf), "--sentinel"],
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            setup = RedisSentinelSetup(master, replica_server, sentinel_port, sentinel_process)
            wait_until(
                lambda: setup.master_port() == master.port, timeout_s, "the sentinel to start"
            )
            if replica_server is not None:
                wait_until(
                    lambda: (
                        b"master_link_status:up"
                        in redis_call(replica_server.port, "INFO", "replication")
                    ),
                    timeout_s,
                    "the replica to sync",
                )
                wait_until(
                    lambda: (
                        redis_call(sentinel_port, "SENTINEL", "REPLICAS", "mymaster").count(
                            str(replica_server.port).encode()
                        )
                        > 0
                    ),
                    timeout_s,
                    "the sentinel to know the replica",
                )
            yield setup
        finally:
            if sentinel_process is not None and sentinel_process.poll() is None:
                sentinel_process.kill()
                sentinel_process.wait(timeout=5)
            for server in started:
                server.kill()


# Generous: the machine is shared, and nothing here measures speed.
SETTLE_S = 5.0


# --- raw HTTP over sockets, for the process tests ---------------------------------------------


def open_request(
    port: int,
    path: str,
    *,
    method: str = "GET",
    headers: dict[str, str] | None = None,
    body: bytes = b"",
    sock: socket.socket | None = None,
) -> socket.socket:
    """open_request sends one HTTP/1.1 request on `sock` (default: a new connection) and
    leaves the answer unread."""
    if sock is None:
        sock = socket.create_connection(("127.0.0.1", port), timeout=SETTLE_S)
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    sock.sendall(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body)
    return sock


def read_response(sock: socket.socket, timeout_s: float = 15.0) -> http.client.HTTPResponse:
    """read_response reads one whole response (head and body) from `sock`."""
    sock.settimeout(timeout_s)
    response = http.client.HTTPResponse(sock)
    response.begin()
    response.body = response.read()  # type: ignore[attr-defined]
    return response


def body_of(response: http.client.HTTPResponse) -> bytes:
    return response.body  # type: ignore[attr-defined,no-any-return]


def in_flight(server: Server) -> int:
    return int(httpx.get(server.url + "/readyz", timeout=2).json()["in_flight"])


def metric(server: Server, name: str, **labels: str) -> float:
    """metric is the sample of the server's /metrics with `labels` (others may be there too,
    such as the empty `policy` of refusals that are not rate limits), 0.0 when absent."""
    text = httpx.get(server.url + "/metrics", timeout=2).text
    want = {f'{k}="{v}"' for k, v in labels.items()}
    pattern = re.compile(rf"^{re.escape(name)}(?:\{{([^}}]*)\}})? (\S+)$", re.MULTILINE)
    for match in pattern.finditer(text):
        got = set(match.group(1).split(",")) if match.group(1) else set()
        if want <= got:
            return float(match.group(2))
    return 0.0


def request_concurrently(server: Server, paths: list[str]) -> list[http.client.HTTPResponse]:
    """request_concurrently connects once per path, then sends every request before reading
    any answer, so that all of them are in the server at once."""
    socks = [socket.create_connection(("127.0.0.1", server.port), timeout=SETTLE_S) for _ in paths]
    try:
        for sock, path in zip(socks, paths, strict=True):
            open_request(server.port, path, sock=sock)
        return [read_response(sock) for sock in socks]
    finally:
        for sock in socks:
            sock.close()


def get_concurrently(server: Server, paths: list[str]) -> list[int]:
    """get_concurrently is the statuses of `request_concurrently`."""
    return [response.status for response in request_concurrently(server, paths)]


def server_has_read(server_port: int, client_port: int) -> bool:
    """server_has_read is True once the server has taken everything the client at
    `client_port` sent from its socket (the kernel lists its receive queue as empty in
    /proc/net/tcp): a request in its hands rather than in the kernel's."""
    for path in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(path).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            local, remote, queues = fields[1], fields[2], fields[4]
            if (
                int(local.rsplit(":", 1)[1], 16) == server_port
                and int(remote.rsplit(":", 1)[1], 16) == client_port
            ):
                return int(queues.split(":")[1], 16) == 0
    return False


async def read_stream_response(
    reader: asyncio.StreamReader,
) -> tuple[int, dict[str, str], bytes]:
    """read_stream_response reads one HTTP/1.1 response with a Content-Length body from an
    asyncio stream; EOFError when the connection closes before a status line arrives."""
    status_line = await reader.readline()
    if not status_line:
        raise EOFError("closed before a response")
    status = int(status_line.split()[1])
    headers: dict[str, str] = {}
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


def assert_hurried(
    status: int | None, exited: float, hurried: float, replies: list[Any], log: str
) -> None:
    """assert_hurried checks a drain a second signal hurried: the process exited 0 within 5 s
    of it, and each request in flight was cut short with 503 `drain_deadline` (or its
    connection closed), as the log says."""
    assert exited - hurried < 5.0, "the second signal did not cut the 60 s drain short"
    assert status == 0, log
    for reply in replies:
        assert reply.error is None or reply.error.startswith("closed"), reply
        if reply.error is None:
            assert (reply.status, reply.reason) == (503, "drain_deadline"), reply
    assert "again: cancelling what is still in flight" in log
    assert "cancelled 2 request(s)" in log

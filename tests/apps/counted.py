"""tests.apps.counted: a Starlette app with `AdmissionMiddleware` added, counting handler starts.

It is what a user writes to run the middleware under a plain `uvicorn tests.apps.counted:app`
(with or without `--workers`). Every start of the `/slow` handler appends one line,
`<pid> <X-Request-Id>`, to the file that `DRAIN_TEST_STARTS` names (nothing when unset), so a
test can prove that a request refused with 503 never reached its handler and can tell which
worker ran which request. Responses carry the worker's pid in `X-Worker-Pid`.
"""

from __future__ import annotations

import asyncio
import os

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse, Response
from starlette.routing import Route

from admission import AdmissionMiddleware

STARTS_ENV = "DRAIN_TEST_STARTS"
_starts_fd: int | None = None


def record_start(request_id: str) -> None:
    """record_start appends `<pid> <request_id>` to the starts file, in one write: lines from
    several workers never interleave because the file is opened for appending."""
    global _starts_fd
    path = os.environ.get(STARTS_ENV)
    if not path:
        return
    if _starts_fd is None:
        _starts_fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.write(_starts_fd, f"{os.getpid()} {request_id}\n".encode())


def _pid_header() -> dict[str, str]:
    return {"x-worker-pid": str(os.getpid())}


async def index(request: Request) -> Response:
    """index answers at once."""
    return PlainTextResponse("ok\n", headers=_pid_header())


async def slow(request: Request) -> Response:
    """slow records its start, then sleeps `ms` milliseconds (default 100)."""
    record_start(request.headers.get("x-request-id", "-"))
    ms = int(request.query_params.get("ms", "100"))
    await asyncio.sleep(ms / 1000)
    return PlainTextResponse(f"slept {ms} ms\n", headers=_pid_header())


app = Starlette(routes=[Route("/", index), Route("/slow", slow)])
app.add_middleware(AdmissionMiddleware)

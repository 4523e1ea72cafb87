"""tests.apps.resources: an app that holds what a drain must release, and says what happened.

At start-up it starts a child process and a background task through `service_lifetime()` and
registers three cleanups (the middle one raises). `GET /job?ms=N` starts a child process and a
task through `request_lifetime(request)` and answers after N ms. Every event is appended as
one line to the file `DRAIN_TEST_EVENTS` names, so a test can check, after the process has
exited, which children were started, that the task saw its cancellation, and in what order
the cleanups and the application's own shutdown ran.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from admission import AdmissionMiddleware, request_lifetime, service_lifetime

EVENTS_ENV = "DRAIN_TEST_EVENTS"
# A child that would outlive the test by far if nothing stopped it.
CHILD_ARGV = ("sleep", "600")


def record(event: str) -> None:
    """record appends `event` as one line to the events file (nothing when it is unset)."""
    path = os.environ.get(EVENTS_ENV)
    if not path:
        return
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, f"{event}\n".encode())
    finally:
        os.close(fd)


async def ticker(name: str) -> None:
    """ticker runs until cancelled and records that it was."""
    try:
        await asyncio.Event().wait()
    except asyncio.CancelledError:
        record(f"{name} cancelled")
        raise


def failing_cleanup() -> None:
    """failing_cleanup raises, as a buggy cleanup would."""
    record("cleanup 2 raises")
    raise RuntimeError("cleanup 2 failed on purpose")


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """lifespan starts the service's child and task and registers its cleanups."""
    life = service_lifetime()
    child = await life.start_process(*CHILD_ARGV)
    record(f"service-child {child.pid}")
    life.spawn(ticker("service-task"), name="service-task")
    life.on_close(lambda: record("cleanup 1"))
    life.on_close(failing_cleanup)

    @life.on_close
    async def cleanup_3() -> None:
        record("cleanup 3")

    record("app started")
    yield
    record("app shutdown")


async def job(request: Request) -> Response:
    """job holds a child process and a task for the request's duration, `ms` milliseconds."""
    life = request_lifetime(request)
    child = await life.start_process(*CHILD_ARGV)
    life.spawn(ticker("job-task"), name="job-task")
    record(f"job-child {child.pid}")
    await asyncio.sleep(int(request.query_params.get("ms", "100")) / 1000)
    return JSONResponse({"child": child.pid})


app = AdmissionMiddleware(Starlette(routes=[Route("/job", job)], lifespan=lifespan))

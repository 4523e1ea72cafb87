"""tests.apps.ordered_cleanups: an app whose cleanups state their order with priorities.

One cleanup is registered at import time, the others by the lifespan, as separate modules of a
service would: a data flush (priority 10) before the pools close (0, last-registered first) and
health reporting last (-10). Each cleanup appends one line to the file `DRAIN_TEST_EVENTS`
names, so a test can check their order, and that each ran once, after the process exited.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import AsyncIterator

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from admission import AdmissionMiddleware, service_lifetime


def record(event: str) -> None:
    """record appends `event` as one line to the events file."""
    with open(os.environ["DRAIN_TEST_EVENTS"], "a") as f:
        f.write(f"{event}\n")


# Registered before the middleware exists: the service lifetime adopts it.
service_lifetime().on_close(lambda: record("cleanup flush-audit"), priority=5)


@contextlib.asynccontextmanager
async def lifespan(app: Starlette) -> AsyncIterator[None]:
    """lifespan registers the cleanups out of their order of running."""
    life = service_lifetime()
    life.on_close(lambda: record("cleanup report-health"), priority=-10)
    life.on_close(lambda: record("cleanup close-db-pool"))

    @life.on_close(priority=10)
    async def flush() -> None:
        record("cleanup flush-writes")

    life.on_close(lambda: record("cleanup close-cache-pool"))
    record("app started")
    yield
    record("app shutdown")


async def hello(request: Request) -> PlainTextResponse:
    return PlainTextResponse("hello")


app = AdmissionMiddleware(Starlette(routes=[Route("/", hello)], lifespan=lifespan))

"""An app that registers a service cleanup at import time, before the middleware exists."""

from __future__ import annotations

import os

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

import admission


async def index(request: object) -> PlainTextResponse:
    return PlainTextResponse("ok\n")


app = Starlette(routes=[Route("/", index)])
app.add_middleware(admission.AdmissionMiddleware)


def _mark() -> None:
    with open(os.environ["IMPORT_TIME_MARK"], "a") as f:
        f.write("cleanup ran\n")


admission.service_lifetime().on_close(_mark)

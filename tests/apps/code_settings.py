"""tests.apps.code_settings: an app whose settings are given in code (window 64), as a user
might write it, to check that `ADMISSION_*` variables it overrides are warned about."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from admission import AdmissionMiddleware, Settings


async def index(request: object) -> PlainTextResponse:
    return PlainTextResponse("ok\n")


app = Starlette(routes=[Route("/", index)])
app.add_middleware(AdmissionMiddleware, settings=Settings(window=64))

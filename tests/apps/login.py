"""A login endpoint for `charge_when` tests and docs/policies.md: `POST /login` answers 200
for the password "right" (in the `X-Password` header) and 401 for any other, and
`GET /ran` counts the requests the handler ran."""

from __future__ import annotations

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

ran = {"login": 0}


async def login(request: Request) -> JSONResponse:
    ran["login"] += 1
    if request.headers.get("x-password") == "right":
        return JSONResponse({"token": "..."})
    return JSONResponse({"error": "wrong password"}, status_code=401)


async def count(request: Request) -> JSONResponse:
    return JSONResponse(ran)


app = Starlette(routes=[Route("/login", login, methods=["POST"]), Route("/ran", count)])

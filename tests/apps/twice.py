"""tests.apps.twice: the middleware added twice, as the first block of a page pasted twice."""

from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

from admission import AdmissionMiddleware


async def home(request: object) -> PlainTextResponse:
    return PlainTextResponse("ok")


app = Starlette(routes=[Route("/", home)])
app.add_middleware(AdmissionMiddleware)
app.add_middleware(AdmissionMiddleware)

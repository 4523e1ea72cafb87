"""tests.apps.declared: a FastAPI app whose login limit is declared on its route, counting
the times its handler runs in the file DECLARED_RUNS names."""

import os

from fastapi import FastAPI

from admission import AdmissionMiddleware, limit

app = FastAPI()


@app.post("/login")
@limit("2/minute")
def login() -> dict[str, bool]:
    # A plain function: FastAPI runs it in a thread, where the file may block.
    with open(os.environ["DECLARED_RUNS"], "a") as runs:
        runs.write("login\n")
    return {"ok": True}


app.add_middleware(AdmissionMiddleware)

"""benchmarks/fastapi_json.py: a realistic FastAPI endpoint for the benchmarks, a pydantic
model in and a pydantic model out.

`POST /items` validates an `Item` from the JSON body and answers a `Priced` one. Run bare
with `uvicorn fastapi_json:app --app-dir benchmarks`, or under admission with
`admission serve fastapi_json:app` (with `benchmarks` on PYTHONPATH).
"""

from __future__ import annotations

from fastapi import FastAPI
from pydantic import BaseModel, Field

BODY = b'{"name":"widget","price":12.5,"quantity":3,"tags":["blue","small"]}'


class Item(BaseModel):
    """Item is what a client orders."""

    name: str = Field(max_length=100)
    price: float = Field(gt=0)
    quantity: int = Field(ge=1, le=1000)
    tags: list[str] = Field(default_factory=list, max_length=10)


class Priced(BaseModel):
    """Priced is the item with its total, tax included."""

    name: str
    quantity: int
    total: float
    tags: list[str]


app = FastAPI()


@app.get("/")
async def index() -> dict[str, str]:
    """index answers 200: the benchmarks wait for it before they start."""
    return {"status": "ok"}


@app.post("/items")
async def price(item: Item) -> Priced:
    """price totals an order at a 20 % tax."""
    return Priced(
        name=item.name,
        quantity=item.quantity,
        total=round(item.price * item.quantity * 1.2, 2),
        tags=item.tags,
    )

"""The FastAPI app of the app benchmark: one POST route that validates and echoes a body.

Served two ways in the same run: by bare uvicorn (bench.peers.fastapi_app) and through
cumulo as one function (`cumulo.app`)."""

from fastapi import FastAPI
from pydantic import BaseModel

import cumulo

api = cumulo.app(FastAPI(), name="api")


class Order(BaseModel):
    user: str
    items: list[int]
    nested: dict[str, int]


@api.post("/orders/{order_id}")
async def create(order_id: int, order: Order) -> dict[str, object]:
    return {"id": order_id, "user": order.user, "count": len(order.items)}

"""A FastAPI app deployed unchanged as one cumulo function (`cumulo.app`)."""

import asyncio
import os

from fastapi import FastAPI, HTTPException, Request
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel

import cumulo

api = cumulo.app(FastAPI(), name="shop")
ITEMS: dict[int, dict[str, object]] = {}


class Item(BaseModel):
    name: str
    price: float


class OutOfStock(Exception):
    pass


@api.exception_handler(OutOfStock)
async def out_of_stock(request: Request, exc: OutOfStock) -> JSONResponse:
    return JSONResponse({"detail": f"out of stock: {exc}"}, status_code=409)


@api.post("/items/{item_id}", status_code=201)
async def put_item(item_id: int, item: Item) -> dict[str, object]:
    ITEMS[item_id] = item.model_dump()
    return {"id": item_id, **ITEMS[item_id]}


@api.get("/items/{item_id}")
async def get_item(item_id: int, verbose: bool = False) -> dict[str, object]:
    if item_id == 13:
        raise OutOfStock("item 13")
    if item_id not in ITEMS:
        raise HTTPException(404, "no such item")
    return {"id": item_id, **ITEMS[item_id], **({"verbose": True} if verbose else {})}


@api.get("/whoami")
async def whoami(request: Request) -> dict[str, object]:
    return {
        "path": request.url.path,
        "root_path": request.scope.get("root_path"),
        "cookies": request.headers.getlist("cookie"),
        "authorization": request.headers.get("authorization"),
    }


@api.get("/ticks")
async def ticks(n: int = 3, gap: float = 0.3) -> StreamingResponse:
    async def events():  # type: ignore[no-untyped-def]
        for i in range(n):
            yield f"data: tick {i}\n\n"
            await asyncio.sleep(gap)

    return StreamingResponse(events(), media_type="text/event-stream")


@api.get("/pid")
async def pid(wait: float = 0.5) -> dict[str, int]:
    await asyncio.sleep(wait)
    return {"pid": os.getpid()}


@api.get("/boom")
async def boom() -> None:
    raise RuntimeError("unhandled in the app")

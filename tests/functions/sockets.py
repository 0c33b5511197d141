"""A FastAPI app with WebSocket routes, deployed unchanged as one cumulo function."""

import asyncio
import os

from fastapi import FastAPI, Request, WebSocket, WebSocketDisconnect

import cumulo

api = cumulo.app(FastAPI(), name="sockets")
# How each connection ended, as the app saw it: tag → close code (read over HTTP).
CLOSED: dict[str, int] = {}
SENT: dict[str, int] = {}  # messages a sender got through so far


@api.websocket("/echo")
async def echo(ws: WebSocket, tag: str = "") -> None:
    offered = ws.scope.get("subprotocols") or []
    await ws.accept(subprotocol="chat.v1" if "chat.v1" in offered else None)
    try:
        while True:
            message = await ws.receive()
            if message["type"] == "websocket.disconnect":
                CLOSED[tag] = int(message.get("code", 1005))
                return
            text = message.get("text")
            if text is not None and text.startswith("close:"):
                await ws.close(code=int(text.removeprefix("close:")), reason="asked to")
                return
            if text is not None and text.startswith("big:"):
                await ws.send_text("x" * int(text.removeprefix("big:")))
            elif text is not None:
                await ws.send_text(text)
            else:
                await ws.send_bytes(message.get("bytes") or b"")
    except WebSocketDisconnect as exc:
        CLOSED[tag] = exc.code


@api.websocket("/reject")
async def reject(ws: WebSocket) -> None:
    await ws.close(code=1008)


@api.websocket("/crash")
async def crash(ws: WebSocket) -> None:
    await ws.accept()
    await ws.receive_text()
    os._exit(1)


@api.websocket("/hold")
async def hold(ws: WebSocket, tag: str = "") -> None:
    """Accepts and never reads: the connection ends only by its time limit or its client."""
    await ws.accept()
    await ws.send_text("held")
    try:
        while True:
            await ws.receive_text()
    except WebSocketDisconnect as exc:
        CLOSED[tag] = exc.code


@api.websocket("/flood")
async def flood(ws: WebSocket, n: int = 1000, size: int = 1024) -> None:
    """Sends n messages as fast as it may: flow control paces it to its client."""
    await ws.accept()
    SENT["flood"] = 0
    noise = os.urandom(size)  # incompressible: permessage-deflate must not hide the size
    try:
        for _ in range(n):
            await ws.send_bytes(noise)
            SENT["flood"] += 1
    except WebSocketDisconnect:
        pass


@api.websocket("/deaf")
async def deaf(ws: WebSocket) -> None:
    """Accepts and never reads, nor returns: stopped at its time limit."""
    await ws.accept()
    await ws.send_text("deaf")
    await asyncio.sleep(3600)


@api.websocket("/who")
async def who(ws: WebSocket) -> None:
    await ws.accept()
    await ws.send_json(
        {
            "client": list(ws.client) if ws.client else None,
            "url": str(ws.url),
            "echo_url": str(ws.url_for("echo")),
            "authorization": ws.headers.get("authorization"),
        }
    )
    await ws.close()


@api.get("/closed/{tag}")
async def closed(tag: str) -> dict[str, int | None]:
    return {"code": CLOSED.get(tag)}


@api.get("/sent/{tag}")
async def sent(tag: str) -> dict[str, int]:
    return {"n": SENT.get(tag, 0)}


@api.get("/who")
async def who_http(request: Request) -> dict[str, object]:
    return {
        "client": list(request.client) if request.client else None,
        "url": str(request.url),
        "item_url": str(request.url_for("item", item_id=7)),
        "base_url": str(request.base_url),
    }


@api.get("/items/{item_id}", name="item")
async def item(item_id: int) -> dict[str, int]:
    return {"id": item_id}


@api.get("/pause")
async def pause(seconds: float = 0.1) -> dict[str, float]:
    await asyncio.sleep(seconds)
    return {"slept": seconds}

"""The app of the WebSocket benchmark: one route that echoes every message back.

Served two ways in the same run: by bare uvicorn (bench.peers.ws_echo_app) and through
cumulo as one function (`cumulo.app`)."""

from fastapi import FastAPI, WebSocket, WebSocketDisconnect

import cumulo

api = cumulo.app(FastAPI(), name="wsecho")


@api.websocket("/echo")
async def echo(ws: WebSocket) -> None:
    await ws.accept()
    try:
        while True:
            await ws.send_text(await ws.receive_text())
    except WebSocketDisconnect:
        pass

"""Bare Starlette peer: parse the JSON body, return it as JSON.

Run as `python -m uvicorn bench.peers.starlette_echo:app --loop uvloop --http httptools`
(one process, no access log), the same server stack the cumulo gateway uses.
"""

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route


async def echo(request: Request) -> JSONResponse:
    return JSONResponse(await request.json())


app = Starlette(routes=[Route("/{path:path}", echo, methods=["POST"])])

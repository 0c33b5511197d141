"""Bare-uvicorn peer of the WebSocket benchmark: the very same FastAPI app object.

Run as `python -m uvicorn bench.peers.ws_echo_app:app --loop uvloop --http httptools
--ws websockets-sansio` (the gateway's own settings)."""

from bench.functions.ws_echo import api as app

__all__ = ["app"]

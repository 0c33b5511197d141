"""Bare-uvicorn peer of the app benchmark: the very same FastAPI app object.

Run as `python -m uvicorn bench.peers.fastapi_app:app --loop uvloop --http httptools`."""

from bench.functions.fastapi_app import api as app

__all__ = ["app"]

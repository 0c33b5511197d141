"""`cumulo alerts`: anomaly alerts from `GET /v1/alerts`, newest first."""

from __future__ import annotations

import time
from typing import Annotated, Any

import orjson
import typer
from rich.console import Console

from cumulo.cli import render
from cumulo.errors import CumuloError

out = Console()
err = Console(stderr=True)
UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(1)


def _ago(text: str) -> float:
    """ "90s", "15m", "6h", "2d" -> that long ago, as epoch seconds."""
    unit = UNITS.get(text[-1:], 0)
    try:
        amount = float(text[:-1]) if unit else float("nan")
    except ValueError:
        amount = float("nan")
    if not unit or not amount >= 0:
        _fail(f"--since takes an age like 90s, 15m, 6h or 2d, not {text!r}")
    return time.time() - amount * unit


def alerts(
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Only this namespace.")
    ] = None,
    since: Annotated[str | None, typer.Option(help="Only newer ones, e.g. 1h or 2d.")] = None,
    limit: Annotated[int, typer.Option(help="At most this many (1-1000).")] = 50,
    as_json: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
) -> None:
    """List anomaly alerts (unusual rates, errors, auth failures, scraping)."""
    params: dict[str, Any] = {"limit": limit}
    if namespace:
        params["namespace"] = namespace
    if since:
        params["since"] = _ago(since)
    try:
        from cumulo.client import Client  # lazily: `cumulo up` never loads httpx

        with Client() as client:
            found = client.request("GET", "/v1/alerts", params=params).json()["alerts"]
    except CumuloError as exc:
        _fail(str(exc))
        return
    if as_json or output == "json":
        print(orjson.dumps(found, option=orjson.OPT_INDENT_2).decode())
        return
    if not found:
        out.print("no alerts")
        return
    rows = []
    for a in found:
        seen = a.get("observed", {})
        rows.append(
            (
                render.when(a["ts"]),
                a["namespace"],
                a["kind"],
                a["entity"],
                ", ".join(a["reasons"]),
                str(seen.get("requests", "")),
                str(seen.get("errors", "")),
                str(seen.get("denials", "")),
            )
        )
    render.table(("TIME", "NAMESPACE", "KIND", "ENTITY", "REASONS", "REQ", "ERR", "DENIED"), rows)


def register(app: typer.Typer) -> None:
    app.command("alerts")(alerts)

"""`cumulo usage` (usage and cost) and `cumulo quota set|show` (monthly quotas)."""

from __future__ import annotations

import datetime as dt
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich import box
from rich.console import Console
from rich.table import Table

from cumulo.errors import CumuloError

if TYPE_CHECKING:
    from cumulo.client import Client

out = Console()
err = Console(stderr=True)

quota_app = typer.Typer(
    rich_markup_mode=None, help="Monthly quotas per namespace (GB-seconds, invocations)."
)

COLUMNS = ("INVOCATIONS", "ERRORS", "GB-S", "CPU-S", "IN-BYTES", "OUT-BYTES", "COST")


def _fail(message: str) -> None:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(1)


def _call(action: Any) -> Any:
    try:
        return action()
    except CumuloError as exc:
        _fail(str(exc))


def _hour(epoch: int) -> str:
    return dt.datetime.fromtimestamp(epoch, dt.UTC).strftime("%Y-%m-%dT%H:00Z")


def _cells(numbers: dict[str, Any]) -> list[str]:
    return [
        str(numbers["invocations"]),
        str(numbers["errors"]),
        f"{numbers['gb_seconds']:.6f}",
        f"{numbers['cpu_seconds']:.6f}",
        str(numbers["bytes_in"]),
        str(numbers["bytes_out"]),
        f"{numbers['cost']:.9f}",
    ]


def usage_table(report: dict[str, Any], plain: bool) -> Table:
    """The report as a table; `plain` (not a terminal): no borders, one row per line."""
    by_hour = report["by"] == "hour"
    head = ["NAMESPACE", "FUNCTION", *(["HOUR"] if by_hour else []), *COLUMNS]
    table = Table(*head, box=None if plain else box.SIMPLE_HEAVY, pad_edge=False)
    for row in report["rows"]:
        where = [row["namespace"], row["function"], *([_hour(row["hour"])] if by_hour else [])]
        table.add_row(*where, *_cells(row))
    return table


def usage(
    namespace: Annotated[
        str | None,
        typer.Option("--namespace", "-n", help="Namespace (default: the key's; admin: all)."),
    ] = None,
    since: Annotated[str, typer.Option(help="Start: 7d, 12h, epoch seconds or ISO date.")] = "7d",
    until: Annotated[str | None, typer.Option(help="End (default: now).")] = None,
    by: Annotated[str, typer.Option(help="Rows per function or per function and hour.")] = (
        "function"
    ),
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
) -> None:
    """Usage and cost per function (or hour), and the total cost."""
    if by not in ("function", "hour"):
        _fail(f"--by takes function or hour, not {by!r}")
    if output not in ("table", "json"):
        _fail(f"-o takes table or json, not {output!r}")
    from cumulo.client import Client  # lazily: `cumulo up` never loads httpx

    c: Client = _call(lambda: Client(namespace=namespace or "default"))
    report: dict[str, Any] = _call(
        lambda: c.usage(namespace=namespace, since=since, until=until, by=by)
    )
    if output == "json":
        import orjson

        print(orjson.dumps(report, option=orjson.OPT_INDENT_2).decode())
        return
    plain = not out.is_terminal
    console = Console(width=250) if plain else out
    console.print(usage_table(report, plain), highlight=False, soft_wrap=plain)
    total = report["total"]
    console.print(
        f"total: {total['invocations']} invocations, {total['errors']} errors, "
        f"{total['gb_seconds']:.6f} GB-s, {total['cpu_seconds']:.6f} CPU-s, "
        f"cost {total['cost']:.6f} {report['currency']} "
        f"({_scope(report['namespace'])}, {_hour(report['since'])} to "
        f"{dt.datetime.fromtimestamp(report['until'], dt.UTC):%Y-%m-%dT%H:%M:%SZ})",
        highlight=False,
        soft_wrap=True,
    )


def _scope(namespace: str) -> str:
    return "all namespaces" if namespace == "*" else f"namespace {namespace}"


def _show_quota(view: dict[str, Any]) -> None:
    used = view["used"]
    resets = dt.datetime.fromtimestamp(view["period"]["resets_at"], dt.UTC)

    def limit(value: Any) -> str:
        return "no limit" if value is None else f"{value:g}"

    out.print(
        f"namespace {view['namespace']}: invocations {used['invocations']} of "
        f"{limit(view['invocations'])}, GB-seconds {used['gb_seconds']:.6f} of "
        f"{limit(view['gb_seconds'])} this month (resets {resets:%Y-%m-%dT%H:%M:%SZ})",
        highlight=False,
        soft_wrap=True,
    )


@quota_app.command("set")
def quota_set(
    namespace: Annotated[str, typer.Argument(help="The namespace the quota applies to.")],
    gb_seconds: Annotated[
        float | None, typer.Option(help="GB-seconds per month (omit: no limit).")
    ] = None,
    invocations: Annotated[
        int | None, typer.Option(help="Invocations per month (omit: no limit).")
    ] = None,
) -> None:
    """Set a namespace's monthly quota (both omitted: remove it). Platform admin keys only."""
    from cumulo.client import Client  # lazily: `cumulo up` never loads httpx

    c: Client = _call(lambda: Client(namespace=namespace))
    _show_quota(_call(lambda: c.set_quota(gb_seconds=gb_seconds, invocations=invocations)))


@quota_app.command("show")
def quota_show(
    namespace: Annotated[str, typer.Argument(help="The namespace.")] = "default",
) -> None:
    """A namespace's monthly quota and what it used this month."""
    from cumulo.client import Client  # lazily: `cumulo up` never loads httpx

    c: Client = _call(lambda: Client(namespace=namespace))
    _show_quota(_call(c.quota))


def register(app: typer.Typer) -> None:
    """`cumulo usage` and `cumulo quota` on the main command."""
    app.command("usage")(usage)
    app.add_typer(quota_app, name="quota")

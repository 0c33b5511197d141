"""`cumulo privacy`: data subject requests, exports, erasure, consent, retention, report."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, NoReturn

import orjson
import typer
from rich.console import Console

from cumulo.cli import render
from cumulo.errors import CumuloError

if TYPE_CHECKING:
    from cumulo.privacy.service import PrivacySettings

app = typer.Typer(
    rich_markup_mode=None,
    help="Privacy (GDPR/CCPA): subject requests, export, erasure, consent, retention.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
retention_app = typer.Typer(
    rich_markup_mode=None, help="Retention of logs, records and subject data."
)
app.add_typer(retention_app, name="retention")

out = Console()
err = Console(stderr=True)

Namespace = Annotated[str, typer.Option("--namespace", "-n", help="Namespace (tenant).")]
Regime = Annotated[str, typer.Option(help="gdpr (one month) or ccpa (45 days).")]
JsonOut = Annotated[bool, typer.Option("--json", help="Print JSON.")]


def fail(message: str, code: int = 1) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False, markup=True, soft_wrap=True)
    raise typer.Exit(code)


def privacy_settings(
    retention: str | None, redact: str, on_error: Callable[[str], object]
) -> PrivacySettings:
    """`cumulo up --retention/--redact/--no-redact` → the platform's privacy settings."""
    from cumulo.privacy.redact import parse_kinds
    from cumulo.privacy.service import PrivacySettings, parse_duration

    try:
        ttl = parse_duration(retention) if retention else None
        kinds = parse_kinds(redact)
    except ValueError as exc:
        on_error(str(exc))
        raise typer.Exit(1) from None
    return PrivacySettings(retention_s=ttl, redact=kinds)


def _call(method: str, path: str, **kwargs: Any) -> Any:
    try:
        from cumulo.client import Client  # lazily: `cumulo up` never loads httpx

        with Client() as c:
            return c.request(method, path, **kwargs).json()
    except CumuloError as exc:
        fail(str(exc))


def _print(data: Any) -> None:
    sys.stdout.write(orjson.dumps(data, option=orjson.OPT_INDENT_2).decode() + "\n")


def _requests_table(rows: list[dict[str, Any]]) -> None:
    # Full ids, never cut: they are what `privacy export ID` takes.
    render.table(
        ("ID", "NAMESPACE", "TYPE", "REGIME", "STATUS", "DUE", "OVERDUE"),
        [
            (
                r["id"],
                r["namespace"],
                r["type"],
                r["regime"],
                r["status"],
                render.when(r["due_at"]),
                "yes" if r["overdue"] else "",
            )
            for r in rows
        ],
    )


@app.command()
def request(
    kind: Annotated[str, typer.Argument(help="access, portability or erasure.")],
    subject: Annotated[str, typer.Argument(help="The data subject, e.g. user:123.")],
    regime: Regime = "gdpr",
    hold: Annotated[bool, typer.Option(help="Record it without processing it yet.")] = False,
    namespace: Namespace = "default",
) -> None:
    """File a data subject request (processed at once unless --hold)."""
    body = {
        "type": kind,
        "subject": subject,
        "regime": regime,
        "namespace": namespace,
        "process": not hold,
    }
    _print(_call("POST", "/v1/privacy/requests", json=body))


@app.command()
def erase(
    subject: Annotated[str, typer.Argument(help="The data subject, e.g. user:123.")],
    regime: Regime = "gdpr",
    namespace: Namespace = "default",
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
) -> None:
    """Erase a data subject now: rows deleted, its key destroyed (crypto-shredding)."""
    if not yes:
        if not sys.stdin.isatty():
            fail(f"Erase {subject} for good? Pass --yes to confirm (stdin is not a terminal)")
        if not typer.confirm(f"Erase {subject} for good?", default=False):
            fail("cancelled")
    body = {"type": "erasure", "subject": subject, "regime": regime, "namespace": namespace}
    result = _call("POST", "/v1/privacy/requests", json=body)
    if result["status"] != "completed":
        fail(f"erasure {result['id']} {result['status']}: {result.get('error')}")
    counts = ", ".join(f"{k}={v}" for k, v in (result.get("counts") or {}).items())
    out.print(f"erased ({result['id']}): {counts}", highlight=False)


@app.command()
def status(
    request_id: Annotated[str | None, typer.Argument(help="One request (default: all).")] = None,
    as_json: JsonOut = False,
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="Only this namespace.")
    ] = None,
    output: Annotated[str, typer.Option("--output", "-o", help="table or json.")] = "table",
) -> None:
    """Requests and their status; overdue ones are flagged."""
    if output not in render.OUTPUTS:
        fail(f"-o takes table or json, not {output!r}")
    if request_id is not None:
        _print(_call("GET", f"/v1/privacy/requests/{request_id}"))
        return
    params = {"namespace": namespace} if namespace else {}
    rows = _call("GET", "/v1/privacy/requests", params=params)["requests"]
    if as_json or output == "json":
        _print(rows)
    else:
        _requests_table(rows)


@app.command()
def export(
    request_id: str,
    output: Annotated[Path | None, typer.Option("--output", "-o", help="Write here.")] = None,
    namespace: Annotated[
        str | None, typer.Option("--namespace", "-n", help="The request's namespace.")
    ] = None,
) -> None:
    """The JSON export of a completed access/portability request."""
    params = {"namespace": namespace} if namespace else {}
    data = _call("GET", f"/v1/privacy/requests/{request_id}/export", params=params)
    text = orjson.dumps(data, option=orjson.OPT_INDENT_2)
    if output is None:
        sys.stdout.write(text.decode() + "\n")
    else:
        output.write_bytes(text)
        out.print(f"wrote {output}", highlight=False)


@app.command()
def consent(
    action: Annotated[str, typer.Argument(help="grant, withdraw or show.")],
    subject: str,
    purpose: Annotated[str | None, typer.Argument(help="e.g. marketing")] = None,
    source: Annotated[str, typer.Option(help="Where the consent was given.")] = "cli",
    namespace: Namespace = "default",
) -> None:
    """Grant, withdraw or show a subject's consent."""
    if action == "show":
        params = {"subject": subject, "namespace": namespace}
        _print(_call("GET", "/v1/privacy/consent", params=params))
        return
    if action not in ("grant", "withdraw") or purpose is None:
        fail("use: consent grant|withdraw SUBJECT PURPOSE, or consent show SUBJECT")
    body = {
        "subject": subject,
        "purpose": purpose,
        "action": action,
        "source": source,
        "namespace": namespace,
    }
    _print(_call("POST", "/v1/privacy/consent", json=body))


@app.command()
def report(namespace: Annotated[str | None, typer.Option("--namespace", "-n")] = None) -> None:
    """Records of processing: functions, data categories, consent, subjects, retention."""
    params = {"namespace": namespace} if namespace else {}
    _print(_call("GET", "/v1/privacy/report", params=params))


@retention_app.command("set")
def retention_set(
    ttl: Annotated[str, typer.Argument(help="e.g. 30d, 12h; 'default' to clear.")],
    namespace: Namespace = "default",
) -> None:
    body = {"ttl": None if ttl == "default" else ttl, "namespace": namespace}
    _print(_call("PUT", "/v1/privacy/retention", json=body))


@retention_app.command("show")
def retention_show() -> None:
    _print(_call("GET", "/v1/privacy/retention"))


@retention_app.command("purge")
def retention_purge() -> None:
    """Purge what is past its retention now; prints the evidence (also in the audit log)."""
    _print(_call("POST", "/v1/privacy/retention/purge"))

"""`cumulo migrate --from sqlite:///DATA-DIR --to postgresql://… [--subject-keys-to
postgresql://…]`: copy a platform's data dir into an empty PostgreSQL database, and its
subject keys into one of their own (store/copy_to_postgres.py), then check the copy: row
counts per table on both sides, and the audit chains verified on the destination with the
source's master key, their heads equal to the source's. Exit 0 only when all of it holds.

The passwords in `--to` and `--subject-keys-to` are never printed: every echoed URL is
masked and every error line is scrubbed of them (a driver's message could quote the
connection string)."""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console
from rich.markup import escape

from cumulo.errors import ConfigError, CumuloError

if TYPE_CHECKING:
    from cumulo.security.crypto import MasterKey
    from cumulo.store.copy_to_postgres import CopyReport
    from cumulo.store.postgres import PostgresStore

out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)
SQLITE_PREFIX = "sqlite://"
DEFAULT_DATA_DIR = ".cumulo"  # `cumulo up --data-dir`'s default


def data_dir_of(source: str) -> Path:
    """`sqlite:///abs/path` or a plain path → the data dir (absolute)."""
    if source.startswith(SQLITE_PREFIX):
        path = source.removeprefix(SQLITE_PREFIX)
        if not path.startswith("/"):
            raise ConfigError("--from takes sqlite:///ABSOLUTE/PATH/TO/DATA-DIR or a plain path")
        return Path(path)
    if "://" in source:
        raise ConfigError(
            f"--from takes a sqlite:/// URL or a path, not {source.split('://')[0]}://"
        )
    return Path(source).resolve()


def master_of(data_dir: Path) -> MasterKey:
    """The source's master key, never created here (load_master_key would make one)."""
    from cumulo.security.crypto import MASTER_ENV, MASTER_FILE, check_master_key, load_master_key
    from cumulo.store.copy_to_postgres import check_source

    check_source(data_dir)  # a data dir, readable, before its key is looked for
    if MASTER_ENV not in os.environ and not (data_dir / MASTER_FILE).exists():
        raise ConfigError(
            f"no master key: {data_dir / MASTER_FILE} is missing and {MASTER_ENV} is not set"
        )
    master = load_master_key(data_dir)
    check_master_key(data_dir / "cumulo.db", master)  # read-only
    return master


def _scrub(text: str, *passwords: str | None) -> str:
    for password in passwords:
        if password:
            text = text.replace(password, "***")
    return text


def _print_counts(report: CopyReport) -> None:
    width = max(len(c.table) for c in report.counts)
    out.print(f"{'TABLE':<{width}}  {'SOURCE':>8}  {'COPIED':>8}")
    for c in report.counts:
        mark = "" if c.ok else "  MISMATCH"
        out.print(f"{c.table:<{width}}  {c.source:>8}  {c.destination:>8}{mark}")
    for table, rows in report.not_copied.items():
        out.print(f"not copied: {table} ({rows} rows) stays in cumulo.db of the data dir")


async def _check_audit(
    store: PostgresStore, master: MasterKey, data_dir: Path, report: CopyReport
) -> str | None:
    """None when the destination's chains verify and their heads are the source's."""
    from cumulo.security.audit import ANCHOR_FILE, AuditLog
    from cumulo.security.crypto import Encryptor
    from cumulo.store.copy_to_postgres import destination_heads

    # The source's anchor file too: a chain shorter than its marks fails here as there.
    log = AuditLog(store.audit, Encryptor(master), anchor_path=data_dir / ANCHOR_FILE)
    verified = await log.verify()
    if not verified.ok:
        return f"the audit log does not verify on the destination: {verified.first_problem()}"
    if await destination_heads(store) != report.audit_heads:
        return "the destination's audit heads differ from the source's"
    rows = sum(c.rows for c in verified.chains)
    chains = len(verified.chains)
    out.print(f"audit log intact on the destination: {chains} chains, {rows} entries")
    return None


async def _migrate(data_dir: Path, dsn: str, master: MasterKey, keys_dsn: str | None) -> str | None:
    from cumulo.store.copy_to_postgres import copy_data_dir
    from cumulo.store.postgres import PostgresStore

    # The pool logs every failed connection attempt; the command says why once, on stderr.
    logging.getLogger("psycopg.pool").setLevel(logging.CRITICAL)
    store = PostgresStore(dsn, max_size=2, timeout=5.0)
    await store.open()  # migrates a fresh database (StoreUnavailable when out of reach)
    try:
        keys = store.subject_keys(keys_dsn) if keys_dsn is not None else None
        report = await copy_data_dir(data_dir, store, keys)
        _print_counts(report)
        problem = (
            await _check_audit(store, master, data_dir, report)
            if report.ok
            else "row counts differ between the source and the destination"
        )
        # The copy committed before it was checked: say what to do with it.
        return None if problem is None else f"{problem} (recreate the database to retry)"
    finally:
        await store.close()


def migrate(
    to: Annotated[
        str,
        typer.Option(
            "--to",
            help="The empty PostgreSQL database: postgresql://USER:PASSWORD@HOST/DB.",
            metavar="URL",
        ),
    ],
    source: Annotated[
        str,
        typer.Option(
            "--from", help="The data dir to copy: sqlite:///ABS/PATH or a path.", metavar="DIR"
        ),
    ] = DEFAULT_DATA_DIR,
    subject_keys_to: Annotated[
        str | None,
        typer.Option(
            "--subject-keys-to",
            help="An empty PostgreSQL database of its own for the subject keys (needed when "
            "the data dir holds any; docs/privacy.md).",
            metavar="URL",
        ),
    ] = None,
) -> None:
    """Copy a platform (data dir) into an empty PostgreSQL database, then verify the copy."""
    passwords: list[str | None] = []
    try:
        from cumulo.store.copy_to_postgres import masked, parse_dsn, password_of

        parse_dsn(to)
        passwords.append(password_of(to))
        if subject_keys_to is not None:
            parse_dsn(subject_keys_to, "--subject-keys-to")
            passwords.append(password_of(subject_keys_to))
        data_dir = data_dir_of(source)
        master = master_of(data_dir)
        problem = asyncio.run(_migrate(data_dir, to, master, subject_keys_to))
    except ImportError as exc:
        problem = (
            f"cumulo migrate needs PostgreSQL support: pip install 'cumulo[postgres]' ({exc.name})"
        )
    except (CumuloError, OSError) as exc:
        problem = str(exc)
    if problem is not None:
        err.print(f"[red]error:[/red] {escape(_scrub(problem, *passwords))}", markup=True)
        raise typer.Exit(1)
    out.print(f"copied {data_dir} to {masked(to)}")


def register(app: typer.Typer) -> None:
    app.command("migrate")(migrate)

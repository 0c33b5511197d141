"""A throwaway PostgreSQL cluster for tests: Debian's binaries, an unprivileged cluster in a
temp dir, one per test session, a fresh database per test.

pytest-postgresql refuses to run as root (CI runs as root), so the cluster is started here:
as root, `initdb` and `pg_ctl` run as the `postgres` user through `runuser`; otherwise as the
current user. `fsync=off`: a test cluster, never a production setting.
"""

from __future__ import annotations

import contextlib
import glob
import itertools
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

import psycopg
from psycopg import sql


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def find_bindir() -> Path | None:
    """The newest installed PostgreSQL's bin directory (`initdb`, `pg_ctl`), or None."""

    def major(initdb: Path) -> int:
        name = initdb.parent.parent.name
        return int(name) if name.isdigit() else 0

    found = sorted((Path(p) for p in glob.glob("/usr/lib/postgresql/*/bin/initdb")), key=major)
    if found:
        return found[-1].parent
    on_path = shutil.which("initdb")
    return Path(on_path).parent if on_path else None


def why_unavailable() -> str | None:
    """Why a test cluster cannot start here (a skip reason), or None when it can."""
    if find_bindir() is None:
        return "PostgreSQL binaries (initdb, pg_ctl) are not installed: apt-get install postgresql"
    if os.geteuid() == 0:
        try:
            pwd.getpwnam("postgres")
        except KeyError:
            return "running as root without a `postgres` user to run the cluster as"
        if shutil.which("runuser") is None:
            return "running as root without `runuser` to drop to the `postgres` user"
    return None


@dataclass
class PgCluster:
    """One running cluster. `dsn(db)` for a database; `create_database()` for a fresh one."""

    bindir: Path
    root: Path
    port: int
    user: str = "postgres"
    started_s: float = 0.0
    _names: itertools.count[int] = field(default_factory=itertools.count)

    @property
    def datadir(self) -> Path:
        return self.root / "data"

    @property
    def sockdir(self) -> Path:
        return self.root / "sock"

    def dsn(self, dbname: str = "postgres") -> str:
        return f"postgresql://{self.user}@127.0.0.1:{self.port}/{dbname}"

    def _run(self, *args: str) -> None:
        cmd = [str(self.bindir / args[0]), *args[1:]]
        if os.geteuid() == 0:
            cmd = ["runuser", "-u", "postgres", "--", *cmd]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if proc.returncode != 0:
            log = self.root / "server.log"
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise RuntimeError(
                f"{' '.join(args[:2])} failed ({proc.returncode}): {proc.stderr.strip()}\n{tail}"
            )

    @classmethod
    def start(cls) -> PgCluster:
        bindir = find_bindir()
        if bindir is None:
            raise RuntimeError("PostgreSQL binaries are not installed")
        began = time.monotonic()
        root = Path(tempfile.mkdtemp(prefix="cumulo-pg-"))
        cluster = cls(bindir=bindir, root=root, port=_free_port())
        cluster.sockdir.mkdir()
        if os.geteuid() == 0:
            entry = pwd.getpwnam("postgres")
            for path in (root, cluster.sockdir):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        else:
            cluster.user = pwd.getpwuid(os.geteuid()).pw_name
        cluster._run(
            "initdb",
            "-D",
            str(cluster.datadir),
            "-A",
            "trust",
            "-U",
            cluster.user,
            "-E",
            "UTF8",
            "--locale=C",
            "--no-sync",
        )
        cluster.start_server()
        cluster.started_s = time.monotonic() - began
        return cluster

    def start_server(self) -> None:
        """Start (or restart after `stop_server`) the postmaster and wait until it accepts."""
        options = (
            f"-p {self.port} -k {self.sockdir} -c listen_addresses=127.0.0.1 -c fsync=off "
            "-c synchronous_commit=off -c full_page_writes=off -c max_connections=200"
        )
        self._run(
            "pg_ctl", "start", "-D", str(self.datadir), "-w", "-l", str(self.root / "server.log"),
            "-o", options,
        )  # fmt: skip

    def stop_server(self, mode: str = "fast") -> None:
        """Stop the postmaster (`fast` ends sessions; `immediate` is a crash)."""
        self._run("pg_ctl", "stop", "-D", str(self.datadir), "-m", mode, "-w")

    def admin(self) -> psycopg.Connection[tuple[object, ...]]:
        return psycopg.connect(self.dsn(), autocommit=True, connect_timeout=10)

    def create_database(self, template: str = "template0") -> str:
        """A new, empty database; its DSN."""
        name = f"t{os.getpid()}_{next(self._names)}"
        with self.admin() as conn:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
                    sql.Identifier(name), sql.Identifier(template)
                )
            )
        return self.dsn(name)

    def drop_database(self, dsn: str) -> None:
        name = dsn.rsplit("/", 1)[1]
        with self.admin() as conn:
            conn.execute(
                sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name))
            )

    def terminate_connections(self, dsn: str) -> int:
        """End every session on a database (what a failover or an admin does to a pool)."""
        name = dsn.rsplit("/", 1)[1]
        with self.admin() as conn:
            row = conn.execute(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (name,),
            ).fetchone()
        return int(str(row[0])) if row else 0

    def stop(self) -> None:
        """Stop the cluster and delete its files."""
        with contextlib.suppress(RuntimeError, subprocess.TimeoutExpired):
            self.stop_server("immediate")
        shutil.rmtree(self.root, ignore_errors=True)


def keys_database_for(dsn: str) -> str:
    """The DSN of `<database>_keys` on the same server (created when absent): the subject-key
    database a `cumulo up --db DSN` needs beside its main one (`--subject-keys-db`)."""
    base, name = dsn.rsplit("/", 1)
    keys = f"{name}_keys"
    with psycopg.connect(f"{base}/postgres", autocommit=True, connect_timeout=10) as conn:
        exists = conn.execute("SELECT 1 FROM pg_database WHERE datname = %s", (keys,)).fetchone()
        if exists is None:
            conn.execute(
                sql.SQL("CREATE DATABASE {} TEMPLATE template0").format(sql.Identifier(keys))
            )
    return f"{base}/{keys}"

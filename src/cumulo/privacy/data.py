"""Subject data on the store thread: sealed writes, exports, erasure and retention purges.

Each method runs inside `store.call(...)` on the platform store's one thread, next to the
store's own methods (the keystore shares that thread)."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from typing import Any

import orjson

from cumulo.privacy.keystore import SubjectKeys
from cumulo.privacy.subjects import Pseudonymizer
from cumulo.privacy.tables import SCHEMA, SUBJECT_TABLES
from cumulo.security.crypto import CryptoError
from cumulo.store.base import InvocationRecord, LogRecord
from cumulo.store.sqlite import SQLiteStore

JOB_MAGIC = b"\xffCJ"  # a job body sealed to a subject: magic, raw pseudonym, ciphertext
PSEUDONYM_BYTES = 32
JOB_PREFIX_LEN = len(JOB_MAGIC) + PSEUDONYM_BYTES
FINISHED_JOBS = ("succeeded", "failed", "dead")


@dataclass(frozen=True, slots=True)
class SubjectLog:
    record: LogRecord
    subject: str


@dataclass(frozen=True, slots=True)
class SubjectInvocation:
    record: InvocationRecord
    subject: str


def job_prefix(pseudonym: str) -> bytes:
    return JOB_MAGIC + bytes.fromhex(pseudonym)


class SubjectData:
    def __init__(self, store: SQLiteStore, keys: SubjectKeys) -> None:
        self.store = store
        self.keys = keys
        self.pseudo = Pseudonymizer(b"")  # replaced in open()

    def open(self) -> None:
        self.pseudo = Pseudonymizer(self.keys.open())
        self.store.db.executescript(SCHEMA)

    def close(self) -> None:
        self.keys.close()

    # ------------------------------------------------------------ sealing helpers
    def _seal(self, ns: str, p: str, purpose: str, item: tuple[str, ...], data: Any) -> bytes:
        return self.keys.seal(self.store, ns, p, purpose, item, orjson.dumps(data))

    def _open(self, ns: str, p: str, purpose: str, item: tuple[str, ...], blob: bytes) -> Any:
        return orjson.loads(self.keys.open_value(self.store, ns, p, purpose, item, blob))

    # ------------------------------------------------------------ state
    def _state_row(self, ns: str, fn: str, p: str, kh: str) -> tuple[bytes, int] | None:
        row = self.store.db.execute(
            "SELECT value, version FROM privacy_state WHERE namespace = ? AND function = ? "
            "AND pseudonym = ? AND key_hash = ?",
            (ns, fn, p, kh),
        ).fetchone()
        return None if row is None else (bytes(row[0]), int(row[1]))

    def state_get(self, ns: str, fn: str, subject: str, key: str) -> dict[str, Any] | None:
        p = self.pseudo.pseudonym(ns, subject)
        kh = self.pseudo.item_hash(ns, fn, p, key)
        found = self._state_row(ns, fn, p, kh)
        if found is None:
            return None
        try:
            payload = self._open(ns, p, "state", (fn, kh), found[0])
        except CryptoError:
            return None  # erased while the row was being written: gone for good
        return {"value": payload["value"], "version": found[1]}

    def state_put(
        self,
        ns: str,
        fn: str,
        subject: str,
        key: str,
        value: Any,
        expected: int | None,
        now: float,
    ) -> dict[str, Any]:
        p = self.pseudo.pseudonym(ns, subject)
        kh = self.pseudo.item_hash(ns, fn, p, key)
        self.keys.key(self.store, ns, p, create=True)  # outside the transaction
        with self.store.transaction() as db:
            found = self._state_row(ns, fn, p, kh)
            version = found[1] if found else 0
            if expected is not None and expected != version:
                return {"conflict": True, "version": version}
            blob = self._seal(
                ns, p, "state", (fn, kh), {"subject": subject, "key": key, "value": value}
            )
            db.execute(
                "INSERT INTO privacy_state VALUES (?,?,?,?,?,?,?) ON CONFLICT "
                "(namespace, function, pseudonym, key_hash) DO UPDATE SET value = excluded.value,"
                " version = excluded.version, updated_at = excluded.updated_at",
                (ns, fn, p, kh, blob, version + 1, now),
            )
        return {"version": version + 1}

    def state_incr(self, ns: str, fn: str, subject: str, key: str, by: int, now: float) -> int:
        p = self.pseudo.pseudonym(ns, subject)
        kh = self.pseudo.item_hash(ns, fn, p, key)
        self.keys.key(self.store, ns, p, create=True)
        with self.store.transaction() as db:
            found = self._state_row(ns, fn, p, kh)
            current = 0
            if found is not None:
                current = self._open(ns, p, "state", (fn, kh), found[0])["value"]
                if not isinstance(current, int) or isinstance(current, bool):
                    raise ValueError("not an integer")
            total = current + by
            blob = self._seal(
                ns, p, "state", (fn, kh), {"subject": subject, "key": key, "value": total}
            )
            db.execute(
                "INSERT INTO privacy_state VALUES (?,?,?,?,?,?,?) ON CONFLICT "
                "(namespace, function, pseudonym, key_hash) DO UPDATE SET value = excluded.value,"
                " version = excluded.version, updated_at = excluded.updated_at",
                (ns, fn, p, kh, blob, (found[1] if found else 0) + 1, now),
            )
        return total

    def state_delete(self, ns: str, fn: str, subject: str, key: str) -> bool:
        p = self.pseudo.pseudonym(ns, subject)
        kh = self.pseudo.item_hash(ns, fn, p, key)
        cur = self.store.db.execute(
            "DELETE FROM privacy_state WHERE namespace = ? AND function = ? AND pseudonym = ? "
            "AND key_hash = ?",
            (ns, fn, p, kh),
        )
        return cur.rowcount > 0

    # ------------------------------------------------------------ logs and invocations
    def append(self, logs: list[SubjectLog], invocations: list[SubjectInvocation]) -> None:
        owners = {(x.record.namespace, x.subject) for x in logs}
        owners |= {(x.record.namespace, x.subject) for x in invocations}
        for ns, subject in owners:  # keys are created outside the transaction
            self.keys.key(self.store, ns, self.pseudo.pseudonym(ns, subject), create=True)
        with self.store.transaction() as db:
            for entry in logs:
                r = entry.record
                p = self.pseudo.pseudonym(r.namespace, entry.subject)
                payload = {
                    "subject": entry.subject,
                    "function": r.function,
                    "version": r.version,
                    "invocation_id": r.invocation_id,
                    "ts": r.ts,
                    "level": r.level,
                    "message": r.message,
                    "fields": r.fields,
                }
                blob = self._seal(r.namespace, p, "log", (r.invocation_id,), payload)
                db.execute(
                    "INSERT INTO privacy_logs (namespace, function, pseudonym, invocation_id, ts,"
                    " blob) VALUES (?,?,?,?,?,?)",
                    (r.namespace, r.function, p, r.invocation_id, r.ts, blob),
                )
            for inv in invocations:
                i = inv.record
                p = self.pseudo.pseudonym(i.namespace, inv.subject)
                blob = self._seal(
                    i.namespace, p, "invocation", (i.id,), {"subject": inv.subject, **i.public()}
                )
                db.execute(
                    "INSERT OR REPLACE INTO privacy_invocations VALUES (?,?,?,?,?,?)",
                    (i.id, i.namespace, i.function, p, i.started_at, blob),
                )

    # ------------------------------------------------------------ async job bodies
    def seal_job(self, ns: str, function: str, subject: str, body: bytes) -> bytes:
        p = self.pseudo.pseudonym(ns, subject)
        sealed = self.keys.seal(
            self.store,
            ns,
            p,
            "job",
            (function,),
            subject.encode() + b"\0" + body,
            deterministic=True,
        )
        return job_prefix(p) + sealed

    def open_job(self, ns: str, function: str, blob: bytes) -> tuple[str, bytes]:
        p = blob[len(JOB_MAGIC) : JOB_PREFIX_LEN].hex()
        plain = self.keys.open_value(self.store, ns, p, "job", (function,), blob[JOB_PREFIX_LEN:])
        subject, _, body = plain.partition(b"\0")
        return subject.decode(), body

    # ------------------------------------------------------------ consent
    def consent_append(
        self, ns: str, subject: str, purpose: str, granted: bool, source: str, now: float
    ) -> None:
        p = self.pseudo.pseudonym(ns, subject)
        self.keys.key(self.store, ns, p, create=True)
        payload = {
            "subject": subject,
            "purpose": purpose,
            "granted": granted,
            "source": source,
            "ts": now,
        }
        blob = self._seal(ns, p, "consent", (purpose,), payload)
        self.store.db.execute(
            "INSERT INTO privacy_consent (namespace, pseudonym, purpose, granted, ts, blob) "
            "VALUES (?,?,?,?,?,?)",
            (ns, p, purpose, int(granted), now, blob),
        )

    def consent_current(self) -> dict[tuple[str, str, str], bool]:
        """The latest event per (namespace, pseudonym, purpose): the hot path's cache."""
        rows = self.store.db.execute(
            "SELECT namespace, pseudonym, purpose, granted FROM privacy_consent "
            "WHERE seq IN (SELECT MAX(seq) FROM privacy_consent "
            "GROUP BY namespace, pseudonym, purpose)"
        ).fetchall()
        return {(str(r[0]), str(r[1]), str(r[2])): bool(r[3]) for r in rows}

    def consent_history(self, ns: str, subject: str) -> list[dict[str, Any]]:
        p = self.pseudo.pseudonym(ns, subject)
        return self._consent_of(ns, p)

    def _consent_of(self, ns: str, p: str) -> list[dict[str, Any]]:
        rows = self.store.db.execute(
            "SELECT seq, purpose, blob FROM privacy_consent WHERE namespace = ? AND pseudonym = ?"
            " ORDER BY seq",
            (ns, p),
        ).fetchall()
        out = []
        for seq, purpose, blob in rows:
            event = self._open(ns, p, "consent", (purpose,), bytes(blob))
            out.append({"seq": seq, **{k: v for k, v in event.items() if k != "subject"}})
        return out

    # ------------------------------------------------------------ export
    def export(self, ns: str, p: str) -> dict[str, Any]:
        """Everything held about one subject, decrypted: the access/portability answer."""
        db = self.store.db
        if not self.keys.has_key(ns, p):
            empty: dict[str, Any] = {
                k: [] for k in ("state", "invocations", "logs", "jobs", "consent")
            }
            return empty
        state = []
        for fn, kh, blob, version, updated in db.execute(
            "SELECT function, key_hash, value, version, updated_at FROM privacy_state "
            "WHERE namespace = ? AND pseudonym = ? ORDER BY function, updated_at",
            (ns, p),
        ).fetchall():
            payload = self._open(ns, p, "state", (fn, kh), bytes(blob))
            state.append(
                {
                    "function": fn,
                    "key": payload["key"],
                    "value": payload["value"],
                    "version": version,
                    "updated_at": updated,
                }
            )
        invocations = [
            {
                k: v
                for k, v in self._open(ns, p, "invocation", (iid,), bytes(blob)).items()
                if k != "subject"
            }
            for iid, blob in db.execute(
                "SELECT id, blob FROM privacy_invocations WHERE namespace = ? AND pseudonym = ? "
                "ORDER BY started_at",
                (ns, p),
            ).fetchall()
        ]
        logs = [
            {
                k: v
                for k, v in self._open(ns, p, "log", (iid,), bytes(blob)).items()
                if k != "subject"
            }
            for iid, blob in db.execute(
                "SELECT invocation_id, blob FROM privacy_logs WHERE namespace = ? AND pseudonym = ?"
                " ORDER BY seq",
                (ns, p),
            ).fetchall()
        ]
        jobs = []
        prefix = job_prefix(p)
        for jid, fn, status, created, body in db.execute(
            "SELECT id, function, status, created_at, body FROM event_jobs WHERE namespace = ? "
            "AND substr(body, 1, ?) = ? ORDER BY created_at",
            (ns, JOB_PREFIX_LEN, prefix),
        ).fetchall():
            _, raw = self.open_job(ns, fn, bytes(body))
            job: dict[str, Any] = {
                "id": jid,
                "function": fn,
                "status": status,
                "created_at": created,
            }
            try:
                job["payload"] = orjson.loads(raw) if raw else None
            except orjson.JSONDecodeError:
                job["payload_base64"] = base64.b64encode(raw).decode()
            jobs.append(job)
        return {
            "state": state,
            "invocations": invocations,
            "logs": logs,
            "jobs": jobs,
            "consent": self._consent_of(ns, p),
        }

    # ------------------------------------------------------------ erasure
    def erase(self, ns: str, p: str) -> dict[str, int]:
        """Delete every row of the subject, then destroy its key (crypto-shredding): copies
        of the rows elsewhere (backups, freed pages) stay ciphertext with no key."""
        counts: dict[str, int] = {}
        with self.store.transaction() as db:
            ids = [
                r[0]
                for r in db.execute(
                    "SELECT id FROM privacy_invocations WHERE namespace = ? AND pseudonym = ?",
                    (ns, p),
                ).fetchall()
            ]
            for i in range(0, len(ids), 500):
                chunk = ids[i : i + 500]
                marks = ",".join("?" * len(chunk))
                db.execute(
                    f"DELETE FROM invocations WHERE namespace = ? AND id IN ({marks})",  # noqa: S608
                    (ns, *chunk),
                )
            for table in SUBJECT_TABLES:
                cur = db.execute(
                    f"DELETE FROM {table} WHERE namespace = ? AND pseudonym = ?",  # noqa: S608
                    (ns, p),
                )
                counts[table.removeprefix("privacy_")] = cur.rowcount
            cur = db.execute(
                "DELETE FROM event_jobs WHERE namespace = ? AND substr(body, 1, ?) = ?",
                (ns, JOB_PREFIX_LEN, job_prefix(p)),
            )
            counts["jobs"] = cur.rowcount
            db.execute(
                "UPDATE privacy_requests SET result = NULL WHERE namespace = ? AND pseudonym = ?",
                (ns, p),
            )
        counts["subject_keys_destroyed"] = int(self.keys.destroy(ns, p))
        # Fold the WAL back so the freed ciphertext leaves the -wal file as well.
        self.store.db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        return counts

    # ------------------------------------------------------------ retention
    def namespaces(self) -> list[str]:
        rows = self.store.db.execute(
            "SELECT namespace FROM functions UNION SELECT namespace FROM privacy_retention "
            "UNION SELECT DISTINCT namespace FROM invocations "
            "UNION SELECT DISTINCT namespace FROM privacy_state"
        ).fetchall()
        return sorted(str(r[0]) for r in rows)

    def purge(self, ns: str, cutoff: float) -> dict[str, int]:
        """Delete what is older than `cutoff` in one namespace; counts per table."""
        statements = {
            "invocations": ("DELETE FROM invocations WHERE namespace = ? AND started_at < ?", ()),
            "logs": ("DELETE FROM logs WHERE namespace = ? AND ts < ?", ()),
            "subject_invocations": (
                "DELETE FROM privacy_invocations WHERE namespace = ? AND started_at < ?",
                (),
            ),
            "subject_logs": ("DELETE FROM privacy_logs WHERE namespace = ? AND ts < ?", ()),
            "subject_state": (
                "DELETE FROM privacy_state WHERE namespace = ? AND updated_at < ?",
                (),
            ),
            "finished_jobs": (
                "DELETE FROM event_jobs WHERE namespace = ? AND finished_at < ? "
                "AND status IN ('succeeded', 'failed', 'dead')",
                (),
            ),
        }
        counts = {}
        with self.store.transaction() as db:
            for name, (sql, _) in statements.items():
                counts[name] = db.execute(sql, (ns, cutoff)).rowcount
        return counts

    def retention_get(self) -> dict[str, float]:
        rows = self.store.db.execute("SELECT namespace, ttl_s FROM privacy_retention").fetchall()
        return {str(r[0]): float(r[1]) for r in rows}

    def retention_set(self, ns: str, ttl_s: float | None) -> None:
        if ttl_s is None:
            self.store.db.execute("DELETE FROM privacy_retention WHERE namespace = ?", (ns,))
        else:
            self.store.db.execute(
                "INSERT INTO privacy_retention VALUES (?, ?) ON CONFLICT (namespace) "
                "DO UPDATE SET ttl_s = excluded.ttl_s",
                (ns, ttl_s),
            )

    def subject_counts(self) -> dict[str, int]:
        return self.keys.count()

    def functions(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(namespace, function, config of its newest version) for the processing report."""
        rows = self.store.db.execute(
            "SELECT v.namespace, v.function, v.config FROM versions v JOIN ("
            " SELECT namespace, function, MAX(version) AS version FROM versions"
            " GROUP BY namespace, function) m ON v.namespace = m.namespace"
            " AND v.function = m.function AND v.version = m.version"
            " JOIN functions f ON f.namespace = v.namespace AND f.name = v.function"
            " ORDER BY v.namespace, v.function"
        ).fetchall()
        return [(str(r[0]), str(r[1]), orjson.loads(r[2])) for r in rows]

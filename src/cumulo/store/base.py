"""The storage interface and its records. Backends: sqlite (default); postgres later."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    id: str
    namespace: str
    name: str
    scopes: tuple[str, ...]
    created_at: float
    expires_at: float | None
    revoked_at: float | None
    key_hash: bytes

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "namespace": self.namespace,
            "name": self.name,
            "scopes": list(self.scopes),
            "created_at": self.created_at,
            "expires_at": self.expires_at,
            "revoked": self.revoked_at is not None,
        }


@dataclass(frozen=True, slots=True)
class FunctionRecord:
    namespace: str
    name: str
    created_at: float
    traffic: dict[int, int]  # version -> weight (percent); the `live` alias

    def public(self) -> dict[str, Any]:
        return {
            "namespace": self.namespace,
            "name": self.name,
            "created_at": self.created_at,
            "traffic": {str(v): w for v, w in sorted(self.traffic.items())},
        }


@dataclass(frozen=True, slots=True)
class VersionRecord:
    namespace: str
    function: str
    version: int
    bundle_sha: str
    module: str
    attr: str
    kind: str
    config: dict[str, Any]
    created_at: float

    def public(self) -> dict[str, Any]:
        return {
            "version": self.version,
            "bundle_sha256": self.bundle_sha,
            "handler": f"{self.module}.{self.attr}",
            "kind": self.kind,
            "config": {k: v for k, v in self.config.items() if k != "env"}
            | {"env": sorted(self.config.get("env", {}))},
            "created_at": self.created_at,
        }


@dataclass(frozen=True, slots=True)
class StateRecord:
    value: bytes
    version: int


@dataclass(frozen=True, slots=True)
class LogRecord:
    namespace: str
    function: str
    version: int
    invocation_id: str
    ts: float
    level: str
    message: str
    fields: dict[str, Any]

    def public(self, seq: int | None = None) -> dict[str, Any]:
        data = {
            "ts": self.ts,
            "function": self.function,
            "version": self.version,
            "invocation_id": self.invocation_id,
            "level": self.level,
            "message": self.message,
            "fields": self.fields,
        }
        if seq is not None:
            data["seq"] = seq
        return data


@dataclass(frozen=True, slots=True)
class InvocationRecord:
    id: str
    namespace: str
    function: str
    version: int
    status: int
    code: str
    cold: bool
    started_at: float
    duration_ms: float

    def public(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "function": self.function,
            "version": self.version,
            "status": self.status,
            "code": self.code,
            "start": "cold" if self.cold else "warm",
            "cold": self.cold,
            "started_at": self.started_at,
            "duration_ms": round(self.duration_ms, 3),
        }

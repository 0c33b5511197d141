"""`SecretRepository` in memory: a fake for unit tests (nothing sealed), held to the same
conformance suite as the real backends."""

from __future__ import annotations

from collections.abc import Iterable

from cumulo.store.secrets import SecretInfo, SecretRepository


class MemorySecretRepository(SecretRepository):
    """Secrets in a dict; each method runs without awaiting (atomic on its event loop)."""

    def __init__(self) -> None:
        self._secrets: dict[tuple[str, str], tuple[bytes, float]] = {}

    async def set(self, namespace: str, name: str, value: bytes, now: float) -> None:
        self._secrets[(namespace, name)] = (bytes(value), now)

    async def names(self, namespace: str) -> list[SecretInfo]:
        return sorted(
            (SecretInfo(n, t) for (ns, n), (_, t) in self._secrets.items() if ns == namespace),
            key=lambda s: s.name,
        )

    async def values(self, namespace: str, names: Iterable[str]) -> dict[str, bytes]:
        out = {}
        for name in names:
            found = self._secrets.get((namespace, name))
            if found is not None:
                out[name] = found[0]
        return out

    async def delete(self, namespace: str, name: str) -> bool:
        return self._secrets.pop((namespace, name), None) is not None

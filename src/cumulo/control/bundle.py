"""Code bundles: deterministic tar.gz archives, stored and unpacked by their SHA-256.

The client packs (sorted entries, zeroed times and owners) so the same source always
gives the same bytes and the same address; the server verifies and unpacks safely.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
from pathlib import Path

from cumulo.errors import BadRequest, PayloadTooLarge

MAX_BUNDLE_BYTES = 64 * 1024 * 1024
MAX_UNPACKED_BYTES = 512 * 1024 * 1024
MAX_FILES = 20_000
SKIP_DIRS = {"__pycache__", ".git", ".venv", "venv", "node_modules", ".cumulo", ".mypy_cache"}
SKIP_SUFFIXES = (".pyc", ".pyo")


def _files(root: Path) -> list[Path]:
    out = []
    skip = SKIP_DIRS
    if (root / "cumulo.toml").is_file():
        # A process function (any language): its installed packages are part of the code.
        skip = SKIP_DIRS - {"node_modules"}
    for dirpath, dirnames, filenames in os.walk(root):
        dirnames[:] = sorted(d for d in dirnames if d not in skip and not d.startswith("."))
        for name in sorted(filenames):
            if not name.endswith(SKIP_SUFFIXES):
                out.append(Path(dirpath) / name)
    return out


def pack(path: Path) -> bytes:
    """A .py file or a directory → deterministic tar.gz bytes."""
    if not path.exists():
        raise BadRequest(f"{path} does not exist", code="bad_path")
    if path.is_file():
        if path.suffix != ".py":
            raise BadRequest(f"{path} is not a .py file or a directory", code="bad_path")
        entries = [(path, path.name)]
    else:
        entries = [(p, p.relative_to(path).as_posix()) for p in _files(path)]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for file, arcname in entries:
            data = file.read_bytes()
            info = tarfile.TarInfo(arcname)
            info.size = len(data)
            info.mode = 0o755 if os.access(file, os.X_OK) else 0o644
            info.mtime = 0
            tar.addfile(info, io.BytesIO(data))
    return gzip.compress(raw.getvalue(), mtime=0)


def digest(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


class BundleStore:
    """`<data-dir>/bundles/<sha>.tar.gz` and their unpacked trees in `<data-dir>/code/<sha>/`."""

    def __init__(self, data_dir: Path) -> None:
        self.bundles = data_dir / "bundles"
        self.code = data_dir / "code"
        self.bundles.mkdir(parents=True, exist_ok=True)
        self.code.mkdir(parents=True, exist_ok=True)
        # Workers may pass through code/ to their own tree but not list the others.
        self.bundles.chmod(0o700)
        self.code.chmod(0o711)

    def code_dir(self, sha: str) -> Path:
        return self.code / sha

    def add(self, data: bytes) -> tuple[str, Path]:
        """Store and unpack a bundle; returns its address and its code directory."""
        if len(data) > MAX_BUNDLE_BYTES:
            raise PayloadTooLarge(f"the bundle exceeds {MAX_BUNDLE_BYTES} bytes")
        sha = digest(data)
        archive = self.bundles / f"{sha}.tar.gz"
        if not archive.exists():
            tmp = archive.with_suffix(".tmp")
            tmp.write_bytes(data)
            os.replace(tmp, archive)
        target = self.code_dir(sha)
        if not target.exists():
            self._unpack(data, target)
        return sha, target

    def ensure_unpacked(self, sha: str) -> Path:
        """The code directory for `sha`, unpacked from the stored archive if needed."""
        target = self.code_dir(sha)
        if target.exists():
            return target
        data = (self.bundles / f"{sha}.tar.gz").read_bytes()
        if digest(data) != sha:
            raise BadRequest(f"bundle {sha} failed verification", code="bundle_corrupt")
        self._unpack(data, target)
        return target

    def _unpack(self, data: bytes, target: Path) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=".unpack-", dir=self.code))
        try:
            try:
                with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz") as tar:
                    members = tar.getmembers()
                    if len(members) > MAX_FILES:
                        raise BadRequest(f"the bundle has more than {MAX_FILES} files")
                    if sum(m.size for m in members) > MAX_UNPACKED_BYTES:
                        raise PayloadTooLarge(f"the bundle unpacks to over {MAX_UNPACKED_BYTES}")
                    for member in members:
                        parts = Path(member.name).parts
                        if member.name.startswith("/") or ".." in parts:
                            raise BadRequest(
                                f"the bundle path {member.name!r} leaves the bundle",
                                code="bad_bundle",
                            )
                        if not (member.isfile() or member.isdir()):
                            raise BadRequest(
                                f"the bundle holds {member.name!r}, which is not a regular file",
                                code="bad_bundle",
                            )
                    tar.extractall(tmp, filter="data")
            except (tarfile.TarError, OSError, EOFError) as exc:
                raise BadRequest(
                    f"the bundle is not a valid tar.gz archive: {exc}", code="bad_bundle"
                ) from exc
            for path in [tmp, *tmp.rglob("*")]:
                path.chmod(0o555 if path.is_dir() else 0o444)
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.exists():
                    raise
        finally:
            if tmp.exists():
                for path in [tmp, *tmp.rglob("*")]:
                    path.chmod(0o755)
                shutil.rmtree(tmp, ignore_errors=True)

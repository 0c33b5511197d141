"""Code bundles: deterministic tar.gz archives, stored and unpacked by their SHA-256.

The client packs (sorted entries, zeroed times and owners) so the same source always
gives the same bytes and the same address; the server verifies and unpacks safely.

A bundle is hostile input: a few hundred KB of gzip can claim gigabytes. Unpacking is
bounded *while it runs* (`UnpackLimits`: total bytes, file count, per-file size, path depth,
header size), so a bomb never writes past the cap, and a refused bundle leaves nothing on
disk. Bundles no version references any more are collected (`BundleStore.collect`).
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import shutil
import tarfile
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath

from cumulo.errors import BadRequest, PayloadTooLarge

MAX_BUNDLE_BYTES = 64 * 1024 * 1024
SKIP_DIRS = {"__pycache__", ".git", ".venv", "venv", "node_modules", ".cumulo", ".mypy_cache"}
SKIP_SUFFIXES = (".pyc", ".pyo")
MiB = 1024 * 1024
COPY_CHUNK = MiB
# PAX / GNU long-name headers are read into memory whole by tarfile: bound them first.
MAX_HEADER_BYTES = 64 * 1024
MAX_NAME_BYTES = 4096
UNPACK_PREFIX = ".unpack-"
MAX_FILE_BYTES = 128 * MiB
_LONG_HEADERS = frozenset(
    {
        tarfile.XHDTYPE,
        tarfile.XGLTYPE,
        tarfile.SOLARIS_XHDTYPE,
        tarfile.GNUTYPE_LONGNAME,
        tarfile.GNUTYPE_LONGLINK,
    }
)


@dataclass(frozen=True, slots=True)
class UnpackLimits:
    """What one bundle may unpack to (`cumulo up --max-unpacked-mb / --max-bundle-files`)."""

    max_bytes: int = 256 * MiB
    max_files: int = 10_000
    max_file_bytes: int = MAX_FILE_BYTES
    max_depth: int = 32

    def describe(self) -> str:
        return (
            f"{self.max_bytes // MiB} MB, {self.max_files} files, {self.max_file_bytes // MiB} MB "
            f"per file, {self.max_depth} directories deep"
        )


class BundleTooLarge(BadRequest):
    default_code = "bundle_too_large"


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


class _BoundedTarInfo(tarfile.TarInfo):
    """Refuses an oversized extended header before tarfile reads it into memory."""

    def _proc_member(self, tarfile_: tarfile.TarFile) -> tarfile.TarInfo:
        if self.type in _LONG_HEADERS and self.size > MAX_HEADER_BYTES:
            raise BundleTooLarge(f"the bundle has a {self.size}-byte header")
        member: tarfile.TarInfo = super()._proc_member(tarfile_)  # type: ignore[misc]
        return member


def _safe_parts(member: tarfile.TarInfo, limits: UnpackLimits) -> tuple[str, ...]:
    name = member.name
    if len(name.encode(errors="surrogateescape")) > MAX_NAME_BYTES:
        raise BadRequest("the bundle has a path over 4096 bytes", code="bad_bundle")
    parts = tuple(p for p in PurePosixPath(name).parts if p not in ("", "."))
    if name.startswith("/") or ".." in parts or "\\" in name or "\0" in name:
        raise BadRequest(f"the bundle path {name!r} leaves the bundle", code="bad_bundle")
    if len(parts) > limits.max_depth:
        raise BundleTooLarge(
            f"the bundle path {name[:80]!r}… is over {limits.max_depth} directories deep"
        )
    if not (member.isreg() or member.isdir()) or member.issparse():
        raise BadRequest(
            f"the bundle holds {name!r}, which is not a regular file", code="bad_bundle"
        )
    return parts


def extract(data: bytes, target: Path, limits: UnpackLimits) -> None:
    """Unpack tar.gz `data` into the existing, empty directory `target`, counting what is
    written as it is written. Raises BundleTooLarge past a limit, BadRequest on anything
    that is not plain files and directories inside the bundle."""
    files = 0
    written = 0
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:gz", tarinfo=_BoundedTarInfo) as tar:
            for member in tar:
                parts = _safe_parts(member, limits)
                files += 1
                if files > limits.max_files:
                    raise BundleTooLarge(f"the bundle has more than {limits.max_files} entries")
                if not parts:
                    continue
                path = target.joinpath(*parts)
                if member.isdir():
                    path.mkdir(parents=True, exist_ok=True)
                    continue
                if member.size > limits.max_file_bytes:
                    raise BundleTooLarge(
                        f"{member.name[:80]!r} is {member.size} bytes; a bundle file may be "
                        f"at most {limits.max_file_bytes // MiB} MB"
                    )
                if written + member.size > limits.max_bytes:
                    raise BundleTooLarge(f"the bundle unpacks to over {limits.max_bytes // MiB} MB")
                path.parent.mkdir(parents=True, exist_ok=True)
                written += _copy(tar, member, path, limits.max_bytes - written)
    except (tarfile.TarError, EOFError, gzip.BadGzipFile, UnicodeError, ValueError) as exc:
        raise BadRequest(
            f"the bundle is not a valid tar.gz archive: {exc}", code="bad_bundle"
        ) from exc
    except OSError as exc:
        raise BadRequest(f"the bundle could not be unpacked: {exc}", code="bad_bundle") from exc


def _copy(tar: tarfile.TarFile, member: tarfile.TarInfo, path: Path, budget: int) -> int:
    source = tar.extractfile(member)
    if source is None:
        raise BadRequest(f"{member.name!r} has no data", code="bad_bundle")
    mode = 0o755 if member.mode & 0o111 else 0o644
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    count = 0
    with os.fdopen(fd, "wb") as out, source:
        while chunk := source.read(COPY_CHUNK):
            count += len(chunk)
            # The header's size was checked; this is the bytes actually written.
            if count > budget or count > member.size:
                raise BundleTooLarge("the bundle unpacks past its limit")
            out.write(chunk)
    return count


def _make_writable(root: Path) -> None:
    for path in [root, *root.rglob("*")]:
        with contextlib.suppress(OSError):
            if not path.is_symlink():
                path.chmod(0o755)


def _remove_tree(root: Path) -> None:
    if root.exists():
        _make_writable(root)
        shutil.rmtree(root, ignore_errors=True)


class BundleStore:
    """`<data-dir>/bundles/<sha>.tar.gz` and their unpacked trees in `<data-dir>/code/<sha>/`."""

    def __init__(self, data_dir: Path, limits: UnpackLimits | None = None) -> None:
        self.bundles = data_dir / "bundles"
        self.code = data_dir / "code"
        self.limits = limits or UnpackLimits()
        self.bundles.mkdir(parents=True, exist_ok=True)
        self.code.mkdir(parents=True, exist_ok=True)
        # Workers may pass through code/ to their own tree but not list the others.
        self.bundles.chmod(0o700)
        self.code.chmod(0o711)
        # sha → deploys in flight that hold it: stored, not yet referenced by a version.
        self._pins: dict[str, int] = {}

    def code_dir(self, sha: str) -> Path:
        return self.code / sha

    def add(self, data: bytes) -> tuple[str, Path]:
        """Store and unpack a bundle; returns its address and its code directory. The
        archive is kept only once it has unpacked within the limits."""
        if len(data) > MAX_BUNDLE_BYTES:
            raise PayloadTooLarge(f"the bundle exceeds {MAX_BUNDLE_BYTES} bytes")
        sha = digest(data)
        target = self.code_dir(sha)
        if not target.exists():
            self._unpack(data, target)
        archive = self.bundles / f"{sha}.tar.gz"
        if not archive.exists():
            tmp = self.bundles / f"{sha}.{os.getpid()}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, archive)
        return sha, target

    @contextlib.contextmanager
    def pinned(self, sha: str) -> Iterator[None]:
        """Keep `sha` from collection while a deploy that stored it is still running."""
        self._pins[sha] = self._pins.get(sha, 0) + 1
        try:
            yield
        finally:
            self._pins[sha] -= 1
            if not self._pins[sha]:
                del self._pins[sha]

    def has(self, sha: str) -> bool:
        """Whether `sha` is on this disk (its archive or its unpacked tree)."""
        return (self.bundles / f"{sha}.tar.gz").exists() or self.code_dir(sha).exists()

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
        tmp = Path(tempfile.mkdtemp(prefix=UNPACK_PREFIX, dir=self.code))
        try:
            extract(data, tmp, self.limits)
            for path in [tmp, *tmp.rglob("*")]:
                executable = path.is_dir() or path.stat().st_mode & 0o100
                path.chmod(0o555 if executable else 0o444)
            try:
                os.rename(tmp, target)
            except OSError:
                if not target.exists():
                    raise
        finally:
            _remove_tree(tmp)

    # ------------------------------------------------------------ collection
    def stored(self) -> set[str]:
        """Every sha with an archive or a code tree on disk."""
        found = {p.name.removesuffix(".tar.gz") for p in self.bundles.glob("*.tar.gz")}
        found |= {p.name for p in self.code.iterdir() if not p.name.startswith(".")}
        return found

    def collect(self, keep: Iterable[str], *, leftovers_older_than_s: float = 3600.0) -> list[str]:
        """Delete the archive and code tree of every bundle not in `keep` (nor pinned by a
        deploy in flight), and half-written unpacks and temp files left by a crash. Returns
        the shas removed."""
        wanted = set(keep) | set(self._pins)
        removed = sorted(self.stored() - wanted)
        for sha in removed:
            with contextlib.suppress(FileNotFoundError):
                (self.bundles / f"{sha}.tar.gz").unlink()
            _remove_tree(self.code_dir(sha))
        cutoff = time.time() - leftovers_older_than_s
        for leftover in [*self.code.glob(f"{UNPACK_PREFIX}*"), *self.bundles.glob("*.tmp")]:
            with contextlib.suppress(OSError):
                if leftover.lstat().st_mtime < cutoff:
                    if leftover.is_dir():
                        _remove_tree(leftover)
                    else:
                        leftover.unlink()
        return removed

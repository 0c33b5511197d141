"""Container images as files: read, verify and unpack an OCI image, safely.

An image arrives as bytes in one of three transports (skopeo's names): `oci-archive` (a
tar of an OCI image layout), `oci` (a layout directory, tarred by the client: the same
bytes) and `docker-archive` (`docker save`), which `skopeo copy` turns into a layout here.
Everything about it is hostile:

- the archive is unpacked by hand: only `oci-layout`, `index.json` and `blobs/sha256/<hex>`
  regular files, within the size limit while it is read;
- every blob used (manifest, config, layers) is hashed and compared with its descriptor's
  digest and size: a tampered layer is a 400 before anything is unpacked;
- each layer is scanned before `umoci unpack` sees it: no device nodes, no absolute or `..`
  names or hard-link targets, and the unpacked total within the limit (a gzip bomb stops
  while it is read); umoci then applies whiteouts and resolves symlinks inside the root
  (filepath-securejoin), and setuid/setgid bits are cleared after it;
- the config must name an entrypoint (Entrypoint and/or Cmd).

The image is addressed by its manifest digest: `<data-dir>/images/<hex>/` holds the
unpacked root (`bundle/rootfs`) and `image.json` (what a container of it needs), shared by
every version and instance that runs it, read-only.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import json
import os
import shutil
import stat
import subprocess
import tarfile
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any

from cumulo.errors import BadRequest, Unavailable

MiB = 1024 * 1024
DEFAULT_MAX_IMAGE_BYTES = 512 * MiB
TRANSPORTS = ("oci-archive", "oci", "docker-archive")
MANIFEST_TYPES = frozenset(
    {
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.docker.distribution.manifest.v2+json",
    }
)
LAYER_GZIP = frozenset(
    {
        "application/vnd.oci.image.layer.v1.tar+gzip",
        "application/vnd.docker.image.rootfs.diff.tar.gzip",
    }
)
LAYER_PLAIN = frozenset({"application/vnd.oci.image.layer.v1.tar"})
REF_ANNOTATION = "org.opencontainers.image.ref.name"
# The one tag umoci is pointed at, after index.json is rewritten to the chosen manifest.
UNPACK_TAG = "cumulo"
# Manifests and configs are small; one that is not is not an image we take.
MAX_JSON_BYTES = 4 * MiB
CHUNK = MiB
TOOL_TIMEOUT_S = 300.0


@dataclass(frozen=True, slots=True)
class ImageInfo:
    """What a container of the image needs, from its config."""

    digest: str  # the manifest's, "sha256:<hex>"
    args: tuple[str, ...]  # Entrypoint + Cmd
    env: tuple[str, ...]
    cwd: str
    size: int  # bytes of the verified blobs

    def to_dict(self) -> dict[str, Any]:
        return {
            "digest": self.digest,
            "args": list(self.args),
            "env": list(self.env),
            "cwd": self.cwd,
            "size": self.size,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> ImageInfo:
        return cls(
            digest=str(data["digest"]),
            args=tuple(data["args"]),
            env=tuple(data["env"]),
            cwd=str(data["cwd"]),
            size=int(data["size"]),
        )


def _bad(message: str, code: str = "invalid_image") -> BadRequest:
    return BadRequest(message, code=code)


def _too_large(limit: int) -> BadRequest:
    return _bad(f"the image exceeds the {limit // MiB} MB image limit", "image_too_large")


def tools_missing() -> str | None:
    """Why container images cannot run here (None: they can)."""
    missing = [t for t in ("crun", "umoci", "skopeo", "unshare") if shutil.which(t) is None]
    if missing:
        return f"{', '.join(missing)} not installed (apt-get install crun umoci skopeo)"
    return None


def parse_ref(ref: str) -> tuple[str, str, str | None]:
    """`oci-archive:app.tar`, `oci:DIR[:tag]`, `docker-archive:FILE` → (transport, path,
    tag); a registry reference (`docker://…`) is refused: images come as files."""
    transport, sep, rest = ref.partition(":")
    if not sep or transport not in TRANSPORTS or not rest:
        raise ValueError(
            f"unsupported image {ref!r}: use oci-archive:FILE, oci:DIR[:tag] or "
            "docker-archive:FILE (pull from a registry first: skopeo copy docker://… oci:DIR)"
        )
    tag: str | None = None
    if transport == "oci" and ":" in rest:
        rest, tag = rest.rsplit(":", 1)
    return transport, rest, tag


def pack_layout(layout: Path) -> bytes:
    """An OCI layout directory as oci-archive bytes (what the client sends for `oci:`)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in ("oci-layout", "index.json"):
            tar.add(layout / name, arcname=name)
        blobs = layout / "blobs" / "sha256"
        for path in sorted(blobs.iterdir()) if blobs.is_dir() else []:
            if path.is_file() and not path.is_symlink():
                tar.add(path, arcname=f"blobs/sha256/{path.name}")
    return buf.getvalue()


# ----------------------------------------------------------------- the archive


def _layout_path(name: str) -> str | None:
    """The archive member's place in a layout, or None for anything else (skipped)."""
    parts = PurePosixPath(name.lstrip("./") if name.startswith("./") else name).parts
    parts = tuple(p for p in parts if p != ".")
    if parts in (("oci-layout",), ("index.json",)):
        return parts[0]
    if len(parts) == 3 and parts[:2] == ("blobs", "sha256"):
        hexd = parts[2]
        if len(hexd) == 64 and all(c in "0123456789abcdef" for c in hexd):
            return "/".join(parts)
    return None


def extract_archive(data: bytes, target: Path, limit: int) -> None:
    """An oci-archive's layout files into `target`, nothing else, within `limit` bytes."""
    try:
        tar = tarfile.open(fileobj=io.BytesIO(data), mode="r:")  # noqa: SIM115 - closed below
    except tarfile.TarError:
        raise _bad(
            "not an image: the file is not a tar archive (oci-archive)", "not_an_image"
        ) from None
    total = 0
    with tar:
        try:
            for member in tar:
                place = _layout_path(member.name)
                if place is None or not member.isfile():
                    continue
                total += member.size
                if total > limit:
                    raise _too_large(limit)
                path = target / place
                path.parent.mkdir(parents=True, exist_ok=True)
                source = tar.extractfile(member)
                assert source is not None
                with source, path.open("wb") as out:
                    shutil.copyfileobj(source, out, CHUNK)
        except tarfile.TarError as exc:
            raise _bad(f"not an image: a broken tar archive ({exc})", "not_an_image") from None
    if not (target / "index.json").is_file():
        raise _bad("not an image: the archive has no OCI index.json", "not_an_image")


def docker_to_layout(data: bytes, target: Path, work: Path) -> None:
    """A docker-archive converted to an OCI layout by skopeo (run on our own copy)."""
    archive = work / "docker.tar"
    archive.write_bytes(data)
    try:
        result = subprocess.run(
            [
                "skopeo",
                "--insecure-policy",  # a local file to a local dir: no trust decision to make
                "copy",
                "-q",
                f"docker-archive:{archive}",
                f"oci:{target}:{UNPACK_TAG}",
            ],
            capture_output=True,
            text=True,
            timeout=TOOL_TIMEOUT_S,
            stdin=subprocess.DEVNULL,
        )
    except subprocess.TimeoutExpired:
        raise _bad("reading the docker-archive took too long") from None
    finally:
        archive.unlink(missing_ok=True)
    if result.returncode != 0:
        detail = (result.stderr.strip().splitlines() or ["unreadable"])[-1]
        raise _bad(
            f"not an image: skopeo could not read the docker-archive ({detail[:200]})",
            "not_an_image",
        )


# ----------------------------------------------------------------- verification


def _blob_path(layout: Path, descriptor: Any) -> tuple[Path, str, int]:
    if not isinstance(descriptor, dict):
        raise _bad("a descriptor in the image is not an object")
    digest, size = descriptor.get("digest"), descriptor.get("size")
    if not isinstance(digest, str) or not digest.startswith("sha256:"):
        raise _bad(f"unsupported digest {str(digest)[:80]!r} (sha256 only)")
    hexd = digest.removeprefix("sha256:")
    if len(hexd) != 64 or not all(c in "0123456789abcdef" for c in hexd):
        raise _bad(f"malformed digest {digest[:80]!r}")
    if not isinstance(size, int) or size < 0:
        raise _bad(f"the descriptor of {digest} has no valid size")
    path = layout / "blobs" / "sha256" / hexd
    if not path.is_file():
        raise _bad(f"the image lacks the blob {digest}")
    return path, digest, size


def verify_blob(layout: Path, descriptor: Any) -> tuple[Path, int]:
    """The blob's sha256 and size checked against its descriptor: (path, size)."""
    path, digest, size = _blob_path(layout, descriptor)
    actual = path.stat().st_size
    if actual != size:
        raise _bad(f"blob {digest} is {actual} bytes, the manifest says {size}", "digest_mismatch")
    h = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(CHUNK):
            h.update(chunk)
    if "sha256:" + h.hexdigest() != digest:
        raise _bad(f"blob {digest} does not match its digest (tampered?)", "digest_mismatch")
    return path, size


def _json_blob(layout: Path, descriptor: Any) -> dict[str, Any]:
    path, size = verify_blob(layout, descriptor)
    if size > MAX_JSON_BYTES:
        raise _bad("a manifest or config of the image is too large")
    try:
        data = json.loads(path.read_bytes())
    except ValueError:
        raise _bad("a manifest or config of the image is not JSON") from None
    if not isinstance(data, dict):
        raise _bad("a manifest or config of the image is not an object")
    return data


def choose_manifest(layout: Path, tag: str | None) -> dict[str, Any]:
    """The index's manifest descriptor: the one tagged `tag`, else the only one."""
    try:
        index = json.loads((layout / "index.json").read_bytes()[:MAX_JSON_BYTES])
    except (OSError, ValueError):
        raise _bad("not an image: index.json is not JSON", "not_an_image") from None
    manifests = index.get("manifests") if isinstance(index, dict) else None
    if not isinstance(manifests, list) or not manifests:
        raise _bad("not an image: index.json lists no manifest", "not_an_image")
    usable = [m for m in manifests if isinstance(m, dict) and m.get("mediaType") in MANIFEST_TYPES]
    if tag is not None:
        usable = [m for m in usable if (m.get("annotations") or {}).get(REF_ANNOTATION) == tag]
        if not usable:
            raise _bad(f"the image layout has no manifest tagged {tag!r}", "image_tag_not_found")
    if len(usable) != 1:
        raise _bad(
            f"the image layout holds {len(usable)} image manifests: name one (oci:DIR:tag)"
            if usable
            else "the image has no single-platform image manifest (an index of indexes is "
            "not supported)"
        )
    return dict(usable[0])


def _args(config: dict[str, Any]) -> tuple[str, ...]:
    inner = config.get("config") or {}
    if not isinstance(inner, dict):
        raise _bad("the image config's `config` is not an object")
    parts: list[str] = []
    for key in ("Entrypoint", "Cmd"):
        value = inner.get(key) or []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise _bad(f"the image config's {key} is not a list of strings")
        parts.extend(value)
    if not parts:
        raise _bad("the image has no entrypoint (set Entrypoint or Cmd)", "no_entrypoint")
    return tuple(parts)


def _env(config: dict[str, Any]) -> tuple[str, ...]:
    value = (config.get("config") or {}).get("Env") or []
    if not isinstance(value, list) or not all(isinstance(v, str) and "=" in v for v in value):
        raise _bad("the image config's Env is not a list of NAME=value strings")
    return tuple(value)


# ----------------------------------------------------------------- layers


def _open_layer(path: Path, media_type: str) -> gzip.GzipFile | IO[bytes]:
    if media_type in LAYER_GZIP:
        return gzip.open(path, "rb")
    if media_type in LAYER_PLAIN:
        return path.open("rb")
    raise _bad(f"unsupported layer type {media_type[:100]!r} (gzip or plain tar)")


def _bad_name(name: str) -> bool:
    parts = PurePosixPath(name).parts
    return name.startswith("/") or ".." in parts


def scan_layer(path: Path, media_type: str, budget: int, limit: int) -> int:
    """Refuse what must never reach the unpacker; returns the budget left (bytes)."""
    try:
        with _open_layer(path, media_type) as raw, tarfile.open(fileobj=raw, mode="r|") as tar:
            for member in tar:
                if member.ischr() or member.isblk():
                    raise _bad(
                        f"the image holds a device node ({member.name[:200]})", "unsafe_image"
                    )
                if _bad_name(member.name) or (member.islnk() and _bad_name(member.linkname)):
                    raise _bad(
                        f"the image holds a path outside its root ({member.name[:200]})",
                        "unsafe_image",
                    )
                budget -= member.size
                if budget < 0:
                    raise _too_large(limit)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise _bad(f"a layer of the image is not a readable tar ({exc})") from None
    return budget


def _clear_special_bits(root: Path) -> None:
    """setuid/setgid off everywhere (NO_NEW_PRIVS already makes them inert: twice safe)."""
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            path = os.path.join(dirpath, name)
            st = os.lstat(path)
            if not stat.S_ISLNK(st.st_mode) and st.st_mode & (stat.S_ISUID | stat.S_ISGID):
                os.chmod(path, stat.S_IMODE(st.st_mode) & ~(stat.S_ISUID | stat.S_ISGID))


# ----------------------------------------------------------------- the store


class ImageStore:
    """`<data-dir>/images/<hex>/`: verified, unpacked images by manifest digest."""

    def __init__(self, root: Path, max_bytes: int = DEFAULT_MAX_IMAGE_BYTES) -> None:
        self.root = root
        self.max_bytes = max_bytes

    def image_dir(self, digest: str) -> Path:
        return self.root / digest.removeprefix("sha256:")

    def rootfs(self, digest: str) -> Path:
        return self.image_dir(digest) / "bundle" / "rootfs"

    def info(self, digest: str) -> ImageInfo | None:
        path = self.image_dir(digest) / "image.json"
        with contextlib.suppress(OSError, ValueError, KeyError):
            return ImageInfo.from_dict(json.loads(path.read_text()))
        return None

    def add(self, data: bytes, transport: str, tag: str | None = None) -> ImageInfo:
        """Verify and unpack an image (blocking: run it in a thread)."""
        reason = tools_missing()
        if reason is not None:
            raise Unavailable(
                f"container images are unavailable: {reason}", code="containers_unavailable"
            )
        if transport not in TRANSPORTS:
            raise _bad(f"unknown image transport {transport!r} (use {', '.join(TRANSPORTS)})")
        if len(data) > self.max_bytes:
            raise _too_large(self.max_bytes)
        self.root.mkdir(parents=True, exist_ok=True, mode=0o700)
        with _workdir(self.root) as work:
            layout = work / "layout"
            layout.mkdir()
            if transport == "docker-archive":
                docker_to_layout(data, layout, work)
                tag = UNPACK_TAG
            else:
                extract_archive(data, layout, self.max_bytes)
            descriptor = choose_manifest(layout, tag)
            manifest = _json_blob(layout, descriptor)
            digest = str(descriptor["digest"])
            config = _json_blob(layout, manifest.get("config"))
            args, env = _args(config), _env(config)
            layers = manifest.get("layers")
            if not isinstance(layers, list):
                raise _bad("the image manifest lists no layers")
            size, budget = 0, self.max_bytes
            for layer in layers:
                path, layer_size = verify_blob(layout, layer)
                size += layer_size
                budget = scan_layer(path, str(layer.get("mediaType", "")), budget, self.max_bytes)
            cwd = (config.get("config") or {}).get("WorkingDir") or "/"
            info = ImageInfo(digest, args, env, str(cwd), size)
            existing = self.info(digest)
            if existing is not None:
                # The same manifest digest, verified and unpacked before (this upload was
                # verified too: a tampered copy of a known image is still refused).
                return existing
            # umoci is pointed at exactly the manifest verified above.
            index = {
                "schemaVersion": 2,
                "manifests": [{**descriptor, "annotations": {REF_ANNOTATION: UNPACK_TAG}}],
            }
            (layout / "index.json").write_text(json.dumps(index))
            staged = work / "image"
            staged.mkdir()
            self._unpack(layout, staged / "bundle")
            _clear_special_bits(staged / "bundle" / "rootfs")
            (staged / "image.json").write_text(json.dumps(info.to_dict()))
            target = self.image_dir(digest)
            try:
                os.rename(staged, target)
            except OSError:
                if self.info(digest) is None:  # not a concurrent twin: a real failure
                    raise
            return info

    @staticmethod
    def _unpack(layout: Path, bundle: Path) -> None:
        try:
            result = subprocess.run(
                ["umoci", "unpack", "--image", f"{layout}:{UNPACK_TAG}", str(bundle)],
                capture_output=True,
                text=True,
                timeout=TOOL_TIMEOUT_S,
                stdin=subprocess.DEVNULL,
            )
        except subprocess.TimeoutExpired:
            raise _bad("unpacking the image took too long") from None
        if result.returncode != 0:
            detail = (result.stderr.strip().splitlines() or ["failed"])[-1]
            raise _bad(f"the image could not be unpacked ({detail[:200]})")
        # The container's root (an unprivileged uid of its own) must reach its rootfs.
        os.chmod(bundle, 0o755)  # noqa: S103 - the image's files are not secret to it

    def collect(self, keep: set[str]) -> list[str]:
        """Remove unpacked images no version uses (`keep`: manifest digests)."""
        removed = []
        wanted = {d.removeprefix("sha256:") for d in keep}
        for path in self.root.iterdir() if self.root.is_dir() else []:
            if path.name.startswith(".") or path.name in wanted:
                continue
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path.name)
        return removed


@contextlib.contextmanager
def _workdir(root: Path) -> Iterator[Path]:
    work = Path(tempfile.mkdtemp(prefix=".add-", dir=root))
    try:
        yield work
    finally:
        shutil.rmtree(work, ignore_errors=True)

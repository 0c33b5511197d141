"""Deploying a container image: checks before the image store, and the version's bundle.

The image itself is verified and unpacked by runtime/oci_image.py (in a thread: hashing
and unpacking a few hundred MB must not stall the gateway). The version then gets an
ordinary content-addressed bundle holding only `image.json` (the manifest digest, the
entrypoint, env and working directory), so versions, traffic, idempotent redeploys and
bundle collection work for images exactly as for code.
"""

from __future__ import annotations

import asyncio
import json
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path

from cumulo.control.bundle import pack
from cumulo.errors import BadRequest
from cumulo.runtime.container_pool import IMAGE_FILE
from cumulo.runtime.oci_image import ImageInfo, ImageStore, MiB
from cumulo.runtime.settings import RuntimeSettings


@dataclass(frozen=True, slots=True)
class ImageUpload:
    data: bytes
    transport: str  # oci-archive | oci | docker-archive
    tag: str | None = None


def image_bundle(info: ImageInfo) -> bytes:
    """The version's bundle: image.json alone, packed deterministically."""
    with tempfile.TemporaryDirectory(prefix="cumulo-image-") as tmp:
        (Path(tmp) / IMAGE_FILE).write_text(json.dumps(info.to_dict(), sort_keys=True))
        return pack(Path(tmp))


class ImageService:
    def __init__(self, settings: RuntimeSettings, root: Path) -> None:
        self.store = ImageStore(root, settings.max_image_mb * MiB)
        # Digests of images being deployed: no version names them yet, collection spares them.
        self.pinned: set[str] = set()

    async def add(self, upload: ImageUpload, name: str | None) -> ImageInfo:
        if name is None:
            raise BadRequest(
                "a container function needs a name: pass --name", code="invalid_deploy"
            )
        if os.geteuid() != 0:
            # Rootless would need subordinate uids for the container and a delegated
            # cgroup v2 subtree (docs/containers.md): not done here.
            raise BadRequest(
                "container functions need a root gateway on this platform",
                code="containers_unavailable",
            )
        info = await asyncio.to_thread(self.store.add, upload.data, upload.transport, upload.tag)
        self.pinned.add(info.digest)
        return info

    def collect(self, code_dirs: list[Path]) -> list[str]:
        """Remove images that none of these bundles (the ones kept) names."""
        keep = set(self.pinned)
        for code_dir in code_dirs:
            try:
                keep.add(str(json.loads((code_dir / IMAGE_FILE).read_text())["digest"]))
            except (OSError, ValueError, KeyError, TypeError):
                continue
        return self.store.collect(keep)

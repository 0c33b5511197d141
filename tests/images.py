"""OCI images built offline, in the test: a BusyBox root written as an OCI layout by hand.

No registry and no builder: one gzip'd tar layer holding Debian's static BusyBox
(`busybox-static`) as /bin/busybox (with /bin/sh), a web root and CGI scripts, a config
whose entrypoint starts `busybox httpd` on `$PORT`, and the digests computed here, the way
an image builder would. `skopeo` turns the layout into a docker-archive when a test wants one.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import shutil
import subprocess
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

BUSYBOX = Path("/bin/busybox")
MANIFEST_TYPE = "application/vnd.oci.image.manifest.v1+json"
CONFIG_TYPE = "application/vnd.oci.image.config.v1+json"
LAYER_TYPE = "application/vnd.oci.image.layer.v1.tar+gzip"
# httpd on $PORT, in the foreground; the shell only expands $PORT.
HTTPD = ["/bin/sh", "-c", "exec /bin/busybox httpd -f -v -p 0.0.0.0:$PORT -h /www"]

CGI = {
    # A JSON answer, the request's method and query echoed back.
    "hello": '#!/bin/sh\nprintf "Content-Type: application/json\\r\\n\\r\\n"\n'
    'printf \'{"hello":"container","method":"%s","query":"%s"}\' "$REQUEST_METHOD" '
    '"$QUERY_STRING"\n',
    # Sleeps past any test's timeout.
    "slow": '#!/bin/sh\nsleep 60\nprintf "Content-Type: text/plain\\r\\n\\r\\nlate"\n',
    # Allocates and touches 400 MB (dd's buffer is one block).
    "hog": "#!/bin/sh\n/bin/busybox dd if=/dev/zero of=/dev/null bs=400M count=2 2>&1\n"
    'printf "Content-Type: text/plain\\r\\n\\r\\nsurvived"\n',
    # Writes a line to stderr (the function's logs) and answers.
    "log": '#!/bin/sh\necho "cgi-log-line $QUERY_STRING" >&2\n'
    'printf "Content-Type: text/plain\\r\\n\\r\\nlogged"\n',
    # Reaches outward: is there any interface but loopback?
    "net": '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\n"\n'
    "/bin/busybox cat /proc/net/dev | /bin/busybox tail -n +3 | "
    "/bin/busybox cut -d: -f1 | /bin/busybox tr -d ' ' | /bin/busybox sort | "
    "/bin/busybox tr '\\n' ' '\n",
    # Who the server runs as.
    "whoami": '#!/bin/sh\nprintf "Content-Type: text/plain\\r\\n\\r\\n"\n'
    "/bin/busybox id -u; /bin/busybox grep -E '^(CapEff|NoNewPrivs)' /proc/self/status\n",
}


def busybox_available() -> str | None:
    """Why images cannot be built here (None: they can)."""
    if not BUSYBOX.is_file():
        return "busybox-static is not installed (/bin/busybox)"
    out = subprocess.run(["file", "-b", str(BUSYBOX)], capture_output=True, text=True)
    if out.returncode == 0 and "statically linked" not in out.stdout:
        return "/bin/busybox is not statically linked (install busybox-static)"
    return None


@dataclass
class Layer:
    """One layer's files: path → (mode, bytes); symlinks path → target."""

    files: dict[str, tuple[int, bytes]] = field(default_factory=dict)
    links: dict[str, str] = field(default_factory=dict)
    dirs: list[str] = field(default_factory=list)
    # Raw members for hostile layers: (TarInfo, data or None).
    raw: list[tuple[tarfile.TarInfo, bytes | None]] = field(default_factory=list)

    def tar(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
            for d in sorted(self.dirs):
                info = tarfile.TarInfo(d)
                info.type, info.mode = tarfile.DIRTYPE, 0o755
                tar.addfile(info)
            for path, (mode, data) in sorted(self.files.items()):
                info = tarfile.TarInfo(path)
                info.mode, info.size = mode, len(data)
                tar.addfile(info, io.BytesIO(data))
            for path, target in sorted(self.links.items()):
                info = tarfile.TarInfo(path)
                info.type, info.linkname, info.mode = tarfile.SYMTYPE, target, 0o777
                tar.addfile(info)
            for info, data in self.raw:
                tar.addfile(info, io.BytesIO(data) if data is not None else None)
        return buf.getvalue()


def busybox_layer(cgi: dict[str, str] | None = None) -> Layer:
    layer = Layer(dirs=["bin", "tmp", "www", "www/cgi-bin", "proc", "dev", "etc"])
    layer.files["bin/busybox"] = (0o755, BUSYBOX.read_bytes())
    layer.links["bin/sh"] = "/bin/busybox"
    layer.links["bin/sleep"] = "/bin/busybox"
    layer.files["www/index.html"] = (0o644, b"hello from a container\n")
    layer.files["etc/passwd"] = (0o644, b"root:x:0:0:root:/:/bin/sh\n")
    for name, script in (CGI if cgi is None else cgi).items():
        layer.files[f"www/cgi-bin/{name}"] = (0o755, script.encode())
    return layer


def _blob(blobs: Path, data: bytes) -> dict[str, Any]:
    digest = hashlib.sha256(data).hexdigest()
    (blobs / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def write_layout(
    target: Path,
    *,
    entrypoint: list[str] | None = None,
    cmd: list[str] | None = None,
    layers: list[Layer] | None = None,
    env: list[str] | None = None,
    tag: str = "latest",
    tamper: bool = False,
) -> str:
    """An OCI image layout in `target`; returns the manifest digest. `tamper` flips a byte
    of the first layer after its digest was taken (the manifest then lies about it)."""
    blobs = target / "blobs" / "sha256"
    blobs.mkdir(parents=True, exist_ok=True)
    (target / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    layer_descs, diff_ids = [], []
    for layer in layers if layers is not None else [busybox_layer()]:
        raw = layer.tar()
        diff_ids.append("sha256:" + hashlib.sha256(raw).hexdigest())
        compressed = gzip.compress(raw, mtime=0)
        desc = _blob(blobs, compressed)
        layer_descs.append({"mediaType": LAYER_TYPE, **desc})
    if tamper:
        path = blobs / layer_descs[0]["digest"].removeprefix("sha256:")
        data = bytearray(path.read_bytes())
        data[len(data) // 2] ^= 0xFF
        path.write_bytes(bytes(data))
    image_config: dict[str, Any] = {"Env": env or ["PATH=/bin"], "WorkingDir": "/"}
    if entrypoint is not None:
        image_config["Entrypoint"] = entrypoint
    if cmd is not None:
        image_config["Cmd"] = cmd
    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
    }
    config_desc = _blob(blobs, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {"mediaType": CONFIG_TYPE, **config_desc},
        "layers": layer_descs,
    }
    manifest_desc = _blob(blobs, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "manifests": [
            {
                "mediaType": MANIFEST_TYPE,
                **manifest_desc,
                "annotations": {"org.opencontainers.image.ref.name": tag},
            }
        ],
    }
    (target / "index.json").write_text(json.dumps(index))
    return str(manifest_desc["digest"])


def oci_archive(layout: Path, out: Path) -> Path:
    """The layout as an oci-archive (a plain tar of the layout directory)."""
    with tarfile.open(out, "w") as tar:
        for path in sorted(layout.rglob("*")):
            tar.add(path, arcname=str(path.relative_to(layout)), recursive=False)
    return out


def docker_archive(layout: Path, out: Path, tag: str = "latest") -> Path:
    """The layout as a docker-archive (`docker save` format), converted by skopeo."""
    skopeo = shutil.which("skopeo")
    assert skopeo is not None
    subprocess.run(
        [
            skopeo,
            "--insecure-policy",
            "copy",
            "-q",
            f"oci:{layout}:{tag}",
            f"docker-archive:{out}:cumulo-test:{tag}",
        ],
        check=True,
        capture_output=True,
    )
    return out


def httpd_image(tmp: Path, name: str = "img", **kwargs: Any) -> Path:
    """A BusyBox httpd image as an oci-archive file in `tmp`."""
    layout = tmp / f"{name}-layout"
    kwargs.setdefault("entrypoint", HTTPD)
    write_layout(layout, **kwargs)
    return oci_archive(layout, tmp / f"{name}.tar")

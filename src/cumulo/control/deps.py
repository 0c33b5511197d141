"""Per-function Python dependencies: a `requirements.txt` in the bundle → a cached virtualenv.

`<data-dir>/envs/<hash>/`, where the hash covers the requirements file's bytes and the
interpreter (its real path and version), is built once and shared by every version with
the same requirements. Layout:

- a plain `python -m venv --without-pip` of the platform's interpreter: no system site
  packages, so a function sees its own requirements and the standard library;
- the requirements, installed by pip (`uv` when it is on PATH) running *inside the
  sandbox* (bubblewrap with network, the data dir hidden, only the new env writable): a
  package's build scripts are untrusted code;
- `cumulo-platform/`: symlinks to the packages a zygote itself imports (cumulo, msgpack,
  orjson…) and to the platform's ASGI stack (FastAPI, Starlette, pydantic and what they
  import), added to `sys.path` by a `.pth` file *after* site-packages, so `import cumulo`
  works, the user's pinned versions win, and the gateway's other packages stay invisible.
  The ASGI stack is there because `cumulo.app` is the platform's: an app that runs without
  a requirements.txt keeps running when it adds one for something else (as Lambda's
  runtime provides boto3); an app that lists FastAPI gets its own.

A build goes to a temporary directory renamed into place when complete (a half-built env
is never used); an asyncio lock per hash makes concurrent deploys of one hash build once
(another gateway racing on the same data dir loses the rename and discards its copy).
A failed build fails the deploy with 400 `dependency_build_failed` and the log's tail.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import logging
import os
import re
import shutil
import tempfile
from pathlib import Path

from cumulo import fds
from cumulo.errors import BadRequest
from cumulo.runtime import sandbox
from cumulo.runtime.settings import RuntimeSettings
from cumulo.runtime.spares import base_env

log = logging.getLogger("cumulo.deps")

REQUIREMENTS = "requirements.txt"
# Bump when the layout of an env changes: old envs are then rebuilt, not reused.
ENV_FORMAT = "1"
# Below the CLI's 180 s deploy timeout, leaving room for the import check.
BUILD_TIMEOUT_S = 150.0
MAX_ENV_BYTES = 2 * 1024 * 1024 * 1024
LOG_TAIL_CHARS = 6000
MB = 1024 * 1024
# The sandbox's /tmp during a build (pip unpacks and builds wheels there).
BUILD_TMP_BYTES = 1024 * MB
# Operator settings a build honours (a mirror, a proxy, a CA bundle).
PASSED_ENV_PREFIXES = ("PIP_", "UV_", "HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy")
PASSED_ENV = ("https_proxy", "no_proxy", "SSL_CERT_FILE", "SSL_CERT_DIR", "REQUESTS_CA_BUNDLE")

# Run by the platform's interpreter: the top-level modules a zygote and its workers import
# from outside the standard library, and where each lives.
_CLOSURE_SCRIPT = """
import json, os, site, sys, sysconfig
import cumulo, cumulo.runtime.zygote, cumulo.runtime.worker, cumulo.runtime.asgi
import cumulo.sdk.context, cumulo.quantum.sdk
try:
    import croniter  # what @cumulo.schedule imports when a module is loaded
except ImportError:
    pass
try:
    import fastapi, starlette.websockets  # the ASGI stack cumulo.app apps find (see above)
except ImportError:
    pass
std = os.path.realpath(sysconfig.get_paths()["stdlib"]) + os.sep
sites = tuple(os.path.realpath(p) + os.sep for p in site.getsitepackages())
import importlib.metadata as metadata
dists = metadata.packages_distributions()
found = {}
for name, mod in list(sys.modules.items()):
    file = getattr(mod, "__file__", None)
    if "." in name or name == "_distutils_hack":
        continue
    if file:
        where = os.path.dirname(file) if hasattr(mod, "__path__") else file
    else:
        # A namespace package (opentelemetry, which FastAPI imports): its one directory.
        portions = list(getattr(mod, "__path__", None) or ())
        if len(portions) != 1:
            continue
        where = portions[0]
    real = os.path.realpath(where)
    if not real.startswith(std) or real.startswith(sites):
        found[name] = where
        libs = os.path.join(os.path.dirname(where), name + ".libs")
        if os.path.isdir(libs):
            found[name + ".libs"] = libs
        # Its metadata too: entry points (opentelemetry's context) and version lookups.
        for dist in dists.get(name, ()):
            info = getattr(metadata.distribution(dist), "_path", None)
            if info is not None and os.path.isdir(info):
                found[os.path.basename(str(info))] = str(info)
print(json.dumps({"version": "%d.%d" % sys.version_info[:2], "modules": found}))
"""


# A requirement that installs from the bundle's own files, not from the index.
_LOCAL_REQUIREMENT = re.compile(
    rb"(?m)^\s*(-[erc]\b|--editable|--requirement|--constraint|\.|/|file:)"
)


def _log_tail(text: str) -> str:
    return text[-LOG_TAIL_CHARS:]


def _summary(text: str) -> str:
    """The one line of a failed build's log that says why (pip's last ERROR line)."""
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith(("ERROR", "error"))]
    return (errors or lines or ["no output"])[-1][:300]


def _size(root: Path) -> int:
    total = 0
    for dirpath, _dirs, files in os.walk(root):
        for name in files:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def _make_readable(root: Path) -> None:
    """Zygotes run under private uids: everything must be readable (dirs traversable)."""
    for dirpath, _dirs, files in os.walk(root):
        os.chmod(dirpath, os.stat(dirpath).st_mode | 0o555)  # noqa: S103 - read-only for all
        for name in files:
            path = os.path.join(dirpath, name)
            if not os.path.islink(path):
                os.chmod(path, os.stat(path).st_mode | 0o444)


def has_requirements(code_dir: Path) -> bool:
    path = code_dir / REQUIREMENTS
    if not path.is_file():
        return False
    lines = (line.split("#", 1)[0].strip() for line in path.read_text(errors="replace").split("\n"))
    return any(lines)


class DependencyBuilder:
    def __init__(self, settings: RuntimeSettings, envs_dir: Path) -> None:
        self.settings = settings
        self.root = envs_dir
        self.root.mkdir(parents=True, exist_ok=True)
        # Zygotes pass through to their own env; they may not list the others.
        self.root.chmod(0o711)
        self._locks: dict[str, asyncio.Lock] = {}
        self._closure: dict[str, object] | None = None
        self.builds = 0  # completed builds in this process (tests, describe)

    def env_dir(self, env_hash: str) -> Path:
        return self.root / env_hash

    async def _platform_closure(self) -> dict[str, object]:
        if self._closure is None:
            out = await self._run_quick([self.settings.python, "-c", _CLOSURE_SCRIPT])
            self._closure = dict(json.loads(out))
        return self._closure

    async def requirements_hash(self, code_dir: Path) -> str | None:
        if not has_requirements(code_dir):
            return None
        closure = await self._platform_closure()
        # What the env links to is part of its identity: a new zygote import rebuilds it.
        linked = json.dumps(closure["modules"], sort_keys=True)
        return self._digest(code_dir, str(closure["version"]), linked)

    def _digest(self, code_dir: Path, version: str, linked: str) -> str:
        digest = hashlib.sha256()
        for part in (ENV_FORMAT, os.path.realpath(self.settings.python), version, linked):
            digest.update(part.encode() + b"\0")
        requirements = (code_dir / REQUIREMENTS).read_bytes()
        digest.update(requirements)
        if _LOCAL_REQUIREMENT.search(requirements):
            # `./pkg`, `-e .`, `-r more.txt`: the bundle's own files are part of the env.
            digest.update(code_dir.name.encode())
        return digest.hexdigest()[:32]

    async def ensure(self, code_dir: Path) -> str | None:
        """The hash of the env for `code_dir`'s requirements.txt, built if needed; None
        when the bundle has no requirements. BadRequest when the build fails."""
        env_hash = await self.requirements_hash(code_dir)
        if env_hash is None:
            return None
        target = self.env_dir(env_hash)
        if target.is_dir():
            return env_hash
        lock = self._locks.setdefault(env_hash, asyncio.Lock())
        async with lock:
            if not target.is_dir():
                await self._build(code_dir, target)
        return env_hash

    async def _build(self, code_dir: Path, target: Path) -> None:
        tmp = Path(tempfile.mkdtemp(prefix=f".build-{target.name[:12]}-", dir=self.root))
        try:
            closure = await self._platform_closure()
            await self._run_quick([self.settings.python, "-m", "venv", "--without-pip", str(tmp)])
            output = await self._install(code_dir, tmp)
            # File-system walks: off the event loop.
            size = await asyncio.to_thread(_size, tmp)
            if size > MAX_ENV_BYTES:
                raise BadRequest(
                    f"the dependencies take {size // MB} MB; the limit is {MAX_ENV_BYTES // MB} MB",
                    code="dependency_build_failed",
                    details={"log": _log_tail(output)},
                )
            await asyncio.to_thread(self._finish, tmp, target, closure)
            self.builds += 1
            log.info("built the dependency env %s", target.name)
        finally:
            await asyncio.to_thread(shutil.rmtree, tmp, ignore_errors=True)

    def _finish(self, tmp: Path, target: Path, closure: dict[str, object]) -> None:
        self._link_platform(tmp, target, closure)
        _make_readable(tmp)
        try:
            os.rename(tmp, target)
        except OSError:
            if not target.is_dir():
                raise
            # Another gateway on this data dir finished the same env first: use its.

    def _link_platform(self, env: Path, final: Path, closure: dict[str, object]) -> None:
        """`cumulo-platform/` with links to what the zygote imports, on sys.path last."""
        shim = env / "cumulo-platform"
        shim.mkdir()
        modules = closure["modules"]
        assert isinstance(modules, dict)
        for name, where in sorted(modules.items()):
            source = Path(str(where))
            link = shim / (source.name if source.is_file() else name)
            if not link.exists():
                link.symlink_to(source)
        site = env / "lib" / f"python{closure['version']}" / "site-packages"
        # The final path: the .pth is read only once the env has been renamed into place.
        (site / "zz-cumulo-platform.pth").write_text(f"{final / 'cumulo-platform'}\n")

    async def _install(self, code_dir: Path, env: Path) -> str:
        python = str(env / "bin" / "python")
        requirements = str((code_dir / REQUIREMENTS).resolve())
        uv = shutil.which("uv")
        if uv is not None:
            argv = [uv, "pip", "install", "--python", python, "-r", requirements]
        else:
            argv = [
                self.settings.python,
                "-m",
                "pip",
                "--python",
                python,
                "install",
                "--no-input",
                "--disable-pip-version-check",
                "--no-warn-script-location",
                "--progress-bar",
                "off",
                "-r",
                requirements,
            ]
        status = sandbox.status(self.settings)
        if status.bwrap is not None:
            argv = [
                *sandbox.bwrap_argv(
                    status.bwrap,
                    self.settings,
                    code_dir,
                    network=True,
                    tmp_bytes=BUILD_TMP_BYTES,
                    drop_uid=status.drop_uid,
                    rw_paths=(env,),
                ),
                *argv,
            ]
        env_vars = base_env("/tmp")  # noqa: S108 - the sandbox's private /tmp
        env_vars.update(
            {
                k: v
                for k, v in os.environ.items()
                if k.startswith(PASSED_ENV_PREFIXES) or k in PASSED_ENV
            }
        )
        env_vars.setdefault("PIP_CACHE_DIR", "/tmp/pip-cache")  # noqa: S108 - private /tmp
        # Not through the event loop's spawn (uvloop's passes on every fd that is not
        # close-on-exec): the build starts with stdio and nothing else of the gateway's.
        try:
            returncode, raw, _ = await fds.run(
                argv, limit_s=BUILD_TIMEOUT_S, env=env_vars, cwd=str(code_dir), merge_stderr=True
            )
        except TimeoutError:
            raise BadRequest(
                f"installing requirements.txt took longer than {BUILD_TIMEOUT_S:.0f}s",
                code="dependency_build_failed",
                details={"log": ""},
            ) from None
        output = raw.decode(errors="replace")
        if returncode != 0:
            raise BadRequest(
                f"installing requirements.txt failed: {_summary(output)}",
                code="dependency_build_failed",
                details={"log": _log_tail(output)},
            )
        return output

    @staticmethod
    async def _run_quick(argv: list[str]) -> str:
        try:
            returncode, out, err = await fds.run(argv, limit_s=60)
        except TimeoutError as exc:
            raise BadRequest(
                f"preparing the dependency env failed: {exc}", code="dependency_build_failed"
            ) from None
        if returncode != 0:
            raise BadRequest(
                f"preparing the dependency env failed: {_summary(err.decode(errors='replace'))}",
                code="dependency_build_failed",
                details={"log": _log_tail(err.decode(errors="replace"))},
            )
        return out.decode()

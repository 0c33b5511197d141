"""The control plane: deploy, versions, traffic, rollback, removal."""

from __future__ import annotations

import sys
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from cumulo.control.bundle import BundleStore, digest
from cumulo.control.deps import DependencyBuilder, has_requirements
from cumulo.control.images import ImageService, ImageUpload, image_bundle
from cumulo.control.limits import check_ceilings, clamp
from cumulo.control.process import DEFAULT_CONCURRENCY, read_manifest
from cumulo.control.routes import Route, RouteCache
from cumulo.errors import BadRequest, Conflict, FunctionCrashed, NotFound, Unavailable
from cumulo.runtime import cgroups, sandbox
from cumulo.runtime.executor_api import Executor
from cumulo.runtime.loader import KIND_CONTAINER, KIND_EVENT, KIND_LAMBDA, KIND_PROCESS
from cumulo.runtime.settings import RuntimeSettings
from cumulo.runtime.spec import VersionSpec
from cumulo.runtime.zygote_handle import ZygoteHandle
from cumulo.sdk.spec import FunctionConfig, default_name, validate_name
from cumulo.store.base import FunctionRecord, VersionRecord
from cumulo.store.bundles import BundleRepository
from cumulo.store.changes import Change, ChangeFeed
from cumulo.store.control import ControlRepository

VALIDATE_TIMEOUT_S = 60.0
# How long a mirrored bundle no version names survives: a deploy on another gateway stores
# its bundle before it writes the version naming it.
BUNDLE_GRACE_S = 3600.0
VALIDATE_MEMORY_MB = 4096
# The deploy-time import's control group: the operator's memory ceiling, at least this.
VALIDATE_MIN_MEMORY_MB = 1024
LiveChange = Callable[[str, str, list[str]], Awaitable[None]]


@dataclass(frozen=True, slots=True)
class DeployRequest:
    namespace: str
    bundle: bytes
    name: str | None = None
    handler: str | None = None
    env: dict[str, str] | None = None
    promote: bool = True
    overrides: dict[str, Any] | None = None
    # A container image instead of a bundle (control/images.py): its bytes and transport.
    image: ImageUpload | None = None


def entry_module(code_dir: Path) -> str:
    """Which module to import when no --handler says: main.py, or the only .py file."""
    if (code_dir / "main.py").is_file():
        return "main"
    candidates = sorted(p.stem for p in code_dir.glob("*.py"))
    if len(candidates) == 1:
        return candidates[0]
    if not candidates:
        raise BadRequest("the bundle holds no Python module", code="invalid_deploy")
    raise BadRequest(
        f"cannot tell which module to load ({', '.join(candidates)}): add a main.py or pass "
        "--handler module.function",
        code="invalid_deploy",
    )


def _require_reachable_code(settings: RuntimeSettings) -> None:
    """Process functions and requirements.txt envs run from the data dir under a private
    uid: without bubblewrap's bind mounts a root gateway's 0700 data dir is out of its
    reach (the O_PATH trick of plain zygotes covers neither a command nor a virtualenv)."""
    status = sandbox.status(settings)
    if status.drop_uid and not status.sandboxed:
        raise BadRequest(
            "process functions and requirements.txt need the bubblewrap sandbox on this "
            f"platform ({status.reason})",
            code="sandbox_unavailable",
        )


def split_handler(handler: str) -> tuple[str, str]:
    module, _, attr = handler.rpartition(".")
    if not module or not all(part.isidentifier() for part in [*module.split("."), attr]):
        raise BadRequest(
            f"invalid handler {handler!r}: use module.function (e.g. app.handler)",
            code="invalid_handler",
        )
    return module, attr


class ControlPlane:
    def __init__(
        self,
        repo: ControlRepository,
        bundles: BundleStore,
        executor: Executor,
        python: str = sys.executable,
    ) -> None:
        self.repo = repo
        self.bundles = bundles
        self.executor = executor
        self.python = python
        self.routes = RouteCache(self._load_route)
        # requirements.txt → <data-dir>/envs/<hash>/ (deps.py)
        self.deps = DependencyBuilder(executor.settings, bundles.code.parent / "envs")
        # Container images, verified and unpacked (control/images.py)
        self.images = ImageService(executor.settings, bundles.code.parent / "images")
        # Told the cron schedules / the topics of the newest live version whenever `live`
        # moves (deploy, traffic, rollback; [] on removal), so both follow the same version.
        self.on_live_change: LiveChange | None = None
        self.on_live_topics: LiveChange | None = None
        # Where other gateways hear of this one's changes (and it of theirs: apply_remote).
        self.changes: ChangeFeed | None = None
        # Where gateways that share no disk find each other's bundles (None: the data dir).
        self.bundle_mirror: BundleRepository | None = None

    # ------------------------------------------------------------ deploy
    async def deploy(self, req: DeployRequest) -> VersionRecord:
        if req.name is not None:
            validate_name(req.name)
        image = None
        if req.image is not None:
            # Verified and unpacked first; its bundle is then a small `image.json`.
            image = await self.images.add(req.image, req.name)
            req = replace(req, bundle=image_bundle(image))
        sha, _ = self.bundles.add(req.bundle)
        # Held until the version row references it: a collection meanwhile keeps it.
        with self.bundles.pinned(sha):
            try:
                if self.bundle_mirror is not None:
                    await self.bundle_mirror.put(sha, req.bundle, time.time())
                return await self._deploy(req, sha, image is not None)
            finally:
                if image is not None:
                    self.images.pinned.discard(image.digest)
                if not await self.repo.bundle_in_use(sha):
                    await self.collect_bundles()

    async def _deploy(self, req: DeployRequest, sha: str, image: bool = False) -> VersionRecord:
        code_dir = self.bundles.code_dir(sha)
        # Only a deploy that brought an image runs one: a bundle's own image.json is a file.
        manifest = None if image else read_manifest(code_dir)
        if manifest is not None or (not image and has_requirements(code_dir)):
            _require_reachable_code(self.executor.settings)
        env_hash: str | None = None
        command: list[str] = []
        if image:
            module = ""
            chosen: dict[str, Any] = {
                "name": "",
                "attr": "",
                "kind": KIND_CONTAINER,
                "config": {"concurrency": DEFAULT_CONCURRENCY},
            }
        elif manifest is not None:
            # Any-language: nothing to import; the command is checked by read_manifest.
            if req.name is None and manifest.name is None:
                raise BadRequest(
                    "a process function needs a name: add name = ... to cumulo.toml or pass --name",
                    code="invalid_deploy",
                )
            module, command = "", list(manifest.command)
            chosen = {
                "name": manifest.name or "",
                "attr": "",
                "kind": KIND_PROCESS,
                "config": manifest.config,
            }
        else:
            if req.handler:
                module, attr = split_handler(req.handler)
            else:
                module, attr = entry_module(code_dir), None
            env_hash = await self.deps.ensure(code_dir)
            env_dir = self.deps.env_dir(env_hash) if env_hash else None
            # Imported with the network the deploy asks for (a module may open a socket at
            # import, e.g. the X-Ray SDK under Powertools' Tracer), as its zygote will be.
            network = bool((req.overrides or {}).get("network"))
            handlers = await self._validate(code_dir, module, attr, env_dir, network=network)
            chosen = self._choose(handlers, req.name, module, attr)
        fallback = chosen["name"]
        if chosen["kind"] == KIND_LAMBDA:
            # An undecorated Lambda handler is named after its module (`lam.handler` → lam),
            # as every Lambda file's function is called `handler`.
            fallback = default_name(module.rpartition(".")[2])
        name = validate_name(req.name or fallback)
        base = FunctionConfig.from_dict(chosen["config"]) if chosen["config"] else FunctionConfig()
        config = base.merged({**(req.overrides or {}), "env": req.env or {}})
        if config.event_format and chosen["kind"] != KIND_LAMBDA:
            raise BadRequest(
                "--event-format applies to undecorated Lambda handlers (--handler) only",
                code="invalid_config",
            )
        if chosen["kind"] == KIND_LAMBDA and not config.event_format:
            # Chosen now and stored with the version, so what a version receives never
            # changes under it; versions stored without one (older ones) keep the JSON body.
            default = "apigw-v2" if chosen.get("aws_style") else "raw"
            config = replace(config, event_format=default)
        check_ceilings(config, self.executor.settings)
        version_config = {
            **config.to_dict(),
            "schedules": list(chosen.get("schedules", [])),
            "topics": list(chosen.get("topics", [])),
            "requirements": env_hash or "",
            "command": command,
        }
        same = await self._same_as_newest(
            req, name, (sha, module, chosen["attr"], chosen["kind"], version_config)
        )
        if same is not None:
            return same
        record = await self.repo.add_version(
            req.namespace,
            name,
            bundle_sha=sha,
            module=module,
            attr=chosen["attr"],
            kind=chosen["kind"],
            config=version_config,
            promote=req.promote,
            now=time.time(),
        )
        self.routes.invalidate(req.namespace, name)
        await self._after_traffic_change(req.namespace, name)
        return record

    async def _same_as_newest(
        self, req: DeployRequest, name: str, identity: tuple[str, str, str, str, dict[str, Any]]
    ) -> VersionRecord | None:
        """Deploys are idempotent: the same bundle bytes with the same handler and config as
        the newest version are that version (a restart of `--demo`, a CI re-run), not a new
        one. With promote, `live` still ends up on it; the caller tells "unchanged" by the
        record's created_at being older than its request."""
        versions = await self.repo.list_versions(req.namespace, name)
        if not versions:
            return None
        newest = max(versions, key=lambda v: v.version)
        if (newest.bundle_sha, newest.module, newest.attr, newest.kind, newest.config) != identity:
            return None
        if req.promote:
            function = await self.function(req.namespace, name)
            if function.traffic != {newest.version: 100}:
                await self.repo.set_traffic(req.namespace, name, {newest.version: 100})
                await self._after_traffic_change(req.namespace, name)
        return newest

    async def _validate(
        self,
        code_dir: Path,
        module: str,
        attr: str | None,
        env_dir: Path | None = None,
        *,
        network: bool = False,
    ) -> list[dict[str, Any]]:
        """Import the bundle in a throwaway zygote, inside the same sandbox functions get
        (with the version's own virtualenv when it has requirements)."""
        spec = VersionSpec(
            namespace="deploy",
            function="validate",
            version=0,
            code_dir=code_dir,
            module=module,
            attr=attr or "",
            kind=KIND_EVENT,
            config=FunctionConfig(
                memory_mb=VALIDATE_MEMORY_MB, timeout_s=VALIDATE_TIMEOUT_S, network=network
            ),
            env_dir=env_dir,
        )
        settings = replace(self.executor.settings, zygote_start_timeout_s=VALIDATE_TIMEOUT_S)
        handle = ZygoteHandle(spec, settings, lambda *_: None, lambda _: None)
        if cgroups.current is not None:
            # The import is user code too: bounded like a zygote (released when it exits).
            handle.group = cgroups.current.new_group(
                "v",
                cgroups.Limits(
                    memory_bytes=max(settings.max_memory_mb, VALIDATE_MIN_MEMORY_MB) * cgroups.MB,
                    pids=cgroups.PIDS_BASE,
                    cpus=1.0,
                ),
            )
        try:
            return await handle.validate()
        except FunctionCrashed as exc:
            message = exc.message
            if exc.code == "start_timeout":
                message = f"importing {module} took longer than {VALIDATE_TIMEOUT_S:.0f}s"
            elif exc.code == "zygote_died":
                message = f"importing {module} crashed the interpreter"
            raise BadRequest(message, code="invalid_deploy", details=exc.details) from None

    @staticmethod
    def _choose(
        handlers: list[dict[str, Any]], name: str | None, module: str, attr: str | None
    ) -> dict[str, Any]:
        if attr is not None:
            return handlers[0]
        if not handlers:
            raise BadRequest(
                f"{module}.py defines no @cumulo.function: decorate one, or pass "
                "--handler module.function",
                code="invalid_deploy",
            )
        if len(handlers) == 1:
            return handlers[0]
        if name is not None:
            for handler in handlers:
                if handler["name"] == name:
                    return handler
        names = ", ".join(h["name"] for h in handlers)
        raise BadRequest(
            f"{module}.py defines several functions ({names}): pass --name or --handler",
            code="invalid_deploy",
        )

    # ------------------------------------------------------------ reads
    async def function(self, namespace: str, name: str) -> FunctionRecord:
        record = await self.repo.get_function(namespace, name)
        if record is None:
            raise NotFound(f"function {name!r} not found", code="function_not_found")
        return record

    async def functions(self, namespace: str) -> list[FunctionRecord]:
        return await self.repo.list_functions(namespace)

    async def versions(self, namespace: str, name: str) -> list[VersionRecord]:
        await self.function(namespace, name)
        return await self.repo.list_versions(namespace, name)

    # ------------------------------------------------------------ traffic
    async def set_traffic(self, namespace: str, name: str, weights: dict[int, int]) -> None:
        if not weights:
            raise BadRequest("give at least one VERSION=PERCENT", code="invalid_traffic")
        if any(w < 0 or w > 100 for w in weights.values()):
            raise BadRequest("each weight must be from 0 to 100", code="invalid_traffic")
        if sum(weights.values()) != 100:
            raise BadRequest(
                f"traffic weights must sum to 100, not {sum(weights.values())}",
                code="invalid_traffic",
            )
        versions = {v.version for v in await self.versions(namespace, name)}
        unknown = sorted(set(weights) - versions)
        if unknown:
            raise BadRequest(
                f"{name} has no version {', '.join(map(str, unknown))}", code="unknown_version"
            )
        weights = {v: w for v, w in weights.items() if w > 0}
        await self.repo.set_traffic(namespace, name, weights)
        await self._after_traffic_change(namespace, name)

    async def rollback(self, namespace: str, name: str) -> dict[int, int]:
        await self.function(namespace, name)
        previous = await self.repo.rollback(namespace, name)
        if previous is None:
            raise Conflict(
                f"{name} has no earlier traffic split to roll back to", code="no_history"
            )
        await self._after_traffic_change(namespace, name)
        return previous

    async def remove(self, namespace: str, name: str) -> None:
        if not await self.repo.delete_function(namespace, name):
            raise NotFound(f"function {name!r} not found", code="function_not_found")
        await self._forget(namespace, name)
        await self._announce(namespace, name)
        await self.collect_bundles()

    async def _forget(self, namespace: str, name: str) -> None:
        self.routes.invalidate(namespace, name)
        await self.executor.retire(namespace, name)
        if self.on_live_change is not None:
            await self.on_live_change(namespace, name, [])
        if self.on_live_topics is not None:
            await self.on_live_topics(namespace, name, [])

    async def _announce(self, namespace: str, name: str) -> None:
        if self.changes is not None:
            await self.changes.publish(Change("function", namespace, name))

    async def apply_remote(self, namespace: str, name: str) -> None:
        """Another gateway deployed, moved traffic, rolled back or removed the function:
        follow it here as if it had been done here (routes, schedules, topics, pools)."""
        if await self.repo.get_function(namespace, name) is None:
            await self._forget(namespace, name)
        else:
            await self._follow_live(namespace, name)

    async def resync(self) -> None:
        """Changes may have been missed: reload every function's routing from the store."""
        self.routes.clear()
        known = {key[:2] for key in self.executor.pools}
        for namespace in await self.repo.namespaces():
            for function in await self.functions(namespace):
                known.discard((namespace, function.name))
                await self._follow_live(namespace, function.name)
        for namespace, name in known:  # pools of functions removed meanwhile
            await self._forget(namespace, name)

    async def collect_bundles(self) -> list[str]:
        """Delete bundles no version references and no running pool uses (after a removal,
        a failed deploy, and at start for what a crash left behind)."""
        keep = set(await self.repo.bundle_shas())
        keep |= {pool.spec.code_dir.name for pool in self.executor.pools.values()}
        if self.bundle_mirror is not None:
            await self.bundle_mirror.collect(keep, time.time() - BUNDLE_GRACE_S)
        removed = self.bundles.collect(keep)
        self.images.collect([self.bundles.code_dir(sha) for sha in keep])
        return removed

    async def _fetch_bundle(self, sha: str) -> None:
        """Bring a bundle another gateway stored onto this one's disk (verified: its
        address is its sha-256, so a tampered row is refused, never unpacked)."""
        if self.bundle_mirror is None or self.bundles.has(sha):
            return
        data = await self.bundle_mirror.get(sha)
        if data is None:
            raise Unavailable(f"bundle {sha} is missing from the store", code="bundle_missing")
        if digest(data) != sha:
            raise BadRequest(f"bundle {sha} failed verification", code="bundle_corrupt")
        self.bundles.add(data)

    async def _after_traffic_change(self, namespace: str, name: str) -> None:
        await self._follow_live(namespace, name)
        await self._announce(namespace, name)

    async def _follow_live(self, namespace: str, name: str) -> None:
        self.routes.invalidate(namespace, name)
        route = await self.routes.get(namespace, name)
        live = {spec.version for spec in route.specs} if route else set()
        if self.on_live_change is not None:
            await self.on_live_change(namespace, name, await self._live_schedules(namespace, name))
        if self.on_live_topics is not None:
            await self.on_live_topics(namespace, name, await self._live_topics(namespace, name))
        for spec in route.specs if route else ():
            self.executor.prewarm(spec)
        # Versions that lost all traffic keep serving their in-flight calls and idle out.
        for key, pool in list(self.executor.pools.items()):
            if key[:2] == (namespace, name) and key[2] not in live:
                pool.draining = True

    # ------------------------------------------------------------ routing
    def spec_for(self, record: VersionRecord) -> VersionSpec:
        env_hash = record.config.get("requirements") or None
        return VersionSpec(
            namespace=record.namespace,
            function=record.function,
            version=record.version,
            code_dir=self.bundles.ensure_unpacked(record.bundle_sha),
            module=record.module,
            attr=record.attr,
            kind=record.kind,
            config=clamp(FunctionConfig.from_dict(record.config), self.executor.settings),
            env_dir=self.deps.env_dir(env_hash) if env_hash else None,
            command=tuple(record.config.get("command") or ()),
        )

    async def _load_route(self, namespace: str, name: str) -> Route | None:
        function = await self.repo.get_function(namespace, name)
        if function is None or not function.traffic:
            return None
        weighted = []
        for version, weight in sorted(function.traffic.items()):
            record = await self.repo.get_version(namespace, name, version)
            if record is not None:
                await self._fetch_bundle(record.bundle_sha)
                spec = self.spec_for(record)
                if spec.env_dir is not None and not spec.env_dir.is_dir():
                    # An env deleted since (a wiped envs dir, another interpreter): rebuilt.
                    env_hash = await self.deps.ensure(spec.code_dir)
                    spec = replace(spec, env_dir=self.deps.env_dir(env_hash) if env_hash else None)
                weighted.append((spec, weight))
        return Route.build(weighted) if weighted else None

    async def _live_list(self, namespace: str, name: str, key: str) -> list[str]:
        """`config[key]` of the newest version that has traffic ([] when none has)."""
        function = await self.repo.get_function(namespace, name)
        if function is None or not function.traffic:
            return []
        newest = max(function.traffic)
        record = await self.repo.get_version(namespace, name, newest)
        return list(record.config.get(key, [])) if record else []

    async def _live_schedules(self, namespace: str, name: str) -> list[str]:
        return await self._live_list(namespace, name, "schedules")

    async def _live_topics(self, namespace: str, name: str) -> list[str]:
        return await self._live_list(namespace, name, "topics")

    async def _all_live(self, key: str) -> list[tuple[str, str, list[str]]]:
        found = []
        for namespace in await self.repo.namespaces():
            for function in await self.functions(namespace):
                values = await self._live_list(namespace, function.name, key)
                if values:
                    found.append((namespace, function.name, values))
        return found

    async def all_schedules(self) -> list[tuple[str, str, list[str]]]:
        return await self._all_live("schedules")

    async def all_topics(self) -> list[tuple[str, str, list[str]]]:
        """(namespace, function, topics) of every function whose live version subscribes."""
        return await self._all_live("topics")

    async def warm_all(self) -> None:
        """At start-up: bring live versions with min_instances up."""
        namespaces = await self.repo.namespaces()
        for namespace in namespaces:
            for function in await self.functions(namespace):
                route = await self.routes.get(namespace, function.name)
                for spec in route.specs if route else ():
                    self.executor.prewarm(spec)

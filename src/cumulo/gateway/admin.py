"""The admin API under /v1 (FastAPI, described by /openapi.json)."""

from __future__ import annotations

import base64
import binascii
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Depends, Query, Request
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from cumulo.control.images import ImageUpload
from cumulo.control.service import DeployRequest
from cumulo.errors import BadRequest, Conflict, Forbidden, NotFound, StoreUnavailable
from cumulo.gateway.auth import principal_of
from cumulo.gateway.platform import Platform
from cumulo.sdk.spec import SECRET_NAME_RE, validate_name
from cumulo.security.auth import ALL_NAMESPACES, Principal
from cumulo.security.crypto import rotate_master
from cumulo.security.keys import SCOPES, generate_key, key_id
from cumulo.store.base import ApiKeyRecord
from cumulo.store.changes import Change

MAX_SECRET_BYTES = 64 * 1024


class ConfigOverrides(BaseModel):
    memory_mb: int | None = None
    timeout_s: float | None = None
    min_instances: int | None = None
    max_instances: int | None = None
    concurrency: int | None = None
    network: bool | None = None
    public: bool | None = None
    rate_limit: str | None = None
    max_attempts: int | None = None
    # @cumulo.model only (sdk/model.py)
    batch_max_size: int | None = None
    batch_wait_ms: float | None = None
    trust_pickle: bool | None = None
    # --handler (Lambda) functions: apigw-v1, apigw-v2 (default), function-url or raw
    event_format: str | None = None


class DeployBody(BaseModel):
    bundle: str = Field(description="base64 of a tar.gz of the function's source")
    name: str | None = None
    handler: str | None = Field(None, description="module.function; default: the decorated one")
    env: dict[str, str] = Field(default_factory=dict)
    promote: bool = True
    config: ConfigOverrides = Field(default_factory=ConfigOverrides)
    # A container-image function (docs/containers.md): `bundle` is then empty.
    image: str | None = Field(None, description="base64 of an OCI image archive")
    image_transport: str = Field("oci-archive", description="oci-archive | oci | docker-archive")
    image_tag: str | None = Field(None, description="the manifest to run, of an oci layout")


class TrafficBody(BaseModel):
    weights: dict[str, int] = Field(description='version → percent, e.g. {"3": 90, "4": 10}')


class SecretBody(BaseModel):
    value: str


class KeyBody(BaseModel):
    namespace: str = "default"
    scopes: list[str] = Field(default_factory=lambda: ["invoke"])
    name: str = ""
    expires_in_s: float | None = Field(None, gt=0)


def get_platform(request: Request) -> Platform:
    platform: Platform = request.app.state.platform
    return platform


P = Annotated[Platform, Depends(get_platform)]


def admin_principal(request: Request) -> Principal:
    """For routes without a namespace in the path: the caller must hold `admin`."""
    principal = principal_of(request.scope)
    principal.require("admin")
    return principal


AdminPrincipal = Annotated[Principal, Depends(admin_principal)]


def build_router() -> APIRouter:
    router = APIRouter(prefix="/v1")

    def allow(scope: str) -> Callable[[Request], Principal]:
        def check(request: Request, namespace: str | None = None) -> Principal:
            principal = principal_of(request.scope)
            if namespace is not None:
                validate_namespace(namespace)
            principal.require(scope, namespace)
            return principal

        return check

    Read = Depends(allow("read"))
    Deploy = Depends(allow("deploy"))

    @router.post("/namespaces/{namespace}/deploy", status_code=201, dependencies=[Deploy])
    async def deploy(namespace: str, body: DeployBody, p: P) -> dict[str, Any]:
        try:
            bundle = base64.b64decode(body.bundle, validate=True)
        except (binascii.Error, ValueError):
            raise BadRequest("bundle must be base64", code="bad_bundle") from None
        image = None
        if body.image is not None:
            try:
                data = base64.b64decode(body.image, validate=True)
            except (binascii.Error, ValueError):
                raise BadRequest("image must be base64", code="not_an_image") from None
            image = ImageUpload(data, body.image_transport, body.image_tag)
        asked_at = time.time()
        record = await p.control.deploy(
            DeployRequest(
                namespace=namespace,
                bundle=bundle,
                name=body.name,
                handler=body.handler,
                env=body.env,
                promote=body.promote,
                overrides=body.config.model_dump(exclude_none=True),
                image=image,
            )
        )
        function = await p.control.function(namespace, record.function)
        # An identical redeploy answers the version it already was (ControlPlane.deploy).
        unchanged = record.created_at < asked_at
        return {
            "function": record.function,
            **record.public(),
            "traffic": _traffic(function),
            "unchanged": unchanged,
        }

    @router.get("/namespaces/{namespace}/functions", dependencies=[Read])
    async def list_functions(namespace: str, p: P) -> dict[str, Any]:
        functions = await p.control.functions(namespace)
        return {"functions": [f.public() for f in functions]}

    @router.get("/namespaces/{namespace}/functions/{name}", dependencies=[Read])
    async def get_function(namespace: str, name: str, p: P) -> dict[str, Any]:
        function = await p.control.function(namespace, name)
        versions = await p.control.versions(namespace, name)
        return {**function.public(), "versions": [v.public() for v in versions]}

    @router.delete("/namespaces/{namespace}/functions/{name}", dependencies=[Deploy])
    async def remove_function(namespace: str, name: str, p: P) -> dict[str, Any]:
        await p.control.remove(namespace, name)
        return {"removed": name}

    @router.get("/namespaces/{namespace}/functions/{name}/versions", dependencies=[Read])
    async def list_versions(namespace: str, name: str, p: P) -> dict[str, Any]:
        function = await p.control.function(namespace, name)
        versions = await p.control.versions(namespace, name)
        return {"versions": [v.public() for v in versions], "traffic": _traffic(function)}

    @router.put("/namespaces/{namespace}/functions/{name}/traffic", dependencies=[Deploy])
    async def set_traffic(namespace: str, name: str, body: TrafficBody, p: P) -> dict[str, Any]:
        try:
            weights = {int(v): w for v, w in body.weights.items()}
        except ValueError:
            raise BadRequest("versions must be integers", code="invalid_traffic") from None
        await p.control.set_traffic(namespace, name, weights)
        return {"traffic": _traffic(await p.control.function(namespace, name))}

    @router.post("/namespaces/{namespace}/functions/{name}/rollback", dependencies=[Deploy])
    async def rollback(namespace: str, name: str, p: P) -> dict[str, Any]:
        await p.control.rollback(namespace, name)
        return {"traffic": _traffic(await p.control.function(namespace, name))}

    @router.get("/namespaces/{namespace}/functions/{name}/workers", dependencies=[Read])
    async def workers(namespace: str, name: str, p: P) -> dict[str, Any]:
        await p.control.function(namespace, name)
        return {"zygotes": await p.executor.describe_workers(namespace, name)}

    @router.get("/namespaces/{namespace}/functions/{name}/invocations", dependencies=[Read])
    async def invocations(
        namespace: str, name: str, p: P, limit: Annotated[int, Query(ge=1, le=1000)] = 50
    ) -> dict[str, Any]:
        await p.control.function(namespace, name)
        await p.recorder.flush()
        records = await p.invocation_repo.recent(namespace, name, limit)
        return {"invocations": [r.public() for r in records]}

    @router.get("/namespaces/{namespace}/invocations/{invocation_id}", dependencies=[Read])
    async def invocation(namespace: str, invocation_id: str, p: P) -> dict[str, Any]:
        await p.recorder.flush()
        record = await p.invocation_repo.get(namespace, invocation_id)
        if record is None:
            raise NotFound(f"invocation {invocation_id!r} not found")
        return record.public()

    @router.get(
        "/namespaces/{namespace}/functions/{name}/logs", dependencies=[Read], response_model=None
    )
    async def logs(
        namespace: str,
        name: str,
        p: P,
        after: Annotated[int, Query(ge=0)] = 0,
        limit: Annotated[int, Query(ge=1, le=10000)] = 100,
        follow: bool = False,
    ) -> dict[str, Any] | StreamingResponse:
        await p.control.function(namespace, name)
        if not follow:
            await p.recorder.flush()
            rows = await p.log_repo.query(namespace, name, after_seq=after, limit=limit)
            return {"lines": [r.public(seq) for seq, r in rows]}
        return StreamingResponse(_follow(p, namespace, name), media_type="application/x-ndjson")

    @router.get("/namespaces/{namespace}/secrets", dependencies=[Read])
    async def list_secrets(namespace: str, p: P) -> dict[str, Any]:
        names = await p.secret_repo.names(namespace)
        return {"secrets": [{"name": s.name, "updated_at": s.updated_at} for s in names]}

    @router.put("/namespaces/{namespace}/secrets/{secret}", dependencies=[Deploy])
    async def set_secret(namespace: str, secret: str, body: SecretBody, p: P) -> dict[str, Any]:
        _check_secret_name(secret)
        if len(body.value.encode()) > MAX_SECRET_BYTES:
            raise BadRequest(f"secret values are limited to {MAX_SECRET_BYTES} bytes")
        await p.secret_repo.set(namespace, secret, body.value.encode(), time.time())
        await p.changes.publish(Change("secrets", namespace, secret))
        return {"name": secret}

    @router.delete("/namespaces/{namespace}/secrets/{secret}", dependencies=[Deploy])
    async def remove_secret(namespace: str, secret: str, p: P) -> dict[str, Any]:
        _check_secret_name(secret)
        if not await p.secret_repo.delete(namespace, secret):
            raise NotFound(f"secret {secret!r} not found", code="secret_not_found")
        await p.changes.publish(Change("secrets", namespace, secret))
        return {"removed": secret}

    @router.post("/keys", status_code=201)
    async def create_key(body: KeyBody, p: P, principal: AdminPrincipal) -> dict[str, Any]:
        if body.namespace != ALL_NAMESPACES:
            validate_namespace(body.namespace)
        # A namespace's admin manages its own namespace's keys, never another's.
        principal.require("admin", body.namespace if body.namespace != ALL_NAMESPACES else None)
        if body.namespace == ALL_NAMESPACES and principal.namespace != ALL_NAMESPACES:
            raise NotFound("not found", code="not_found")
        unknown = sorted(set(body.scopes) - set(SCOPES))
        if unknown or not body.scopes:
            raise BadRequest(f"scopes must be some of {', '.join(SCOPES)}", code="invalid_scope")
        key = generate_key()
        now = time.time()
        record = ApiKeyRecord(
            id=key_id(key),
            namespace=body.namespace,
            name=body.name,
            scopes=tuple(sorted(set(body.scopes))),
            created_at=now,
            expires_at=now + body.expires_in_s if body.expires_in_s else None,
            revoked_at=None,
            key_hash=p.hasher.hash(key),
        )
        await p.control_repo.insert_key(record)
        await p.keep_signing_secret(record.id, key)
        await p.keys_changed()
        return {**record.public(), "key": key}

    @router.get("/keys")
    async def list_keys(p: P, principal: AdminPrincipal) -> dict[str, Any]:
        keys = await p.control_repo.all_keys()
        return {"keys": [k.public() for k in keys if principal.can_see(k.namespace)]}

    @router.delete("/keys/{key}")
    async def revoke_key(key: str, p: P, principal: AdminPrincipal) -> dict[str, Any]:
        keys = await p.control_repo.all_keys()
        target = next((k for k in keys if k.id == key and principal.can_see(k.namespace)), None)
        if target is None or not await p.control_repo.revoke_key(key, time.time()):
            raise NotFound(f"key {key!r} not found or already revoked", code="key_not_found")
        await p.forget_signing_secret(key)
        await p.keys_changed()
        return {"revoked": key}

    _audit_routes(router)
    return router


def _audit_routes(router: APIRouter) -> None:
    @router.get("/audit/verify")
    async def verify_audit(
        p: P, principal: AdminPrincipal, namespace: str | None = None
    ) -> dict[str, Any]:
        """Check the hash chains: any edit, deletion, reorder or truncation is named."""
        if principal.namespace != ALL_NAMESPACES:
            # A tenant verifies its own chain only; naming another is a 404 like any probe.
            principal.require("admin", namespace or principal.namespace)
            namespace = principal.namespace
        elif namespace is not None and namespace != ALL_NAMESPACES:
            validate_namespace(namespace)
        report = await p.audit.verify_async(namespace)
        return report.public()

    @router.post("/master-key/rotate")
    async def rotate_master_key(p: P, principal: AdminPrincipal) -> dict[str, Any]:
        """Re-wrap every data key under a new master key (platform admins only)."""
        if principal.namespace != ALL_NAMESPACES:
            raise Forbidden("only a platform admin key may rotate the master key")
        if p.store is None:
            raise Conflict(
                "master key rotation runs on the embedded SQLite store only; on PostgreSQL "
                "it is not available yet (docs/storage.md)",
                code="not_on_this_store",
            )
        rotation = await p.store.call(rotate_master, p.store, None)
        return rotation.public()


def validate_namespace(namespace: str) -> str:
    return validate_name(namespace, "namespace")


def _check_secret_name(name: str) -> None:
    if not SECRET_NAME_RE.fullmatch(name):
        raise BadRequest(
            f"invalid secret name {name!r}: use letters, digits and '_'", code="invalid_name"
        )


def _traffic(function: Any) -> dict[str, int]:
    return {str(v): w for v, w in sorted(function.traffic.items())}


async def _follow(p: Platform, namespace: str, name: str) -> AsyncIterator[bytes]:
    # A first line at once, so clients know the stream is open.
    yield orjson.dumps({"following": name}) + b"\n"
    async for record in p.recorder.follow(namespace, name):
        yield orjson.dumps(record.public()) + b"\n"


async def metrics_response(p: Platform, principal: Principal, accept: str) -> Response:
    """A platform admin key sees every series; any other key only its own namespace's
    (series without a namespace label, and the reserved `_system` namespace, are the
    platform's). OpenMetrics when `accept` asks for it."""
    from cumulo.observability.metrics import scrape_families

    namespace = None if principal.namespace == ALL_NAMESPACES else principal.namespace
    extra = []
    if namespace is None:  # the queue and quantum series carry no namespace label
        job_counts: dict[str, int] | None = None
        with contextlib.suppress(StoreUnavailable):  # a scrape still answers while it is down
            job_counts = await p.events.counts()
        extra = scrape_families(job_counts, p.quantum_counts())
    body, content_type = p.metrics.render(namespace, accept=accept, extra=extra)
    return Response(body, media_type=content_type)

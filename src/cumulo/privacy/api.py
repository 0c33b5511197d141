"""`/v1/privacy/…`: data subject requests, exports, consent, retention and the records of
processing. Every route needs the `privacy` scope (or `admin`) in the namespace it names.
Subject ids travel in bodies and query strings only, never in paths: the audit trail
records paths."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Query, Request
from pydantic import BaseModel, Field

from cumulo.errors import BadRequest
from cumulo.privacy.service import PrivacyService, parse_duration
from cumulo.sdk.spec import validate_name
from cumulo.security.auth import ALL_NAMESPACES, Principal, principal_of

DEFAULT_NAMESPACE = "default"
MAX_ID = 64


class RequestBody(BaseModel):
    type: Literal["access", "portability", "erasure"]
    subject: str = Field(max_length=128)
    namespace: str = DEFAULT_NAMESPACE
    regime: Literal["gdpr", "ccpa"] = "gdpr"
    process: bool = True  # False: held as `received` (e.g. until identity is verified)


class ProcessBody(BaseModel):
    subject: str = Field(max_length=128)  # must match the request: a verification step


class ConsentBody(BaseModel):
    subject: str = Field(max_length=128)
    purpose: str = Field(max_length=64)
    action: Literal["grant", "withdraw"] = "grant"
    source: str = Field("api", max_length=200)
    namespace: str = DEFAULT_NAMESPACE


class RetentionBody(BaseModel):
    ttl: str | None = Field(None, max_length=16)  # "30d"; null: back to the default
    namespace: str = DEFAULT_NAMESPACE


def privacy_principal(request: Request) -> Principal:
    """Scope before body: a key without `privacy` gets 403 whatever it sends."""
    principal = principal_of(request.scope)
    principal.require("privacy")
    return principal


Caller = Annotated[Principal, Depends(privacy_principal)]


def _namespace(principal: Principal, namespace: str) -> str:
    validate_name(namespace, "namespace")
    principal.require("privacy", namespace)
    return namespace


def build_router(privacy: PrivacyService) -> APIRouter:
    router = APIRouter(prefix="/v1/privacy", tags=["privacy"])

    @router.post("/requests", status_code=201)
    async def create_request(body: RequestBody, principal: Caller) -> dict[str, Any]:
        """A data subject request. Processed at once unless `process` is false; the answer
        is the request (status, deadline, counts)."""
        ns = _namespace(principal, body.namespace)
        return await privacy.create_request(
            ns, body.type, body.regime, body.subject, process=body.process
        )

    @router.get("/requests")
    async def list_requests(
        principal: Caller, namespace: Annotated[str | None, Query(max_length=63)] = None
    ) -> dict[str, Any]:
        """Requests, newest first, each with `overdue` (unfinished past its deadline)."""
        if namespace is not None:
            _namespace(principal, namespace)
        elif principal.namespace != "*":
            namespace = principal.namespace
        return {"requests": await privacy.list_requests(namespace)}

    async def _visible(principal: Principal, request_id: str) -> dict[str, Any]:
        if len(request_id) > MAX_ID:
            raise BadRequest("invalid request id", code="invalid_request_id")
        found = await privacy.get_request(request_id)
        _namespace(principal, found["namespace"])
        return found

    @router.get("/requests/{request_id}")
    async def get_request(request_id: str, principal: Caller) -> dict[str, Any]:
        return await _visible(principal, request_id)

    @router.post("/requests/{request_id}/process")
    async def process_request(
        request_id: str, body: ProcessBody, principal: Caller
    ) -> dict[str, Any]:
        """Run a held request; the subject must be the one it was made for."""
        await _visible(principal, request_id)
        return await privacy.process(request_id, body.subject)

    @router.get("/requests/{request_id}/export")
    async def export(request_id: str, principal: Caller) -> dict[str, Any]:
        """The machine-readable export of a completed access/portability request."""
        await _visible(principal, request_id)
        return await privacy.export(request_id)

    @router.post("/consent", status_code=201)
    async def consent(body: ConsentBody, principal: Caller) -> dict[str, Any]:
        """Append a grant or withdrawal to the consent ledger (the latest event counts)."""
        ns = _namespace(principal, body.namespace)
        return await privacy.set_consent(
            ns, body.subject, body.purpose, body.action == "grant", body.source
        )

    @router.get("/consent")
    async def get_consent(
        principal: Caller,
        subject: Annotated[str, Query(max_length=128)],
        namespace: Annotated[str, Query(max_length=63)] = DEFAULT_NAMESPACE,
    ) -> dict[str, Any]:
        ns = _namespace(principal, namespace)
        return await privacy.consent_of(ns, subject)

    @router.get("/retention")
    async def retention(principal: Caller) -> dict[str, Any]:
        """The default TTL and each namespace's: a namespace key sees only its own."""
        found = await privacy.retention()
        if principal.namespace != ALL_NAMESPACES:
            own = principal.namespace
            found["namespaces"] = {own: privacy.ttl_of(own)}
        return found

    @router.put("/retention")
    async def set_retention(body: RetentionBody, principal: Caller) -> dict[str, Any]:
        ns = _namespace(principal, body.namespace)
        try:
            ttl = parse_duration(body.ttl) if body.ttl else None
        except ValueError as exc:
            raise BadRequest(str(exc), code="invalid_ttl") from None
        await privacy.set_retention(ns, ttl)
        return {"namespace": ns, "ttl_s": privacy.ttl_of(ns)}

    @router.post("/retention/purge")
    async def purge(principal: Caller) -> dict[str, Any]:
        """Run the retention purge now (it also runs periodically); returns its evidence.
        A namespace's admin purges its own namespace only; a platform admin, every one."""
        principal.require("admin")
        own = None if principal.namespace == ALL_NAMESPACES else principal.namespace
        return {"purged": await privacy.purge(own)}

    @router.get("/report")
    async def report(
        principal: Caller, namespace: Annotated[str | None, Query(max_length=63)] = None
    ) -> dict[str, Any]:
        """Records of processing: functions, their data categories and required consent,
        subjects held per namespace, retention."""
        if namespace is not None:
            _namespace(principal, namespace)
        elif principal.namespace != "*":
            namespace = principal.namespace
        return await privacy.report(namespace)

    return router

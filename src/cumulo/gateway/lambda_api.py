"""The AWS Lambda API door: `boto3.client("lambda", endpoint_url=…)` works against cumulo.

- `POST /2015-03-31/functions/{name}/invocations` (Invoke): `X-Amz-Invocation-Type`
  RequestResponse (200, the handler's JSON result as it returned it), Event (202, onto the
  async job queue, as `/async/…`), DryRun (204); `?Qualifier=` a version number, `live`
  (alias) or `$LATEST` (the newest version); `X-Amz-Executed-Version`; a handler error is a
  200 with `X-Amz-Function-Error: Unhandled` and Lambda's error body.
- `GET /2015-03-31/functions/` (ListFunctions) and `GET /2015-03-31/functions/{name}`.

Authenticated with AWS Signature V4 only (security/sigv4.py): the access key id is a cumulo
key's id, the secret the key itself (security/sigv4_keys.py). A function is named as Lambda
allows: `NAME`, `NAME:QUALIFIER`, `ACCOUNT:function:NAME` or a full ARN. The account part
picks the namespace: `000000000000` (the only one cumulo ever gives out) is the key's own
namespace (`default` for a platform admin key); any other account is read as a namespace
name, which a key of another namespace may not touch (403). Errors are Lambda's:
`{"Type": "User", "message": …}` with the type in `x-amzn-ErrorType`; every 403 goes to the
audit log like any other denial.
"""

from __future__ import annotations

import re
import sys
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any
from urllib.parse import parse_qsl

import orjson
from starlette.types import Receive, Scope, Send

from cumulo.errors import ApiError, require_json
from cumulo.gateway.errors import internal_error
from cumulo.gateway.headers import FUNCTION_SECURITY_HEADERS
from cumulo.gateway.invoke import ClientGone, new_invocation_id, read_body
from cumulo.gateway.platform import Platform
from cumulo.runtime.frames import invocation_frame
from cumulo.runtime.lambda_events import ACCOUNT_ID, DEFAULT_REGION, function_arn
from cumulo.runtime.loader import KIND_LAMBDA, KIND_MODEL
from cumulo.runtime.spec import VersionSpec
from cumulo.sdk.spec import NAME_RE
from cumulo.security import sigv4
from cumulo.security.auth import ALL_NAMESPACES, PRINCIPAL, Principal
from cumulo.security.ratelimit import Rate

PREFIX = "/2015-03-31/functions"
SERVICE = "lambda"
INVOCATION_TYPES = ("RequestResponse", "Event", "DryRun")
# A handler that failed is, to Lambda clients, a 200 with X-Amz-Function-Error.
HANDLER_FAILURES = frozenset(
    {"function_error", "function_timeout", "function_crashed", "out_of_memory"}
)
_ARN = re.compile(
    r"^(?:arn:aws:lambda:(?P<region>[a-z0-9-]+):)?(?:(?P<account>[a-z0-9-]+):function:)?"
    r"(?P<name>[^:]+)(?::(?P<qualifier>[^:]+))?$"
)
# What cumulo's own errors are called in Lambda's API.
_TYPES = {
    400: "InvalidParameterValueException",
    404: "ResourceNotFoundException",
    413: "RequestTooLargeException",
    429: "TooManyRequestsException",
    503: "ServiceException",
}


class LambdaError(Exception):
    def __init__(self, status: int, kind: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.kind = kind
        self.message = message


@dataclass(frozen=True, slots=True)
class Target:
    namespace: str
    name: str
    qualifier: str | None


def parse_function(name: str, principal: Principal) -> Target:
    """Lambda's FunctionName forms → (namespace, name, qualifier)."""
    match = _ARN.fullmatch(name)
    if match is None or not NAME_RE.fullmatch(match["name"]):
        raise LambdaError(400, "InvalidParameterValueException", f"invalid function name {name!r}")
    account = match["account"]
    if account is None or account == ACCOUNT_ID:
        own = principal.namespace
        namespace = "default" if own == ALL_NAMESPACES else own
    elif NAME_RE.fullmatch(account):
        namespace = account
    else:
        raise LambdaError(400, "InvalidParameterValueException", f"invalid account {account!r}")
    return Target(namespace, match["name"], match["qualifier"])


def _lambda_error_body(exc: ApiError) -> bytes:
    """Lambda's body for a failed handler: errorMessage, errorType, stackTrace (frames)."""
    type_name = str(exc.details.get("type") or exc.code)
    message = exc.message
    if message.startswith(f"{type_name}: "):
        message = message[len(type_name) + 2 :]
    trace = str(exc.details.get("traceback") or "")
    frames: list[str] = []
    for line in trace.splitlines(keepends=True)[1:]:
        if line.startswith("  File "):
            frames.append(line)
        elif line.startswith("    ") and frames:
            frames[-1] += line
    error_type = {
        "function_timeout": "Sandbox.Timedout",
        "function_crashed": "Runtime.ExitError",
        "out_of_memory": "Runtime.OutOfMemory",
    }.get(exc.code, type_name)
    return orjson.dumps({"errorMessage": message, "errorType": error_type, "stackTrace": frames})


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts, UTC).strftime("%Y-%m-%dT%H:%M:%S.000+0000")


class LambdaApp:
    def __init__(self, platform: Platform) -> None:
        self.platform = platform
        self.limit = platform.options.runtime.max_request_bytes
        options = platform.options
        rate = Rate.parse(options.key_rate) if options.key_rate else None
        self.key_rate = rate if rate is not None and not rate.unlimited else None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        request_id = new_invocation_id()
        try:
            await self._serve(scope, receive, send, request_id)
        except LambdaError as exc:
            if exc.status == 403:
                self.platform.denied(scope, 403)
            await self._error(send, exc.status, exc.kind, exc.message, request_id)
        except ApiError as exc:
            if exc.status in (401, 403):
                self.platform.denied(scope, 403)
                status, kind = 403, "AccessDeniedException"
            elif exc.status in _TYPES:
                status, kind = exc.status, _TYPES[exc.status]
            else:
                status, kind = 500, "ServiceException"
            await self._error(send, status, kind, exc.message, request_id)
        except ClientGone:
            return
        except Exception as exc:
            message = internal_error(exc, "lambda api").message
            await self._error(send, 500, "ServiceException", message, request_id)

    async def _serve(self, scope: Scope, receive: Receive, send: Send, request_id: str) -> None:
        rest = scope["path"][len(PREFIX) :]
        method = scope["method"]
        principal, body = await self._authenticate(scope, receive)
        scope[PRINCIPAL] = principal  # the audit log names the verified key
        if rest in ("", "/") and method == "GET":
            await self._list(send, principal, request_id)
            return
        parts = rest.lstrip("/").split("/")
        if len(parts) == 2 and parts[1] == "invocations" and method == "POST":
            await self._invoke(scope, send, principal, parts[0], body, request_id)
        elif len(parts) == 1 and parts[0] and method == "GET":
            await self._get(scope, send, principal, parts[0], request_id)
        else:
            raise LambdaError(404, "UnknownOperationException", f"no operation {method} {rest}")

    # ------------------------------------------------------------ authentication
    async def _authenticate(self, scope: Scope, receive: Receive) -> tuple[Principal, bytes]:
        """The verified key's principal and the body it signed. What can be refused without
        the body (no or a malformed signature, an unknown key, a stale date) is refused
        before the body is read."""
        headers = [(k.decode("latin-1").lower(), v.decode("latin-1")) for k, v in scope["headers"]]
        value = next((v for k, v in headers if k == "authorization"), None)
        if value is None:
            raise LambdaError(
                403,
                "MissingAuthenticationTokenException",
                "missing AWS Signature V4 authentication (Authorization: AWS4-HMAC-SHA256 …)",
            )
        if any(k == "x-amz-security-token" for k, _ in headers):
            raise LambdaError(
                403, "UnrecognizedClientException", "session tokens are not accepted here"
            )
        try:
            auth = sigv4.parse_authorization(value, SERVICE)
            key = self.platform.sigv4_keys.get(auth.access_key_id)
            if key is None or key.expired():
                raise sigv4.SignatureError(
                    "The security token included in the request is invalid.",
                    "UnrecognizedClientException",
                )
            sigv4.request_time(next((v for k, v in headers if k == "x-amz-date"), ""), time.time())
        except sigv4.SignatureError as exc:
            raise LambdaError(403, exc.kind, str(exc)) from None
        body = await read_body(scope, receive, self.limit)
        try:
            request = sigv4.SignedRequest(
                method=scope["method"],
                raw_path=(scope.get("raw_path") or scope["path"].encode()).decode("latin-1"),
                raw_query=scope["query_string"].decode("latin-1"),
                headers=headers,
                body=body,
            )
            sigv4.verify(request, auth, key.secret, time.time())
        except sigv4.SignatureError as exc:
            raise LambdaError(403, exc.kind, str(exc)) from None
        if self.key_rate is not None:
            wait = self.platform.key_limiter.take(key.principal.key_id, self.key_rate)
            if wait > 0:
                raise LambdaError(
                    429, "TooManyRequestsException", "this key is over its rate limit"
                )
        return key.principal, body

    def _allow(self, principal: Principal, scope_name: str, target: Target, action: str) -> None:
        if not principal.can_see(target.namespace) or not (
            "admin" in principal.scopes or scope_name in principal.scopes
        ):
            raise LambdaError(
                403,
                "AccessDeniedException",
                f"{principal.key_id} is not authorized to perform: lambda:{action} on "
                f"function {target.name} of namespace {target.namespace}",
            )

    # ------------------------------------------------------------ resolution
    def _not_found(self, target: Target) -> LambdaError:
        arn = function_arn(target.name, DEFAULT_REGION, target.qualifier)
        return LambdaError(404, "ResourceNotFoundException", f"Function not found: {arn}")

    async def _resolve(
        self, target: Target, qualifier: str | None, *, admit: bool = False
    ) -> VersionSpec:
        route = await self.platform.control.routes.get(target.namespace, target.name)
        if route is None:
            raise self._not_found(target)
        if admit and route.rate is not None:
            # The function's own rate limit holds on this door as on /fn (one bucket).
            key = (target.namespace, target.name)
            if self.platform.function_limiter.take(key, route.rate) > 0:
                raise LambdaError(
                    429,
                    "TooManyRequestsException",
                    f"{target.name} is over its rate limit of {route.rate.per_s:g}/s",
                )
        if qualifier in (None, "live"):
            return route.pick()
        control = self.platform.control
        if qualifier == "$LATEST":
            versions = await control.repo.list_versions(target.namespace, target.name)
            if not versions:
                raise self._not_found(target)
            return control.spec_for(max(versions, key=lambda v: v.version))
        if qualifier is not None and qualifier.isdigit():
            number = int(qualifier)
            for spec in route.specs:  # a live version: no database
                if spec.version == number:
                    return spec
            record = await control.repo.get_version(target.namespace, target.name, number)
            if record is not None:
                return control.spec_for(record)
        raise self._not_found(Target(target.namespace, target.name, qualifier))

    @staticmethod
    def _qualifier(scope: Scope, target: Target) -> str | None:
        raw = scope["query_string"]
        query = dict(parse_qsl(raw.decode("latin-1"))) if raw else {}
        asked = query.get("Qualifier") or None
        if asked and target.qualifier and asked != target.qualifier:
            raise LambdaError(
                400,
                "InvalidParameterValueException",
                "the qualifier in the function name and ?Qualifier= differ",
            )
        return asked or target.qualifier

    # ------------------------------------------------------------ operations
    async def _invoke(
        self,
        scope: Scope,
        send: Send,
        principal: Principal,
        name: str,
        body: bytes,
        request_id: str,
    ) -> None:
        target = parse_function(name, principal)
        self._allow(principal, "invoke", target, "InvokeFunction")
        invocation_type = "RequestResponse"
        for key, value in scope["headers"]:
            if key == b"x-amz-invocation-type":
                invocation_type = value.decode("latin-1")
        if invocation_type not in INVOCATION_TYPES:
            raise LambdaError(
                400,
                "InvalidParameterValueException",
                f"X-Amz-Invocation-Type must be one of {', '.join(INVOCATION_TYPES)}",
            )
        qualifier = self._qualifier(scope, target)
        spec = await self._resolve(target, qualifier, admit=invocation_type != "DryRun")
        if spec.kind == KIND_MODEL:
            raise LambdaError(
                400,
                "InvalidParameterValueException",
                f"{target.name} is a model: use its HTTP or KServe V2 routes",
            )
        if body:
            try:
                require_json(body)
            except ApiError:
                raise LambdaError(
                    400, "InvalidRequestContentException", "Could not parse request body into json"
                ) from None
        version = (b"x-amz-executed-version", str(spec.version).encode())
        if invocation_type == "DryRun":
            await self._send(send, 204, b"", request_id, version)
            return
        if invocation_type == "Event":
            if qualifier not in (None, "live"):
                raise LambdaError(
                    400,
                    "InvalidParameterValueException",
                    "Event invocations run the function's live alias: leave out the Qualifier "
                    "or use `live`",
                )
            job = await self.platform.events.enqueue(spec.namespace, spec.function, body)
            await self._send(
                send, 202, b"", request_id, (b"x-cumulo-invocation-id", job.id.encode())
            )
            return
        frame = invocation_frame(request_id, spec.kind, body=body)
        if spec.kind == KIND_LAMBDA:
            frame["li"] = 1  # the handler's value comes back as it is, not as HTTP
        try:
            result = await self.platform.invoke(spec, frame, key_id=principal.key_id)
        except ApiError as exc:
            if exc.code not in HANDLER_FAILURES:
                raise
            unhandled = (b"x-amz-function-error", b"Unhandled")
            await self._send(send, 200, _lambda_error_body(exc), request_id, version, unhandled)
            return
        out = result.http[2] if result.http is not None else (result.body or b"")
        await self._send(send, 200, out, request_id, version)

    async def _configuration(
        self, namespace: str, name: str, version: int | None
    ) -> dict[str, Any]:
        control = self.platform.control
        versions = await control.repo.list_versions(namespace, name)
        chosen = [v for v in versions if version is None or v.version == version]
        if not chosen:
            raise self._not_found(Target(namespace, name, str(version)))
        record = max(chosen, key=lambda v: v.version)
        config = record.config
        return {
            "FunctionName": name,
            "FunctionArn": function_arn(name, DEFAULT_REGION, str(version) if version else None),
            "Runtime": f"python{sys.version_info.major}.{sys.version_info.minor}",
            "Role": f"arn:aws:iam::{ACCOUNT_ID}:role/cumulo",
            "Handler": f"{record.module}.{record.attr}",
            "CodeSize": 0,
            "CodeSha256": record.bundle_sha,
            "Description": "",
            "Timeout": int(float(config.get("timeout_s", 30))),
            "MemorySize": int(config.get("memory_mb", 256)),
            "LastModified": _iso(record.created_at),
            "Version": str(version) if version is not None else "$LATEST",
            "PackageType": "Zip",
            "Architectures": ["x86_64"],
            "State": "Active",
            "LastUpdateStatus": "Successful",
        }

    async def _list(self, send: Send, principal: Principal, request_id: str) -> None:
        namespace = "default" if principal.namespace == ALL_NAMESPACES else principal.namespace
        target = Target(namespace, "*", None)
        self._allow(principal, "read", target, "ListFunctions")
        functions = await self.platform.control.functions(namespace)
        listed = []
        for function in functions:
            try:
                listed.append(await self._configuration(namespace, function.name, None))
            except LambdaError:
                continue  # removed while listing
        await self._send(send, 200, orjson.dumps({"Functions": listed}), request_id)

    async def _get(
        self, scope: Scope, send: Send, principal: Principal, name: str, request_id: str
    ) -> None:
        target = parse_function(name, principal)
        self._allow(principal, "read", target, "GetFunction")
        qualifier = self._qualifier(scope, target)
        if await self.platform.control.routes.get(target.namespace, target.name) is None:
            raise self._not_found(target)
        version = None
        if qualifier not in (None, "$LATEST"):
            version = (await self._resolve(target, qualifier)).version
        configuration = await self._configuration(target.namespace, target.name, version)
        answer = {
            "Configuration": configuration,
            "Code": {"RepositoryType": "S3", "Location": ""},
            "Tags": {},
        }
        await self._send(send, 200, orjson.dumps(answer), request_id)

    # ------------------------------------------------------------ answers
    async def _send(
        self, send: Send, status: int, body: bytes, request_id: str, *extra: tuple[bytes, bytes]
    ) -> None:
        headers = [
            *FUNCTION_SECURITY_HEADERS,
            (b"content-type", b"application/json"),
            (b"x-amzn-requestid", request_id.encode()),
            *extra,
            (b"content-length", str(len(body)).encode()),
        ]
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def _error(
        self, send: Send, status: int, kind: str, message: str, request_id: str
    ) -> None:
        body = orjson.dumps({"Type": "User", "message": message})
        await self._send(send, status, body, request_id, (b"x-amzn-errortype", kind.encode()))

"""AWS Lambda shapes, as pure functions: the API Gateway / function URL events a `--handler`
function receives for an HTTP request, and the proxy responses it may return.

Formats (a function's `event_format`): `apigw-v1` (REST API proxy integration), `apigw-v2`
(HTTP API, payload 2.0), `function-url` (Lambda function URLs: payload 2.0, route
`$default`), `raw` (the JSON body itself, cumulo's first behaviour). The shapes follow AWS's
documentation of each payload; fields AWS fills from its own infrastructure (account, API
id, domain) carry fixed cumulo values.
"""

from __future__ import annotations

import base64
import time
from collections.abc import Sequence
from typing import Any
from urllib.parse import unquote_plus

import orjson

from cumulo.sdk.spec import EVENT_FORMATS

__all__ = ["EVENT_FORMATS", "http_event", "proxy_response"]

FORMAT_V1 = "apigw-v1"
FORMAT_V2 = "apigw-v2"
FORMAT_URL = "function-url"
FORMAT_RAW = "raw"

ACCOUNT_ID = "000000000000"  # there is no AWS account: a fixed, obviously fake one
DEFAULT_REGION = "us-east-1"
STAGE = "$default"
API_ID = "cumulo"

# Media types whose bodies API Gateway passes as text; anything else (or bytes that are not
# UTF-8) goes base64-encoded with isBase64Encoded, as it does for binary media types.
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript")
_TEXT_SUFFIXES = ("+json", "+xml")
_TEXT_EXACT = ("application/x-www-form-urlencoded", "application/graphql", "")


def function_arn(name: str, region: str = DEFAULT_REGION, qualifier: str | None = None) -> str:
    arn = f"arn:aws:lambda:{region}:{ACCOUNT_ID}:function:{name}"
    return f"{arn}:{qualifier}" if qualifier else arn


def log_group(name: str) -> str:
    return f"/aws/lambda/{name}"


def log_stream(version: int | str, started: float) -> str:
    """Lambda's `YYYY/MM/DD/[VERSION]ID` shape; the id is the worker's start (unique enough
    to tell one worker's lines from another's)."""
    day = time.strftime("%Y/%m/%d", time.gmtime(started))
    return f"{day}/[{version}]{int(started * 1e6):x}"


def _is_text(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media.startswith(_TEXT_TYPES) or media.endswith(_TEXT_SUFFIXES) or media in _TEXT_EXACT


def encode_body(body: bytes, content_type: str) -> tuple[str | None, bool]:
    """(body, isBase64Encoded): text stays text, anything else is base64."""
    if not body:
        return None, False
    if _is_text(content_type):
        try:
            return body.decode("utf-8"), False
        except UnicodeDecodeError:
            pass
    return base64.b64encode(body).decode("ascii"), True


def _query_pairs(query_string: str) -> list[tuple[str, str]]:
    pairs = []
    for part in query_string.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((unquote_plus(key), unquote_plus(value)))
    return pairs


def _grouped(pairs: Sequence[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for key, value in pairs:
        grouped.setdefault(key, []).append(value)
    return grouped


def _proxy(subpath: str) -> tuple[str, dict[str, str] | None]:
    """The `/{proxy+}` resource every sub-path of a function reaches (the root: `/`)."""
    rest = subpath.lstrip("/")
    return ("/{proxy+}", {"proxy": rest}) if rest else ("/", None)


def _header(headers: Sequence[tuple[str, str]], name: str) -> str:
    for key, value in headers:
        if key == name:
            return value
    return ""


def http_event(
    fmt: str,
    *,
    method: str,
    path: str,
    headers: Sequence[tuple[str, str]],
    query_string: str,
    body: bytes,
    request_id: str,
    source_ip: str,
    now: float,
) -> dict[str, Any]:
    """The event API Gateway (v1, v2) or a function URL gives a handler for this request.

    `path` is the function's sub-path (`/` for its root), `headers` lower-case pairs with
    repeats (the platform's Authorization already removed), `now` the request's arrival."""
    headers = [(k.lower(), v) for k, v in headers]
    if fmt == FORMAT_V1:
        return _v1(method, path, headers, query_string, body, request_id, source_ip, now)
    return _v2(fmt, method, path, headers, query_string, body, request_id, source_ip, now)


def _v1(
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    query_string: str,
    body: bytes,
    request_id: str,
    source_ip: str,
    now: float,
) -> dict[str, Any]:
    resource, path_parameters = _proxy(path)
    multi_headers = _grouped(headers)
    multi_query = _grouped(_query_pairs(query_string))
    text, is_b64 = encode_body(body, _header(headers, "content-type"))
    millis = int(now * 1000)
    return {
        "resource": resource,
        "path": path,
        "httpMethod": method,
        # The single-value maps hold the last value, as API Gateway's do.
        "headers": {k: v[-1] for k, v in multi_headers.items()} or None,
        "multiValueHeaders": multi_headers or None,
        "queryStringParameters": {k: v[-1] for k, v in multi_query.items()} or None,
        "multiValueQueryStringParameters": multi_query or None,
        "pathParameters": path_parameters,
        "stageVariables": None,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": API_ID,
            "resourceId": API_ID,
            "resourcePath": resource,
            "httpMethod": method,
            "path": path,
            "protocol": "HTTP/1.1",
            "requestId": request_id,
            "extendedRequestId": request_id,
            "stage": STAGE,
            "requestTime": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "requestTimeEpoch": millis,
            "identity": {
                "sourceIp": source_ip,
                "userAgent": _header(headers, "user-agent") or None,
            },
        },
        "body": text,
        "isBase64Encoded": is_b64,
    }


def _v2(
    fmt: str,
    method: str,
    path: str,
    headers: list[tuple[str, str]],
    query_string: str,
    body: bytes,
    request_id: str,
    source_ip: str,
    now: float,
) -> dict[str, Any]:
    cookies: list[str] = []
    joined: dict[str, list[str]] = {}
    for key, value in headers:
        if key == "cookie":
            # Payload 2.0 moves cookies out of the headers into their own list.
            cookies += [c.strip() for c in value.split(";") if c.strip()]
        else:
            joined.setdefault(key, []).append(value)
    query = _grouped(_query_pairs(query_string))
    text, is_b64 = encode_body(body, _header(headers, "content-type"))
    url = fmt == FORMAT_URL
    _resource, path_parameters = _proxy(path)
    route_key = "$default" if url else f"ANY {_resource}"
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": route_key,
        "rawPath": path,
        "rawQueryString": query_string,
        "headers": {k: ",".join(v) for k, v in joined.items()},
        "requestContext": {
            "accountId": "anonymous" if url else ACCOUNT_ID,
            "apiId": API_ID,
            "domainName": _header(headers, "host"),
            "domainPrefix": _header(headers, "host").split(".", 1)[0],
            "http": {
                "method": method,
                "path": path,
                "protocol": "HTTP/1.1",
                "sourceIp": source_ip,
                "userAgent": _header(headers, "user-agent"),
            },
            "requestId": request_id,
            "routeKey": route_key,
            "stage": STAGE,
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": is_b64,
    }
    # Payload 2.0 leaves absent parts out rather than sending nulls.
    if cookies:
        event["cookies"] = cookies
    if query:
        event["queryStringParameters"] = {k: ",".join(v) for k, v in query.items()}
    if path_parameters and not url:
        event["pathParameters"] = path_parameters
    if text is not None:
        event["body"] = text
    return event


def is_proxy_result(result: Any) -> bool:
    return isinstance(result, dict) and "statusCode" in result


def proxy_response(result: Any) -> tuple[int, list[tuple[str, str]], bytes]:
    """(status, header pairs, body) of what a handler returned to an HTTP event.

    A `{"statusCode": …}` dict is a proxy response: `headers`, `multiValueHeaders` (v1),
    `cookies` (payload 2.0: one Set-Cookie each), `body` with `isBase64Encoded`. Anything
    else is, as payload 2.0 infers it, a 200 whose JSON body is the value."""
    if not is_proxy_result(result):
        return 200, [("content-type", "application/json")], orjson.dumps(result)
    status = int(result["statusCode"])
    pairs: list[tuple[str, str]] = []
    single = result.get("headers") or {}
    multi = result.get("multiValueHeaders") or {}
    if not isinstance(single, dict) or not isinstance(multi, dict):
        raise TypeError("headers and multiValueHeaders must be objects")
    for key, values in multi.items():
        for value in values if isinstance(values, list) else [values]:
            pairs.append((str(key).lower(), str(value)))
    multi_names = {str(k).lower() for k in multi}
    for key, value in single.items():
        # API Gateway merges the two maps; a name in both is sent with multiValueHeaders'.
        if str(key).lower() not in multi_names:
            pairs.append((str(key).lower(), str(value)))
    for cookie in result.get("cookies") or ():
        pairs.append(("set-cookie", str(cookie)))
    body: Any = result.get("body")
    if body is None:
        raw = b""
    elif result.get("isBase64Encoded") and isinstance(body, str):
        raw = base64.b64decode(body)
    elif isinstance(body, str):
        raw = body.encode()
    elif isinstance(body, bytes):
        raw = body
    else:
        raw = orjson.dumps(body)
    if not any(k == "content-type" for k, _ in pairs):
        pairs.append(("content-type", "application/json"))
    return status, pairs, raw

"""The API Gateway / function URL event and response shapes (runtime/lambda_events.py)."""

from __future__ import annotations

import base64

import orjson
import pytest

from cumulo.runtime import lambda_events as le

HEADERS = [
    ("host", "api.example"),
    ("user-agent", "curl/8"),
    ("cookie", "a=1; b=2"),
    ("x-many", "one"),
    ("x-many", "two"),
    ("content-type", "application/json"),
]


def event(fmt: str, body: bytes = b'{"k": 1}', **kw: object) -> dict[str, object]:
    args: dict[str, object] = {
        "method": "POST",
        "path": "/orders/7",
        "headers": HEADERS,
        "query_string": "x=1&x=2&y=a%20b",
        "body": body,
        "request_id": "req-1",
        "source_ip": "10.0.0.9",
        "now": 1_700_000_000.5,
    }
    args.update(kw)
    return le.http_event(fmt, **args)  # type: ignore[arg-type]


def test_v1_rest_proxy_event() -> None:
    e = event("apigw-v1")
    assert e["httpMethod"] == "POST"
    assert e["path"] == "/orders/7"
    assert e["resource"] == "/{proxy+}"
    assert e["pathParameters"] == {"proxy": "orders/7"}
    assert e["queryStringParameters"] == {"x": "2", "y": "a b"}
    assert e["multiValueQueryStringParameters"] == {"x": ["1", "2"], "y": ["a b"]}
    assert e["headers"]["x-many"] == "two"  # type: ignore[index]
    assert e["multiValueHeaders"]["x-many"] == ["one", "two"]  # type: ignore[index]
    assert e["body"] == '{"k": 1}'
    assert e["isBase64Encoded"] is False
    ctx = e["requestContext"]
    assert ctx["requestId"] == "req-1"
    assert ctx["stage"] == "$default"
    assert ctx["identity"]["sourceIp"] == "10.0.0.9"  # type: ignore[index]
    assert ctx["requestTimeEpoch"] == 1_700_000_000_500  # type: ignore[index]
    assert ctx["httpMethod"] == "POST"
    assert ctx["path"] == "/orders/7"


def test_v1_empty_parts_are_null() -> None:
    e = event("apigw-v1", body=b"", path="/", query_string="", headers=[])
    assert e["body"] is None
    assert e["pathParameters"] is None
    assert e["resource"] == "/"
    assert e["queryStringParameters"] is None
    assert e["multiValueQueryStringParameters"] is None


@pytest.mark.parametrize("fmt", ["apigw-v2", "function-url"])
def test_v2_http_api_and_function_url_events(fmt: str) -> None:
    e = event(fmt)
    assert e["version"] == "2.0"
    assert e["rawPath"] == "/orders/7"
    assert e["rawQueryString"] == "x=1&x=2&y=a%20b"
    assert e["cookies"] == ["a=1", "b=2"]
    headers = e["headers"]
    assert headers["x-many"] == "one,two"
    assert "cookie" not in headers
    assert e["queryStringParameters"] == {"x": "1,2", "y": "a b"}
    http = e["requestContext"]["http"]  # type: ignore[index]
    assert http == {
        "method": "POST",
        "path": "/orders/7",
        "protocol": "HTTP/1.1",
        "sourceIp": "10.0.0.9",
        "userAgent": "curl/8",
    }
    ctx = e["requestContext"]
    assert ctx["requestId"] == "req-1"
    assert ctx["timeEpoch"] == 1_700_000_000_500
    assert ctx["time"] == "14/Nov/2023:22:13:20 +0000"  # type: ignore[index]
    if fmt == "apigw-v2":
        assert e["routeKey"] == "ANY /{proxy+}"
        assert e["pathParameters"] == {"proxy": "orders/7"}
    else:
        assert e["routeKey"] == "$default"
        assert "pathParameters" not in e


def test_binary_bodies_are_base64() -> None:
    raw = b"\x00\x01\xff"
    png = [("content-type", "image/png")]
    for fmt in ("apigw-v1", "apigw-v2"):
        e = event(fmt, body=raw, headers=png)
        assert e["isBase64Encoded"] is True
        assert base64.b64decode(str(e["body"])) == raw
        # Text that is not UTF-8 is not text either.
        e = event(fmt, body=b"\xff\xfe", headers=[("content-type", "text/plain")])
        assert e["isBase64Encoded"] is True


def test_proxy_response_headers_cookies_and_base64() -> None:
    status, pairs, body = le.proxy_response(
        {
            "statusCode": 201,
            "headers": {"X-One": "1", "x-multi": "ignored"},
            "multiValueHeaders": {"x-multi": ["a", "b"]},
            "cookies": ["a=1", "b=2; HttpOnly"],
            "body": base64.b64encode(b"\x00\xff").decode(),
            "isBase64Encoded": True,
        }
    )
    assert status == 201
    assert body == b"\x00\xff"
    assert ("x-one", "1") in pairs
    assert ("x-multi", "ignored") not in pairs
    assert [v for k, v in pairs if k == "x-multi"] == ["a", "b"]
    assert [v for k, v in pairs if k == "set-cookie"] == ["a=1", "b=2; HttpOnly"]
    assert ("content-type", "application/json") in pairs


def test_a_plain_value_is_a_json_200() -> None:
    assert le.proxy_response({"hello": "x"}) == (
        200,
        [("content-type", "application/json")],
        orjson.dumps({"hello": "x"}),
    )
    status, _, body = le.proxy_response({"statusCode": 204})
    assert status == 204
    assert body == b""


def test_names() -> None:
    assert le.function_arn("f") == "arn:aws:lambda:us-east-1:000000000000:function:f"
    assert le.log_group("f") == "/aws/lambda/f"
    assert le.log_stream(3, 0.0).startswith("1970/01/01/[3]")

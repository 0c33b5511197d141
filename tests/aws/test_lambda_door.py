"""AWS Lambda, both directions, on a real platform: unmodified handlers (and Powertools) get
API Gateway events over HTTP, and boto3's Lambda client invokes and lists through SigV4."""

from __future__ import annotations

import datetime as dt
import json
import time
from collections.abc import Callable, Iterator
from typing import Any

import boto3
import botocore.auth
import httpx
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.config import Config
from botocore.credentials import Credentials
from botocore.exceptions import ClientError

from cumulo.client import Client
from cumulo.errors import BadRequest
from tests.conftest import FUNCTIONS, RunningPlatform, wait_until

AWS = FUNCTIONS / "aws"


def deploy(client: Client, name: str, handler: str, **config: Any) -> dict[str, Any]:
    return client.deploy(AWS, name=name, handler=handler, **config)


def lambda_client(platform: RunningPlatform, key: dict[str, Any]) -> Any:
    return boto3.client(
        "lambda",
        endpoint_url=platform.url,
        region_name="us-east-1",
        aws_access_key_id=key["id"],
        aws_secret_access_key=key["key"],
        config=Config(retries={"max_attempts": 1}, read_timeout=60),
    )


@pytest.fixture
def invoke_key(client: Client) -> dict[str, Any]:
    return client.create_key(["invoke", "read"], name="boto3")


@pytest.fixture
def aws(platform: RunningPlatform, invoke_key: dict[str, Any]) -> Iterator[Any]:
    c = lambda_client(platform, invoke_key)
    yield c
    c.close()


def auth_failures(platform: RunningPlatform, client: Client) -> list[str]:
    client.verify_audit()  # flushes the audit buffer
    rows = platform.store_query("SELECT target FROM audit_log WHERE action = 'auth.failure'")
    return [r[0] for r in rows]


# ---------------------------------------------------------------- API Gateway events


def test_a_handler_gets_the_api_gateway_v2_event_by_default(
    platform: RunningPlatform, client: Client, unique_name: str
) -> None:
    deploy(client, unique_name, "lam_events.echo")
    with platform.http() as http:
        r = http.post(
            f"/fn/default/{unique_name}/a/b?x=1&x=2",
            content=b'{"k": 1}',
            headers={"content-type": "application/json", "cookie": "c1=1; c2=2"},
        )
    assert r.status_code == 200, r.text
    e = r.json()
    assert e["version"] == "2.0"
    assert e["rawPath"] == "/a/b"
    assert e["rawQueryString"] == "x=1&x=2"
    assert e["routeKey"] == "ANY /{proxy+}"
    assert e["pathParameters"] == {"proxy": "a/b"}
    assert e["queryStringParameters"] == {"x": "1,2"}
    assert e["cookies"] == ["c1=1", "c2=2"]
    assert e["body"] == '{"k": 1}'
    assert e["isBase64Encoded"] is False
    assert "authorization" not in e["headers"]  # the platform key never reaches user code
    http_ctx = e["requestContext"]["http"]
    assert http_ctx["method"] == "POST"
    assert http_ctx["sourceIp"] == "127.0.0.1"
    assert e["requestContext"]["requestId"] == r.headers["x-cumulo-invocation-id"]
    assert abs(e["requestContext"]["timeEpoch"] / 1000 - time.time()) < 60


def test_event_formats_v1_function_url_and_raw(
    platform: RunningPlatform, client: Client, unique_name: str
) -> None:
    for fmt in ("function-url", "raw"):
        deploy(client, f"{unique_name}-{fmt}", "lam_events.echo", event_format=fmt)
    # The CLI flag, as an operator types it.
    cli = platform.cli(
        "deploy",
        str(AWS),
        "--handler",
        "lam_events.echo",
        "--name",
        f"{unique_name}-apigw-v1",
        "--event-format",
        "apigw-v1",
    )
    assert cli.returncode == 0, cli.stderr
    bad = platform.cli("deploy", str(AWS), "--handler", "lam_events.echo", "--event-format", "v9")
    assert bad.returncode != 0
    assert "event_format must be one of" in bad.stderr
    with platform.http() as http:
        v1 = http.put(
            f"/fn/default/{unique_name}-apigw-v1/x?a=1&a=2",
            content=b"\x00\xff",
            headers={"content-type": "application/octet-stream"},
        ).json()
        url = http.get(f"/fn/default/{unique_name}-function-url/").json()
        raw = http.post(f"/fn/default/{unique_name}-raw", json={"plain": True}).json()
    assert v1["httpMethod"] == "PUT"
    assert v1["path"] == "/x"
    assert v1["resource"] == "/{proxy+}"
    assert v1["multiValueQueryStringParameters"] == {"a": ["1", "2"]}
    assert v1["queryStringParameters"] == {"a": "2"}
    assert v1["isBase64Encoded"] is True
    assert v1["body"] == "AP8="
    assert v1["requestContext"]["identity"]["sourceIp"] == "127.0.0.1"
    assert v1["multiValueHeaders"]["content-type"] == ["application/octet-stream"]
    assert url["routeKey"] == "$default"
    assert url["rawPath"] == "/"
    assert "body" not in url
    assert raw == {"plain": True}  # raw: the JSON body itself, as before
    # An undecorated `(event, ctx)` handler is cumulo's own style: the JSON body by default;
    # the choice is stored with each version.
    deploy(client, f"{unique_name}-ctx", "lam_events.cumulo_style")
    deploy(client, f"{unique_name}-aws", "lam_events.echo")
    with platform.http() as http:
        assert http.post(f"/fn/default/{unique_name}-ctx", json={"b": 1}).json() == {"b": 1}
    formats = {
        suffix: client.versions(f"{unique_name}-{suffix}")["versions"][0]["config"]["event_format"]
        for suffix in ("ctx", "aws", "apigw-v1")
    }
    assert formats == {"ctx": "raw", "aws": "apigw-v2", "apigw-v1": "apigw-v1"}
    with pytest.raises(BadRequest, match="--event-format applies to"):
        deploy(client, f"{unique_name}-deco", "decorated.plain", event_format="apigw-v1")


def test_responses_honour_multi_value_headers_cookies_and_base64(
    platform: RunningPlatform, client: Client, unique_name: str
) -> None:
    deploy(client, unique_name, "lam_events.cookies")
    with platform.http() as http:
        r = http.get(f"/fn/default/{unique_name}")
    assert r.status_code == 201
    assert r.content == b"\x00\x01\x02\xff"
    assert r.headers.get_list("set-cookie") == ["a=1; Path=/", "b=2; HttpOnly"]
    assert r.headers.get_list("x-multi") == ["a", "b"]
    assert r.headers["x-single"] == "one"


def test_the_lambda_context_environment_and_logging(
    platform: RunningPlatform, client: Client, unique_name: str
) -> None:
    deploy(client, unique_name, "lam_events.context_fields", memory_mb=192)
    with platform.http() as http:
        r = http.post(f"/fn/default/{unique_name}", json={})
    assert r.status_code == 200, r.text
    got = r.json()
    request_id = r.headers["x-cumulo-invocation-id"]
    assert got["function_name"] == unique_name
    assert got["function_version"] == "1"
    assert got["invoked_function_arn"] == (
        f"arn:aws:lambda:us-east-1:000000000000:function:{unique_name}"
    )
    assert got["memory_limit_in_mb"] == 192
    assert got["aws_request_id"] == request_id
    assert got["log_group_name"] == f"/aws/lambda/{unique_name}"
    assert got["log_stream_name"].endswith("]" + got["log_stream_name"].split("]")[1])
    assert got["remaining_ok"] is True
    env = got["env"]
    assert env["AWS_LAMBDA_FUNCTION_NAME"] == unique_name
    assert env["AWS_LAMBDA_FUNCTION_VERSION"] == "1"
    assert env["AWS_LAMBDA_FUNCTION_MEMORY_SIZE"] == "192"
    assert env["AWS_REGION"] == env["AWS_DEFAULT_REGION"] == "us-east-1"
    assert env["AWS_LAMBDA_LOG_GROUP_NAME"] == f"/aws/lambda/{unique_name}"
    assert env["AWS_LAMBDA_LOG_STREAM_NAME"] == got["log_stream_name"]

    def logged() -> bool:
        lines = {(x["level"], x["message"], x["invocation_id"]) for x in client.logs(unique_name)}
        return ("info", f"[INFO] logged at info {request_id}", request_id) in lines and (
            "stdout",
            f"printed {request_id}",
            request_id,
        ) in lines

    wait_until(logged, 10, "logging and print lines in cumulo logs")


def test_aws_lambda_powertools_works_unchanged(
    platform: RunningPlatform, client: Client, unique_name: str, aws: Any
) -> None:
    # Powertools' Tracer imports the X-Ray SDK even when disabled, and that opens a UDP
    # socket at import: without --network the sandbox refuses the socket.
    deploy(client, unique_name, "powertools_app.http_handler", network=True)
    rest = f"{unique_name}-rest"
    deploy(client, rest, "powertools_app.rest_handler", network=True, event_format="apigw-v1")
    parsed = f"{unique_name}-parsed"
    deploy(client, parsed, "powertools_app.parsed_handler", network=True, event_format="raw")
    with platform.http() as http:
        got = http.get(f"/fn/default/{unique_name}/orders/7?verbose=yes")
        created = http.post(
            f"/fn/default/{unique_name}/orders", json={"item": "tea"}, headers={"cookie": "s=1"}
        )
        via_rest = http.get(f"/fn/default/{rest}/orders/9")
        missing = http.get(f"/fn/default/{unique_name}/nowhere")
    assert got.status_code == 200
    assert got.json() == {"order": "7", "via": "http", "verbose": "yes"}
    assert created.status_code == 201
    assert created.json() == {"created": "tea", "cookies": ["s=1"]}
    assert via_rest.json() == {"order": "9", "via": "rest", "method": "GET"}
    assert missing.status_code == 404  # the resolver's own not-found
    # event_parser validates the raw payload the Invoke API passes.
    answer = aws.invoke(FunctionName=parsed, Payload=json.dumps({"item": "pen", "quantity": 3}))
    assert json.loads(answer["Payload"].read()) == {"item": "pen", "total": 6}
    bad = aws.invoke(FunctionName=parsed, Payload=json.dumps({"item": "pen"}))
    assert bad["FunctionError"] == "Unhandled"
    # Logger's JSON lines reach cumulo logs, tied to their invocation.
    request_id = got.headers["x-cumulo-invocation-id"]

    def logged() -> bool:
        for line in client.logs(unique_name):
            if line["invocation_id"] == request_id and line["message"].startswith("{"):
                record = json.loads(line["message"])
                if record.get("message") == "fetching order":
                    return bool(
                        record["service"] == "orders"
                        and record["order_id"] == "7"
                        and record["function_name"] == unique_name
                        and record["function_request_id"] == request_id
                    )
        return False

    wait_until(logged, 10, "Powertools' Logger line in cumulo logs")


# ---------------------------------------------------------------- the Lambda Invoke API


def test_boto3_invokes_in_all_three_types_with_qualifiers(
    platform: RunningPlatform, client: Client, unique_name: str, aws: Any
) -> None:
    deploy(client, unique_name, "lam_events.context_fields")
    deploy(client, unique_name, "lam_events.echo", promote=False)  # version 2, not live

    answer = aws.invoke(FunctionName=unique_name, Payload=json.dumps({"n": 1}))
    assert answer["StatusCode"] == 200
    assert answer["ExecutedVersion"] == "1"
    assert "FunctionError" not in answer
    result = json.loads(answer["Payload"].read())
    assert result["event"] == {"n": 1}  # the raw payload, as Lambda passes it
    assert result["aws_request_id"] == answer["ResponseMetadata"]["RequestId"]

    # Version 2 returns a proxy dict: through the Invoke API it comes back as a value.
    pinned = aws.invoke(FunctionName=unique_name, Qualifier="2", Payload=b'{"n": 2}')
    assert pinned["ExecutedVersion"] == "2"
    assert json.loads(pinned["Payload"].read())["statusCode"] == 200
    for qualifier, version in (("live", "1"), ("$LATEST", "2"), ("1", "1")):
        got = aws.invoke(FunctionName=unique_name, Qualifier=qualifier)
        assert got["ExecutedVersion"] == version, qualifier
    by_arn = aws.invoke(
        FunctionName=f"arn:aws:lambda:us-east-1:000000000000:function:{unique_name}:2"
    )
    assert by_arn["ExecutedVersion"] == "2"

    dry = aws.invoke(FunctionName=unique_name, InvocationType="DryRun")
    assert dry["StatusCode"] == 204

    queued = aws.invoke(FunctionName=unique_name, InvocationType="Event", Payload=b'{"q": 1}')
    assert queued["StatusCode"] == 202
    job = queued["ResponseMetadata"]["HTTPHeaders"]["x-cumulo-invocation-id"]
    with platform.http() as http:

        def done() -> bool:
            view = http.get(f"/v1/invocations/{job}").json()
            return bool(view.get("status") == "succeeded")

        wait_until(done, 20, "the Event invocation to run on the async queue")
        view = http.get(f"/v1/invocations/{job}").json()
    assert view["result"]["event"] == {"q": 1}


def test_a_handler_error_is_unhandled_with_lambdas_error_body(
    client: Client, unique_name: str, aws: Any
) -> None:
    deploy(client, unique_name, "lam_events.fail")
    answer = aws.invoke(FunctionName=unique_name, Payload=b'{"why": "testing"}')
    assert answer["StatusCode"] == 200
    assert answer["FunctionError"] == "Unhandled"
    error = json.loads(answer["Payload"].read())
    assert error["errorType"] == "ValueError"
    assert error["errorMessage"] == "no good: testing"
    assert any("lam_events.py" in frame for frame in error["stackTrace"])
    assert not any("/cumulo/" in frame for frame in error["stackTrace"])


def test_boto3_lists_and_gets_functions(client: Client, unique_name: str, aws: Any) -> None:
    deploy(client, unique_name, "lam_events.echo", memory_mb=128, timeout_s=7)
    listed = aws.list_functions()["Functions"]
    mine = next(f for f in listed if f["FunctionName"] == unique_name)
    assert mine["FunctionArn"] == f"arn:aws:lambda:us-east-1:000000000000:function:{unique_name}"
    assert mine["Handler"] == "lam_events.echo"
    assert mine["MemorySize"] == 128
    assert mine["Timeout"] == 7
    assert mine["Runtime"].startswith("python3")
    got = aws.get_function(FunctionName=unique_name)
    assert got["Configuration"]["FunctionName"] == unique_name
    assert (
        aws.get_function(FunctionName=unique_name, Qualifier="1")["Configuration"]["Version"] == "1"
    )


# ---------------------------------------------------------------- bad input


def _raw_signed(
    platform: RunningPlatform,
    key: dict[str, Any],
    path: str,
    body: bytes,
    headers: dict[str, str],
    when: float | None = None,
) -> httpx.Response:
    """A request signed by botocore's signer (optionally at another time), sent by httpx."""
    request = AWSRequest(method="POST", url=f"{platform.url}{path}", data=body, headers=headers)
    signer = SigV4Auth(Credentials(key["id"], key["key"]), "lambda", "us-east-1")
    real: Callable[..., Any] = botocore.auth.datetime.datetime  # type: ignore[assignment]
    if when is not None:

        class Then(real):  # type: ignore[misc,valid-type]
            @classmethod
            def now(cls, tz: Any = None) -> Any:
                return dt.datetime.fromtimestamp(when, tz)

        botocore.auth.datetime.datetime = Then  # type: ignore[misc]
    try:
        signer.add_auth(request)
    finally:
        botocore.auth.datetime.datetime = real  # type: ignore[misc]
    prepared = request.prepare()
    return httpx.post(prepared.url, content=body, headers=dict(prepared.headers.items()))


def test_wrong_signature_stale_date_and_other_namespace_are_403_and_audited(
    platform: RunningPlatform, client: Client, unique_name: str, invoke_key: dict[str, Any]
) -> None:
    deploy(client, unique_name, "lam_events.echo")
    path = f"/2015-03-31/functions/{unique_name}/invocations"

    wrong = lambda_client(platform, {**invoke_key, "key": invoke_key["key"][:-1] + "x"})
    with pytest.raises(ClientError) as caught:
        wrong.invoke(FunctionName=unique_name)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    assert caught.value.response["Error"]["Code"] == "InvalidSignatureException"

    stale = _raw_signed(platform, invoke_key, path, b"{}", {}, when=time.time() - 600)
    assert stale.status_code == 403
    assert stale.headers["x-amzn-errortype"] == "InvalidSignatureException"
    assert stale.json()["Type"] == "User"
    assert "Signature expired" in stale.json()["message"]

    other = platform.client("lambda-other").create_key(["invoke", "read"])
    outsider = lambda_client(platform, other)
    with pytest.raises(ClientError) as caught:
        outsider.invoke(FunctionName=f"default:function:{unique_name}")
    assert caught.value.response["Error"]["Code"] == "AccessDeniedException"
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 403
    # In its own namespace the name is simply not there.
    with pytest.raises(ClientError) as caught:
        outsider.invoke(FunctionName=unique_name)
    assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"

    unsigned = httpx.post(f"{platform.url}{path}", content=b"{}")
    assert unsigned.status_code == 403
    assert unsigned.headers["x-amzn-errortype"] == "MissingAuthenticationTokenException"
    # A bearer key is not a signature either.
    bearer = httpx.post(f"{platform.url}{path}", content=b"{}", headers=platform.headers)
    assert bearer.status_code == 403

    def audited() -> bool:
        return auth_failures(platform, client).count(path) >= 4

    wait_until(audited, 10, "the 403s in the audit log")
    assert f"/2015-03-31/functions/default:function:{unique_name}/invocations" in auth_failures(
        platform, client
    )


def test_a_revoked_key_no_longer_signs(
    platform: RunningPlatform, client: Client, unique_name: str
) -> None:
    deploy(client, unique_name, "lam_events.echo")
    key = client.create_key(["invoke"])
    aws = lambda_client(platform, key)
    assert aws.invoke(FunctionName=unique_name)["StatusCode"] == 200
    client.revoke_key(key["id"])
    with pytest.raises(ClientError) as caught:
        aws.invoke(FunctionName=unique_name)
    assert caught.value.response["Error"]["Code"] == "UnrecognizedClientException"


def test_unknown_function_is_404_and_bad_invocation_type_400(
    platform: RunningPlatform,
    client: Client,
    unique_name: str,
    aws: Any,
    invoke_key: dict[str, Any],
) -> None:
    with pytest.raises(ClientError) as caught:
        aws.invoke(FunctionName="no-such-function")
    error = caught.value.response
    assert error["ResponseMetadata"]["HTTPStatusCode"] == 404
    assert error["Error"]["Code"] == "ResourceNotFoundException"
    assert "Function not found" in error["Error"]["Message"]
    with pytest.raises(ClientError) as caught:
        aws.get_function(FunctionName="no-such-function")
    assert caught.value.response["Error"]["Code"] == "ResourceNotFoundException"

    deploy(client, unique_name, "lam_events.echo")
    path = f"/2015-03-31/functions/{unique_name}/invocations"
    bad = _raw_signed(platform, invoke_key, path, b"{}", {"X-Amz-Invocation-Type": "Sometimes"})
    assert bad.status_code == 400
    assert bad.headers["x-amzn-errortype"] == "InvalidParameterValueException"
    assert bad.json()["Type"] == "User"
    not_json = _raw_signed(platform, invoke_key, path, b"{nope", {})
    assert not_json.status_code == 400
    assert not_json.headers["x-amzn-errortype"] == "InvalidRequestContentException"
    with pytest.raises(ClientError) as caught:
        aws.invoke(FunctionName=unique_name, InvocationType="Event", Qualifier="1")
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 400


def test_the_functions_rate_limit_holds_on_this_door(
    client: Client, unique_name: str, aws: Any
) -> None:
    deploy(client, unique_name, "lam_events.echo", rate_limit="1/m")
    assert aws.invoke(FunctionName=unique_name)["StatusCode"] == 200
    with pytest.raises(ClientError) as caught:
        aws.invoke(FunctionName=unique_name)
    assert caught.value.response["ResponseMetadata"]["HTTPStatusCode"] == 429
    assert caught.value.response["Error"]["Code"] == "TooManyRequestsException"

"""Our SigV4 verifier against botocore's own signer (the client AWS users have)."""

from __future__ import annotations

import time

import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials

from cumulo.security import sigv4

SECRET = "cmo_secret-used-as-the-aws-secret-access-key"
URL = "http://127.0.0.1:8080/2015-03-31/functions/my-fn%3Alive/invocations?Qualifier=live"


def signed(
    body: bytes = b'{"a": 1}',
    *,
    secret: str = SECRET,
    url: str = URL,
    headers: dict[str, str] | None = None,
    when: float | None = None,
) -> sigv4.SignedRequest:
    request = AWSRequest(method="POST", url=url, data=body, headers=headers or {})
    signer = SigV4Auth(Credentials("key_0123456789ab", secret), "lambda", "us-east-1")
    if when is not None:
        # botocore takes the time from datetime.now(): sign "then" by shifting its clock.
        import botocore.auth

        real = botocore.auth.datetime.datetime

        class Then(real):  # type: ignore[misc,valid-type]
            @classmethod
            def now(cls, tz: object = None) -> real:  # type: ignore[override,valid-type]
                return real.fromtimestamp(when, tz)  # type: ignore[arg-type]

            @classmethod
            def utcnow(cls) -> real:  # type: ignore[override,valid-type]
                return real.utcfromtimestamp(when)  # type: ignore[arg-type]

        botocore.auth.datetime.datetime = Then  # type: ignore[misc]
        try:
            signer.add_auth(request)
        finally:
            botocore.auth.datetime.datetime = real  # type: ignore[misc]
    else:
        signer.add_auth(request)
    prepared = request.prepare()
    path, _, query = prepared.url.split("8080", 1)[1].partition("?")
    return sigv4.SignedRequest(
        method="POST",
        raw_path=path,
        raw_query=query,
        headers=[("host", "127.0.0.1:8080")]
        + [
            (k.lower(), v if isinstance(v, str) else v.decode())
            for k, v in prepared.headers.items()
        ],
        body=body,
    )


def check(request: sigv4.SignedRequest, secret: str = SECRET, now: float | None = None) -> None:
    auth = sigv4.parse_authorization(sigv4.header(request, "authorization") or "", "lambda")
    sigv4.verify(request, auth, secret, time.time() if now is None else now)


def test_a_botocore_signature_verifies() -> None:
    check(signed())
    check(signed(b""))  # an empty payload too


def test_a_wrong_secret_is_refused() -> None:
    with pytest.raises(sigv4.SignatureError, match="does not match"):
        check(signed(), secret="cmo_another")


def test_a_changed_body_is_refused() -> None:
    request = signed()
    tampered = sigv4.SignedRequest(
        request.method, request.raw_path, request.raw_query, request.headers, b'{"a": 2}'
    )
    with pytest.raises(sigv4.SignatureError):
        check(tampered)


def test_a_changed_query_or_path_is_refused() -> None:
    request = signed()
    for path, query in (
        (request.raw_path, "Qualifier=1"),
        ("/2015-03-31/functions/x/invocations", request.raw_query),
    ):
        with pytest.raises(sigv4.SignatureError):
            check(sigv4.SignedRequest("POST", path, query, request.headers, request.body))


def test_a_stale_or_future_date_is_refused() -> None:
    for offset in (-301, 301):
        request = signed(when=time.time() + offset)
        with pytest.raises(sigv4.SignatureError, match="Signature expired"):
            check(request)
    check(signed(when=time.time() - 200))  # within the 5 minutes


def test_unsigned_and_mismatched_payload_hashes_are_refused() -> None:
    with pytest.raises(sigv4.SignatureError, match="unsigned"):
        check(signed(headers={"X-Amz-Content-SHA256": "UNSIGNED-PAYLOAD"}))
    with pytest.raises(sigv4.SignatureError, match="does not match the request body"):
        check(signed(headers={"X-Amz-Content-SHA256": "0" * 64}))


def test_an_unsigned_invocation_type_is_refused() -> None:
    request = signed()
    extra = [*request.headers, ("x-amz-invocation-type", "Event")]
    with pytest.raises(sigv4.SignatureError, match="must be signed"):
        check(sigv4.SignedRequest("POST", request.raw_path, request.raw_query, extra, request.body))


@pytest.mark.parametrize(
    "value",
    [
        "Bearer cmo_x",
        "AWS4-HMAC-SHA256 Credential=k/20240101/us-east-1/lambda/aws4_request",
        "AWS4-HMAC-SHA256 Credential=k/20240101/us-east-1/s3/aws4_request, "
        "SignedHeaders=host, Signature=" + "0" * 64,
        "AWS4-HMAC-SHA256 Credential=k/20240101/us-east-1/lambda/aws4_request, "
        "SignedHeaders=x-amz-date;host, Signature=" + "0" * 64,
    ],
)
def test_malformed_authorization_headers_are_refused(value: str) -> None:
    with pytest.raises(sigv4.SignatureError):
        sigv4.parse_authorization(value, "lambda")


def test_canonical_uri_encodes_twice() -> None:
    assert sigv4.canonical_uri("/functions/a%3Ab/x") == "/functions/a%253Ab/x"
    assert sigv4.canonical_uri("/a/./b/../c") == "/a/c"

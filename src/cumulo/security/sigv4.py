"""AWS Signature Version 4, the verifying side (what AWS's own endpoints do), for the Lambda
Invoke API door (gateway/lambda_api.py).

The canonical request is built from the request as received, per AWS's "Create a canonical
request" (non-S3 services: every path segment URI-encoded twice), so clients that sign with
AWS's SDKs (botocore) verify unchanged. The payload hash is always our own SHA-256 of the
received body: a client-sent `X-Amz-Content-Sha256` must equal it, and
`UNSIGNED-PAYLOAD` / streaming (chunked-signature) payloads are refused, so a signature never
vouches for a body it did not cover.
"""

from __future__ import annotations

import calendar
import functools
import hashlib
import hmac
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from urllib.parse import quote, unquote

ALGORITHM = "AWS4-HMAC-SHA256"
MAX_SKEW_S = 300.0  # AWS's own window: a request dated over 5 minutes away is refused
_AMZ_DATE = "%Y%m%dT%H%M%SZ"
_AMZ_DATE_RE = re.compile(r"(\d{4})(\d{2})(\d{2})T(\d{2})(\d{2})(\d{2})Z")
_SPACES = re.compile(r"\s+")
# Headers that must be signed when sent: what the signature is meant to pin down.
_MUST_SIGN = ("host", "x-amz-date", "x-amz-content-sha256", "x-amz-invocation-type")


class SignatureError(Exception):
    """A request that does not verify; `kind` is the AWS error type to answer with."""

    def __init__(self, message: str, kind: str = "InvalidSignatureException") -> None:
        super().__init__(message)
        self.kind = kind


@dataclass(frozen=True, slots=True)
class Authorization:
    access_key_id: str
    date: str  # YYYYMMDD of the credential scope
    region: str
    service: str
    signed_headers: tuple[str, ...]
    signature: str

    @property
    def scope(self) -> str:
        return f"{self.date}/{self.region}/{self.service}/aws4_request"


def parse_authorization(value: str, service: str) -> Authorization:
    """`AWS4-HMAC-SHA256 Credential=AKID/DATE/REGION/SERVICE/aws4_request, SignedHeaders=a;b,
    Signature=hex`."""
    algorithm, _, rest = value.strip().partition(" ")
    if algorithm != ALGORITHM:
        raise SignatureError(
            f"unsupported authorization type: use {ALGORITHM}", "IncompleteSignatureException"
        )
    fields: dict[str, str] = {}
    for part in rest.split(","):
        key, sep, item = part.strip().partition("=")
        if not sep or key in fields:
            raise SignatureError("malformed Authorization header", "IncompleteSignatureException")
        fields[key] = item
    try:
        credential, signed, signature = (
            fields["Credential"],
            fields["SignedHeaders"],
            fields["Signature"],
        )
    except KeyError as exc:
        raise SignatureError(
            f"the Authorization header lacks {exc.args[0]}", "IncompleteSignatureException"
        ) from None
    pieces = credential.split("/")
    if len(pieces) != 5 or pieces[4] != "aws4_request" or not all(pieces):
        raise SignatureError("malformed credential scope", "IncompleteSignatureException")
    if pieces[3] != service:
        raise SignatureError(f"the credential scope must name service {service!r}")
    headers = tuple(signed.split(";"))
    if list(headers) != sorted(set(headers)) or any(h != h.lower() or not h for h in headers):
        raise SignatureError("SignedHeaders must be lower-case, sorted and unique")
    if not re.fullmatch(r"[0-9a-f]{64}", signature):
        raise SignatureError("the signature must be 64 lower-case hex digits")
    return Authorization(pieces[0], pieces[1], pieces[2], pieces[3], headers, signature)


def request_time(amz_date: str, now: float) -> float:
    """The request's X-Amz-Date (epoch seconds), refused when over MAX_SKEW_S from `now`
    either way. (Parsed by hand: strptime is a third of a verification's time.)"""
    match = _AMZ_DATE_RE.fullmatch(amz_date)
    try:
        if match is None:
            raise ValueError(amz_date)
        year, month, day, hour, minute, second = (int(p) for p in match.groups())
        datetime(year, month, day, hour, minute, second)  # a range check: month 13 raises
    except ValueError:
        raise SignatureError("X-Amz-Date must look like 20240102T030405Z") from None
    when = float(calendar.timegm((year, month, day, hour, minute, second, 0, 0, 0)))
    if abs(when - now) > MAX_SKEW_S:
        raise SignatureError(
            f"Signature expired: {amz_date} is more than {MAX_SKEW_S / 60:.0f} minutes from "
            f"the server's time {datetime.fromtimestamp(now, UTC).strftime(_AMZ_DATE)}"
        )
    return when


@functools.lru_cache(maxsize=4096)  # a function's path repeats on every call
def canonical_uri(raw_path: str) -> str:
    """The path as sent (percent-encoded), dot segments removed, then encoded once more."""
    segments: list[str] = []
    for segment in raw_path.split("/")[1:]:
        if segment == "..":
            if segments:
                segments.pop()
        elif segment not in (".",):
            segments.append(segment)
    path = "/" + "/".join(segments)
    if raw_path.endswith("/") and path != "/" and not path.endswith("/"):
        path += "/"
    return quote(path, safe="/~")


@functools.lru_cache(maxsize=4096)
def canonical_query(raw_query: str) -> str:
    pairs = []
    for part in raw_query.split("&"):
        if not part:
            continue
        key, _, value = part.partition("=")
        pairs.append((quote(unquote(key), safe="-_.~"), quote(unquote(value), safe="-_.~")))
    return "&".join(f"{k}={v}" for k, v in sorted(pairs))


def canonical_headers(headers: Sequence[tuple[str, str]], signed: Sequence[str]) -> str:
    values: dict[str, list[str]] = {}
    for name, value in headers:
        values.setdefault(name.lower(), []).append(_SPACES.sub(" ", value.strip()))
    lines = []
    for name in signed:
        if name not in values:
            raise SignatureError(f"signed header {name!r} is not in the request")
        lines.append(f"{name}:{','.join(values[name])}\n")
    return "".join(lines)


def payload_hash(body: bytes, claimed: str | None) -> str:
    digest = hashlib.sha256(body).hexdigest()
    if claimed is None:
        return digest
    if claimed == "UNSIGNED-PAYLOAD" or claimed.startswith("STREAMING-"):
        raise SignatureError(
            "the payload must be signed: unsigned and streaming payloads are refused"
        )
    if not hmac.compare_digest(claimed.lower(), digest):
        raise SignatureError("X-Amz-Content-Sha256 does not match the request body")
    return digest


@functools.lru_cache(maxsize=1024)
def signing_key(secret: str, date: str, region: str, service: str) -> bytes:
    """The day's derived key: the same for every request of that key, date and region, as
    AWS designed it to be cached (the secrets are in memory anyway: sigv4_keys.py)."""
    key = hmac.digest(f"AWS4{secret}".encode(), date.encode(), "sha256")
    for part in (region, service, "aws4_request"):
        key = hmac.digest(key, part.encode(), "sha256")
    return key


@dataclass(frozen=True, slots=True)
class SignedRequest:
    method: str
    raw_path: str
    raw_query: str
    headers: Sequence[tuple[str, str]]  # lower-case names, repeats kept
    body: bytes


def header(request: SignedRequest, name: str) -> str | None:
    for key, value in request.headers:
        if key == name:
            return value
    return None


def string_to_sign(request: SignedRequest, auth: Authorization) -> str:
    amz_date = header(request, "x-amz-date") or ""
    for name in _MUST_SIGN:
        if (name == "host" or header(request, name) is not None) and name not in (
            auth.signed_headers
        ):
            raise SignatureError(f"header {name!r} must be signed")
    canonical = "\n".join(
        (
            request.method.upper(),
            canonical_uri(request.raw_path),
            canonical_query(request.raw_query),
            canonical_headers(request.headers, auth.signed_headers),
            ";".join(auth.signed_headers),
            payload_hash(request.body, header(request, "x-amz-content-sha256")),
        )
    )
    digest = hashlib.sha256(canonical.encode()).hexdigest()
    return f"{ALGORITHM}\n{amz_date}\n{auth.scope}\n{digest}"


def verify(request: SignedRequest, auth: Authorization, secret: str, now: float) -> None:
    """Raise SignatureError unless `request` is signed by `secret` within the time window."""
    amz_date = header(request, "x-amz-date")
    if amz_date is None:
        raise SignatureError("X-Amz-Date is required", "IncompleteSignatureException")
    request_time(amz_date, now)
    if amz_date[:8] != auth.date:
        raise SignatureError("the credential scope's date is not the request's X-Amz-Date")
    key = signing_key(secret, auth.date, auth.region, auth.service)
    expected = hmac.digest(key, string_to_sign(request, auth).encode(), "sha256").hex()
    if not hmac.compare_digest(expected, auth.signature):
        raise SignatureError(
            "The request signature we calculated does not match the signature you provided."
        )

"""OIDC bearer tokens: real keys, real signatures, a real JWKS server on 127.0.0.1."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm

from cumulo.errors import ApiError, ConfigError, Forbidden, Unauthorized, Unavailable
from cumulo.sdk.spec import NAME_RE
from cumulo.security.jwt import NAMESPACE_RE, JwtSettings, JwtVerifier, parse_jwks

ISSUER = "https://idp.example.test/realms/acme"
AUDIENCE = "cumulo"

PrivateKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey | ed25519.Ed25519PrivateKey


@dataclass(frozen=True)
class SigningKey:
    kid: str
    alg: str
    private: PrivateKey

    def jwk(self, **extra: Any) -> dict[str, Any]:
        public = self.private.public_key()
        if isinstance(public, rsa.RSAPublicKey):
            data = RSAAlgorithm.to_jwk(public, as_dict=True)
        elif isinstance(public, ec.EllipticCurvePublicKey):
            data = ECAlgorithm.to_jwk(public, as_dict=True)
        else:
            data = OKPAlgorithm.to_jwk(public, as_dict=True)
        return {**data, "kid": self.kid, "alg": self.alg, "use": "sig", **extra}

    def sign(self, claims: dict[str, Any], **headers: Any) -> str:
        header = {"kid": self.kid, **headers}
        alg = header.pop("alg", self.alg)
        return jwt.encode(claims, self.private, algorithm=alg, headers=header)


@pytest.fixture(scope="module")
def rsa_key() -> SigningKey:
    return SigningKey("rsa-1", "RS256", rsa.generate_private_key(65537, 2048))


@pytest.fixture(scope="module")
def ec_key() -> SigningKey:
    return SigningKey("ec-1", "ES256", ec.generate_private_key(ec.SECP256R1()))


@pytest.fixture(scope="module")
def ed_key() -> SigningKey:
    return SigningKey("ed-1", "EdDSA", ed25519.Ed25519PrivateKey.generate())


@pytest.fixture(scope="module")
def other_rsa() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    base: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "user-42",
        "iat": now,
        "exp": now + 600,
        "cumulo_namespace": "acme",
        "scope": "openid invoke read",
    }
    base.update(overrides)
    return {k: v for k, v in base.items() if v is not None}


def write_jwks(path: Path, *jwks: dict[str, Any]) -> Path:
    path.write_text(json.dumps({"keys": list(jwks)}))
    return path


def settings(jwks: str | Path, **kw: Any) -> JwtSettings:
    return JwtSettings(issuer=ISSUER, audience=AUDIENCE, jwks=jwks, **kw)


@pytest.fixture
def verifier(
    tmp_path: Path, rsa_key: SigningKey, ec_key: SigningKey, ed_key: SigningKey
) -> JwtVerifier:
    path = write_jwks(tmp_path / "jwks.json", rsa_key.jwk(), ec_key.jwk(), ed_key.jwk())
    return JwtVerifier(settings(path))


def without_alg(jwk: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in jwk.items() if k != "alg"}


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def craft(header: dict[str, Any], payload: dict[str, Any], signature: bytes = b"") -> str:
    """A token assembled by hand, for shapes PyJWT refuses to produce."""
    head = b64(json.dumps(header).encode()) + "." + b64(json.dumps(payload).encode())
    return head + "." + b64(signature)


def rejected(verifier: JwtVerifier, token: str) -> ApiError:
    with pytest.raises(ApiError) as info:
        verifier.verify(token)
    return info.value


def code_of(verifier: JwtVerifier, token: str) -> str:
    error = rejected(verifier, token)
    assert isinstance(error, Unauthorized)
    assert error.status == 401
    return error.code


# -- happy paths and claim mapping ------------------------------------------------------------


@pytest.mark.parametrize("name", ["rsa_key", "ec_key", "ed_key"])
def test_each_key_type_verifies(
    name: str, request: pytest.FixtureRequest, verifier: JwtVerifier
) -> None:
    key: SigningKey = request.getfixturevalue(name)
    principal = verifier.verify(key.sign(claims()))
    assert principal.key_id == f"jwt:{ISSUER}#user-42"
    assert principal.namespace == "acme"
    assert principal.scopes == frozenset({"invoke", "read"})


def test_principal_is_confined_to_its_namespace_and_scopes(
    verifier: JwtVerifier, rsa_key: SigningKey
) -> None:
    principal = verifier.verify(rsa_key.sign(claims(scope="invoke")))
    principal.require("invoke", "acme")
    with pytest.raises(ApiError) as other_tenant:
        principal.require("invoke", "globex")
    assert other_tenant.value.code == "not_found"
    with pytest.raises(Forbidden):
        principal.require("deploy", "acme")


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"scope": "invoke deploy"}, {"invoke", "deploy"}),
        ({"scope": ["read", "admin", 7]}, {"read", "admin"}),
        ({"scope": None, "scp": "deploy read"}, {"deploy", "read"}),
        ({"scope": None, "scp": ["invoke"]}, {"invoke"}),
        ({"scope": "invoke", "scp": "admin"}, {"invoke"}),  # the configured claim wins
        ({"scope": "openid profile Invoke"}, set()),  # unknown scopes are ignored
        ({"scope": {"invoke": True}}, set()),  # neither a string nor a list
    ],
)
def test_scope_claim_shapes(
    verifier: JwtVerifier, rsa_key: SigningKey, extra: dict[str, Any], expected: set[str]
) -> None:
    assert verifier.verify(rsa_key.sign(claims(**extra))).scopes == frozenset(expected)


def test_token_without_usable_scope_authenticates_but_is_forbidden(
    verifier: JwtVerifier, rsa_key: SigningKey
) -> None:
    principal = verifier.verify(rsa_key.sign(claims(scope="openid email")))
    assert principal.scopes == frozenset()
    for scope in ("invoke", "deploy", "read", "admin"):
        with pytest.raises(Forbidden):
            principal.require(scope, "acme")


def test_custom_claims_and_scope_prefix(tmp_path: Path, rsa_key: SigningKey) -> None:
    path = write_jwks(tmp_path / "jwks.json", rsa_key.jwk())
    custom = JwtVerifier(
        settings(path, namespace_claim="tenant", scopes_claim="perms", scope_prefix="cumulo:")
    )
    token = rsa_key.sign(
        claims(tenant="team-7", perms="cumulo:deploy deploy cumulo:read other:admin")
    )
    principal = custom.verify(token)
    assert principal.namespace == "team-7"
    assert principal.scopes == frozenset({"deploy", "read"})


def test_single_key_jwks_accepts_a_token_without_kid(tmp_path: Path, rsa_key: SigningKey) -> None:
    path = write_jwks(tmp_path / "jwks.json", rsa_key.jwk())
    single = JwtVerifier(settings(path))
    token = jwt.encode(claims(), rsa_key.private, algorithm="RS256")
    assert single.verify(token).namespace == "acme"


def test_aud_list_containing_ours_is_accepted(verifier: JwtVerifier, rsa_key: SigningKey) -> None:
    assert verifier.verify(rsa_key.sign(claims(aud=["other", AUDIENCE]))).namespace == "acme"


def test_leeway_tolerates_small_clock_skew(verifier: JwtVerifier, rsa_key: SigningKey) -> None:
    now = int(time.time())
    token = rsa_key.sign(claims(exp=now - 10, nbf=now + 10, iat=now + 10))
    assert verifier.verify(token).namespace == "acme"


def test_cached_token_still_expires(
    verifier: JwtVerifier, rsa_key: SigningKey, monkeypatch: pytest.MonkeyPatch
) -> None:
    token = rsa_key.sign(claims())
    first = verifier.verify(token)
    assert verifier.verify(token) is first  # the second call is served from the cache
    later = time.time() + 3600
    monkeypatch.setattr(time, "time", lambda: later)
    assert code_of(verifier, token) == "expired_token"


def test_namespace_rule_matches_the_sdk() -> None:
    for name in ("default", "a", "a" * 63, "a" * 64, "A", "a_b", "a b", "*", "", "ok-9"):
        assert bool(NAMESPACE_RE.fullmatch(name)) == bool(NAME_RE.fullmatch(name)), name


# -- one test per rejection rule --------------------------------------------------------------


@pytest.mark.parametrize("alg", ["none", "None", "NONE", ""])
def test_alg_none_is_rejected(verifier: JwtVerifier, rsa_key: SigningKey, alg: str) -> None:
    token = craft({"alg": alg, "typ": "JWT", "kid": rsa_key.kid}, claims())
    assert code_of(verifier, token) == "invalid_algorithm"


def test_hs256_signed_with_the_rsa_public_key_is_rejected(
    verifier: JwtVerifier, rsa_key: SigningKey
) -> None:
    # The classic key-confusion attack: the attacker uses the public key's PEM, which the
    # verifier also has, as an HMAC secret, hoping it is fed to HMAC verification.
    pem = rsa_key.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    for alg, digest in (("HS256", hashlib.sha256), ("HS384", hashlib.sha384)):
        header = {"alg": alg, "typ": "JWT", "kid": rsa_key.kid}
        unsigned = craft(header, claims()).rsplit(".", 1)[0]
        signature = hmac.new(pem, unsigned.encode(), digest).digest()
        assert code_of(verifier, unsigned + "." + b64(signature)) == "invalid_algorithm"


def test_hmac_and_none_cannot_be_configured() -> None:
    for algorithms in (("HS256",), ("RS256", "none"), ("HS512", "ES256"), ()):
        with pytest.raises(ConfigError):
            settings("/nonexistent", algorithms=algorithms)


def test_header_alg_differing_from_the_keys_pinned_alg_is_rejected(
    verifier: JwtVerifier, rsa_key: SigningKey
) -> None:
    # A perfectly valid RS512 signature by the right key: still refused, because the JWKS
    # pins that key to RS256.
    assert code_of(verifier, rsa_key.sign(claims(), alg="RS512")) == "invalid_algorithm"
    assert code_of(verifier, rsa_key.sign(claims(), alg="PS256")) == "invalid_algorithm"


def test_alg_not_in_the_allowed_list_is_rejected(tmp_path: Path, rsa_key: SigningKey) -> None:
    path = write_jwks(tmp_path / "jwks.json", rsa_key.jwk())
    narrow = JwtVerifier(settings(path, algorithms=("RS256",)))
    token = jwt.encode(claims(), rsa_key.private, algorithm="RS384", headers={"kid": rsa_key.kid})
    assert code_of(narrow, token) == "invalid_algorithm"


def test_expired_token_is_rejected(verifier: JwtVerifier, rsa_key: SigningKey) -> None:
    token = rsa_key.sign(claims(exp=int(time.time()) - 120))
    assert code_of(verifier, token) == "expired_token"


@pytest.mark.parametrize("claim", ["exp", "sub", "iss", "aud"])
def test_missing_required_claim_is_rejected(
    verifier: JwtVerifier, rsa_key: SigningKey, claim: str
) -> None:
    assert code_of(verifier, rsa_key.sign(claims(**{claim: None}))) == "missing_claim"


def test_nbf_in_the_future_is_rejected(verifier: JwtVerifier, rsa_key: SigningKey) -> None:
    token = rsa_key.sign(claims(nbf=int(time.time()) + 3600))
    assert code_of(verifier, token) == "token_not_yet_valid"


def test_wrong_audience_is_rejected(verifier: JwtVerifier, rsa_key: SigningKey) -> None:
    for aud in ("someone-else", ["a", "b"], "cumulo-admin"):
        assert code_of(verifier, rsa_key.sign(claims(aud=aud))) == "wrong_audience"


def test_wrong_issuer_is_rejected(verifier: JwtVerifier, rsa_key: SigningKey) -> None:
    for iss in ("https://evil.example.test/realms/acme", ISSUER + "/", ISSUER[:-1]):
        assert code_of(verifier, rsa_key.sign(claims(iss=iss))) == "wrong_issuer"


def test_missing_kid_with_several_keys_is_rejected(
    verifier: JwtVerifier, rsa_key: SigningKey
) -> None:
    token = jwt.encode(claims(), rsa_key.private, algorithm="RS256")
    assert code_of(verifier, token) == "missing_kid"


def test_unknown_kid_is_rejected(verifier: JwtVerifier, rsa_key: SigningKey) -> None:
    token = jwt.encode(claims(), rsa_key.private, algorithm="RS256", headers={"kid": "nope"})
    assert code_of(verifier, token) == "unknown_key"


@pytest.mark.parametrize("header", ["jwk", "jku", "x5u", "x5c"])
def test_embedded_or_remote_key_headers_are_rejected(
    verifier: JwtVerifier, rsa_key: SigningKey, other_rsa: rsa.RSAPrivateKey, header: str
) -> None:
    attacker_jwk = RSAAlgorithm.to_jwk(other_rsa.public_key(), as_dict=True)
    values: dict[str, Any] = {
        "jwk": attacker_jwk,
        "jku": "https://evil.example.test/jwks.json",
        "x5u": "https://evil.example.test/cert.pem",
        "x5c": ["MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA"],
    }
    # Signed by the legitimate key, so only the header makes it bad.
    token = rsa_key.sign(claims(), **{header: values[header]})
    assert code_of(verifier, token) == "embedded_key"


def test_signature_by_another_key_under_a_trusted_kid_is_rejected(
    verifier: JwtVerifier, rsa_key: SigningKey, other_rsa: rsa.RSAPrivateKey
) -> None:
    forged = SigningKey(rsa_key.kid, "RS256", other_rsa).sign(claims())
    assert code_of(verifier, forged) == "invalid_signature"


def test_tampered_payload_is_rejected(verifier: JwtVerifier, rsa_key: SigningKey) -> None:
    head, _, signature = rsa_key.sign(claims()).split(".")
    payload = b64(json.dumps(claims(cumulo_namespace="globex")).encode())
    assert code_of(verifier, f"{head}.{payload}.{signature}") == "invalid_signature"


@pytest.mark.parametrize(
    "token",
    [
        "",
        "cmo_notajwt",
        "a.b",
        "a.b.c",
        "a.b.c.d",
        "....",
        b64(b"[1, 2]") + "." + b64(b"{}") + ".",
        b64(b'{"alg": "RS256"') + "." + b64(b"{}") + ".",
        "x" * 20_000 + ".a.b",
        "\udcff.a.b",
        "é.a.b",
    ],
)
def test_malformed_tokens_are_rejected(verifier: JwtVerifier, token: str) -> None:
    assert code_of(verifier, token) == "invalid_token"


def test_non_json_payload_is_rejected(verifier: JwtVerifier, rsa_key: SigningKey) -> None:
    header = {"alg": "RS256", "typ": "JWT", "kid": rsa_key.kid}
    unsigned = b64(json.dumps(header).encode()) + "." + b64(b"not json")
    signature = jwt.get_algorithm_by_name("RS256").sign(unsigned.encode(), rsa_key.private)
    assert code_of(verifier, unsigned + "." + b64(signature)) == "invalid_token"


def test_required_typ_rejects_other_token_types(tmp_path: Path, rsa_key: SigningKey) -> None:
    path = write_jwks(tmp_path / "jwks.json", rsa_key.jwk())
    strict = JwtVerifier(settings(path, required_typ="at+jwt"))
    assert strict.verify(rsa_key.sign(claims(), typ="at+jwt")).namespace == "acme"
    assert strict.verify(rsa_key.sign(claims(), typ="application/AT+JWT")).namespace == "acme"
    assert code_of(strict, rsa_key.sign(claims(), typ="JWT")) == "wrong_type"  # an ID token
    assert code_of(strict, rsa_key.sign(claims(), typ=None)) == "wrong_type"


def test_critical_header_extensions_are_rejected(
    verifier: JwtVerifier, rsa_key: SigningKey
) -> None:
    token = rsa_key.sign(claims(), crit=["exp"], exp=1)
    assert code_of(verifier, token) == "invalid_token"


@pytest.mark.parametrize("namespace", [None, "*", "Acme", "a_b", "a" * 64, "", 7, ["acme"]])
def test_missing_or_invalid_namespace_is_rejected(
    verifier: JwtVerifier, rsa_key: SigningKey, namespace: Any
) -> None:
    token = rsa_key.sign(claims(cumulo_namespace=namespace))
    assert code_of(verifier, token) == "invalid_namespace"


@pytest.mark.parametrize("extra", [{"exp": 10**400}, {"nbf": True}, {"iat": "123"}])
def test_malformed_time_claims_are_rejected(
    verifier: JwtVerifier, rsa_key: SigningKey, extra: dict[str, Any]
) -> None:
    assert code_of(verifier, rsa_key.sign(claims(**extra))) == "invalid_token"


@pytest.mark.parametrize("sub", ["", "a" * 256, "line\nbreak"])
def test_unusable_subject_is_rejected(verifier: JwtVerifier, rsa_key: SigningKey, sub: str) -> None:
    assert code_of(verifier, rsa_key.sign(claims(sub=sub))) == "invalid_token"


def test_messages_do_not_echo_token_contents(verifier: JwtVerifier, rsa_key: SigningKey) -> None:
    for token in (
        rsa_key.sign(claims(aud="secret-audience-xyz")),
        rsa_key.sign(claims(iss="https://secret-issuer-xyz")),
        rsa_key.sign(claims(cumulo_namespace="SECRET-XYZ")),
        jwt.encode(claims(), rsa_key.private, algorithm="RS256", headers={"kid": "secret-xyz"}),
    ):
        message = rejected(verifier, token).message
        assert "xyz" not in message.lower()
        assert "\n" not in message


# -- which JWKS entries are trusted -----------------------------------------------------------


def test_jwks_entries_that_must_not_be_trusted_are_ignored(
    rsa_key: SigningKey, ec_key: SigningKey, other_rsa: rsa.RSAPrivateKey
) -> None:
    # A weak key on purpose: the JWKS loader must refuse it.
    weak = rsa.generate_private_key(65537, 1024)  # noqa: S505
    small = SigningKey("small", "RS256", weak)
    rsa_private = RSAAlgorithm.to_jwk(other_rsa, as_dict=True)
    jwks = {
        "keys": [
            {"kty": "oct", "kid": "hmac", "alg": "HS256", "k": b64(b"s" * 32)},
            {**rsa_private, "kid": "private", "alg": "RS256"},
            small.jwk(),
            rsa_key.jwk(kid="enc", use="enc"),
            rsa_key.jwk(kid="ops", key_ops=["encrypt"]),
            rsa_key.jwk(kid="mismatch", alg="ES256"),
            ec_key.jwk(kid="curve", alg="ES384"),
            rsa_key.jwk(kid="hs", alg="HS256"),
            without_alg(rsa_key.jwk(kid="derived")),
            rsa_key.jwk(kid="dup"),
            ec_key.jwk(kid="dup"),
            "not a key",
            ec_key.jwk(),
        ]
    }
    keys = parse_jwks(jwks)
    assert sorted(k for k in keys if k is not None) == ["derived", "ec-1"]
    assert keys["derived"].alg == "RS256"


def test_alg_is_derived_strictly_from_the_key_type(ed_key: SigningKey) -> None:
    ec384 = SigningKey("p384", "ES384", ec.generate_private_key(ec.SECP384R1()))
    keys = parse_jwks({"keys": [without_alg(ed_key.jwk()), without_alg(ec384.jwk())]})
    assert (keys["ed-1"].alg, keys["p384"].alg) == ("EdDSA", "ES384")


def test_jwks_without_any_usable_key_is_a_config_error(tmp_path: Path) -> None:
    path = write_jwks(tmp_path / "jwks.json", {"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"})
    with pytest.raises(ConfigError):
        JwtVerifier(settings(path))
    for bad in ("not json", "[]", '{"keys": {}}'):
        path.write_text(bad)
        with pytest.raises(ConfigError):
            JwtVerifier(settings(path))
    with pytest.raises(ConfigError):
        JwtVerifier(settings(tmp_path / "missing.json"))


def test_settings_refuse_plain_http_except_on_loopback() -> None:
    with pytest.raises(ConfigError):
        settings("http://idp.example.test/jwks")
    settings("http://127.0.0.1:9/jwks")
    settings("http://localhost:9/jwks")
    settings("http://[::1]:9/jwks")
    settings("http://idp.internal/jwks", allow_insecure_http=True)
    settings("https://idp.example.test/jwks")
    with pytest.raises(ConfigError):
        settings("https://idp.example.test/jwks", leeway_s=3600)
    with pytest.raises(ConfigError):
        settings("https://idp.example.test/jwks", cache_ttl_s=0)


def test_file_jwks_rotation_on_refresh(
    tmp_path: Path, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    path = write_jwks(tmp_path / "jwks.json", rsa_key.jwk())
    file_verifier = JwtVerifier(settings(path))
    old_token = rsa_key.sign(claims())
    assert file_verifier.verify(old_token).namespace == "acme"  # now also cached
    token = ec_key.sign(claims())
    assert code_of(file_verifier, token) == "unknown_key"
    write_jwks(path, ec_key.jwk())
    asyncio.run(file_verifier.refresh())
    assert file_verifier.verify(token).namespace == "acme"
    # The retired key no longer vouches, not even for a token it verified before.
    assert code_of(file_verifier, old_token) == "unknown_key"


# -- a JWKS served over HTTP ------------------------------------------------------------------


class JwksServer:
    """A JWKS endpoint on a free loopback port, counting the requests it answers."""

    def __init__(self) -> None:
        self.jwks: list[dict[str, Any]] = []
        self.status = 200
        self.hits = 0
        self._lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                with server._lock:
                    server.hits += 1
                    body = json.dumps({"keys": server.jwks}).encode()
                    status = server.status
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # keep test output clean
                pass

        # Bound (and listening) before the thread starts, so no wait is needed.
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self._httpd.server_address[1]}/jwks.json"
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join()


@pytest.fixture
def server() -> Iterator[JwksServer]:
    srv = JwksServer()
    yield srv
    srv.close()


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def url_verifier(server: JwksServer, clock: Callable[[], float], **kw: Any) -> JwtVerifier:
    return JwtVerifier(settings(server.url, **kw), clock=clock)


def test_url_jwks_is_loaded_by_refresh_not_by_verify(
    server: JwksServer, rsa_key: SigningKey
) -> None:
    server.jwks = [rsa_key.jwk()]
    remote = url_verifier(server, FakeClock())
    token = rsa_key.sign(claims())
    error = rejected(remote, token)
    assert isinstance(error, Unavailable)
    assert (error.status, error.code) == (503, "jwks_unavailable")
    assert server.hits == 0  # verify() never does I/O
    assert not remote.ready
    asyncio.run(remote.refresh())
    assert remote.ready
    assert server.hits == 1
    for _ in range(5):
        assert remote.verify(token).namespace == "acme"
    assert server.hits == 1  # the hot path is served from the cache


def test_rotation_new_kid_is_picked_up_by_verify_async(
    server: JwksServer, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    clock = FakeClock()
    server.jwks = [rsa_key.jwk()]
    remote = url_verifier(server, clock)
    token = ec_key.sign(claims())

    async def scenario() -> None:
        await remote.refresh()
        clock.now += 61  # past the unknown-kid rate limit
        server.jwks = [rsa_key.jwk(), ec_key.jwk()]  # the provider rotates in a new key
        principal = await remote.verify_async(token)
        assert principal.namespace == "acme"
        assert server.hits == 2

    asyncio.run(scenario())


def test_unknown_kid_refresh_is_rate_limited(
    server: JwksServer, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    clock = FakeClock()
    server.jwks = [rsa_key.jwk()]
    remote = url_verifier(server, clock, refresh_min_interval_s=60)

    def random_kid_token() -> str:
        headers = {"kid": uuid.uuid4().hex}
        return jwt.encode(claims(), rsa_key.private, algorithm="RS256", headers=headers)

    async def scenario() -> None:
        await remote.refresh()
        assert server.hits == 1
        # A flood right after a refresh: no request reaches the provider.
        for _ in range(50):
            with pytest.raises(Unauthorized) as info:
                await remote.verify_async(random_kid_token())
            assert info.value.code == "unknown_key"
        assert server.hits == 1
        # Once the interval has passed, one flood costs exactly one request, even when
        # the tokens arrive concurrently.
        clock.now += 60
        results = await asyncio.gather(
            *(remote.verify_async(random_kid_token()) for _ in range(20)),
            return_exceptions=True,
        )
        assert all(isinstance(r, Unauthorized) and r.code == "unknown_key" for r in results)
        assert server.hits == 2
        # A legitimately rotated key is found on the next allowed refresh.
        server.jwks = [ec_key.jwk()]
        clock.now += 59
        with pytest.raises(Unauthorized):
            await remote.verify_async(ec_key.sign(claims()))
        assert server.hits == 2
        clock.now += 1
        assert (await remote.verify_async(ec_key.sign(claims()))).namespace == "acme"
        assert server.hits == 3

    asyncio.run(scenario())


def test_background_task_refreshes_after_a_sync_unknown_kid(
    server: JwksServer, rsa_key: SigningKey, ec_key: SigningKey
) -> None:
    clock = FakeClock()
    server.jwks = [rsa_key.jwk()]
    remote = url_verifier(server, clock)
    token = ec_key.sign(claims())

    async def scenario() -> None:
        task = asyncio.create_task(remote.run())
        try:
            await remote.wait_for_refresh()  # the initial load
            assert remote.ready
            assert server.hits == 1
            server.jwks = [rsa_key.jwk(), ec_key.jwk()]
            clock.now += 61
            with pytest.raises(Unauthorized) as info:
                remote.verify(token)  # the sync hot path: no I/O, asks run() to refresh
            assert info.value.code == "unknown_key"
            await remote.wait_for_refresh()
            assert server.hits == 2
            assert remote.verify(token).namespace == "acme"
        finally:
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task

    asyncio.run(scenario())


def test_failed_refresh_keeps_the_previous_keys(server: JwksServer, rsa_key: SigningKey) -> None:
    server.jwks = [rsa_key.jwk()]
    remote = url_verifier(server, FakeClock())
    token = rsa_key.sign(claims())

    async def scenario() -> None:
        await remote.refresh()
        server.status = 500
        with pytest.raises(ConfigError, match="HTTP 500"):
            await remote.refresh()
        assert remote.verify(token).namespace == "acme"
        server.status = 200
        server.jwks = [{"kty": "oct", "k": "c2VjcmV0", "alg": "HS256"}]  # nothing usable
        with pytest.raises(ConfigError):
            await remote.refresh()
        assert remote.verify(token).namespace == "acme"

    asyncio.run(scenario())


def test_unreachable_jwks_url_is_a_config_error(rsa_key: SigningKey) -> None:
    srv = JwksServer()
    url = srv.url
    srv.close()  # nothing listens on that port any more
    remote = JwtVerifier(settings(url, fetch_timeout_s=2))
    with pytest.raises(ConfigError, match="cannot fetch"):
        asyncio.run(remote.refresh())

"""JWT bearer tokens from an OIDC identity provider, checked against a configured JWKS.

Trust comes only from the operator's configuration: the issuer, the audience and the JWKS
(a file or an http(s) URL). Nothing a token says about itself chooses how it is verified:
each JWKS key is pinned to exactly one algorithm when the JWKS is loaded, and a token is
verified with its key's algorithm or not at all. See docs/auth.md for the operator's view.

The sync/async split:

* `JwtVerifier.verify(token)` is synchronous and does no I/O: a dict lookup for the key and
  one signature check. It is meant for the gateway's hot path.
* Keys are (re)loaded only by coroutines: `await verifier.refresh()` (the gateway calls it
  once at start), and `await verifier.run()`, a background task that refreshes every
  `cache_ttl_s` and soon after `verify()` meets an unknown `kid` (rotation), never more
  often than once per `refresh_min_interval_s` for unknown kids, so a flood of tokens with
  random kids costs the identity provider at most one request per interval.
* `await verifier.verify_async(token)` is `verify()` plus, on an unknown kid, an inline
  rate-limited refresh and one retry: the first token signed by a freshly rotated key
  succeeds instead of failing until the background refresh lands.

A loaded key set is an immutable dict swapped in with one assignment, so `verify()` (even
from another thread) sees the old keys or the new ones, never a half-built set.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import ipaddress
import json
import logging
import math
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType
from typing import Any, Final
from urllib.parse import urlsplit

import httpx
import jwt
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa

from cumulo.errors import ApiError, ConfigError, Unauthorized, Unavailable
from cumulo.security.auth import Principal
from cumulo.security.keys import SCOPES

log = logging.getLogger("cumulo.security.jwt")

# Asymmetric signature algorithms only. HS* is excluded because an HMAC "key" is a shared
# secret, and a verifier that accepts HS256 can be fooled into using an RSA public key
# (which is public) as that secret; "none" is excluded because it is no signature at all.
SUPPORTED_ALGORITHMS: Final = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
DEFAULT_ALGORITHMS: Final = ("RS256", "RS384", "RS512", "PS256", "ES256", "ES384", "EdDSA")

# The key type each algorithm needs, and for ECDSA the one curve it is defined on.
_KTY_FOR_ALG: Final = {
    **dict.fromkeys(("RS256", "RS384", "RS512", "PS256", "PS384", "PS512"), "RSA"),
    **dict.fromkeys(("ES256", "ES384", "ES512"), "EC"),
    "EdDSA": "OKP",
}
_CURVE_FOR_ALG: Final = {"ES256": "P-256", "ES384": "P-384", "ES512": "P-521"}
# When a JWK has no "alg", these (and only these) derivations are made; anything else is
# ambiguous (an RSA key could be RS* or PS*, but RS256 is what OIDC mandates by default).
_DERIVED_ALG: Final = {
    ("RSA", None): "RS256",
    ("EC", "P-256"): "ES256",
    ("EC", "P-384"): "ES384",
    ("EC", "P-521"): "ES512",
    ("OKP", "Ed25519"): "EdDSA",
}
_EDDSA_CURVES: Final = frozenset({"Ed25519", "Ed448"})
_PUBLIC_KEY_TYPES: Final = (
    rsa.RSAPublicKey,
    ec.EllipticCurvePublicKey,
    ed25519.Ed25519PublicKey,
    ed448.Ed448PublicKey,
)
MIN_RSA_BITS: Final = 2048

# Header parameters that carry or point at a key. A token that brings its own key proves
# only that whoever made it had some key; it must never be trusted (RFC 8725 §3.10).
EMBEDDED_KEY_HEADERS: Final = ("jwk", "jku", "x5u", "x5c")

# The same rule as cumulo.sdk.spec.NAME_RE; security sits below sdk in the layering, so it
# keeps its own copy (tests/test_jwt.py checks the two agree).
NAMESPACE_RE: Final = re.compile(r"[a-z0-9-]{1,63}")

MAX_TOKEN_CHARS: Final = 16 * 1024  # larger than any real access token; bounds parse cost
MAX_JWKS_BYTES: Final = 1024 * 1024
MAX_JWKS_KEYS: Final = 100
MAX_SUBJECT_CHARS: Final = 255  # OIDC Core §2: sub is at most 255 ASCII characters
MAX_LEEWAY_S: Final = 300.0
MAX_VERIFIED: Final = 10_000  # cached verified tokens; emptied when full or keys change
# NumericDate claims must be plain numbers in a sane range (year < ~318,000): PyJWT alone
# accepts true, "123" and 10**400, which are IdP bugs, not tokens to act on.
_MAX_NUMERIC_DATE: Final = 1e13
_TIME_CLAIMS: Final = ("exp", "nbf", "iat")
_LOOPBACK_NAMES: Final = frozenset({"localhost"})


@dataclass(frozen=True, slots=True)
class JwtSettings:
    """How to accept OIDC access tokens. All validated at construction (ConfigError)."""

    issuer: str
    audience: str
    jwks: str | Path  # a file path, or an http(s) URL of the provider's jwks_uri
    namespace_claim: str = "cumulo_namespace"
    # A space-separated string or a list; "scp" (Azure AD, Okta) is read when it is absent.
    scopes_claim: str = "scope"
    # The privacy data subject of the token's invocations (ctx.subject); ignored when the
    # claim is absent or not a valid subject id (privacy.subjects).
    subject_claim: str = "sub"
    # When set, only scopes with this prefix count, with the prefix removed
    # (e.g. "cumulo:" turns "cumulo:invoke" into "invoke" and ignores "openid").
    scope_prefix: str = ""
    leeway_s: float = 30.0
    algorithms: tuple[str, ...] = DEFAULT_ALGORITHMS
    cache_ttl_s: float = 300.0
    refresh_min_interval_s: float = 60.0
    fetch_timeout_s: float = 5.0
    # Plain http lets anyone on the path swap the keys; only loopback is allowed without it.
    allow_insecure_http: bool = False
    # When set (e.g. "at+jwt", RFC 9068), the header typ must match, so that an ID token
    # issued for the same audience cannot be replayed as an access token.
    required_typ: str | None = None

    def __post_init__(self) -> None:
        for name in ("issuer", "audience", "namespace_claim", "scopes_claim"):
            value = getattr(self, name)
            if not isinstance(value, str) or not value:
                raise ConfigError(f"JWT settings: {name} must be a non-empty string")
        if not self.algorithms:
            raise ConfigError("JWT settings: at least one algorithm must be allowed")
        bad = sorted(set(self.algorithms) - SUPPORTED_ALGORITHMS)
        if bad:
            raise ConfigError(
                f"JWT settings: algorithms {bad} are not accepted; "
                f"choose from {sorted(SUPPORTED_ALGORITHMS)} (asymmetric only)"
            )
        if not 0 <= self.leeway_s <= MAX_LEEWAY_S:
            raise ConfigError(f"JWT settings: leeway_s must be between 0 and {MAX_LEEWAY_S:g}")
        for name in ("cache_ttl_s", "refresh_min_interval_s", "fetch_timeout_s"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ConfigError(f"JWT settings: {name} must be a positive number")
        if self.jwks_url is not None:
            parts = urlsplit(self.jwks_url)
            if not parts.hostname:
                raise ConfigError(f"JWT settings: JWKS URL {self.jwks_url!r} has no host")
            if (
                parts.scheme == "http"
                and not self.allow_insecure_http
                and not _is_loopback(parts.hostname)
            ):
                raise ConfigError(
                    f"JWT settings: JWKS URL {self.jwks_url!r} must use https "
                    "(plain http is allowed only for loopback hosts)"
                )
        elif not str(self.jwks):
            raise ConfigError("JWT settings: jwks must be a file path or an http(s) URL")

    @property
    def jwks_url(self) -> str | None:
        text = str(self.jwks)
        return text if text.startswith(("http://", "https://")) else None


def _is_loopback(host: str) -> bool:
    if host.lower() in _LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True, slots=True)
class VerificationKey:
    """One trusted public key from the JWKS, pinned to exactly one algorithm."""

    kid: str | None
    alg: str
    jwk: jwt.PyJWK


class _SkipKey(Exception):
    """A JWKS entry that is not usable for verification (logged, then ignored)."""


def _parse_key(entry: object, allowed: frozenset[str]) -> VerificationKey:
    if not isinstance(entry, dict):
        raise _SkipKey("not a JSON object")
    kty = entry.get("kty")
    if kty == "oct":
        raise _SkipKey("symmetric (oct) keys are never trusted")
    if "d" in entry or "k" in entry:
        # A provider that publishes private or secret material is misconfigured; using
        # it would be wrong, and silently ignoring it would hide the leak.
        raise _SkipKey("it contains private key material (the JWKS must hold public keys)")
    use = entry.get("use")
    if use is not None and use != "sig":
        raise _SkipKey(f"its use is {use!r}, not 'sig'")
    key_ops = entry.get("key_ops")
    if key_ops is not None and (not isinstance(key_ops, list) or "verify" not in key_ops):
        raise _SkipKey("its key_ops do not include 'verify'")
    kid = entry.get("kid")
    if kid is not None and (not isinstance(kid, str) or not kid):
        raise _SkipKey("its kid is not a non-empty string")
    crv = entry.get("crv")
    alg = entry.get("alg")
    if alg is None:
        alg = _DERIVED_ALG.get((str(kty), None if kty == "RSA" else str(crv)))
        if alg is None:
            raise _SkipKey(f"it has no alg and none can be derived from kty={kty!r} crv={crv!r}")
    if not isinstance(alg, str) or alg not in allowed:
        raise _SkipKey(f"its algorithm {alg!r} is not allowed")
    if _KTY_FOR_ALG.get(alg) != kty:
        raise _SkipKey(f"its algorithm {alg} does not fit key type {kty!r}")
    if alg in _CURVE_FOR_ALG and crv != _CURVE_FOR_ALG[alg]:
        raise _SkipKey(f"its algorithm {alg} does not fit curve {crv!r}")
    if alg == "EdDSA" and crv not in _EDDSA_CURVES:
        raise _SkipKey(f"EdDSA does not fit curve {crv!r}")
    try:
        pyjwk = jwt.PyJWK(entry, algorithm=alg)
    except (jwt.PyJWTError, ValueError, TypeError, KeyError) as exc:
        raise _SkipKey(f"it is not a valid {kty} key ({type(exc).__name__})") from exc
    key = pyjwk.key
    if not isinstance(key, _PUBLIC_KEY_TYPES):
        raise _SkipKey("it is not a public key")
    if isinstance(key, rsa.RSAPublicKey) and key.key_size < MIN_RSA_BITS:
        raise _SkipKey(f"its RSA modulus has {key.key_size} bits, fewer than {MIN_RSA_BITS}")
    return VerificationKey(kid=kid, alg=alg, jwk=pyjwk)


def parse_jwks(
    data: object, algorithms: tuple[str, ...] | frozenset[str] = DEFAULT_ALGORITHMS
) -> Mapping[str | None, VerificationKey]:
    """The usable keys of a JWKS document, by kid (None for a key without one).

    Unusable entries are logged and skipped (a provider may publish encryption keys beside
    signing keys); a document with no usable key at all raises ConfigError."""
    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ConfigError("the JWKS is not a JSON object with a 'keys' list")
    entries: list[object] = data["keys"]
    if len(entries) > MAX_JWKS_KEYS:
        raise ConfigError(f"the JWKS has {len(entries)} keys, more than {MAX_JWKS_KEYS}")
    allowed = frozenset(algorithms)
    keys: dict[str | None, VerificationKey] = {}
    ambiguous: set[str | None] = set()
    for index, entry in enumerate(entries):
        label = entry.get("kid", f"#{index}") if isinstance(entry, dict) else f"#{index}"
        try:
            key = _parse_key(entry, allowed)
        except _SkipKey as exc:
            log.warning("JWKS key %r ignored: %s", label, exc)
            continue
        if key.kid in keys or key.kid in ambiguous:
            # Two keys under one kid: either could be meant, so neither is trusted.
            keys.pop(key.kid, None)
            ambiguous.add(key.kid)
            log.warning("JWKS key id %r appears more than once; all its keys ignored", key.kid)
            continue
        keys[key.kid] = key
    if not keys:
        raise ConfigError("the JWKS has no usable signing key")
    if None in keys and len(keys) > 1:
        log.warning("a JWKS key without a kid is unusable when the JWKS has several keys")
    return MappingProxyType(keys)


def _reject(message: str, code: str) -> Unauthorized:
    return Unauthorized(message, code=code)


# jwt.decode's exceptions, most specific first, with the code and one-line message a client
# sees. Messages never echo token contents or which value was expected.
_DECODE_ERRORS: Final[tuple[tuple[type[jwt.PyJWTError], str, str], ...]] = (
    (jwt.ExpiredSignatureError, "expired_token", "the token has expired"),
    (jwt.ImmatureSignatureError, "token_not_yet_valid", "the token is not valid yet"),
    (jwt.InvalidAudienceError, "wrong_audience", "the token is not meant for this service"),
    (jwt.InvalidIssuerError, "wrong_issuer", "the token is from an untrusted issuer"),
    (jwt.InvalidSignatureError, "invalid_signature", "the token signature is invalid"),
    (jwt.InvalidAlgorithmError, "invalid_algorithm", "the token algorithm is not accepted"),
)
_REQUIRED_CLAIMS: Final = ["exp", "iss", "aud", "sub"]


class JwtVerifier:
    """Turns an OIDC bearer token into a Principal, or raises Unauthorized.

    `clock` is a monotonic clock for the refresh schedule (injectable for tests); token
    times (exp, nbf, iat) are always checked against the wall clock."""

    def __init__(
        self, settings: JwtSettings, *, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._settings = settings
        self._algorithms = frozenset(settings.algorithms)
        self._clock = clock
        self._keys: Mapping[str | None, VerificationKey] = MappingProxyType({})
        # sha256(token) -> (principal, valid until): clients reuse one access token for
        # its lifetime, so after the first request a token costs one hash and a lookup.
        # The digest, not the token, is the key: tokens can be 16 KiB each.
        self._verified: dict[bytes, tuple[Principal, float]] = {}
        self._lock = asyncio.Lock()  # one refresh at a time; waiters reuse its result
        self._last_attempt: float | None = None
        self._last_success: float | None = None
        # Set by run() while it is running: how verify() (sync, maybe another thread)
        # asks the background task for a refresh without doing I/O itself.
        self._loop: asyncio.AbstractEventLoop | None = None
        self._wake: asyncio.Event | None = None
        self._miss_pending = False
        self._attempt_waiters: list[asyncio.Future[None]] = []
        self.generation = 0  # bumped on every successful load
        if settings.jwks_url is None:
            # A local file is cheap and a typo in its path should stop `cumulo up` at
            # once, so it is loaded here; refresh() re-reads it.
            self._install(parse_jwks(_read_file(Path(settings.jwks)), self._algorithms))

    # -- the hot path: no I/O ---------------------------------------------------------------

    @property
    def ready(self) -> bool:
        """Whether a key set is loaded (for /readyz)."""
        return bool(self._keys)

    def verify(self, token: str) -> Principal:
        # A compact JWS is ASCII (base64url and dots); anything else is refused before a
        # library sees it (PyJWT raises UnicodeEncodeError on a lone surrogate).
        if not isinstance(token, str) or len(token) > MAX_TOKEN_CHARS or not token.isascii():
            raise _reject("malformed bearer token", "invalid_token")
        digest = hashlib.sha256(token.encode("ascii")).digest()
        cached = self._verified.get(digest)
        if cached is not None:
            principal, valid_until = cached
            if time.time() < valid_until:
                return principal
            self._verified.pop(digest, None)
            raise _reject("the token has expired", "expired_token")
        key = self._select_key(token)
        claims = self._decode(token, key)
        principal = self._principal(claims)
        # Everything checked above is fixed for this exact token and key set, except the
        # clock: nbf has passed already, and exp is re-checked on every hit.
        if len(self._verified) >= MAX_VERIFIED:
            self._verified.clear()
        self._verified[digest] = (principal, float(claims["exp"]) + self._settings.leeway_s)
        return principal

    def _select_key(self, token: str) -> VerificationKey:
        if token.count(".") != 2:
            raise _reject("malformed bearer token", "invalid_token")
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError:
            raise _reject("malformed bearer token", "invalid_token") from None
        alg = header.get("alg")
        if not isinstance(alg, str) or alg not in self._algorithms:
            raise _reject("the token algorithm is not accepted", "invalid_algorithm")
        if any(name in header for name in EMBEDDED_KEY_HEADERS):
            raise _reject("tokens may not carry or point at their own key", "embedded_key")
        required_typ = self._settings.required_typ
        if required_typ is not None and _media_type(header.get("typ")) != _media_type(required_typ):
            raise _reject("the token is not an access token of the expected type", "wrong_type")
        if "crit" in header or "b64" in header:
            # No JWS extension is supported, so a token that needs one is refused
            # (RFC 7515 §4.1.11) rather than verified with different semantics.
            raise _reject("the token uses an unsupported header extension", "invalid_token")
        keys = self._keys
        if not keys:
            raise Unavailable(
                "the identity provider's keys are not loaded yet", code="jwks_unavailable"
            )
        kid = header.get("kid")
        if kid is None:
            if len(keys) != 1:
                raise _reject("the token has no key id (kid)", "missing_kid")
            key = next(iter(keys.values()))
        else:
            found = keys.get(kid) if isinstance(kid, str) else None
            if found is None:
                self._request_refresh()
                raise _reject("the token is signed by an unknown key", "unknown_key")
            key = found
        if alg != key.alg:
            # The key's pinned algorithm decides; a header that names another one is
            # either broken or an attempt to make the verifier use the key differently.
            raise _reject("the token algorithm does not match its key", "invalid_algorithm")
        return key

    def _decode(self, token: str, key: VerificationKey) -> dict[str, Any]:
        settings = self._settings
        try:
            return jwt.decode(
                token,
                key.jwk,
                algorithms=[key.alg],
                audience=settings.audience,
                issuer=settings.issuer,
                leeway=settings.leeway_s,
                options={
                    "verify_signature": True,
                    "require": list(_REQUIRED_CLAIMS),
                    "enforce_minimum_key_length": True,
                },
            )
        except jwt.MissingRequiredClaimError as exc:
            raise _reject(f"the token lacks the {exc.claim!r} claim", "missing_claim") from None
        except jwt.PyJWTError as exc:
            for cls, code, message in _DECODE_ERRORS:
                if isinstance(exc, cls):
                    raise _reject(message, code) from None
            raise _reject("invalid bearer token", "invalid_token") from None

    def _principal(self, claims: dict[str, Any]) -> Principal:
        settings = self._settings
        for name in _TIME_CLAIMS:
            value = claims.get(name)
            if name in claims and not (
                isinstance(value, int | float)
                and not isinstance(value, bool)
                and -_MAX_NUMERIC_DATE < value < _MAX_NUMERIC_DATE
            ):
                raise _reject(f"the token's {name!r} claim is not a valid time", "invalid_token")
        sub = claims["sub"]
        if not isinstance(sub, str) or not 0 < len(sub) <= MAX_SUBJECT_CHARS:
            raise _reject("the token subject (sub) is not usable", "invalid_token")
        if not sub.isprintable():
            raise _reject("the token subject (sub) is not usable", "invalid_token")
        namespace = claims.get(settings.namespace_claim)
        # "*" (all namespaces) is deliberately not a valid name: a token from an external
        # provider can never be the platform-wide admin, only act inside one namespace.
        if not isinstance(namespace, str) or not NAMESPACE_RE.fullmatch(namespace):
            raise _reject("the token carries no valid namespace claim", "invalid_namespace")
        return Principal(
            key_id=f"jwt:{claims['iss']}#{sub}",
            namespace=namespace,
            scopes=self._scopes(claims),
            subject=_subject_claim(claims.get(settings.subject_claim)),
        )

    def _scopes(self, claims: dict[str, Any]) -> frozenset[str]:
        settings = self._settings
        raw: object = None
        for name in (settings.scopes_claim, "scp"):
            if name in claims:
                raw = claims[name]
                break
        if isinstance(raw, str):
            items = raw.split()
        elif isinstance(raw, list):
            items = [item for item in raw if isinstance(item, str)]
        else:
            items = []
        prefix = settings.scope_prefix
        if prefix:
            items = [item[len(prefix) :] for item in items if item.startswith(prefix)]
        # Unknown scopes (openid, profile, another API's) are ignored, not an error; a token
        # left with none still authenticates and is then Forbidden by every route.
        return frozenset(item for item in items if item in SCOPES)

    def _request_refresh(self) -> None:
        """Ask run() for a refresh soon; cheap and safe from any thread, never blocks."""
        loop, wake = self._loop, self._wake
        if loop is None or wake is None or self._miss_pending:
            return
        self._miss_pending = True
        try:
            loop.call_soon_threadsafe(wake.set)
        except RuntimeError:  # the loop has closed; run() is gone with it
            self._miss_pending = False

    # -- loading keys: coroutines only ------------------------------------------------------

    async def verify_async(self, token: str) -> Principal:
        """verify(), but an unknown kid first triggers one rate-limited refresh and a retry."""
        try:
            return self.verify(token)
        except ApiError as exc:
            if exc.code not in ("unknown_key", "jwks_unavailable"):
                raise
            first = exc
        if not await self._refresh_if_allowed():
            raise first
        return self.verify(token)

    async def refresh(self) -> None:
        """Load the JWKS now (file or URL). Raises ConfigError and keeps the old keys."""
        async with self._lock:
            await self._refresh_locked()

    async def _refresh_if_allowed(self) -> bool:
        """Refresh unless one was attempted within refresh_min_interval_s; True if new keys."""
        async with self._lock:
            if self._miss_due() > 0:
                return False
            before = self.generation
            try:
                await self._refresh_locked()
            except ConfigError as exc:
                log.warning("JWKS refresh failed, keeping the previous keys: %s", exc)
            return self.generation != before

    async def _refresh_locked(self) -> None:
        self._last_attempt = self._clock()
        url = self._settings.jwks_url
        if url is None:
            raw = await asyncio.to_thread(_read_file, Path(self._settings.jwks))
        else:
            raw = await _fetch(url, self._settings.fetch_timeout_s)
        self._install(parse_jwks(raw, self._algorithms))

    def _install(self, keys: Mapping[str | None, VerificationKey]) -> None:
        added = set(keys) - set(self._keys)
        self._keys = keys  # one assignment: readers see the old set or the new one
        # A key dropped from the JWKS must stop vouching for tokens it already verified.
        self._verified = {}
        self._last_success = self._last_attempt = self._clock()
        self.generation += 1
        if added and self.generation > 1:
            log.info("JWKS refreshed: new key ids %s", sorted(str(k) for k in added))

    def _miss_due(self) -> float:
        """Seconds until an unknown kid may trigger a fetch (<= 0: now)."""
        if self._last_attempt is None:
            return -math.inf
        return self._last_attempt + self._settings.refresh_min_interval_s - self._clock()

    def _periodic_due(self) -> float:
        """Seconds until the scheduled refresh: at TTL expiry, or a retry after a failure."""
        last_success = -math.inf if self._last_success is None else self._last_success
        last_attempt = -math.inf if self._last_attempt is None else self._last_attempt
        due_at = max(
            last_success + self._settings.cache_ttl_s,
            last_attempt + self._settings.refresh_min_interval_s,
        )
        return due_at - self._clock()

    async def run(self) -> None:
        """Keep the keys fresh until cancelled. Start it as a task next to the gateway."""
        if self._loop is not None:
            raise RuntimeError("JwtVerifier.run() is already running")
        self._loop = asyncio.get_running_loop()
        self._wake = wake = asyncio.Event()
        try:
            while True:
                periodic = self._periodic_due()
                miss = self._miss_due() if self._miss_pending else math.inf
                due = min(periodic, miss)
                if due > 0:
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(wake.wait(), timeout=due)
                    wake.clear()
                    continue  # recompute: a wake-up may be rate-limited to later
                self._miss_pending = False
                if periodic <= 0:
                    try:
                        await self.refresh()
                    except ConfigError as exc:
                        log.warning("JWKS refresh failed, keeping the previous keys: %s", exc)
                else:
                    # An unknown kid: the rate-limited path, so that a refresh made by
                    # verify_async meanwhile is not repeated.
                    await self._refresh_if_allowed()
                self._notify_attempt()
        finally:
            self._loop = self._wake = None
            self._miss_pending = False

    async def wait_for_refresh(self) -> None:
        """Wait until run() finishes its next refresh attempt, successful or not.

        For readiness checks and tests; call it on the loop that runs run()."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._attempt_waiters.append(waiter)
        await waiter

    def _notify_attempt(self) -> None:
        waiters, self._attempt_waiters = self._attempt_waiters, []
        for waiter in waiters:
            if not waiter.done():
                waiter.set_result(None)


def _media_type(value: object) -> str | None:
    """typ compares case-insensitively, with "application/" optional (RFC 7515 §4.1.9)."""
    if not isinstance(value, str):
        return None
    value = value.lower()
    return value.removeprefix("application/")


def _read_file(path: Path) -> object:
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_JWKS_BYTES + 1)
    except OSError as exc:
        raise ConfigError(f"cannot read the JWKS file {str(path)!r}: {exc.strerror}") from exc
    if len(data) > MAX_JWKS_BYTES:
        raise ConfigError(f"the JWKS file {str(path)!r} is larger than {MAX_JWKS_BYTES} bytes")
    return _parse_json(data, repr(str(path)))


async def _fetch(url: str, timeout_s: float) -> object:
    # Redirects are not followed: the operator configured this URL, and a redirect could
    # lead a https URL to a plain-http or attacker-chosen location.
    try:
        async with (
            httpx.AsyncClient(timeout=timeout_s, follow_redirects=False) as client,
            client.stream("GET", url, headers={"accept": "application/json"}) as response,
        ):
            if response.status_code != 200:
                raise ConfigError(f"the JWKS URL {url!r} answered HTTP {response.status_code}")
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > MAX_JWKS_BYTES:
                    raise ConfigError(f"the JWKS at {url!r} is larger than {MAX_JWKS_BYTES} bytes")
    except httpx.HTTPError as exc:
        raise ConfigError(f"cannot fetch the JWKS from {url!r}: {type(exc).__name__}") from exc
    return _parse_json(bytes(body), repr(url))


def _parse_json(data: bytes, where: str) -> object:
    try:
        parsed: object = json.loads(data)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ConfigError(f"the JWKS at {where} is not valid JSON") from exc
    return parsed


def _subject_claim(value: object) -> str | None:
    from cumulo.privacy.subjects import valid_subject

    return value if isinstance(value, str) and valid_subject(value) else None

"""The CDS client's JWT (CDS Hooks 2.0 "Trusting CDS Clients"), checked on every CDS call when
``GSHAP_CDS_JWT_ISSUERS`` names the trusted issuers and their JWK Sets.

Checks, in order; any failure is a 401 whose body says only that a valid JWT is required (the reason is logged,
never the token):

- ``Authorization: Bearer <JWT>`` present;
- header: ``alg`` is ES384 or RS384 (asymmetric only: never ``none``, never HMAC), ``kid`` present, ``typ`` JWT
  when present;
- ``iss`` is a configured issuer; the key is the ``kid`` of that issuer's JWK Set (an ``https://`` URL, fetched and
  cached for ``JWKS_TTL_SECONDS``, fetched again at most every ``JWKS_MIN_REFRESH_SECONDS`` when a kid is unknown, so
  rotated keys are picked up; or a file: a path or a ``file://`` URL; plain ``http://`` is refused). A ``jku`` header
  is not followed: keys come only from the configured set. A key whose ``alg`` is absent (it is optional, RFC 7517)
  serves the one algorithm of ours its key type allows: RS384 for RSA, ES384 for an EC P-384 key;
- the signature; ``aud`` is exactly the URL of the endpoint called (``<base>/cds-services``,
  ``<base>/cds-services/diabetes-risk`` or ``.../feedback``); ``exp`` in the future, ``iat`` not in the future
  (both with ``LEEWAY_SECONDS``), ``jti`` present;
- the lifetime ``exp - iat`` at most ``GSHAP_CDS_JWT_MAX_LIFETIME_SECONDS`` (default 300, the CDS Hooks Sandbox's
  ``exp = iat + 300``) plus ``LEEWAY_SECONDS``, so that no token (and no replay-cache entry) lives long;
- ``jti`` not seen before from that issuer while the first token was valid. The replay cache is the state
  database's ``cds_jti`` table (:class:`service.fhir.state.ReplayStore`: PostgreSQL shared by every replica with
  GSHAP_DATABASE_URL, else the machine's SQLite file shared by its workers), each entry kept until the token's
  ``exp`` plus the leeway. When it cannot be checked (the database down) the call fails closed: a 503
  (``store-unavailable``), never an unchecked pass. Without a replay store (a verifier built alone) the cache is in
  this process's memory.
"""

from __future__ import annotations

import json
import math
import ssl
import time
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote, urlsplit

import anyio

from service.api.errors import StoreUnavailable, Unauthorized
from service.api.observability import log_event
from service.fhir.state import ReplayStore, StoreUnavailableError

if TYPE_CHECKING:  # httpx and PyJWT load where a JWKS or a token is read: a service without CDS JWTs needs neither
    import jwt

__all__ = [
    "ALLOWED_ALGORITHMS",
    "CdsJwtVerifier",
    "JwksSourceError",
    "cds_unauthorized",
    "check_jwks_sources",
    "jwks_source",
    "key_set",
]

ALLOWED_ALGORITHMS = ("ES384", "RS384")
LEEWAY_SECONDS = 30
JWKS_TTL_SECONDS = 300.0
JWKS_MIN_REFRESH_SECONDS = 30.0
JWKS_MAX_BYTES = 256 * 1024
MAX_REPLAY_ENTRIES = 100_000
DEFAULT_MAX_LIFETIME_SECONDS = 300.0
# the algorithm a key without "alg" serves, by key type (and curve): the one of ALLOWED_ALGORITHMS it can do
_IMPLIED_ALGORITHM = {("RSA", None): "RS384", ("EC", "P-384"): "ES384"}


class JwksSourceError(Exception):
    """A configured JWK Set that cannot be used (not https or a file, missing, unreadable, no usable key): the
    service refuses to start (``gshap serve`` says it in one line and exits 2)."""


def jwks_source(source: str) -> tuple[str, str]:
    """``("url", https-url)`` or ``("file", path)`` for a configured JWKS source; :class:`JwksSourceError` for
    anything else (``http://`` and every other scheme)."""
    if "://" not in source:
        return "file", source
    parts = urlsplit(source)
    scheme = parts.scheme.lower()
    if scheme == "https" and parts.hostname:
        return "url", source
    if scheme == "file" and parts.netloc in ("", "localhost") and parts.path:
        return "file", unquote(parts.path)
    raise JwksSourceError(f"JWKS source {source[:200]!r}: must be an https:// URL or a file (a path or file:// URL)")


def key_set(data: Any) -> jwt.PyJWKSet:
    """The JWK Set of ``data`` (a parsed JWKS document); a key without ``alg`` gets the one allowed algorithm its
    key type implies (RS384 for RSA, ES384 for EC P-384), instead of PyJWT's RS256/ES256 default."""
    import jwt

    if not isinstance(data, dict) or not isinstance(data.get("keys"), list):
        raise ValueError("a JWK Set is an object with a 'keys' array")
    keys = []
    for item in data["keys"]:
        implied = None
        if isinstance(item, dict) and "alg" not in item:
            crv = item.get("crv") if item.get("kty") == "EC" else None
            implied = _IMPLIED_ALGORITHM.get((str(item.get("kty")), crv))
        keys.append(item if implied is None else {**item, "alg": implied})
    return jwt.PyJWKSet.from_dict({**data, "keys": keys})


def _tls_context(ca_file: Path | None) -> ssl.SSLContext:
    """The system's trusted CAs, plus ``ca_file`` (GSHAP_CDS_JWKS_CA_FILE) when set."""
    context = ssl.create_default_context()
    if ca_file is not None:
        context.load_verify_locations(cafile=str(ca_file))
    return context


def _parse(body: bytes, where: str) -> jwt.PyJWKSet:
    import jwt

    if len(body) > JWKS_MAX_BYTES:
        raise JwksSourceError(f"JWKS {where}: larger than {JWKS_MAX_BYTES} bytes")
    try:
        return key_set(json.loads(body))
    except (ValueError, jwt.PyJWTError) as exc:
        raise JwksSourceError(f"JWKS {where}: not a usable JWK Set ({str(exc)[:120]})") from None


def check_jwks_sources(issuers: Mapping[str, str], ca_file: Path | None = None, timeout: float = 5.0) -> None:
    """Read every configured JWK Set once (at start-up): :class:`JwksSourceError` naming the first that is not an
    https URL or a file, cannot be read or fetched, or holds no usable key."""
    for issuer, source in issuers.items():
        kind, where = jwks_source(source)
        if kind == "file":
            try:
                body = Path(where).read_bytes()
            except OSError as exc:
                raise JwksSourceError(
                    f"JWKS of issuer {issuer!r}: cannot read file {where!r} ({exc.strerror or type(exc).__name__})"
                ) from None
        else:
            import httpx

            try:
                context = _tls_context(ca_file)
                with httpx.Client(timeout=timeout, follow_redirects=False, trust_env=False, verify=context) as c:
                    response = c.get(where, headers={"Accept": "application/json"})
            except (OSError, httpx.HTTPError, ssl.SSLError) as exc:
                raise JwksSourceError(
                    f"JWKS of issuer {issuer!r}: cannot fetch {where!r} ({type(exc).__name__}: {str(exc)[:160]})"
                ) from None
            if response.status_code != 200:
                raise JwksSourceError(f"JWKS of issuer {issuer!r}: {where!r} answered {response.status_code}")
            body = response.content
        _parse(body, f"of issuer {issuer!r} ({where!r})")


def cds_unauthorized() -> Unauthorized:
    """The one 401 of the CDS endpoints: no detail on what was wrong (CDS Hooks best practice)."""
    return Unauthorized(
        "A valid CDS client JWT is required: 'Authorization: Bearer <JWT>' signed with ES384 or RS384 by a "
        "trusted issuer, for this endpoint's URL (CDS Hooks 2.0, Trusting CDS Clients).",
        headers={"WWW-Authenticate": 'Bearer realm="cds-services"'},
    )


class _RefusedError(Exception):
    pass


class CdsJwtVerifier:
    """Verifies CDS client JWTs against the configured issuers' JWK Sets; keeps the replay cache."""

    def __init__(
        self,
        issuers: Mapping[str, str],
        *,
        clock: Any = time.time,
        max_lifetime: float = DEFAULT_MAX_LIFETIME_SECONDS,
        ca_file: Path | None = None,
        replay: ReplayStore | None = None,
    ) -> None:
        self.issuers = dict(issuers)
        self.replay = replay
        self.clock = clock
        self.max_lifetime = float(max_lifetime)
        self.ca_file = ca_file
        self._tls: ssl.SSLContext | None = None
        self._sets: dict[str, tuple[float, jwt.PyJWKSet]] = {}
        self._seen: dict[tuple[str, str], float] = {}

    async def _load(self, source: str) -> jwt.PyJWKSet:
        import httpx

        try:
            kind, where = jwks_source(source)
        except JwksSourceError as exc:
            raise _RefusedError(str(exc)) from None
        if kind == "url":
            if self._tls is None:
                self._tls = _tls_context(self.ca_file)
            async with httpx.AsyncClient(
                timeout=httpx.Timeout(5.0), follow_redirects=False, trust_env=False, verify=self._tls
            ) as c:
                response = await c.get(where, headers={"Accept": "application/json"})
                if response.status_code != 200:
                    raise _RefusedError(f"JWKS {where} answered {response.status_code}")
                body = response.content
        else:
            body = Path(where).read_bytes()
        try:
            return _parse(body, where)
        except JwksSourceError as exc:
            raise _RefusedError(str(exc)) from None

    async def _key(self, issuer: str, kid: str) -> jwt.PyJWK:
        import httpx
        import jwt

        source = self.issuers[issuer]
        now = time.monotonic()
        cached = self._sets.get(issuer)
        for attempt in range(2):
            if (
                cached is None
                or now - cached[0] > JWKS_TTL_SECONDS
                or (attempt == 1 and now - cached[0] > JWKS_MIN_REFRESH_SECONDS)
            ):
                try:
                    cached = (now, await self._load(source))
                except (OSError, ValueError, httpx.HTTPError, jwt.PyJWTError) as exc:
                    raise _RefusedError(f"JWKS of {issuer} unavailable ({type(exc).__name__})") from None
                self._sets[issuer] = cached
            for key in cached[1].keys:
                if key.key_id == kid:
                    return key
        raise _RefusedError("kid not in the issuer's JWK Set")

    async def _remember_shared(self, replay: ReplayStore, issuer: str, jti: str, exp: float) -> None:
        """The shared replay cache: a replay is refused (401); a cache that cannot be checked is a 503."""
        now = self.clock()
        try:
            new = await anyio.to_thread.run_sync(lambda: replay.remember(issuer, jti, exp + LEEWAY_SECONDS, now=now))
        except StoreUnavailableError as exc:
            log_event("cds_jwt_unchecked", 40, reason=f"jti replay cache unavailable: {str(exc)[:300]}")
            raise StoreUnavailable(
                "The CDS client JWT's jti cannot be checked against the replay cache (the state database is "
                "unavailable); retry in 5 s.",
                headers={"Retry-After": "5"},
                extra={"retry_after": 5},
            ) from None
        if not new:
            raise _RefusedError("jti replayed")

    def _remember(self, issuer: str, jti: str, exp: float) -> None:
        now = self.clock()
        if (issuer, jti) in self._seen and self._seen[(issuer, jti)] + LEEWAY_SECONDS >= now:
            raise _RefusedError("jti replayed")
        if len(self._seen) >= MAX_REPLAY_ENTRIES:
            self._seen = {k: v for k, v in self._seen.items() if v + LEEWAY_SECONDS >= now}
            if len(self._seen) >= MAX_REPLAY_ENTRIES:
                raise _RefusedError("replay cache full")
        self._seen[(issuer, jti)] = exp

    async def verify(self, authorization: str | None, audience: str) -> dict[str, Any]:
        """The verified claims, or :class:`~service.api.errors.Unauthorized`."""
        import jwt

        try:
            scheme, _, token = (authorization or "").partition(" ")
            token = token.strip()
            if scheme.lower() != "bearer" or not token:
                raise _RefusedError("no bearer token")
            try:
                header = jwt.get_unverified_header(token)
                unverified = jwt.decode(token, options={"verify_signature": False})
            except jwt.PyJWTError:
                raise _RefusedError("not a JWT") from None
            alg, kid = header.get("alg"), header.get("kid")
            if alg not in ALLOWED_ALGORITHMS:
                raise _RefusedError(f"algorithm {str(alg)[:10]!r} not allowed")
            if not isinstance(kid, str) or not kid:
                raise _RefusedError("no kid")
            if "typ" in header and header["typ"] != "JWT":
                raise _RefusedError("typ is not JWT")
            issuer = unverified.get("iss")
            if not isinstance(issuer, str) or issuer not in self.issuers:
                raise _RefusedError("issuer not trusted")
            key = await self._key(issuer, kid)
            if key.algorithm_name != alg:
                raise _RefusedError("the key's algorithm differs from alg")
            try:
                claims: dict[str, Any] = jwt.decode(
                    token,
                    key=key.key,
                    algorithms=[alg],
                    audience=audience,
                    issuer=issuer,
                    leeway=LEEWAY_SECONDS,
                    options={"require": ["iss", "aud", "exp", "iat", "jti"], "strict_aud": False},
                )
            except (jwt.PyJWTError, OverflowError, TypeError) as exc:
                raise _RefusedError(f"JWT refused ({type(exc).__name__})") from None
            try:
                exp, iat = float(claims["exp"]), float(claims["iat"])
            except (OverflowError, TypeError, ValueError):
                raise _RefusedError("exp or iat is not a number") from None
            if not (math.isfinite(exp) and math.isfinite(iat)):
                raise _RefusedError("exp or iat is not finite")
            if iat > self.clock() + LEEWAY_SECONDS:
                raise _RefusedError("iat in the future")
            if exp - iat > self.max_lifetime + LEEWAY_SECONDS:
                raise _RefusedError(f"lifetime exp - iat over {self.max_lifetime:g} s (+{LEEWAY_SECONDS} s leeway)")
            jti = claims["jti"]
            if not isinstance(jti, str) or not jti:
                raise _RefusedError("jti is not a string")
            if self.replay is not None:
                await self._remember_shared(self.replay, issuer, jti, exp)
            else:
                self._remember(issuer, jti, exp)
            return claims
        except _RefusedError as why:
            log_event("cds_jwt_refused", 30, reason=str(why), audience=audience)
            raise cds_unauthorized() from None

"""The CDS client's JWT (CDS Hooks 2.0 "Trusting CDS Clients"), checked on every CDS call when
``GSHAP_CDS_JWT_ISSUERS`` names the trusted issuers and their JWK Sets.

Checks, in order; any failure is a 401 whose body says only that a valid JWT is required (the reason is logged,
never the token):

- ``Authorization: Bearer <JWT>`` present;
- header: ``alg`` is ES384 or RS384 (asymmetric only: never ``none``, never HMAC), ``kid`` present, ``typ`` JWT
  when present;
- ``iss`` is a configured issuer; the key is the ``kid`` of that issuer's JWK Set (a URL, fetched and cached for
  ``JWKS_TTL_SECONDS``, fetched again at most every ``JWKS_MIN_REFRESH_SECONDS`` when a kid is unknown, so rotated
  keys are picked up; or a file). A ``jku`` header is not followed: keys come only from the configured set;
- the signature; ``aud`` is exactly the URL of the endpoint called (``<base>/cds-services``,
  ``<base>/cds-services/diabetes-risk`` or ``.../feedback``); ``exp`` in the future, ``iat`` not in the future
  (both with ``LEEWAY_SECONDS``), ``jti`` present;
- ``jti`` not seen before from that issuer while the first token was valid (an in-process replay cache: with
  several workers or replicas each keeps its own, so a replay to another process is not caught).
"""

from __future__ import annotations

import json
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import httpx
import jwt

from service.api.errors import Unauthorized
from service.api.observability import log_event

__all__ = ["ALLOWED_ALGORITHMS", "CdsJwtVerifier", "cds_unauthorized"]

ALLOWED_ALGORITHMS = ("ES384", "RS384")
LEEWAY_SECONDS = 30
JWKS_TTL_SECONDS = 300.0
JWKS_MIN_REFRESH_SECONDS = 30.0
JWKS_MAX_BYTES = 256 * 1024
MAX_REPLAY_ENTRIES = 100_000


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

    def __init__(self, issuers: Mapping[str, str], *, clock: Any = time.time) -> None:
        self.issuers = dict(issuers)
        self.clock = clock
        self._sets: dict[str, tuple[float, jwt.PyJWKSet]] = {}
        self._seen: dict[tuple[str, str], float] = {}

    async def _load(self, source: str) -> jwt.PyJWKSet:
        if source.startswith(("https://", "http://")):
            async with httpx.AsyncClient(timeout=httpx.Timeout(5.0), follow_redirects=False, trust_env=False) as c:
                response = await c.get(source, headers={"Accept": "application/json"})
                if response.status_code != 200 or len(response.content) > JWKS_MAX_BYTES:
                    raise _RefusedError(f"JWKS {source} answered {response.status_code}")
                data = response.json()
        else:
            data = json.loads(Path(source).read_text())
        return jwt.PyJWKSet.from_dict(data)

    async def _key(self, issuer: str, kid: str) -> jwt.PyJWK:
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
            except jwt.PyJWTError as exc:
                raise _RefusedError(f"JWT refused ({type(exc).__name__})") from None
            if float(claims["iat"]) > self.clock() + LEEWAY_SECONDS:
                raise _RefusedError("iat in the future")
            jti = claims["jti"]
            if not isinstance(jti, str) or not jti:
                raise _RefusedError("jti is not a string")
            self._remember(issuer, jti, float(claims["exp"]))
            return claims
        except _RefusedError as why:
            log_event("cds_jwt_refused", 30, reason=str(why), audience=audience)
            raise cds_unauthorized() from None

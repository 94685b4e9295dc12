"""Outgoing FHIR searches, for prefetch keys the CDS client did not fill in.

- Only to a base URL in the allow-list (``GSHAP_CDS_FHIR_SERVERS``; empty: never call out). The client's
  ``fhirServer`` is compared after normalising (scheme and host lower-cased, no trailing slash), exactly otherwise.
- Each call carries the client's bearer token (``fhirAuthorization.access_token``), has a timeout, reads at most
  ``max_bytes`` (streamed; more is refused), follows no redirect (it could leave the allow-list) and accepts only
  a JSON FHIR resource. The token is never logged, stored or put in an error message.
- Failures are :class:`FhirServerError` with a reason safe to show (no token, no body).
"""

from __future__ import annotations

import asyncio
import functools
import ssl
from collections.abc import Mapping, Sequence
from typing import Any
from urllib.parse import quote, urlsplit

import httpx
import orjson

__all__ = ["FhirServerError", "fetch_all", "normalise_base", "server_allowed"]


class FhirServerError(Exception):
    """A FHIR search that gave no usable answer; ``key`` names the prefetch key, ``reason`` is safe to show."""

    def __init__(self, key: str, reason: str) -> None:
        self.key = key
        self.reason = reason
        super().__init__(f"{key}: {reason}")


@functools.cache
def _tls() -> ssl.SSLContext:
    """One TLS context for every call (building one loads the CA bundle: tens of milliseconds)."""
    return ssl.create_default_context()


def normalise_base(url: str) -> str:
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}"


def server_allowed(url: str, allowed: Sequence[str]) -> bool:
    """Whether ``url`` is one of the allowed base URLs (after normalising both)."""
    if not url:
        return False
    base = normalise_base(url)
    return any(base == normalise_base(a) for a in allowed)


def render(template: str, patient_id: str) -> str:
    """A prefetch template with ``{{context.patientId}}`` filled in (percent-encoded)."""
    return template.replace("{{context.patientId}}", quote(patient_id, safe=""))


async def _fetch_one(client: httpx.AsyncClient, key: str, url: str, headers: Mapping[str, str], max_bytes: int) -> Any:
    try:
        async with client.stream("GET", url, headers=headers) as response:
            if response.status_code != 200:
                raise FhirServerError(key, f"the FHIR server answered HTTP {response.status_code}")
            ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype not in ("application/fhir+json", "application/json"):
                raise FhirServerError(key, f"the FHIR server answered {ctype[:60] or 'no content type'}, not JSON")
            size = 0
            chunks: list[bytes] = []
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise FhirServerError(key, f"the FHIR server's answer exceeds {max_bytes} bytes")
                chunks.append(chunk)
    except httpx.TimeoutException:
        raise FhirServerError(key, "the FHIR server did not answer in time") from None
    except httpx.HTTPError as exc:
        raise FhirServerError(key, f"the FHIR server could not be reached ({type(exc).__name__})") from None
    try:
        return orjson.loads(b"".join(chunks))
    except orjson.JSONDecodeError:
        raise FhirServerError(key, "the FHIR server's answer is not valid JSON") from None


async def fetch_all(
    base_url: str,
    queries: Mapping[str, str],
    *,
    token: str | None,
    timeout_s: float,
    max_bytes: int,
) -> dict[str, Any]:
    """Run the searches ``queries`` (key -> relative URL) concurrently against ``base_url``; all or an error."""
    headers = {"Accept": "application/fhir+json"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    base = base_url.rstrip("/")
    timeout = httpx.Timeout(timeout_s)
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False, verify=_tls()) as client:
        keys = list(queries)
        failure: FhirServerError | None = None
        try:
            async with asyncio.timeout(timeout_s * 2), asyncio.TaskGroup() as group:
                # a TaskGroup cancels the other searches as soon as one fails: nothing is left running
                tasks = [
                    group.create_task(_fetch_one(client, k, f"{base}/{queries[k]}", headers, max_bytes)) for k in keys
                ]
        except TimeoutError:
            failure = FhirServerError(",".join(keys), "the FHIR server did not answer in time")
        except ExceptionGroup as group_error:
            first = group_error.exceptions[0]
            if not isinstance(first, FhirServerError):
                raise
            failure = first
        if failure is not None:
            raise failure
    return {k: t.result() for k, t in zip(keys, tasks, strict=True)}

"""Outgoing FHIR searches, for prefetch keys the CDS client did not fill in.

- Only to a base URL in the allow-list (``GSHAP_CDS_FHIR_SERVERS``; empty: never call out). The client's
  ``fhirServer`` is compared after normalising (scheme and host lower-cased, no trailing slash), exactly otherwise;
  a URL with a space or a control character is refused before the allow-list is looked at.
- Each call carries the client's bearer token (``fhirAuthorization.access_token``), has a timeout, follows no
  redirect (it could leave the allow-list) and accepts only a JSON FHIR resource. The token is never logged,
  stored or put in an error message.
- At most ``max_bytes`` are read from one answer, counted *after* decompression and enforced while streaming: the
  compressed bytes are inflated here (gzip or deflate only; ``Accept-Encoding`` asks for nothing else), never
  more than the bytes still allowed at a time, so a gzip bomb costs at most ``max_bytes`` of memory. A failed
  fetch keeps nothing: its buffers are dropped and the error that leaves this module carries no traceback.
- A searchset's ``next`` links are followed up to ``max_pages`` pages and ``max_entries`` entries in all, and only
  on the same server (the same normalised base URL); a ``next`` link elsewhere is refused, not followed. The pages
  are merged into one searchset Bundle (the prefetch templates sort latest first, so the first page holds the
  latest values).
- Failures are :class:`FhirServerError` with a reason safe to show (no token, no body).
"""

from __future__ import annotations

import asyncio
import functools
import re
import ssl
import zlib
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any
from urllib.parse import quote, urlsplit

import orjson

if TYPE_CHECKING:  # httpx loads with the first prefetch fetched: a service that never calls a FHIR server needs none
    import httpx

__all__ = ["FhirServerError", "fetch_all", "has_control_characters", "normalise_base", "server_allowed"]

_CONTROL = re.compile(r"[\s\x00-\x1f\x7f]")


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


def has_control_characters(url: str) -> bool:
    """Whether ``url`` holds a space or a control character (tab, CR, LF, ...): never a usable URL."""
    return bool(_CONTROL.search(url))


def normalise_base(url: str) -> str:
    parts = urlsplit(url.strip())
    path = parts.path.rstrip("/")
    return f"{parts.scheme.lower()}://{parts.netloc.lower()}{path}"


def server_allowed(url: str, allowed: Sequence[str]) -> bool:
    """Whether ``url`` is one of the allowed base URLs (after normalising both); never one with a control
    character or a space."""
    if not url or has_control_characters(url):
        return False
    base = normalise_base(url)
    return any(base == normalise_base(a) for a in allowed)


def render(template: str, patient_id: str) -> str:
    """A prefetch template with ``{{context.patientId}}`` filled in (percent-encoded)."""
    return template.replace("{{context.patientId}}", quote(patient_id, safe=""))


class _Inflater:
    """Decompresses a gzip/deflate body piece by piece, never holding more than ``limit`` bytes of output."""

    def __init__(self, encoding: str) -> None:
        self.encoding = encoding
        self._raw_deflate = False
        self._d: Any = self._new()

    def _new(self) -> Any:
        if self.encoding == "gzip":
            return zlib.decompressobj(zlib.MAX_WBITS | 16)
        return zlib.decompressobj(-zlib.MAX_WBITS if self._raw_deflate else zlib.MAX_WBITS)

    def feed(self, data: bytes, out: bytearray, limit: int) -> bool:
        """Append the output of ``data`` to ``out``; False as soon as ``out`` would exceed ``limit``."""
        if self.encoding == "identity":
            if len(out) + len(data) > limit:
                return False
            out += data
            return True
        while data:
            try:
                piece = self._d.decompress(data, limit - len(out) + 1)
            except zlib.error:
                if self.encoding == "deflate" and not self._raw_deflate and not out:
                    self._raw_deflate = True  # "deflate" sent without its zlib header, as some servers do
                    self._d = self._new()
                    continue
                raise
            out += piece
            if len(out) > limit:
                return False
            data = self._d.unconsumed_tail
            if self._d.eof:
                data = self._d.unused_data  # a gzip body may hold several members
                if data:
                    self._d = self._new()
        return True


def _same_server(url: str, base: str) -> bool:
    if has_control_characters(url):
        return False
    parts, home = urlsplit(url), urlsplit(base)
    if (parts.scheme.lower(), parts.netloc.lower()) != (home.scheme.lower(), home.netloc.lower()):
        return False
    root = home.path.rstrip("/")
    return parts.path == root or parts.path.startswith(root + "/")


async def _get_json(client: httpx.AsyncClient, key: str, url: str, headers: Mapping[str, str], max_bytes: int) -> Any:
    body = bytearray()
    try:
        await _stream_into(client, key, url, headers, max_bytes, body)
    except BaseException:
        body.clear()  # emptied here: whoever keeps the error (and through it this frame) keeps no bytes
        raise
    try:
        return orjson.loads(body)
    except orjson.JSONDecodeError:
        raise FhirServerError(key, "the FHIR server's answer is not valid JSON") from None
    finally:
        body.clear()


async def _stream_into(
    client: httpx.AsyncClient, key: str, url: str, headers: Mapping[str, str], max_bytes: int, body: bytearray
) -> None:
    import httpx

    try:
        async with client.stream("GET", url, headers=headers) as response:
            if response.status_code != 200:
                raise FhirServerError(key, f"the FHIR server answered HTTP {response.status_code}")
            ctype = response.headers.get("content-type", "").split(";")[0].strip().lower()
            if ctype not in ("application/fhir+json", "application/json"):
                raise FhirServerError(key, f"the FHIR server answered {ctype[:60] or 'no content type'}, not JSON")
            encoding = response.headers.get("content-encoding", "identity").strip().lower() or "identity"
            if encoding not in ("identity", "gzip", "deflate"):
                raise FhirServerError(key, f"the FHIR server answered content-encoding {encoding[:30]!r}")
            inflater = _Inflater(encoding)
            async for raw in response.aiter_raw():
                if not inflater.feed(raw, body, max_bytes):
                    raise FhirServerError(key, f"the FHIR server's answer exceeds {max_bytes} bytes (decompressed)")
    except httpx.TimeoutException:
        raise FhirServerError(key, "the FHIR server did not answer in time") from None
    except httpx.HTTPError as exc:
        raise FhirServerError(key, f"the FHIR server could not be reached ({type(exc).__name__})") from None
    except zlib.error:
        raise FhirServerError(key, "the FHIR server's compressed answer is corrupt") from None


def _next_link(page: Any) -> str | None:
    links = page.get("link") if isinstance(page, dict) else None
    if not isinstance(links, list):
        return None
    for link in links:
        if isinstance(link, dict) and link.get("relation") == "next" and isinstance(link.get("url"), str):
            return str(link["url"])
    return None


async def _fetch_one(
    client: httpx.AsyncClient,
    key: str,
    base: str,
    query: str,
    headers: Mapping[str, str],
    *,
    max_bytes: int,
    max_pages: int,
    max_entries: int,
) -> Any:
    first = await _get_json(client, key, f"{base}/{query}", headers, max_bytes)
    if not (isinstance(first, dict) and first.get("resourceType") == "Bundle"):
        return first
    entries = first.get("entry")
    merged: list[Any] = list(entries) if isinstance(entries, list) else []
    page: Any = first
    pages = 1
    while pages < max_pages and len(merged) < max_entries:
        url = _next_link(page)
        if url is None:
            break
        if not _same_server(url, base):
            raise FhirServerError(key, "a next-page link of the FHIR server leads elsewhere; not followed")
        page = await _get_json(client, key, url, headers, max_bytes)
        pages += 1
        entries = page.get("entry") if isinstance(page, dict) else None
        if not (isinstance(page, dict) and page.get("resourceType") == "Bundle"):
            raise FhirServerError(key, "a next page of the FHIR server's search is not a Bundle")
        merged += entries if isinstance(entries, list) else []
    out = {k: v for k, v in first.items() if k != "link"}
    if merged or "entry" in first:
        out["entry"] = merged[:max_entries]
    return out


async def fetch_all(
    base_url: str,
    queries: Mapping[str, str],
    *,
    token: str | None,
    timeout_s: float,
    max_bytes: int,
    max_pages: int = 10,
    max_entries: int = 10_000,
) -> dict[str, Any]:
    """Run the searches ``queries`` (key -> relative URL) concurrently against ``base_url``; all or an error."""
    headers = {"Accept": "application/fhir+json", "Accept-Encoding": "gzip, deflate"}
    if token:
        headers["Authorization"] = f"Bearer {token}"
    base = base_url.rstrip("/")
    if has_control_characters(base):
        raise FhirServerError(",".join(queries), "the FHIR server URL holds a space or a control character")
    import httpx

    timeout = httpx.Timeout(timeout_s)
    keys = list(queries)
    failure: tuple[str, str] | None = None
    async with httpx.AsyncClient(timeout=timeout, follow_redirects=False, trust_env=False, verify=_tls()) as client:
        try:
            async with asyncio.timeout(timeout_s * 2), asyncio.TaskGroup() as group:
                # a TaskGroup cancels the other searches as soon as one fails: nothing is left running
                tasks = [
                    group.create_task(
                        _fetch_one(
                            client,
                            k,
                            base,
                            queries[k],
                            headers,
                            max_bytes=max_bytes,
                            max_pages=max_pages,
                            max_entries=max_entries,
                        )
                    )
                    for k in keys
                ]
        except TimeoutError:
            failure = (",".join(keys), "the FHIR server did not answer in time")
        except ExceptionGroup as group_error:
            first = group_error.exceptions[0]
            if not isinstance(first, FhirServerError):
                raise
            failure = (first.key, first.reason)
            del group_error, first  # their tracebacks hold the failed fetches' frames
    if failure is not None:
        raise FhirServerError(*failure)  # a fresh error: no traceback into the fetches
    return {k: t.result() for k, t in zip(keys, tasks, strict=True)}

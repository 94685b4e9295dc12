"""The outgoing FHIR client and the request head against hostile peers (issue 24), with real servers and real HTTP:
a gzip bomb from an allow-listed FHIR server (the service's peak memory), next links (followed within bounds on
the same server only), control characters in fhirServer, a 32 MB header (refused by the HTTP protocol), and an
Authorization header over its cap (refused before any token is read)."""

from __future__ import annotations

import socket
import threading
import time
import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import httpx
import pytest
from fhir_helpers import cds_request, fhir_server, load, resources
from helpers import app_client
from live_server import running_server

from service.api.app import create_app
from service.config import Settings
from service.fhir.server import server_allowed

SERVICE = "/cds-services/diabetes-risk"
AUTH = {"access_token": "tok-1", "token_type": "Bearer", "expires_in": 300,
        "scope": "patient/Observation.read patient/Patient.read", "subject": "gshap"}  # fmt: skip
MIB = 1024 * 1024


def _gzip_zeros(n_bytes: int) -> bytes:
    """A gzip member of ``n_bytes`` zero bytes (about 1000:1), built in 1 MiB pieces."""
    out = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS | 16)
    block = b"\0" * MIB
    parts = [out.compress(block) for _ in range(n_bytes // MIB)]
    return b"".join([*parts, out.flush()])


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak resident set) of ``pid`` in bytes, from /proc."""
    values = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        name, _, rest = line.partition(":")
        if name in ("VmRSS", "VmHWM"):
            values[name] = int(rest.split()[0]) * 1024
    return values


@pytest.mark.slow
def test_gzip_bomb_from_an_allowed_fhir_server_costs_no_memory(capsys: pytest.CaptureFixture[str]) -> None:
    """A real `gshap serve` whose allow-listed FHIR server answers every Observation search with a 128 MiB gzip
    bomb (128 KiB on the wire): each CDS call is a 412 naming the decompressed cap, and the server's peak RSS
    grows by less than 40 MiB over 6 sequential calls (the cap is enforced while inflating, and nothing of a
    failed fetch is kept)."""
    items = resources(load("patient_bundle.json"))
    with fhir_server(items) as fhir:
        fhir.mode, fhir.bomb = "gzip_bomb", _gzip_zeros(128 * MIB)
        env = {"GSHAP_CDS_FHIR_SERVERS": fhir.url, "GSHAP_CDS_FHIR_MAX_BYTES": "2000000"}
        with running_server(env) as server, httpx.Client(base_url=server.url, timeout=30) as http:
            body = cds_request(None, fhirServer=fhir.url, fhirAuthorization=AUTH)
            http.post(SERVICE, json=body)  # the first call builds the TLS context and the HTTP client's parts
            before = _memory(server.pid)
            rss = []
            for _ in range(6):
                r = http.post(SERVICE, json=body)
                assert r.status_code == 412, r.text
                assert "exceeds 2000000 bytes (decompressed)" in r.json()["detail"]
                rss.append(_memory(server.pid)["VmRSS"] / MIB)
            after = _memory(server.pid)
    grown_peak = (after["VmHWM"] - before["VmRSS"]) / MIB
    grown_rss = (after["VmRSS"] - before["VmRSS"]) / MIB
    with capsys.disabled():
        print(f"\ngzip bomb x6: RSS {before['VmRSS'] / MIB:.0f} -> {after['VmRSS'] / MIB:.0f} MiB, "
              f"peak {after['VmHWM'] / MIB:.0f} MiB (+{grown_peak:.1f} MiB over the RSS before); RSS after each call "
              f"{', '.join(f'{x:.0f}' for x in rss)} MiB")  # fmt: skip
    assert grown_peak < 40, f"peak grew by {grown_peak:.0f} MiB"
    assert grown_rss < 20, f"RSS grew by {grown_rss:.0f} MiB"


@pytest.fixture
def paged(bundle: Any, tmp_path: Path) -> Iterator[tuple[Any, Any]]:
    with fhir_server(resources(load("patient_bundle.json"))) as fhir:
        settings = Settings(cds_fhir_servers=[fhir.url], fhir_max_pages=3, cds_feedback_db=tmp_path / "fb.sqlite3")
        with app_client(create_app(settings, bundle)) as c:
            yield c, fhir


def test_next_links_are_followed_within_bounds_on_the_same_server(paged: tuple[Any, Any]) -> None:
    """A FHIR server answering one entry a page: next links are followed (the entered-in-error glucose on page 1
    does not hide the final one on a later page), at most GSHAP_FHIR_MAX_PAGES (3) pages a search."""
    client, fhir = paged
    fhir.mode, fhir.page_size = "paged", 1
    fhir.seen[:] = []
    r = client.post(SERVICE, json=cds_request(None, fhirServer=fhir.url, fhirAuthorization=AUTH))
    assert r.status_code == 200, r.text
    detail = r.json()["cards"][0]["detail"]
    assert "Observation/glu-2025" in detail  # the glucose search: glu-eie (2025-10), glu-fasting, then glu-2025
    pages: dict[str, int] = {}
    for seen in fhir.seen:
        path = seen["path"].removeprefix("/fhir/")
        search = parse_qs(urlsplit(path).query)["q"][0] if path.startswith("page?") else path
        pages[search] = pages.get(search, 0) + 1
    glucose = next(q for q in pages if "1518-0" in q)
    assert pages[glucose] == 3  # three pages of one entry: glu-eie, glu-fasting, glu-2025 (latest first)
    assert max(pages.values()) <= 3
    assert all(s["authorization"] == "Bearer tok-1" for s in fhir.seen)


def test_a_next_link_to_another_server_is_not_followed(paged: tuple[Any, Any]) -> None:
    """A next link to another host (localhost instead of 127.0.0.1): not followed; the search fails with a reason
    (412 for a required key), and no request reaches the other host."""
    client, fhir = paged
    fhir.mode, fhir.page_size = "offsite", 1
    fhir.seen[:] = []
    r = client.post(SERVICE, json=cds_request(None, fhirServer=fhir.url, fhirAuthorization=AUTH))
    assert r.status_code == 412, r.text
    assert "leads elsewhere" in r.json()["detail"]
    assert not any(s["path"].startswith("/fhir/page") for s in fhir.seen)


@pytest.mark.parametrize("bad", ["\t", "\r\n", "\n", " ", "\x00", "\x7f"])
def test_fhir_server_with_control_characters_is_refused_not_500(paged: tuple[Any, Any], bad: str) -> None:
    """A fhirServer holding a tab, CR/LF, a space, NUL or DEL (even one that the allow-list would match once
    stripped): a 422 naming fhirServer, never a 500 from inside the HTTP client."""
    client, fhir = paged
    server = fhir.url.replace("/fhir", f"/fh{bad}ir") if bad != "\r\n" else fhir.url + "\r\nX-Evil: 1"
    assert not server_allowed(server, [fhir.url])
    r = client.post(SERVICE, json=cds_request(None, fhirServer=server, fhirAuthorization=AUTH))
    assert r.status_code == 422, r.text
    assert [e["field"] for e in r.json()["errors"]] == ["fhirServer"]


def _raw_request_with_header(port: int, header_bytes: int) -> tuple[bytes, float, int]:
    """Send a GET whose Authorization header is ``header_bytes`` long, reading as we go: (answer, seconds to the
    answer, bytes sent by then)."""
    sock = socket.create_connection(("127.0.0.1", port))
    sock.setblocking(False)
    head = b"GET /healthz HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer "
    chunk = b"a" * 65536
    sent, answer = 0, b""
    t0 = time.perf_counter()
    pending = head
    try:
        while sent < header_bytes + len(head):
            try:
                answer += sock.recv(65536)
                if answer:
                    break
            except BlockingIOError:
                pass
            try:
                sent += sock.send(pending)
                pending = chunk
            except BlockingIOError:
                time.sleep(0.001)
            except (BrokenPipeError, ConnectionResetError):
                break
        deadline = time.perf_counter() + 30
        sock.setblocking(True)
        sock.settimeout(max(0.1, deadline - time.perf_counter()))
        while b"\r\n\r\n" not in answer:
            more = sock.recv(65536)
            if not more:
                break
            answer += more
        seconds = time.perf_counter() - t0
        while True:  # the body
            more = sock.recv(65536)
            if not more:
                break
            answer += more
    except (ConnectionResetError, TimeoutError):
        seconds = time.perf_counter() - t0
    finally:
        sock.close()
    return answer, seconds, sent


@pytest.mark.slow
def test_a_32_mb_header_is_refused_by_the_protocol_at_once(capsys: pytest.CaptureFixture[str]) -> None:
    """A real `gshap serve` sent a 32 MB Authorization header: a 431 problem as soon as GSHAP_MAX_HEADER_BYTES
    (32 KiB) came, well before the header is sent in full; /healthz answers meanwhile."""
    with running_server() as server:
        latencies: list[float] = []
        stop = threading.Event()

        def probe() -> None:
            with httpx.Client(base_url=server.url, timeout=30) as http:
                while not stop.is_set():
                    t = time.perf_counter()
                    http.get("/healthz")
                    latencies.append(time.perf_counter() - t)
                    time.sleep(0.02)

        thread = threading.Thread(target=probe)
        thread.start()
        try:
            while not latencies:
                time.sleep(0.01)
            answer, seconds, sent = _raw_request_with_header(server.port, 32 * MIB)
            time.sleep(0.2)
        finally:
            stop.set()
            thread.join()
        log = server.log.read_text()
    status_line = answer.split(b"\r\n", 1)[0]
    assert status_line == b"HTTP/1.1 431 Request Header Fields Too Large", answer[:300]
    assert b"application/problem+json" in answer
    assert b'"limit_name":"max_header_bytes"' in answer
    assert sent < 8 * MIB  # refused long before the 32 MB were sent
    with capsys.disabled():
        print(f"\n32 MB header: 431 after {seconds * 1000:.1f} ms ({sent / 1024:.0f} KiB sent); /healthz meanwhile "
              f"max {max(latencies) * 1000:.1f} ms over {len(latencies)} calls")  # fmt: skip
    assert seconds < 2.0
    assert "Traceback" not in log


def test_authorization_over_its_cap_is_431_before_the_token_is_read(
    bundle: Any, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """With CDS client JWTs configured: an Authorization header over GSHAP_MAX_AUTHORIZATION_BYTES (8 KiB) is a
    431 problem naming the limit, and the JWT verifier never sees it (no cds_jwt_refused); API-key routes too."""
    import json

    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    public = jwt.algorithms.ECAlgorithm.to_jwk(ec.generate_private_key(ec.SECP384R1()).public_key(), as_dict=True)
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [{**public, "kid": "k", "alg": "ES384"}]}))
    settings = Settings(
        cds_jwt_issuers={"https://ehr.example.org": str(jwks)}, api_keys=["k-1"], cds_feedback_db=tmp_path / "f.db"
    )
    with app_client(create_app(settings, bundle)) as c, caplog.at_level("INFO"):
        big = {"Authorization": "Bearer " + "a" * 9000}
        for path in ("/cds-services", "/model"):
            r = c.get(path, headers=big)
            assert r.status_code == 431, r.text
            assert r.headers["content-type"] == "application/problem+json"
            assert r.json()["limit_name"] == "max_authorization_bytes"
        assert c.get("/cds-services", headers={"Authorization": "Bearer " + "a" * 7000}).status_code == 401
    refused = [rec for rec in caplog.records if getattr(rec, "event", rec.getMessage()) == "cds_jwt_refused"]
    assert len(refused) <= 1  # only the 7000-byte token reached the verifier

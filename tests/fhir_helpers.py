"""Shared by the FHIR and CDS Hooks tests: the fixture Bundles, a prefetch built from them, and a real FHIR server
stand-in (a stdlib ``http.server`` on 127.0.0.1 answering searchset Bundles, with slow/garbage/oversize modes)."""

from __future__ import annotations

import copy
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlencode, urlsplit

DATA = Path(__file__).resolve().parent / "data" / "fhir"


def load(name: str) -> dict[str, Any]:
    """A fixture Bundle from tests/data/fhir (a fresh copy)."""
    with (DATA / name).open() as f:
        data: dict[str, Any] = json.load(f)
    return copy.deepcopy(data)


def clean_bundle() -> dict[str, Any]:
    """The patient Bundle fixture without the other patient's Observation (which /fhir/* refuses)."""
    bundle = load("patient_bundle.json")
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"].get("id") != "glu-other"]
    return bundle


def resources(bundle: dict[str, Any]) -> list[dict[str, Any]]:
    return [e["resource"] for e in bundle["entry"]]


def searchset(items: list[dict[str, Any]]) -> dict[str, Any]:
    return {"resourceType": "Bundle", "type": "searchset", "entry": [{"resource": r} for r in items]}


def codes_of(resource: dict[str, Any]) -> set[str]:
    return {c.get("code", "") for c in resource.get("code", {}).get("coding", [])}


def search(all_resources: list[dict[str, Any]], template_query: str) -> dict[str, Any]:
    """What a FHIR server answers to ``Observation?patient=..&code=a|b,c|d..`` over ``all_resources``."""
    query = parse_qs(urlsplit(template_query).query)
    wanted = {token.split("|", 1)[-1] for token in query.get("code", [""])[0].split(",")}
    patient = query.get("patient", [""])[0]
    found = [
        r
        for r in all_resources
        if r["resourceType"] == "Observation"
        and codes_of(r) & wanted
        and r.get("subject", {}).get("reference", "").endswith(f"Patient/{patient}")
    ]
    found.sort(key=lambda r: r.get("effectiveDateTime", ""), reverse=True)
    return searchset(found)


def prefetch_for(bundle: dict[str, Any]) -> dict[str, Any]:
    """A CDS prefetch filled from ``bundle`` by the discovery document's templates (as an EHR would)."""
    from service.fhir.cdshooks import prefetch_templates
    from service.model.store import load_bundle

    items = resources(bundle)
    patient = next(r for r in items if r["resourceType"] == "Patient")
    out: dict[str, Any] = {"patient": patient}
    for key, template in prefetch_templates(load_bundle().spec).items():
        if key != "patient":
            out[key] = search(items, template.replace("{{context.patientId}}", patient["id"]))
    return out


def cds_request(prefetch: dict[str, Any] | None, patient_id: str = "p-1001", **extra: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "hook": "patient-view",
        "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
        "context": {"userId": "Practitioner/example", "patientId": patient_id},
        **extra,
    }
    if prefetch is not None:
        body["prefetch"] = prefetch
    return body


@dataclass
class FhirStandIn:
    """A running FHIR server stand-in: its base URL, the requests it got, and how it answers."""

    url: str
    resources: list[dict[str, Any]]
    mode: str = "ok"  # ok | slow | garbage | huge | html | error | outcome | paged | offsite | gzip_bomb
    delay_s: float = 0.0
    seen: list[dict[str, str]] = field(default_factory=list)
    page_size: int = 1  # paged/offsite: entries a page; the next link points here (paged) or elsewhere (offsite)
    bomb: bytes = b""  # gzip_bomb: the gzip body sent (Content-Encoding: gzip) for every Observation search


@contextmanager
def fhir_server(items: list[dict[str, Any]]) -> Iterator[FhirStandIn]:
    """A real HTTP server on 127.0.0.1 answering FHIR searches over ``items`` (Patient read, Observation search)."""
    state = FhirStandIn(url="", resources=items)

    class Handler(BaseHTTPRequestHandler):
        disable_nagle_algorithm = True  # headers and body are two writes: without this, delayed ACKs add 40 ms

        def log_message(self, format: str, *args: Any) -> None:  # quiet
            return

        def do_GET(self) -> None:
            state.seen.append({"path": self.path, "authorization": self.headers.get("Authorization", "")})
            if state.mode == "slow":
                time.sleep(state.delay_s)
            if state.mode == "error":
                self._send(500, b'{"resourceType": "OperationOutcome"}')
                return
            if state.mode == "garbage":
                self._send(200, b"{not json at all")
                return
            if state.mode == "html":
                self._send(200, b"<html>login</html>", "text/html")
                return
            if state.mode == "huge":
                self._send(200, b'{"resourceType": "Bundle", "entry": [' + b" " * 3_000_000 + b"]}")
                return
            path = self.path.split("/fhir/", 1)[-1]
            if path.startswith("Patient/"):
                pid = path.split("/", 1)[1].split("?")[0]
                found = [r for r in state.resources if r["resourceType"] == "Patient" and r["id"] == pid]
                if not found:
                    self._send(
                        404,
                        b'{"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "not-found"}]}',
                    )
                    return
                self._send(200, json.dumps(found[0]).encode())
                return
            if state.mode == "gzip_bomb" and path.startswith("Observation"):
                self._send(200, state.bomb, encoding="gzip")
                return
            if state.mode in ("paged", "offsite") and path.startswith(("Observation", "page?")):
                self._page(path)
                return
            if state.mode == "outcome":
                self._send(
                    200, b'{"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "forbidden"}]}'
                )
                return
            self._send(200, json.dumps(search(state.resources, path)).encode())

        def _page(self, path: str) -> None:
            """A searchset split into pages of ``page_size`` entries, each with a next link (the search's own
            server, or another one in offsite mode) while entries remain."""
            if path.startswith("page?"):
                query = parse_qs(urlsplit(path).query)
                search_path, start = query["q"][0], int(query["start"][0])
            else:
                search_path, start = path, 0
            found = search(state.resources, search_path)["entry"]
            page = searchset([e["resource"] for e in found[start : start + state.page_size]])
            if start + state.page_size < len(found):
                here = state.url if state.mode == "paged" else state.url.replace("127.0.0.1", "localhost")
                query_string = urlencode({"q": search_path, "start": start + state.page_size})
                page["link"] = [{"relation": "next", "url": f"{here}/page?{query_string}"}]
            self._send(200, json.dumps(page).encode())

        def _send(self, status: int, body: bytes, ctype: str = "application/fhir+json", encoding: str = "") -> None:
            try:
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                if encoding:
                    self.send_header("Content-Encoding", encoding)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)
            except (BrokenPipeError, ConnectionResetError):
                pass

    class Server(ThreadingHTTPServer):
        request_queue_size = 128  # the default 5 drops the 10 concurrent searches' SYNs: a 1 s retransmit each

    server = Server(("127.0.0.1", 0), Handler)
    server.daemon_threads = True
    state.url = f"http://127.0.0.1:{server.server_address[1]}/fhir"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield state
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)

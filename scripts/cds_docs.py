"""Write docs/CDS_HOOKS.md from the code and from a running service.

    python scripts/cds_docs.py           # rewrite docs/CDS_HOOKS.md
    python scripts/cds_docs.py --check   # exit 1 if it is stale

The code-table parts come from the default bundle's feature specification (its FHIR mappings: codes, UCUM units,
factors and their sources) and its CDS service (``bundle.cds``), the rules from the modules' docstrings, the
settings from ``service.config.Settings``; the discovery document, the request and its card, the 412 and the
feedback answer are real answers of a ``gshap serve`` started here (uuids shown as ``<uuid>``, the call's date as
``<call date>``). ``tests/fhir/test_cds_docs.py`` fails when it is stale.
"""

from __future__ import annotations

import argparse
import functools
import json
import re
import sys
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "CDS_HOOKS.md"
sys.path.insert(0, str(ROOT / "tests"))
sys.path.insert(0, str(ROOT))

SOURCES = """\
- CDS Hooks 2.0 (HL7 STU2, published as 2.0.1): https://cds-hooks.hl7.org/2.0/ ; the text used is
  `input/pagecontent/index.md` at tag `v2.0.1` of https://github.com/HL7/cds-hooks (JSON rules: "JSON elements SHALL
  NOT be null ... SHALL NOT be empty"; 412 "unable to retrieve the necessary FHIR data ... either through a prefetch
  request or directly calling the FHIR server"; "CDS Services SHOULD respond quickly (on the order of 500 ms.)";
  JWT: `aud` "MUST be the URL of the CDS Service endpoint being invoked", no symmetric algorithms, ES384 and RS384
  RECOMMENDED, `jti` against replay; feedback `accepted`/`overridden`, `outcomeTimestamp` in UTC).
- The `patient-view` hook (context `userId`, `patientId`, optional `encounterId`): CDS Hooks Library,
  https://github.com/HL7/cds-hooks-library `input/pagecontent/patient-view.md`.
- Blood pressure, BMI, weight, height: FHIR R4 vital signs, value set `observation-vitalsignresult`
  (http://hl7.org/fhir/R4/valueset-observation-vitalsignresult.html): "The Blood pressure panel (85354-9) is used
  to group the component observations Systolic blood pressure (8480-6) and Diastolic blood pressure (8462-4)";
  BMI 39156-5, body weight 29463-7, body height 8302-2 (http://hl7.org/fhir/R4/bp.html, bmi.html).
- Glucose 1518-0 and 14995-5 ("Glucose [Mass/volume] / [Moles/volume] in Serum or Plasma --2 hours post 75 g
  glucose PO"), and the near misses 1558-6, 2345-7, 14749-6, 2339-0, 4548-4: LOINC (https://loinc.org/1518-0/,
  https://loinc.org/14995-5/); both OGTT codes are in the VSAC value set "Glycemic Screening Tests"
  (OID 2.16.840.1.113762.1.4.1160.5). Checked against LOINC table extracts and value sets in public repositories.
- Insulin 20448-7 "Insulin [Units/volume] in Serum or Plasma" and 14796-7 "Insulin [Moles/volume] in Serum or
  Plasma": LOINC (https://loinc.org/20448-7/, https://loinc.org/14796-7/). Neither is timed; the model was trained
  on 2-hour insulin, which the card says. (27826-7, a challenge-timed insulin seen in one secondary source, could
  not be confirmed and is not used.)
- Pregnancies 11996-6 "[#] Pregnancies" (not 11977-6 "[#] Parity"): LOINC (https://loinc.org/11996-6/); WHO SMART
  ANC IG data element ANC.B6.DE24 "Number of pregnancies (gravida)".
- Glucose 1 mmol/L = 18.016 mg/dL (molar mass 180.16 g/mol; Tidepool's data model divides by 18.01559).
- Insulin 1 µIU/mL = 6.00 pmol/L: Knopp JL, Holder-Pearson L, Chase JG, "Insulin Units and Conversion Factors: A
  Story of Truth, Boots, and Faster Half-Truths", J Diabetes Sci Technol 2019;13(3):597-600,
  doi:10.1177/1932296818805074 (the also-used 6.945 under-reports by about 15 %).
- Triceps skinfold and the diabetes pedigree function: no LOINC code was found that we could rely on; they come
  only as `urn:gshap-service:feature` Observations."""


@functools.cache
def _bundle() -> Any:
    """The shipped default bundle, whose CDS service this document describes."""
    from service.model.store import load_bundle

    return load_bundle()


def _service_id() -> str:
    service = _bundle().cds
    assert service is not None, "the default bundle declares no CDS service"
    return str(service.id)


def _unit_list(units: Any) -> str:
    parts = []
    for u in units:
        factor = "" if u.factor == 1.0 else f" (× {u.factor:.6g})"
        parts.append(f"`{u.ucum}`{factor}")
    return ", ".join(parts)


def _spellings(units: Any) -> str:
    words = sorted({s for u in units for s in u.spellings})
    return ", ".join(f"`{w}`" for w in words) or "—"


def mapping_table() -> str:
    """The LOINC / UCUM table, from the feature specification."""
    from service.model.features import FEATURE_CODE_SYSTEM

    rows = [
        "| feature (unit used) | required | FHIR source | UCUM units accepted (× factor to the feature's unit) | "
        "`unit` text accepted without UCUM code |",
        "|---|---|---|---|---|",
    ]
    for f in _bundle().spec:
        m = f.fhir
        assert m is not None
        req = "no (imputed)" if f.may_be_missing else "**yes**"
        for c in m.codes:
            where = f"LOINC {c.code} {c.display}"
            if c.panels:
                where += f", alone or as a component of {', '.join(c.panels)}"
            rows.append(f"| {f.name} ({f.unit}) | {req} | {where} | {_unit_list(c.units)} | {_spellings(c.units)} |")
        if m.patient_element:
            rows.append(f"| {f.name} ({f.unit}) | {req} | Patient.{m.patient_element}: {m.note} | — | — |")
        for c in m.derived_from:
            rows.append(
                f"| {f.name} ({f.unit}) | {req} | when no BMI: LOINC {c.code} {c.display} | {_unit_list(c.units)} | "
                f"{_spellings(c.units)} |"
            )
        rows.append(
            f"| {f.name} ({f.unit}) | {req} | `{FEATURE_CODE_SYSTEM}\\|{f.name}` | {_unit_list(m.own_units)} | "
            f"{_spellings(m.own_units)} |"
        )
    return "\n".join(rows) + "\n"


def near_miss_table() -> str:
    rows = ["| looks like | code | never used because |", "|---|---|---|"]
    for f in _bundle().spec:
        assert f.fhir is not None
        rows += [f"| {f.name} | {n.code} {n.display} | {n.reason} |" for n in f.fhir.near_misses]
    return "\n".join(rows) + "\n"


def settings_rows() -> str:
    from service.config import ENV_PREFIX, Settings

    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        if name.startswith(("cds_", "fhir_", "database_", "state_")):
            default = field.get_default(call_default_factory=True)
            shown = "none" if default in (None, [], {}) else f"`{default}`"
            rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows) + "\n"


def example_prefetch() -> dict[str, Any]:
    """The fixture patient, for a document that must not change with the calendar: the age comes as an
    Observation (``urn:gshap-service:feature|age``) instead of a birthDate (which is counted to the call's day)."""
    from fhir_helpers import load, prefetch_for

    bundle = load("patient_bundle.json")
    bundle["entry"][0]["resource"].pop("birthDate")
    bundle["entry"].append(
        {
            "resource": {
                "resourceType": "Observation",
                "id": "age-2025",
                "status": "final",
                "code": {"coding": [{"system": "urn:gshap-service:feature", "code": "age"}]},
                "subject": {"reference": "Patient/p-1001"},
                "effectiveDateTime": "2025-06-01",
                "valueQuantity": {"value": 49, "unit": "years", "system": "http://unitsofmeasure.org", "code": "a"},
            }
        }
    )
    return prefetch_for(bundle)


def _scrub(text: str) -> str:
    text = re.sub(r"[0-9a-f]{8}-[0-9a-f]{4}-4[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}", "<uuid>", text)
    text = re.sub(r'("request_id": ")[0-9a-f]{32}(")', r"\1<request-id>\2", text)
    text = re.sub(r"\(\d{4}-\d{2}-\d{2}\)\.", "(<call date>).", text)
    return re.sub(r"http://127\.0\.0\.1:\d+", "http://127.0.0.1:8000", text)


def _j(obj: Any) -> str:
    return json.dumps(obj, indent=2, ensure_ascii=False)


def live_examples() -> dict[str, Any]:
    """Real answers of a running ``gshap serve``."""
    from fhir_helpers import cds_request
    from live_server import running_server

    prefetch = example_prefetch()
    out: dict[str, Any] = {}
    with running_server() as server, httpx.Client(base_url=server.url, timeout=30) as http:
        out["discovery"] = http.get("/cds-services").json()
        request = cds_request(prefetch)
        out["request"] = request
        out["card"] = http.post(f"/cds-services/{_service_id()}", json=request).json()
        out["412"] = http.post(
            f"/cds-services/{_service_id()}", json=cds_request({"patient": prefetch["patient"]})
        ).json()
        card_uuid = out["card"]["cards"][0]["uuid"]
        out["feedback_request"] = {
            "feedback": [
                {
                    "card": card_uuid,
                    "outcome": "overridden",
                    "overrideReason": {"reason": out["card"]["cards"][0]["overrideReasons"][1]},
                    "outcomeTimestamp": "2026-05-02T10:05:31Z",
                }
            ]
        }
        out["feedback"] = http.post(f"/cds-services/{_service_id()}/feedback", json=out["feedback_request"]).json()
    return out


def _short_request(request: dict[str, Any]) -> dict[str, Any]:
    shown: dict[str, Any] = json.loads(json.dumps(request))
    for key, value in shown["prefetch"].items():
        if key != "patient" and isinstance(value, dict) and value.get("entry"):
            n = len(value["entry"])
            value["entry"] = [*value["entry"][:1], f"… {n - 1} more entries"] if n > 1 else value["entry"]
    return shown


def document(live: dict[str, Any]) -> str:
    from service.fhir import card as card_module
    from service.fhir import extract as extract_module

    card = live["card"]["cards"][0]
    parts = [
        f"# CDS Hooks and FHIR: the {_service_id()} card",
        "",
        "<!-- generated by scripts/cds_docs.py from the code and a running service: do not edit by hand -->",
        "",
        "gshap-service is a CDS Hooks 2.0 service: an EHR discovers it at `GET /cds-services`, calls "
        f"`POST /cds-services/{_service_id()}` when a clinician opens a chart (`patient-view`) and shows the card "
        f"it returns; outcomes come back at `POST /cds-services/{_service_id()}/feedback`. Apps that hold FHIR data "
        "but no CDS client post a FHIR R4 Bundle to `POST /fhir/predict` or `POST /fhir/explain` and get the "
        "answers of `/predict` and `/explain` plus the resource each value came from.",
        "",
        "## Sources",
        "",
        SOURCES,
        "",
        "## Where each input comes from (generated from `service/model/features.py`)",
        "",
        mapping_table(),
        "Codes that look like an input but are a different measurement are reported, never used:",
        "",
        near_miss_table(),
        "## How the values are read (`service/fhir/extract.py`)",
        "",
        (extract_module.__doc__ or "").split("\n\n", 1)[1].strip(),
        "",
        "A CDS call reads an EHR's data and is lenient: anything refused or ignored is listed on the card. "
        "`/fhir/predict` and `/fhir/explain` read a Bundle the caller built and are strict: a refused value or "
        "another patient's Observation is a 422 naming the entry and the rule; a required input not found is a 422 "
        "naming the feature.",
        "",
        "## Prefetch, and what happens without it",
        "",
        "Per key of the discovery document: a resource or a searchset Bundle is used; `null` means the EHR has no "
        "such data (not measured); an absent key or an `OperationOutcome` means the EHR did not fetch it, and the "
        "service searches `fhirServer` itself with the bearer token of `fhirAuthorization`, but only when that "
        "server is in `GSHAP_CDS_FHIR_SERVERS`. When the data of a required key (`patient`, `pregnancies`, "
        "`diabetes_pedigree_function`) can be had neither way, the answer is 412; other keys are listed on the "
        "card as not available. Outgoing searches: timeout `GSHAP_CDS_FHIR_TIMEOUT_SECONDS` each (twice that in "
        "all), at most `GSHAP_CDS_FHIR_MAX_BYTES` read, no redirects, concurrent; the token is never logged. Only the "
        "first page of each search is read (`_count=20`, latest first): `next` links are not followed, so a value "
        "is missed only when more than 20 newer Observations of the same codes are unusable.",
        "",
        "## The card (`service/fhir/card.py`)",
        "",
        (card_module.__doc__ or "").split("\n\n", 1)[1].strip(),
        "",
        "## Configuration",
        "",
        settings_rows(),
        "```sh",
        "# trust one EHR (its JWK Set by URL) and a test client (its JWK Set in a file)",
        "export GSHAP_CDS_JWT_ISSUERS='https://ehr.example.org=https://ehr.example.org/.well-known/jwks.json,"
        "https://sandbox.cds-hooks.org=/etc/gshap/sandbox-jwks.json'",
        "export GSHAP_CDS_BASE_URL=https://cds.example.org     # the aud of the JWTs is <this>/cds-services/...",
        "export GSHAP_CDS_FHIR_SERVERS=https://fhir.example.org/r4   # may be searched with the client's token",
        "# the CDS state (issued cards, feedback, the jti replay cache) shared by every replica; migrated at start",
        "export GSHAP_DATABASE_URL=postgresql://gshap:secret@db.example.org:5432/gshap",
        "# or, on one machine: export GSHAP_STATE_DB=/var/lib/gshap/cds-feedback.sqlite3",
        "gshap serve",
        "```",
        "",
        "Without `GSHAP_CDS_JWT_ISSUERS` the CDS endpoints take calls without a JWT, and start-up logs "
        "`cds_auth_off` at warning level. With it, every CDS call (discovery, service, feedback) needs "
        "`Authorization: Bearer <JWT>`: `alg` ES384 or RS384, a `kid` in the issuer's JWK Set (an https URL, "
        "cached for 5 minutes and fetched again when an unknown kid appears, at most every 30 s, its CA trusted by "
        "the system or GSHAP_CDS_JWKS_CA_FILE; or a file, a path or `file://` URL; plain `http://` is refused, and a "
        "JWK Set that cannot be read at start stops `gshap serve` with one line and exit 2; a key without `alg` "
        "serves RS384 if RSA, ES384 if EC P-384; a `jku` header is not followed), `iss` configured, `aud` exactly "
        "the endpoint's URL, `exp` and `iat` (30 s leeway), a lifetime `exp - iat` of at most "
        "GSHAP_CDS_JWT_MAX_LIFETIME_SECONDS (300 s, as the CDS Hooks Sandbox signs) plus the leeway, and a `jti` "
        "not seen before (the replay cache is the state database's `cds_jti` table, each entry kept until the "
        "token's `exp`: shared by every replica with GSHAP_DATABASE_URL, by the machine's workers with SQLite; when "
        "it cannot be checked the call fails closed with a 503 `store-unavailable`). Anything else is a 401 that "
        "does not say why (the reason is logged, the token never). The API keys of GSHAP_API_KEYS do not apply to "
        "the card and discovery; without JWT issuers, feedback needs an API key whenever GSHAP_API_KEYS is set, and "
        "with neither the start-up warning names the feedback endpoint.",
        "",
        "Feedback is accepted only for cards this service issued (each card sent is recorded: uuid, model version, "
        "time and its override codes, for GSHAP_CDS_CARD_RETENTION_DAYS, at most GSHAP_CDS_MAX_CARDS of them); an "
        "override reason must be one of the card's own codings and is stored by its code. No free text is stored "
        "(not the reason's display, not the comment, not the suggestion ids: only that there was a comment and how "
        "many suggestions), and no patient value. A request holds at most GSHAP_CDS_FEEDBACK_MAX_ENTRIES entries "
        "(else 413), a card takes at most GSHAP_CDS_FEEDBACK_MAX_PER_CARD rows (else 422), and past "
        "GSHAP_CDS_FEEDBACK_MAX_ROWS rows the answer is a 503 `store-full` with `Retry-After`; a request is stored "
        "whole or refused whole, acknowledged only once committed, and no stored row is evicted (retention deletes "
        "rows older than GSHAP_CDS_FEEDBACK_RETENTION_DAYS, in bounded rounds every minute). "
        "`GET /cds-services/diabetes-risk/feedback/summary` (an admin key of GSHAP_ADMIN_KEYS or an API key) counts "
        "them per outcome and override reason, per model version and ISO week. `gshap db upgrade` migrates the "
        "schema; `gshap db import FILE` moves an SQLite feedback store into the PostgreSQL of GSHAP_DATABASE_URL.",
        "",
        "## A real session (answers of `gshap serve`)",
        "",
        "The example patient's age is sent as an Observation so that this document does not change with the "
        "calendar; with a `Patient.birthDate` the age is counted to the day of the call.",
        "",
        "### Discovery: `GET /cds-services`",
        "",
        "```json",
        _j(live["discovery"]),
        "```",
        "",
        f"### The call: `POST /cds-services/{_service_id()}` (prefetch shortened here to one entry a key)",
        "",
        "```json",
        _j(_short_request(live["request"])),
        "```",
        "",
        "### The answer",
        "",
        "```json",
        _j(live["card"]),
        "```",
        "",
        "The card's `detail`, as the EHR renders it:",
        "",
        "> " + card["detail"].replace("\n", "\n> "),
        "",
        "### No data for a required input: 412",
        "",
        "```json",
        _j(live["412"]),
        "```",
        "",
        "### Feedback",
        "",
        "```json",
        _j(live["feedback_request"]),
        "```",
        "",
        "```json",
        _j(live["feedback"]),
        "```",
        "",
        "## Latency",
        "",
        "`python scripts/bench_cds.py` (also run by `scripts/bench.py`) measures p50 and p99 of the CDS call with "
        "prefetch and with the FHIR-server fallback (a stand-in FHIR server on 127.0.0.1), against `POST /explain` "
        "of the same record in the same run. Goal: p99 at most 50 ms with prefetch on this 2-core machine.",
        "",
    ]
    return _scrub("\n".join(parts))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    args = parser.parse_args()
    new = document(live_examples())
    old = DOC.read_text() if DOC.exists() else ""
    if args.check:
        if new != old:
            print("docs/CDS_HOOKS.md is stale: run python scripts/cds_docs.py", file=sys.stderr)
            return 1
        print("docs/CDS_HOOKS.md is current")
        return 0
    DOC.write_text(new)
    print("docs/CDS_HOOKS.md rewritten" if new != old else "docs/CDS_HOOKS.md already current")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

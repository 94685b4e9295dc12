"""CDS Hooks 2.0 contract (HL7/cds-hooks v2.0.1): discovery fields, the service call and its card, the JSON rules
(no null, no empty string/array/object but ``"cards": []``), 412, feedback; hostile prefetch values; the FHIR
server fallback against a real HTTP server; the client's JWT."""

from __future__ import annotations

import json
import re
import sqlite3
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from fhir_helpers import cds_request, fhir_server, load, prefetch_for, resources, searchset
from helpers import app_client
from tls_helpers import https_server, make_ca

from service.api.app import create_app
from service.config import Settings
from service.fhir.cdshooks import json_rule_violations, prefetch_templates
from service.model.spec import SPECS, load_spec

PIMA = load_spec(SPECS / "pima-diabetes.yaml").features  # the default model's features

SERVICE = "/cds-services/diabetes-risk"


@pytest.fixture(scope="module")
def client(bundle: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    db = tmp_path_factory.mktemp("cds") / "feedback.sqlite3"
    with app_client(create_app(Settings(cds_feedback_db=db, api_keys=["k-1"]), bundle)) as c:
        c.db = db  # type: ignore[attr-defined]
        yield c


def card_of(response: Any) -> dict[str, Any]:
    assert response.status_code == 200, response.text
    body = response.json()
    assert json_rule_violations(body) == []
    [card] = body["cards"]
    return card  # type: ignore[no-any-return]


def test_discovery_lists_diabetes_risk_on_patient_view(client: Any) -> None:
    """GET /cds-services: hook, title, description, id, usageRequirements (population) and LOINC prefetch."""
    r = client.get("/cds-services")
    assert r.status_code == 200
    body = r.json()
    assert json_rule_violations(body) == []
    [service] = body["services"]
    assert service["hook"] == "patient-view"
    assert service["id"] == "diabetes-risk"
    assert service["title"]
    assert service["description"]
    assert "women at least 21 years old of Pima Indian heritage" in service["usageRequirements"]
    prefetch = service["prefetch"]
    assert prefetch["patient"] == "Patient/{{context.patientId}}"
    assert "http://loinc.org|1518-0" in prefetch["glucose"]
    assert "http://loinc.org|14995-5" in prefetch["glucose"]
    assert "http://loinc.org|85354-9" in prefetch["blood_pressure"]
    assert all("_sort=-date" in q for k, q in prefetch.items() if k != "patient")
    assert all(
        q.startswith("Observation?patient={{context.patientId}}&code=") for k, q in prefetch.items() if k != "patient"
    )


def test_card_states_risk_drivers_inputs_population_and_completeness(client: Any) -> None:
    """The card: summary <140 chars with the risk in %, indicator by the threshold rule, source, uuid, detail, links."""
    bundle = load("patient_bundle.json")
    prefetch = prefetch_for(bundle)
    foreign = next(r for r in resources(bundle) if r["id"] == "glu-other")
    prefetch["glucose"]["entry"].append({"resource": foreign})  # a faulty EHR mixes in another patient
    card = card_of(client.post(SERVICE, json=cds_request(prefetch)))
    assert re.fullmatch(r"Diabetes risk \d{1,3}% \(pima-diabetes/\d+\.\d+\.\d+\)", card["summary"])
    assert len(card["summary"]) < 140
    probability = card["extension"]["urn:gshap-service:prediction"]["probability"]
    threshold = card["extension"]["urn:gshap-service:prediction"]["threshold"]
    assert card["extension"]["dev.gshap.prediction"] == card["extension"]["urn:gshap-service:prediction"]
    assert card["indicator"] == ("warning" if probability >= threshold else "info")
    assert re.search(r"\(pima-diabetes/\d+\.\d+\.\d+\)$", card["source"]["label"])
    uuid.UUID(card["uuid"])
    detail = card["detail"]
    assert "| Glucose | 147.7 mg/dL (reported 8.2 mmol/L) | 2025-06-01 | raises risk ↑ |" in detail
    assert "Observation/glu-2025" in detail
    assert "Observation/glu-eie: Status &#39;entered-in-error&#39;" in detail  # request text: escaped
    assert "another patient" in detail
    assert "women at least 21 years old" in detail
    assert "Completeness" in detail
    assert {link["type"] for link in card["links"]} == {"absolute"}
    assert any(link["url"].endswith("/#model") for link in card["links"])  # the page's model-card view
    assert card["source"]["url"].endswith("/#model")
    assert card["source"]["topic"]["system"] == "urn:gshap-service:cds-topic"
    assert {r["system"] for r in card["overrideReasons"]} == {"urn:gshap-service:override-reason"}
    assert all(r["display"] for r in card["overrideReasons"])


def test_api_keys_do_not_apply_to_cds_endpoints(client: Any) -> None:
    """With GSHAP_API_KEYS set, /predict needs a key but the CDS endpoints take none (they use the client JWT)."""
    assert client.post("/predict", json={}).status_code == 401
    assert client.get("/cds-services").status_code == 200


def test_missing_optional_inputs_are_imputed_and_listed(client: Any) -> None:
    """Null prefetch values mean 'no data': the card lists those inputs as not measured (imputed)."""
    prefetch = prefetch_for(load("patient_bundle.json"))
    prefetch.update({"glucose": None, "insulin": searchset([]), "skin_thickness": None})
    card = card_of(client.post(SERVICE, json=cds_request(prefetch)))
    assert "**Not measured, imputed with the training median:** glucose, skin thickness, insulin." in card["detail"]


def test_required_input_missing_gives_a_cannot_compute_card(client: Any) -> None:
    """No pregnancies and no pedigree score (null): no risk, a card that says why, never a silent 0."""
    prefetch = prefetch_for(load("patient_bundle.json"))
    prefetch.update({"pregnancies": None, "diabetes_pedigree_function": None})
    card = card_of(client.post(SERVICE, json=cds_request(prefetch)))
    assert card["summary"].startswith("Diabetes risk cannot be computed: pregnancies, diabetes pedigree not found")
    assert "%" not in card["summary"]
    assert "urn:gshap-service:feature|diabetes_pedigree_function" in card["detail"]
    assert card["indicator"] == "info"


def test_412_when_required_data_is_in_neither_prefetch_nor_server(client: Any) -> None:
    """Prefetch without the patient or a required key, and no FHIR server: 412 problem naming the keys."""
    r = client.post(SERVICE, json=cds_request({"patient": load("patient_bundle.json")["entry"][0]["resource"]}))
    assert r.status_code == 412
    assert r.headers["content-type"] == "application/problem+json"
    fields = {e["field"] for e in r.json()["errors"]}
    assert fields == {"prefetch.pregnancies", "prefetch.diabetes_pedigree_function"}
    r = client.post(SERVICE, json=cds_request(None))
    assert r.status_code == 412


def test_operation_outcome_prefetch_counts_as_not_fetched(client: Any) -> None:
    """An OperationOutcome in a required key is 'the client could not fetch it': 412 without a FHIR server."""
    prefetch = prefetch_for(load("patient_bundle.json"))
    prefetch["pregnancies"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    r = client.post(SERVICE, json=cds_request(prefetch))
    assert r.status_code == 412
    assert [e["field"] for e in r.json()["errors"]] == ["prefetch.pregnancies"]


def test_null_patient_is_412(client: Any) -> None:
    """prefetch.patient null: the client has no such patient; nothing can be computed (412)."""
    prefetch = prefetch_for(load("patient_bundle.json"))
    prefetch["patient"] = None
    assert client.post(SERVICE, json=cds_request(prefetch)).status_code == 412


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"glucose": {"resourceType": "Bundle", "entry": "x"}}, "prefetch.glucose.entry"),
        ({"glucose": {"resourceType": "Observation", "status": "final", "code": 5}}, "prefetch.glucose.code"),
        ({"glucose": {"no": "resourceType"}}, "prefetch.glucose.resourceType"),
        ({"patient": {"resourceType": "Patient", "id": "someone-else"}}, "prefetch.patient.id"),
        ({"patient": {"resourceType": "Observation", "status": "final", "code": {"text": "x"}}}, "prefetch.patient"),
    ],
)
def test_malformed_prefetch_values_are_422_naming_the_field(client: Any, change: dict[str, Any], field: str) -> None:
    """A malformed Bundle, resource or a Patient that is not context.patientId: 422 naming the field."""
    prefetch = {**prefetch_for(load("patient_bundle.json")), **change}
    r = client.post(SERVICE, json=cds_request(prefetch))
    assert r.status_code == 422, r.text
    assert any(e["field"].startswith(field) for e in r.json()["errors"]), r.json()


@pytest.mark.parametrize(
    "body",
    [
        {"hook": "order-select", "hookInstance": "x", "context": {"patientId": "p-1001", "userId": "Practitioner/1"}},
        {"hook": "patient-view", "context": {"patientId": "p-1001", "userId": "Practitioner/1"}},
        {"hook": "patient-view", "hookInstance": "x", "context": {"userId": "Practitioner/1"}},
        {"hook": "patient-view", "hookInstance": "x", "context": {"patientId": "p-1001"}},
        {"hook": "patient-view", "hookInstance": "x", "context": {"patientId": "../x", "userId": "Practitioner/1"}},
        {
            "hook": "patient-view",
            "hookInstance": "x",
            "context": {"patientId": "p-1001", "userId": "Practitioner/1"},
            "fhirAuthorization": {"access_token": "t", "token_type": "Bearer", "expires_in": 1, "scope": "s",
                                  "subject": "c"},
        },
    ],
)  # fmt: skip
def test_invalid_hook_requests_are_422(client: Any, body: dict[str, Any]) -> None:
    """Wrong hook, missing hookInstance/patientId/userId, a path as patientId, a token without fhirServer: 422."""
    r = client.post(SERVICE, json=body)
    assert r.status_code == 422, r.text
    assert "t" not in json.dumps(r.json().get("errors", [])).split('"access_token"')[0][-3:]


def test_huge_prefetch_bundle_is_413(client: Any) -> None:
    """A prefetch search with more entries than GSHAP_FHIR_MAX_ENTRIES (10,000) is refused with 413."""
    prefetch = prefetch_for(load("patient_bundle.json"))
    prefetch["glucose"] = {"resourceType": "Bundle", "type": "searchset", "entry": [{}] * 10_001}
    r = client.post(SERVICE, json=cds_request(prefetch))
    assert r.status_code == 413
    assert r.json()["limit_name"] == "fhir_max_entries"


def test_json_rule_check_finds_every_null_and_empty_value() -> None:
    """The recursive check flags null, "", [] and {} at any depth, and allows only an empty top-level cards."""
    assert json_rule_violations({"cards": []}) == []
    bad: dict[str, Any] = {
        "cards": [{"a": None, "b": "", "c": [], "d": {}, "e": [{"f": {}}], "ok": [1, "x", {"y": 0}]}]
    }
    assert json_rule_violations(bad) == [
        "$.cards[0].a",
        "$.cards[0].b",
        "$.cards[0].c",
        "$.cards[0].d",
        "$.cards[0].e[0].f",
    ]


def test_feedback_is_stored_durably_without_patient_values(client: Any) -> None:
    """Overridden and accepted outcomes on an issued card go to SQLite: card uuid, outcome, reason by code, the
    count of accepted suggestions; neither the comment nor the reason's display text, nor any patient value."""
    card = card_of(client.post(SERVICE, json=cds_request(prefetch_for(load("patient_bundle.json")))))
    reason = {**card["overrideReasons"][0], "display": "Ada Lovelace, glucose 8.2"}
    feedback = {
        "feedback": [
            {
                "card": card["uuid"],
                "outcome": "overridden",
                "overrideReason": {"reason": reason, "userComment": "Ada's glucose was 8.2"},
                "outcomeTimestamp": "2026-11-29T10:05:31Z",
            },
            {
                "card": card["uuid"],
                "outcome": "accepted",
                "acceptedSuggestions": [{"id": "s-1"}],
                "outcomeTimestamp": "2026-11-29T10:06:00.52Z",
            },
        ]
    }
    r = client.post(f"{SERVICE}/feedback", json=feedback, headers={"X-API-Key": "k-1"})
    assert r.status_code == 200, r.text
    assert r.json() == {"stored": 2}
    with sqlite3.connect(client.db) as conn:  # a new connection: the rows are on disk
        rows = conn.execute(
            "SELECT card_uuid, outcome, override_code, accepted_suggestions, has_user_comment, outcome_at "
            "FROM cds_feedback WHERE card_uuid = ? ORDER BY id",
            (card["uuid"],),
        ).fetchall()
    assert rows == [
        (card["uuid"], "overridden", "not-relevant", 0, 1, "2026-11-29T10:05:31Z"),
        (card["uuid"], "accepted", None, 1, 0, "2026-11-29T10:06:00Z"),
    ]
    raw = b"".join(p.read_bytes() for p in Path(client.db).parent.glob("feedback.sqlite3*"))
    assert b"8.2" not in raw
    assert b"Ada" not in raw
    assert b"p-1001" not in raw


def test_feedback_needs_the_api_key_when_keys_are_set(client: Any) -> None:
    """Without JWT issuers but with API keys, feedback without a key (or with a wrong one) is a 401, while the card
    itself stays open to the EHR."""
    card = card_of(client.post(SERVICE, json=cds_request(prefetch_for(load("patient_bundle.json")))))
    item = {"feedback": [{"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-29T10:05:31Z"}]}
    assert client.post(f"{SERVICE}/feedback", json=item).status_code == 401
    assert client.post(f"{SERVICE}/feedback", json=item, headers={"X-API-Key": "k-2"}).status_code == 401
    assert client.post(f"{SERVICE}/feedback", json=item, headers={"Authorization": "Bearer k-1"}).status_code == 200


def test_feedback_is_refused_whole_for_unknown_cards_foreign_reasons_and_too_many_entries(client: Any) -> None:
    """A card uuid the service never issued and a reason the card did not offer are 422 problems naming the entry's
    field and rule; more entries than GSHAP_CDS_FEEDBACK_MAX_ENTRIES is a 413 with the limit; nothing is stored."""
    card = card_of(client.post(SERVICE, json=cds_request(prefetch_for(load("patient_bundle.json")))))
    key = {"X-API-Key": "k-1"}
    entry = {"card": card["uuid"], "outcome": "overridden", "outcomeTimestamp": "2026-11-29T10:05:31Z"}
    forged = {**entry, "card": str(uuid.uuid4())}
    r = client.post(f"{SERVICE}/feedback", json={"feedback": [entry, forged]}, headers=key)
    assert r.status_code == 422
    assert [(e["field"], e["rule"]) for e in r.json()["errors"]] == [("feedback.1.card", "unknown_card")]
    foreign = {**entry, "overrideReason": {"reason": {"system": "https://x.example", "code": "not-relevant"}}}
    r = client.post(f"{SERVICE}/feedback", json={"feedback": [foreign]}, headers=key)
    assert r.status_code == 422
    assert r.json()["errors"][0]["rule"] == "not_a_card_reason"
    r = client.post(f"{SERVICE}/feedback", json={"feedback": [entry] * 21}, headers=key)
    assert r.status_code == 413
    assert r.headers["content-type"] == "application/problem+json"
    assert (r.json()["limit"], r.json()["limit_name"]) == (20, "cds_feedback_max_entries")
    with sqlite3.connect(client.db) as conn:
        assert conn.execute("SELECT count(*) FROM cds_feedback WHERE card_uuid = ?", (card["uuid"],)).fetchone() == (0,)


def test_feedback_summary_takes_an_api_key_and_counts(client: Any) -> None:
    """GET /cds-services/diabetes-risk/feedback/summary: 401 without a key, counts with one, equal to the rows."""
    assert client.get(f"{SERVICE}/feedback/summary").status_code == 401
    r = client.get(f"{SERVICE}/feedback/summary", headers={"X-API-Key": "k-1"})
    assert r.status_code == 200
    body = r.json()
    with sqlite3.connect(client.db) as conn:
        rows = conn.execute("SELECT outcome, count(*) FROM cds_feedback GROUP BY outcome").fetchall()
    assert body["outcomes"] == dict(rows)
    assert body["total"] == sum(n for _, n in rows)
    assert client.get("/cds-services/nope/feedback/summary", headers={"X-API-Key": "k-1"}).status_code == 404


def test_open_mode_warning_names_the_feedback_endpoint(bundle: Any, tmp_path: Path, capfd: Any) -> None:
    """Neither JWT issuers nor API keys: start-up's cds_auth_off warning says that feedback is open to anyone."""
    with app_client(create_app(Settings(cds_feedback_db=tmp_path / "fb.sqlite3"), bundle)):
        pass
    err = capfd.readouterr().err
    [line] = [json.loads(x) for x in err.splitlines() if '"cds_auth_off"' in x]
    assert line["level"] == "warning"
    assert "/cds-services/diabetes-risk/feedback accepts feedback from anyone" in line["message"]


@pytest.mark.parametrize(
    "item",
    [
        {"card": "c", "outcome": "accepted", "outcomeTimestamp": "2026-11-29T10:05:31Z"},
        {"card": "c", "outcome": "ignored", "outcomeTimestamp": "2026-11-29T10:05:31Z"},
        {"card": "c", "outcome": "overridden", "outcomeTimestamp": "2026-11-29T10:05:31+02:00"},
        {"card": "c", "outcome": "overridden", "outcomeTimestamp": "yesterday"},
        {"outcome": "overridden", "outcomeTimestamp": "2026-11-29T10:05:31Z"},
    ],
)
def test_feedback_breaking_the_spec_is_422(client: Any, item: dict[str, Any]) -> None:
    """accepted without suggestions, an unknown outcome, a non-UTC or unreadable timestamp, no card: 422."""
    r = client.post(f"{SERVICE}/feedback", json={"feedback": [item]}, headers={"X-API-Key": "k-1"})
    assert r.status_code == 422


# ---- the FHIR server fallback, against a real HTTP server --------------------------------------------------------


@pytest.fixture(scope="module")
def fhir() -> Iterator[Any]:
    with fhir_server(resources(load("patient_bundle.json"))) as server:
        yield server


@pytest.fixture(scope="module")
def fallback_client(bundle: Any, fhir: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    settings = Settings(
        cds_fhir_servers=[fhir.url],
        cds_fhir_timeout_seconds=1.5,
        cds_fhir_max_bytes=1_000_000,
        cds_feedback_db=tmp_path_factory.mktemp("cds") / "fb.sqlite3",
    )
    with app_client(create_app(settings, bundle)) as c:
        yield c


AUTH = {"access_token": "secret-token-123", "token_type": "Bearer", "expires_in": 300,
        "scope": "patient/Observation.read patient/Patient.read", "subject": "gshap"}  # fmt: skip


def test_fallback_fetches_missing_prefetch_with_the_bearer_token(fallback_client: Any, fhir: Any) -> None:
    """No prefetch: every key is searched on the allowed FHIR server with the client's token; same card."""
    fhir.mode, fhir.seen[:] = "ok", []
    card = card_of(fallback_client.post(SERVICE, json=cds_request(None, fhirServer=fhir.url, fhirAuthorization=AUTH)))
    assert re.fullmatch(r"Diabetes risk \d+% \(pima-diabetes/\d+\.\d+\.\d+\)", card["summary"])
    assert "| Glucose | 147.7 mg/dL (reported 8.2 mmol/L) | 2025-06-01 |" in card["detail"]
    assert len(fhir.seen) == len(prefetch_templates(PIMA))  # the Patient read and one search a key
    assert {s["authorization"] for s in fhir.seen} == {"Bearer secret-token-123"}
    assert any(s["path"].startswith("/fhir/Patient/p-1001") for s in fhir.seen)


def test_fallback_fetches_only_what_the_prefetch_lacks(fallback_client: Any, fhir: Any) -> None:
    """Keys present in the prefetch (even null) are not searched again; an OperationOutcome key is."""
    fhir.mode, fhir.seen[:] = "ok", []
    prefetch = prefetch_for(load("patient_bundle.json"))
    del prefetch["glucose"]
    prefetch["insulin"] = {"resourceType": "OperationOutcome", "issue": [{"severity": "error", "code": "timeout"}]}
    prefetch["skin_thickness"] = None
    card_of(fallback_client.post(SERVICE, json=cds_request(prefetch, fhirServer=fhir.url, fhirAuthorization=AUTH)))
    searched = sorted(s["path"].split("code=")[1].split("&")[0] for s in fhir.seen)
    assert len(searched) == 2
    assert any("1518-0" in q for q in searched)
    assert any("20448-7" in q for q in searched)


def test_tokens_are_never_logged(fallback_client: Any, fhir: Any, capfd: pytest.CaptureFixture[str]) -> None:
    """The FHIR bearer token appears in no log line, whether the fetch succeeds or fails."""
    for mode in ("ok", "garbage"):
        fhir.mode = mode
        fallback_client.post(SERVICE, json=cds_request(None, fhirServer=fhir.url, fhirAuthorization=AUTH))
    fhir.mode = "ok"
    out, err = capfd.readouterr()
    assert "cds-services/diabetes-risk" in err  # the access log was captured
    assert "secret-token-123" not in out + err


def test_server_outside_the_allow_list_is_412_naming_the_rule(fallback_client: Any, fhir: Any) -> None:
    """fhirServer not in GSHAP_CDS_FHIR_SERVERS: 412 naming the rule, and no call goes out."""
    time.sleep(0.2)  # searches cut short by an earlier test may still reach the stand-in
    fhir.seen[:] = []
    other = fhir.url.replace("/fhir", "/other")
    r = fallback_client.post(SERVICE, json=cds_request(None, fhirServer=other, fhirAuthorization=AUTH))
    assert r.status_code == 412
    assert "GSHAP_CDS_FHIR_SERVERS" in r.json()["detail"]
    assert fhir.seen == []


@pytest.mark.parametrize(
    ("mode", "words"),
    [
        ("slow", "did not answer in time"),
        ("garbage", "not valid JSON"),
        ("html", "not JSON"),
        ("huge", "exceeds 1000000 bytes"),
        ("error", "HTTP 500"),
    ],
)
def test_bad_fhir_server_answers_are_412_with_the_reason(
    fallback_client: Any, fhir: Any, mode: str, words: str
) -> None:
    """A slow, garbage, HTML, oversized or failing FHIR server: 412 naming the reason, never a 500 or a hang."""
    fhir.mode, fhir.delay_s = mode, 5.0
    t0 = time.monotonic()
    r = fallback_client.post(SERVICE, json=cds_request(None, fhirServer=fhir.url, fhirAuthorization=AUTH))
    fhir.mode = "ok"
    assert r.status_code == 412, r.text
    assert words in r.json()["detail"]
    assert "secret-token-123" not in r.text
    assert time.monotonic() - t0 < 4.5  # bounded by the timeouts (1.5 s a search, 3 s in all), not the server


def test_fhir_server_down_is_412(bundle: Any, tmp_path: Path) -> None:
    """A FHIR server that refuses connections: 412 'could not be reached'."""
    with fhir_server([]) as server:
        url = server.url
    settings = Settings(cds_fhir_servers=[url], cds_feedback_db=tmp_path / "fb.sqlite3")
    with app_client(create_app(settings, bundle)) as c:
        r = c.post(SERVICE, json=cds_request(None, fhirServer=url, fhirAuthorization=AUTH))
    assert r.status_code == 412
    assert "could not be reached" in r.json()["detail"]


def test_operation_outcome_from_the_server_for_a_required_key_is_412(fallback_client: Any, fhir: Any) -> None:
    """The FHIR server answers OperationOutcome to the searches: the required data cannot be had (412)."""
    fhir.mode = "outcome"
    r = fallback_client.post(SERVICE, json=cds_request(None, fhirServer=fhir.url, fhirAuthorization=AUTH))
    fhir.mode = "ok"
    assert r.status_code == 412


# ---- the CDS client's JWT ------------------------------------------------------------------------------------------


def _jwk(private: Any, kid: str, alg: str) -> dict[str, Any]:
    public = (
        jwt.algorithms.ECAlgorithm.to_jwk(private.public_key(), as_dict=True)
        if alg.startswith("ES")
        else (jwt.algorithms.RSAAlgorithm.to_jwk(private.public_key(), as_dict=True))
    )
    return {**public, "kid": kid, "alg": alg, "use": "sig"}


@pytest.fixture(scope="module")
def keys() -> dict[str, Any]:
    return {
        "ec": ec.generate_private_key(ec.SECP384R1()),
        "rsa": rsa.generate_private_key(public_exponent=65537, key_size=2048),
        "other": ec.generate_private_key(ec.SECP384R1()),
    }


ISS = "https://ehr.example.org"
BASE = "https://cds.example.org"


@pytest.fixture(scope="module")
def jwt_client(bundle: Any, keys: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    folder = tmp_path_factory.mktemp("jwks")
    jwks = folder / "jwks.json"
    jwks.write_text(json.dumps({"keys": [_jwk(keys["ec"], "ec-1", "ES384"), _jwk(keys["rsa"], "rsa-1", "RS384")]}))
    settings = Settings(cds_jwt_issuers={ISS: str(jwks)}, cds_base_url=BASE, cds_feedback_db=folder / "fb.sqlite3")
    with app_client(create_app(settings, bundle)) as c:
        yield c


def token(keys: dict[str, Any], aud: str | list[str] = f"{BASE}{SERVICE}", *, key: str = "ec", alg: str = "ES384",
          kid: str = "ec-1", **claims: Any) -> str:  # fmt: skip
    now = int(time.time())
    payload = {"iss": ISS, "aud": aud, "exp": now + 300, "iat": now, "jti": str(uuid.uuid4()), **claims}
    payload = {k: v for k, v in payload.items() if v is not None}
    return jwt.encode(payload, keys[key], algorithm=alg, headers={"kid": kid, "typ": "JWT"})


def call(c: Any, tok: str | None, path: str = SERVICE) -> int:
    headers = {"Authorization": f"Bearer {tok}"} if tok else {}
    if path == "/cds-services":
        return int(c.get(path, headers=headers).status_code)
    body = cds_request(prefetch_for(load("patient_bundle.json")))
    return int(c.post(path, json=body, headers=headers).status_code)


def call_card(c: Any, keys: dict[str, Any]) -> str:
    """The uuid of a card issued by a JWT-protected service."""
    r = c.post(
        SERVICE,
        json=cds_request(prefetch_for(load("patient_bundle.json"))),
        headers={"Authorization": f"Bearer {token(keys)}"},
    )
    return str(card_of(r)["uuid"])


def test_valid_es384_and_rs384_tokens_are_accepted(jwt_client: Any, keys: dict[str, Any]) -> None:
    """ES384 and RS384 tokens with the endpoint's exact aud pass, for discovery and the service."""
    assert call(jwt_client, token(keys)) == 200
    assert call(jwt_client, token(keys, key="rsa", alg="RS384", kid="rsa-1")) == 200
    assert call(jwt_client, token(keys, f"{BASE}/cds-services"), "/cds-services") == 200
    assert call(jwt_client, token(keys, [f"{BASE}{SERVICE}"])) == 200  # aud as an array


def test_bad_tokens_are_401(jwt_client: Any, keys: dict[str, Any]) -> None:
    """No token, HS256, alg none, unknown kid, a key not in the set, wrong or prefix aud, expired, future iat,
    untrusted iss, missing jti: each is a 401 problem."""
    now = int(time.time())
    hs = jwt.encode({"iss": ISS, "aud": f"{BASE}{SERVICE}", "exp": now + 60, "iat": now, "jti": "a"}, "k" * 32,
                    algorithm="HS256", headers={"kid": "ec-1"})  # fmt: skip
    unsigned = jwt.encode({"iss": ISS, "aud": f"{BASE}{SERVICE}", "exp": now + 60, "iat": now, "jti": "b"}, "",
                          algorithm="none", headers={"kid": "ec-1"})  # fmt: skip
    bad = [
        None,
        "not-a-jwt",
        hs,
        unsigned,
        token(keys, kid="nope"),
        token(keys, key="other"),
        token(keys, aud=f"{BASE}/cds-services"),
        token(keys, aud=f"{BASE}{SERVICE}/"),
        token(keys, aud="https://evil.example.org" + SERVICE),
        token(keys, exp=now - 120, iat=now - 400),
        token(keys, iat=now + 600, exp=now + 900),
        token(keys, iss="https://other-ehr.example.org"),
        token(keys, jti=None),
        token(keys, key="rsa", alg="RS384", kid="ec-1"),
    ]
    for i, tok in enumerate(bad):
        assert call(jwt_client, tok) == 401, f"token {i} was accepted"
    r = jwt_client.post(SERVICE, json=cds_request(None))
    assert r.headers["content-type"] == "application/problem+json"


def test_replayed_jti_is_refused(jwt_client: Any, keys: dict[str, Any]) -> None:
    """The same token twice: the second is a 401 (jti replay cache)."""
    tok = token(keys)
    assert call(jwt_client, tok) == 200
    assert call(jwt_client, tok) == 401


def test_feedback_needs_a_token_for_its_own_url(jwt_client: Any, keys: dict[str, Any]) -> None:
    """The feedback endpoint checks the JWT too, with aud = its own URL."""
    card = call_card(jwt_client, keys)
    item = {"feedback": [{"card": card, "outcome": "overridden", "outcomeTimestamp": "2026-11-29T10:05:31Z"}]}
    ok = token(keys, aud=f"{BASE}{SERVICE}/feedback")
    assert (
        jwt_client.post(f"{SERVICE}/feedback", json=item, headers={"Authorization": f"Bearer {ok}"}).status_code == 200
    )
    wrong = token(keys)
    assert (
        jwt_client.post(f"{SERVICE}/feedback", json=item, headers={"Authorization": f"Bearer {wrong}"}).status_code
        == 401
    )


def test_without_issuers_the_cds_endpoints_are_open(client: Any) -> None:
    """No GSHAP_CDS_JWT_ISSUERS: the CDS endpoints answer without any token."""
    assert client.get("/cds-services").status_code == 200


def test_jwks_is_fetched_from_its_https_url_with_a_trusted_ca(
    bundle: Any, keys: dict[str, Any], tmp_path: Path
) -> None:
    """An issuer configured with an https JWKS URL: the set is fetched over real TLS from a server whose certificate
    a test CA signed, trusted through GSHAP_CDS_JWKS_CA_FILE, and used (and cached)."""
    body = json.dumps({"keys": [_jwk(keys["ec"], "ec-1", "ES384")]}).encode()
    ca = make_ca(tmp_path / "ca")
    with https_server(ca, lambda path: (200, body)) as (base, hits):
        url = f"{base}/.well-known/jwks.json"
        settings = Settings(
            cds_jwt_issuers={ISS: url}, cds_base_url=BASE, cds_feedback_db=tmp_path / "fb.sqlite3",
            cds_jwks_ca_file=ca.ca_file,
        )  # fmt: skip
        with app_client(create_app(settings, bundle)) as c:
            assert call(c, token(keys)) == 200
            assert call(c, token(keys)) == 200
            assert call(c, token(keys, key="other")) == 401
    assert set(hits) == {"/.well-known/jwks.json"}
    assert len(hits) == 2  # one read at start-up, one by the verifier; then cached


def test_key_without_alg_serves_the_algorithm_its_type_allows(
    bundle: Any, keys: dict[str, Any], tmp_path: Path
) -> None:
    """JWKs published without ``alg`` (optional, RFC 7517): an RSA key verifies RS384 tokens and an EC P-384 key
    ES384 tokens (PyJWT alone would read them as RS256/ES256 and refuse every token)."""
    jwks = tmp_path / "jwks.json"
    bare = [{k: v for k, v in _jwk(keys[n], kid, alg).items() if k != "alg"}
            for n, kid, alg in (("rsa", "rsa-1", "RS384"), ("ec", "ec-1", "ES384"))]  # fmt: skip
    assert all("alg" not in k for k in bare)
    jwks.write_text(json.dumps({"keys": bare}))
    settings = Settings(cds_jwt_issuers={ISS: str(jwks)}, cds_base_url=BASE, cds_feedback_db=tmp_path / "fb.sqlite3")
    with app_client(create_app(settings, bundle)) as c:
        assert call(c, token(keys, key="rsa", alg="RS384", kid="rsa-1")) == 200
        assert call(c, token(keys, key="ec", alg="ES384", kid="ec-1")) == 200
        assert call(c, token(keys, key="rsa", alg="RS256", kid="rsa-1")) == 401  # still only our algorithms


def test_token_lifetime_is_capped(bundle: Any, keys: dict[str, Any], tmp_path: Path) -> None:
    """exp - iat at most the maximum lifetime (default 300 s) plus 30 s leeway: the Sandbox's exp = iat + 300
    passes, iat + 331 and exp = 1e308 are 401 (and fill no replay cache); the maximum is a setting."""
    jwks = tmp_path / "jwks.json"
    jwks.write_text(json.dumps({"keys": [_jwk(keys["ec"], "ec-1", "ES384")]}))
    now = int(time.time())
    settings = Settings(cds_jwt_issuers={ISS: str(jwks)}, cds_base_url=BASE, cds_feedback_db=tmp_path / "fb.sqlite3")
    with app_client(create_app(settings, bundle)) as c:
        assert call(c, token(keys, iat=now, exp=now + 300)) == 200
        assert call(c, token(keys, iat=now - 10, exp=now + 320)) == 200  # 330 s: within the leeway
        assert call(c, token(keys, iat=now, exp=now + 331)) == 401
        assert call(c, token(keys, iat=now, exp=1e308)) == 401
        assert call(c, token(keys, iat=now, exp=float("inf"))) == 401
        assert call(c, token(keys, iat=now, exp=now + 3600)) == 401
    longer = settings.model_copy(update={"cds_jwt_max_lifetime_seconds": 3600.0})
    with app_client(create_app(longer, bundle)) as c:
        assert call(c, token(keys, iat=now, exp=now + 3600)) == 200
        assert call(c, token(keys, iat=now, exp=now + 7200)) == 401


def test_jwks_over_plain_http_or_missing_stops_the_app(bundle: Any, keys: dict[str, Any], tmp_path: Path) -> None:
    """A JWKS source that is plain http, a missing file, an https server whose CA is not trusted, or a file holding
    no JWK Set: the app does not start (JwksSourceError naming the source), rather than 401 for every call."""
    from service.api.cds_auth import JwksSourceError

    junk = tmp_path / "junk.json"
    junk.write_text("{not json")
    ca = make_ca(tmp_path / "ca")
    body = json.dumps({"keys": [_jwk(keys["ec"], "ec-1", "ES384")]}).encode()
    with https_server(ca, lambda path: (200, body)) as (base, _):
        for source, words in [
            ("http://127.0.0.1:9/jwks.json", "https"),
            (str(tmp_path / "missing.json"), "cannot read"),
            (str(junk), "not a usable JWK Set"),
            (f"{base}/jwks.json", "cannot fetch"),  # no GSHAP_CDS_JWKS_CA_FILE: the test CA is not trusted
        ]:
            settings = Settings(cds_jwt_issuers={ISS: source}, cds_feedback_db=tmp_path / "fb.sqlite3")
            with pytest.raises(JwksSourceError, match=words), app_client(create_app(settings, bundle)):
                pass
    ok = Settings(cds_jwt_issuers={ISS: junk.with_name("ok.json").as_uri()}, cds_feedback_db=tmp_path / "f.sqlite3")
    junk.with_name("ok.json").write_bytes(body)
    with app_client(create_app(ok, bundle)) as c:  # an explicit file:// URL is a file
        assert c.get("/cds-services").status_code == 401

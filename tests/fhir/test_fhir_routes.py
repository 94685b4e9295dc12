"""POST /fhir/predict and /fhir/explain: the same JSON as /predict and /explain for the record read from the Bundle,
plus where each value came from; hostile Bundles get a problem naming the field, never a 500."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fhir_helpers import clean_bundle, load
from helpers import app_client

from service.api.app import create_app
from service.config import Settings


@pytest.fixture(scope="module")
def client(bundle: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    settings = Settings(cds_feedback_db=tmp_path_factory.mktemp("f") / "fb.sqlite3", fhir_max_entries=50)
    with app_client(create_app(settings, bundle)) as c:
        yield c


def test_fhir_predict_equals_predict_on_the_extracted_record(client: Any) -> None:
    """/fhir/predict answers /predict's fields for the converted record, plus fhir.sources per feature."""
    r = client.post("/fhir/predict", json=clean_bundle())
    assert r.status_code == 200, r.text
    body = r.json()
    record = {k: v["value"] for k, v in body["fhir"]["sources"].items()}
    record["pregnancies"] = int(record["pregnancies"])
    plain = client.post("/predict", json=record).json()
    assert {k: body[k] for k in plain} == plain
    assert body["fhir"]["patient"] == "Patient/p-1001"
    glucose = body["fhir"]["sources"]["glucose"]
    assert (glucose["resource"], glucose["code"], glucose["original_unit"]) == (
        "Observation/glu-2025",
        "14995-5",
        "mmol/L",
    )
    assert glucose["value"] == pytest.approx(8.2 * 18.016)
    assert {i["code"] for i in body["fhir"]["issues"]} == {"not_ogtt", "status_ignored"}


def test_fhir_explain_equals_explain_plus_provenance(client: Any) -> None:
    """/fhir/explain answers /explain's fields (query-parameter settings) plus fhir."""
    r = client.post("/fhir/explain?output=probability", json=clean_bundle())
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["output"] == "probability"
    assert len(body["attributions"]) == 8
    assert body["fhir"]["sources"]["age"]["resource"] == "Patient/p-1001"
    record = {a["feature"]: a["value"] for a in body["attributions"]}
    record["pregnancies"] = int(record["pregnancies"])
    plain = client.post("/explain", json={**record, "output": "probability"}).json()
    assert body["summary"] == plain["summary"]
    assert body["prediction"] == plain["prediction"]


def test_not_measured_inputs_are_imputed_and_listed(client: Any) -> None:
    """A Bundle without glucose: glucose is imputed (listed in imputed and fhir.not_found), not a 0."""
    bundle = clean_bundle()
    bundle["entry"] = [e for e in bundle["entry"] if not e["resource"].get("id", "").startswith("glu")]
    body = client.post("/fhir/predict", json=bundle).json()
    assert body["imputed"] == ["glucose"]
    assert body["fhir"]["not_found"] == ["glucose"]


def _with(bundle: dict[str, Any], resource: dict[str, Any]) -> dict[str, Any]:
    bundle["entry"].append({"resource": resource})
    return bundle


def _obs(**extra: Any) -> dict[str, Any]:
    return {
        "resourceType": "Observation",
        "id": "x-1",
        "status": "final",
        "code": {"coding": [{"system": "http://loinc.org", "code": "1518-0"}]},
        "subject": {"reference": "Patient/p-1001"},
        "effectiveDateTime": "2025-12-01T08:00:00Z",
        "valueQuantity": {"value": 140, "system": "http://unitsofmeasure.org", "code": "mg/dL"},
        **extra,
    }


UCUM = "http://unitsofmeasure.org"
ONE_TYPE_LESS = {"resourceType": "Bundle", "entry": [{"resource": {"id": "no-type"}}]}
HUGE = {"resourceType": "Bundle", "entry": [{"resource": {"resourceType": "Patient", "id": "p"}}] * 51}
BAD_UNIT = {"value": 7, "system": UCUM, "code": "mol/m3"}


@pytest.mark.parametrize(
    ("body", "status", "field", "rule"),
    [
        ({"resourceType": "Patient", "id": "p"}, 422, "resourceType", "string_pattern_mismatch"),
        ({"resourceType": "Bundle", "entry": "nope"}, 422, "entry", "list_type"),
        (ONE_TYPE_LESS, 422, "entry[0].resource.resourceType", "missing"),
        ({"resourceType": "Bundle", "entry": []}, 422, "entry", "one_patient"),
        (load("patient_bundle.json"), 422, "entry[13].resource", "other_patient"),
        (_with(clean_bundle(), _obs(valueQuantity=BAD_UNIT)), 422, "entry[14].resource", "unknown_unit"),
        (_with(clean_bundle(), _obs(effectiveDateTime="2099-01-01")), 422, "entry[14].resource", "future_date"),
        (_with(clean_bundle(), _obs(status=5)), 422, "entry[14].resource.status", "string_type"),
        (HUGE, 413, None, None),
    ],
)  # fmt: skip
def test_hostile_bundles_get_a_problem_naming_the_field(
    client: Any, body: dict[str, Any], status: int, field: str | None, rule: str | None
) -> None:
    """Wrong resourceType, malformed entries, no Patient, another patient's data, unknown units, future dates,
    a broken Observation and a huge Bundle: each a problem (422/413) naming the field and rule, never a 500."""
    r = client.post("/fhir/predict", json=body)
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == "application/problem+json"
    if field is not None:
        assert any(e["field"] == field and e["rule"] == rule for e in r.json()["errors"]), r.json()


def test_required_input_missing_is_422_naming_the_feature(client: Any) -> None:
    """No pedigree score in the Bundle: 422 naming diabetes_pedigree_function (never a silent 0)."""
    bundle = clean_bundle()
    bundle["entry"] = [e for e in bundle["entry"] if e["resource"].get("id") != "dpf"]
    r = client.post("/fhir/predict", json=bundle)
    assert r.status_code == 422
    assert [(e["field"], e["rule"]) for e in r.json()["errors"]] == [
        ("diabetes_pedigree_function", "required_input_missing")
    ]

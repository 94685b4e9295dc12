"""Synthea R4 patient Bundles posted as the generator wrote them (transaction Bundles, urn:uuid references,
blood pressure as 55284-4 panels, random glucose 2339-0): the answer is a 422 naming only what they truly lack,
and, once those are added, the values used equal what a careful reader takes from the Bundle (the latest final
value, panel components read, near misses not used).

The Bundles come from ``smart-on-fhir/generated-sample-data`` (Apache-2.0, ``R4/SYNTHEA/*.json``): four of them,
byte for byte, are in ``tests/data/synthea/`` (its README says which and why). Point ``GSHAP_SYNTHEA_DIR`` at a
folder of others to run them instead (``shared/datasets/synthea/`` beside the checkout is read too when the
project's folder is absent); without any, these tests are skipped, saying so. Nothing here is specific to the files
chosen: every expected value is read from the Bundle by the reader below.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import app_client

from service.api.app import create_app
from service.config import Settings

LOINC = "http://loinc.org"
USABLE = {"final", "amended", "corrected"}
_CANDIDATES = (
    Path(__file__).resolve().parents[1] / "data" / "synthea",
    Path(__file__).resolve().parents[3] / "shared" / "datasets" / "synthea",
)
FOLDER = Path(os.environ.get("GSHAP_SYNTHEA_DIR") or next((p for p in _CANDIDATES if p.is_dir()), _CANDIDATES[0]))
FILES = sorted(FOLDER.glob("*.json")) if FOLDER.is_dir() else []

pytestmark = pytest.mark.skipif(not FILES, reason=f"no Synthea R4 Bundles in {FOLDER} (set GSHAP_SYNTHEA_DIR)")


@pytest.fixture(scope="module")
def client(bundle: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    settings = Settings(cds_feedback_db=tmp_path_factory.mktemp("f") / "fb.sqlite3")
    with app_client(create_app(settings, bundle)) as c:
        yield c


def _codes(concept: dict[str, Any]) -> set[str]:
    return {c.get("code", "") for c in concept.get("coding", []) if c.get("system") == LOINC}


def careful_reader(bundle: dict[str, Any]) -> dict[str, Any]:
    """What a careful reader takes from a Synthea Bundle: the patient's latest final diastolic pressure (from any
    Observation's 8462-4 component or an 8462-4 Observation) and BMI (39156-5), the age on today's date, the
    glucose values that are not 2-hour OGTT values (2339-0 and other near misses), in the model's units."""
    [patient_entry] = [e for e in bundle["entry"] if e["resource"]["resourceType"] == "Patient"]
    patient, me = patient_entry["resource"], patient_entry["fullUrl"]
    found: dict[str, list[tuple[str, str, float]]] = {"blood_pressure": [], "bmi": []}
    near_misses = 0
    for entry in bundle["entry"]:
        obs = entry["resource"]
        if obs["resourceType"] != "Observation" or obs.get("status") not in USABLE:
            continue
        assert obs["subject"]["reference"] == me  # Synthea: every reference is the Patient's fullUrl
        when, issued = obs.get("effectiveDateTime", ""), obs.get("issued", "")
        codes = _codes(obs["code"])
        if codes & {"2339-0", "2345-7", "1558-6", "14749-6", "4548-4"}:
            near_misses += 1
        if "39156-5" in codes:
            assert obs["valueQuantity"]["code"] == "kg/m2"
            found["bmi"].append((when, issued, obs["valueQuantity"]["value"]))
        parts = [obs] if "8462-4" in codes else [c for c in obs.get("component", []) if "8462-4" in _codes(c["code"])]
        for part in parts:
            assert part["valueQuantity"]["code"] == "mm[Hg]"
            found["blood_pressure"].append((when, issued, part["valueQuantity"]["value"]))
    birth = dt.date.fromisoformat(patient["birthDate"])
    today = dt.datetime.now(dt.UTC).date()
    age = today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))
    latest = {k: max(v, key=lambda x: (dt.datetime.fromisoformat(x[0]), x[1]))[2] for k, v in found.items() if v}
    return {"values": {**latest, "age": age}, "gender": patient["gender"], "near_misses": near_misses, "me": me}


def _added(bundle: dict[str, Any], me: str) -> dict[str, Any]:
    """``bundle`` with the two required inputs Synthea never writes (pregnancies, the pedigree score) added as a
    client would: transaction entries with urn:uuid fullUrls referring to the Patient's fullUrl."""
    out: dict[str, Any] = json.loads(json.dumps(bundle))
    dpf = {"system": "urn:gshap-service:feature", "code": "diabetes_pedigree_function"}
    score = {"valueQuantity": {"value": 0.4, "system": "http://unitsofmeasure.org", "code": "1"}}
    for code, value in (({"system": LOINC, "code": "11996-6"}, {"valueInteger": 2}), (dpf, score)):
        rid = str(uuid.uuid4())
        obs = {"resourceType": "Observation", "id": rid, "status": "final", "code": {"coding": [code]},
               "subject": {"reference": me}, "effectiveDateTime": "2019-01-01T00:00:00Z", **value}  # fmt: skip
        out["entry"].append({"fullUrl": f"urn:uuid:{rid}", "resource": obs, "request": {"method": "POST"}})
    return out


@pytest.mark.parametrize("path", FILES, ids=[p.name[:24] for p in FILES])
def test_synthea_bundle_as_written_is_a_422_naming_only_what_it_lacks(client: Any, path: Path) -> None:
    """Posted byte for byte as Synthea wrote it (pretty-printed, > 1 MiB for one): 422 naming exactly the two
    required inputs Synthea does not generate (pregnancies, diabetes pedigree), no Observation refused as another
    patient's, nothing refused for size."""
    r = client.post("/fhir/predict", content=path.read_bytes(), headers={"content-type": "application/fhir+json"})
    assert r.status_code == 422, r.text[:500]
    errors = r.json()["errors"]
    assert sorted((e["field"], e["rule"]) for e in errors) == [
        ("diabetes_pedigree_function", "required_input_missing"),
        ("pregnancies", "required_input_missing"),
    ]


@pytest.mark.parametrize("path", FILES, ids=[p.name[:24] for p in FILES])
def test_synthea_values_equal_a_careful_readers(client: Any, path: Path) -> None:
    """With the two missing inputs added: the blood pressure (a 55284-4 component), the BMI and the age equal the
    careful reader's; glucose is not taken from the random blood glucose 2339-0 (each such value is reported as
    not an OGTT value) and is imputed; nothing is refused; a man, or anyone under 21, is noted as outside the
    population."""
    bundle = json.loads(path.read_bytes())
    reader = careful_reader(bundle)
    r = client.post("/fhir/explain", json=_added(bundle, reader["me"]))
    assert r.status_code == 200, r.text[:500]
    body = r.json()
    used = {k: v["value"] for k, v in body["fhir"]["sources"].items()}
    for name, value in reader["values"].items():
        assert used[name] == pytest.approx(value, rel=1e-12), name
    assert body["fhir"]["sources"]["blood_pressure"]["path"].endswith("]")  # a component
    assert "glucose" not in used
    assert "glucose" in body["prediction"]["imputed"]
    issues = body["fhir"]["issues"]
    assert sum(1 for i in issues if i["code"] == "not_ogtt") == reader["near_misses"]
    assert not any(i["refused"] for i in issues)
    assert not any(i["code"] == "other_patient" for i in issues)
    expected_notes = [] if reader["gender"] == "female" else [f"recorded gender is {reader['gender']}"]
    if reader["values"]["age"] < 21:
        expected_notes.append(f"age {reader['values']['age']} is under 21")
    assert body["fhir"]["outside_population"] == expected_notes

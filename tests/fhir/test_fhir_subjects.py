"""Every Observation's subject is resolved, also one that carries none of the model's codes (issue 24): such an
Observation is left unvalidated (which keeps large Bundles fast), but one about another patient is refused by
``/fhir/*`` (strict) and noted as not used on the CDS card (lenient), as a relevant one is. Over real HTTP, against a
``gshap serve`` subprocess."""

from __future__ import annotations

import copy
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
from fhir_helpers import cds_request, clean_bundle, load, prefetch_for
from live_server import LiveServer, running_server

SERVICE = "/cds-services/diabetes-risk"
LOINC = "http://loinc.org"


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with running_server() as live:
        yield live


def post(server: LiveServer, path: str, body: dict[str, Any]) -> httpx.Response:
    return httpx.post(f"{server.url}{path}", json=body, timeout=60)


def heart_rate(rid: str, subject: Any) -> dict[str, Any]:
    """An Observation none of whose codes the model reads (heart rate, 8867-4)."""
    return {
        "resourceType": "Observation",
        "id": rid,
        "status": "final",
        "code": {"coding": [{"system": LOINC, "code": "8867-4", "display": "Heart rate"}]},
        "subject": subject,
        "effectiveDateTime": "2025-01-10T09:00:00Z",
        "valueQuantity": {"value": 72, "unit": "/min", "system": "http://unitsofmeasure.org", "code": "/min"},
    }


def with_entry(bundle: dict[str, Any], resource: dict[str, Any], full_url: str | None = None) -> dict[str, Any]:
    out = copy.deepcopy(bundle)
    entry: dict[str, Any] = {"resource": resource}
    if full_url:
        entry["fullUrl"] = full_url
    out["entry"].append(entry)
    return out


@pytest.mark.parametrize("route", ["/fhir/predict", "/fhir/explain"])
def test_an_irrelevant_observation_about_another_patient_is_refused(server: LiveServer, route: str) -> None:
    """/fhir/* is strict: a heart rate (not a model input) about Patient/p-9999 is a 422 naming its entry, rule
    other_patient, "the request is refused" (it was skipped unread and the answer was 200)."""
    bundle = clean_bundle()
    assert post(server, route, bundle).status_code == 200
    answer = post(server, route, with_entry(bundle, heart_rate("hr-other", {"reference": "Patient/p-9999"})))
    assert answer.status_code == 422, answer.text
    assert answer.headers["content-type"].startswith("application/problem+json")
    [error] = answer.json()["errors"]
    assert error["rule"] == "other_patient"
    assert error["field"] == f"entry[{len(bundle['entry'])}].resource"
    assert error["message"].endswith("the request is refused.")


@pytest.mark.parametrize(
    "subject",
    [
        {"reference": "Patient/p-1001"},
        {"reference": "https://ehr.example.org/fhir/Patient/p-1001/_history/2"},
    ],
)
def test_an_irrelevant_observation_of_this_patient_changes_nothing(server: LiveServer, subject: Any) -> None:
    """A heart rate of this patient (relative or absolute reference) is still skipped: same answer, no issue."""
    plain = post(server, "/fhir/predict", clean_bundle()).json()
    answer = post(server, "/fhir/predict", with_entry(clean_bundle(), heart_rate("hr-1", subject)))
    assert answer.status_code == 200, answer.text
    fhir = {k: v for k, v in answer.json()["fhir"].items() if k != "as_of"}
    assert fhir == {k: v for k, v in plain["fhir"].items() if k != "as_of"}
    assert answer.json()["probability"] == plain["probability"]


def test_urn_uuid_subjects_of_irrelevant_observations_are_resolved(server: LiveServer) -> None:
    """In a transaction Bundle with urn:uuid fullUrls, a heart rate whose subject is the Patient entry's fullUrl is
    this patient's; one whose subject is another entry's urn:uuid is not, and is refused."""
    bundle = clean_bundle()
    bundle["type"] = "transaction"
    me = f"urn:uuid:{uuid.uuid4()}"
    bundle["entry"][0]["fullUrl"] = me
    for entry in bundle["entry"]:
        entry["request"] = {"method": "POST", "url": entry["resource"]["resourceType"]}
        if "subject" in entry["resource"]:
            entry["resource"]["subject"] = {"reference": me}
    mine = with_entry(bundle, heart_rate("hr-1", {"reference": me}), f"urn:uuid:{uuid.uuid4()}")
    assert post(server, "/fhir/predict", mine).status_code == 200
    other = with_entry(
        bundle, heart_rate("hr-2", {"reference": f"urn:uuid:{uuid.uuid4()}"}), f"urn:uuid:{uuid.uuid4()}"
    )
    answer = post(server, "/fhir/predict", other)
    assert answer.status_code == 422, answer.text
    assert {e["rule"] for e in answer.json()["errors"]} == {"other_patient"}


def test_an_irrelevant_observation_without_a_subject_is_refused_as_a_relevant_one_is(server: LiveServer) -> None:
    """No subject reference: /fhir/* refuses it (the rule for a model input's Observation applies to every one)."""
    resource = heart_rate("hr-3", None)
    del resource["subject"]
    answer = post(server, "/fhir/predict", with_entry(clean_bundle(), resource))
    assert answer.status_code == 422, answer.text
    [error] = answer.json()["errors"]
    assert error["rule"] == "other_patient"
    assert "no subject reference" in error["message"]


def test_an_irrelevant_observation_whose_subject_is_not_a_reference_is_named(server: LiveServer) -> None:
    """A subject that is not a Reference object (a bare string) is validated like a read Observation's: a 422 that
    names the field (it was skipped unread)."""
    bundle = clean_bundle()
    answer = post(server, "/fhir/predict", with_entry(bundle, heart_rate("hr-4", "Patient/p-1001")))
    assert answer.status_code == 422, answer.text
    fields = {e["field"] for e in answer.json()["errors"]}
    assert any(f.startswith(f"entry[{len(bundle['entry'])}].resource.subject") for f in fields), fields


def test_the_cds_card_says_another_patients_irrelevant_observation_was_not_used(server: LiveServer) -> None:
    """CDS is lenient: a heart rate about another patient in a prefetch searchset does not stop the card, and the
    card lists it as another patient's, not used (it was not mentioned)."""
    prefetch = prefetch_for(load("patient_bundle.json"))
    prefetch["glucose"]["entry"].append({"resource": heart_rate("hr-other", {"reference": "Patient/p-9999"})})
    answer = post(server, SERVICE, cds_request(prefetch))
    assert answer.status_code == 200, answer.text
    [card] = answer.json()["cards"]
    line = next(x for x in card["detail"].splitlines() if "Observation/hr-other" in x)
    assert line.endswith("not used.")
    assert "another patient" in line

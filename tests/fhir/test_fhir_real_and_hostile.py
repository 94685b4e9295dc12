"""FHIR Bundles as EHRs and generators write them, and as a hostile client writes them (issue 24): references by
``urn:uuid``/``urn:oid`` fullUrl and absolute URL, the diastolic pressure inside any panel, strict JSON typing,
conflicts that are said and never settled by the input order, messages that say what happened, the
out-of-population note, limits that fit the route, Bundle bombs, and request text that never reaches the card's
Markdown as markup."""

from __future__ import annotations

import copy
import json
import re
import time
import uuid
from collections.abc import Iterator
from typing import Any

import markdown_it
import pytest
from fhir_helpers import cds_request, clean_bundle, load, prefetch_for, searchset
from helpers import app_client

from service.api.app import create_app
from service.config import Settings

SERVICE = "/cds-services/diabetes-risk"


@pytest.fixture(scope="module")
def client(bundle: Any, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    settings = Settings(cds_feedback_db=tmp_path_factory.mktemp("f") / "fb.sqlite3")
    with app_client(create_app(settings, bundle)) as c:
        yield c


def as_transaction(bundle: dict[str, Any], scheme: str = "uuid") -> dict[str, Any]:
    """``bundle`` as Synthea writes it: a transaction whose entries have urn:uuid (or urn:oid) fullUrls and whose
    references are the Patient entry's fullUrl."""
    out = copy.deepcopy(bundle)
    out["type"] = "transaction"
    urls = {}
    for i, entry in enumerate(out["entry"]):
        r = entry["resource"]
        full = f"urn:uuid:{uuid.uuid5(uuid.NAMESPACE_URL, r['id'])}" if scheme == "uuid" else f"urn:oid:1.2.3.{i + 1}"
        urls[f"{r['resourceType']}/{r['id']}"] = full
        entry["fullUrl"] = full
        entry["request"] = {"method": "POST", "url": r["resourceType"]}
    for entry in out["entry"]:
        subject = entry["resource"].get("subject")
        if subject:
            subject["reference"] = urls.get(subject["reference"], subject["reference"])
    return out


def sources(answer: Any) -> dict[str, float]:
    assert answer.status_code == 200, answer.text
    return {k: v["value"] for k, v in answer.json()["fhir"]["sources"].items()}


# ---- references as FHIR defines them -------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["transaction", "batch", "collection", "searchset", "document"])
def test_urn_uuid_references_resolve_in_every_bundle_type(client: Any, kind: str) -> None:
    """Observations whose subject is the Patient entry's urn:uuid fullUrl are this patient's, in transaction,
    batch, collection, searchset and document Bundles: the same values as with Patient/{id} references."""
    plain = sources(client.post("/fhir/predict", json=clean_bundle()))
    bundle = as_transaction(clean_bundle())
    bundle["type"] = kind
    answer = client.post("/fhir/predict", json=bundle)
    assert sources(answer) == plain
    assert "other_patient" not in {i["code"] for i in answer.json()["fhir"]["issues"]}


def test_urn_oid_and_absolute_references_resolve(client: Any) -> None:
    """urn:oid fullUrls, and absolute URLs (with the Patient's absolute fullUrl, or ending in Patient/{id} with
    /_history) denote the patient; an absolute URL on another server does not when the fullUrl is absolute."""
    plain = sources(client.post("/fhir/predict", json=clean_bundle()))
    assert sources(client.post("/fhir/predict", json=as_transaction(clean_bundle(), "oid"))) == plain
    bundle = clean_bundle()
    for entry in bundle["entry"]:
        if "subject" in entry["resource"]:
            entry["resource"]["subject"]["reference"] = "https://ehr.example.org/fhir/Patient/p-1001/_history/3"
    assert sources(client.post("/fhir/predict", json=bundle)) == plain
    bundle["entry"][0]["fullUrl"] = "https://ehr.example.org/fhir/Patient/p-1001"
    assert sources(client.post("/fhir/predict", json=bundle)) == plain
    bundle["entry"][0]["fullUrl"] = "https://other.example.org/fhir/Patient/p-1001"
    refused = client.post("/fhir/predict", json=bundle)
    assert refused.status_code == 422
    assert {e["rule"] for e in refused.json()["errors"]} == {"other_patient"}


def test_a_reference_to_another_fullurl_is_refused_and_says_so(client: Any) -> None:
    """An Observation whose subject is another entry's urn:uuid is another patient's: /fhir/* (strict) refuses
    the request and its message says so ("refused"); the CDS card (lenient) says the value was not used."""
    bundle = as_transaction(clean_bundle())
    bundle["entry"][1]["resource"]["subject"]["reference"] = f"urn:uuid:{uuid.uuid4()}"
    r = client.post("/fhir/predict", json=bundle)
    assert r.status_code == 422
    [error] = r.json()["errors"]
    assert error["rule"] == "other_patient"
    assert error["field"] == "entry[1].resource"
    assert error["message"].endswith("the request is refused.")
    assert "ignored" not in error["message"]
    prefetch = prefetch_for(load("patient_bundle.json"))
    foreign = next(e["resource"] for e in load("patient_bundle.json")["entry"] if e["resource"]["id"] == "glu-other")
    prefetch["glucose"]["entry"].append({"resource": foreign})
    card = client.post(SERVICE, json=cds_request(prefetch)).json()["cards"][0]
    line = next(x for x in card["detail"].splitlines() if "Observation/glu-other" in x)
    assert line.endswith("not used.")


# ---- the diastolic pressure inside any panel -----------------------------------------------------------------------


@pytest.mark.parametrize("panel", ["85354-9", "55284-4", "35094-2"])
def test_diastolic_is_read_from_a_component_of_any_panel(client: Any, panel: str) -> None:
    """8462-4 as a component of the 85354-9 panel, of the 55284-4 panel Synthea writes, or of another panel
    (35094-2): read as the blood pressure, with the component's path."""
    bundle = clean_bundle()
    obs = next(e["resource"] for e in bundle["entry"] if e["resource"]["id"] == "bp-panel-2025")
    obs["code"]["coding"] = [{"system": "http://loinc.org", "code": panel, "display": "Blood pressure panel"}]
    answer = client.post("/fhir/predict", json=bundle)
    source = answer.json()["fhir"]["sources"]["blood_pressure"]
    diastolic = next(c for c in obs["component"] if c["code"]["coding"][0]["code"] == "8462-4")
    assert source["value"] == diastolic["valueQuantity"]["value"]
    assert source["resource"] == "Observation/bp-panel-2025"
    assert re.fullmatch(r"entry\[\d+\]\.resource\.component\[\d+\]", source["path"])


# ---- strict typing -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("where", ["value", "component", "integer"])
def test_numbers_sent_as_strings_are_refused(client: Any, where: str) -> None:
    """FHIR JSON decimals and integers are JSON numbers: "150" (a string) is a 422 naming the field, not 150."""
    bundle = clean_bundle()
    by_id = {e["resource"]["id"]: (i, e["resource"]) for i, e in enumerate(bundle["entry"])}
    if where == "value":
        i, obs = by_id["glu-2025"]
        obs["valueQuantity"]["value"] = "150"
        field = f"entry[{i}].resource.valueQuantity.value"
    elif where == "component":
        i, obs = by_id["bp-panel-2025"]
        j = next(j for j, c in enumerate(obs["component"]) if c["code"]["coding"][0]["code"] == "8462-4")
        obs["component"][j]["valueQuantity"]["value"] = "82"
        field = f"entry[{i}].resource.component[{j}].valueQuantity.value"
    else:
        i, obs = by_id["preg-2025"]
        obs["valueInteger"] = "3"
        field = f"entry[{i}].resource.valueInteger"
    r = client.post("/fhir/predict", json=bundle)
    assert r.status_code == 422, r.text
    assert [(e["field"], e["rule"]) for e in r.json()["errors"]] == [
        (field, "integer_type" if where == "integer" else "number_type")
    ]


# ---- conflicts -----------------------------------------------------------------------------------------------------


def _twin(bundle: dict[str, Any], source_id: str, new_id: str, value: float) -> None:
    obs = copy.deepcopy(next(e["resource"] for e in bundle["entry"] if e["resource"]["id"] == source_id))
    obs["id"] = new_id
    obs["valueQuantity"]["value"] = value
    bundle["entry"].append({"resource": obs})


def test_tied_values_are_a_conflict_whatever_the_order(client: Any) -> None:
    """Two glucose values with the same effective and issued time that disagree: neither is used (imputed), the
    conflict is listed, and the answer is the same for both orders of the input."""
    answers = []
    for order in (1, -1):
        bundle = clean_bundle()
        _twin(bundle, "glu-2025", "glu-2025-b", 12.5)
        bundle["entry"] = [bundle["entry"][0], *bundle["entry"][1:][::order]]
        r = client.post("/fhir/predict", json=bundle)
        assert r.status_code == 200, r.text
        answers.append(r.json())
    for body in answers:
        assert "glucose" in body["imputed"]
        assert "glucose" not in body["fhir"]["sources"]
        [conflict] = [i for i in body["fhir"]["issues"] if i["code"] == "conflicting_values"]
        assert conflict["feature"] == "glucose"
        assert "Observation/glu-2025" in conflict["message"]
        assert "Observation/glu-2025-b" in conflict["message"]
    assert answers[0]["probability"] == answers[1]["probability"]
    issues = [sorted(json.dumps({**i, "path": ""}, sort_keys=True) for i in body["fhir"]["issues"]) for body in answers]
    assert issues[0] == issues[1]


def test_a_later_issued_time_breaks_the_tie(client: Any) -> None:
    """Same effective time, different issued: the later issued value wins, in either order."""
    for order in (1, -1):
        bundle = clean_bundle()
        _twin(bundle, "glu-2025", "glu-2025-b", 12.5)
        by_id = {e["resource"]["id"]: e["resource"] for e in bundle["entry"]}
        by_id["glu-2025"]["issued"] = "2025-06-01T12:00:00Z"
        by_id["glu-2025-b"]["issued"] = "2025-06-01T12:30:00Z"
        bundle["entry"] = [bundle["entry"][0], *bundle["entry"][1:][::order]]
        found = client.post("/fhir/predict", json=bundle).json()["fhir"]["sources"]["glucose"]
        assert found["resource"] == "Observation/glu-2025-b"


def test_a_conflict_on_a_required_input_refuses_the_request(client: Any) -> None:
    """Pregnancies (required) twice on the same date with different counts: 422 conflicting_values; on the CDS
    card no risk is computed and the conflict is listed."""
    bundle = clean_bundle()
    obs = copy.deepcopy(next(e["resource"] for e in bundle["entry"] if e["resource"]["id"] == "preg-2025"))
    obs["id"], obs["valueInteger"] = "preg-2025-b", 5
    bundle["entry"].append({"resource": obs})
    r = client.post("/fhir/predict", json=bundle)
    assert r.status_code == 422
    assert [(e["field"], e["rule"]) for e in r.json()["errors"]] == [("pregnancies", "conflicting_values")]
    prefetch = prefetch_for(load("patient_bundle.json"))
    prefetch["pregnancies"]["entry"].append({"resource": obs})
    card = client.post(SERVICE, json=cds_request(prefetch)).json()["cards"][0]
    assert card["summary"].startswith("Diabetes risk cannot be computed: pregnancies")
    assert "conflicting values (none used)" in card["detail"]


def test_two_patients_that_disagree_are_a_422(client: Any) -> None:
    """The same Patient twice with different birth dates: 422 patients_disagree (the first is not taken); twice
    identical is read once."""
    bundle = clean_bundle()
    twin = copy.deepcopy(bundle["entry"][0])
    bundle["entry"].append(copy.deepcopy(twin))
    assert client.post("/fhir/predict", json=bundle).status_code == 200
    twin["resource"]["birthDate"] = "1950-01-01"
    bundle["entry"][-1] = twin
    r = client.post("/fhir/predict", json=bundle)
    assert r.status_code == 422
    assert [e["rule"] for e in r.json()["errors"]] == ["patients_disagree"]


def test_one_observation_under_two_prefetch_keys_that_differ_is_a_422(client: Any) -> None:
    """The same Observation id under two prefetch keys: equal copies are read once; differing copies are a 422
    (the second is not silently dropped)."""
    prefetch = prefetch_for(load("patient_bundle.json"))
    glucose = copy.deepcopy(prefetch["glucose"]["entry"][0]["resource"])
    prefetch["insulin"]["entry"].append({"resource": copy.deepcopy(glucose)})
    assert client.post(SERVICE, json=cds_request(prefetch)).status_code == 200
    glucose["valueQuantity"]["value"] += 1
    prefetch["insulin"]["entry"][-1] = {"resource": glucose}
    r = client.post(SERVICE, json=cds_request(prefetch))
    assert r.status_code == 422
    assert [e["rule"] for e in r.json()["errors"]] == ["conflicting_copies"]


# ---- the population ------------------------------------------------------------------------------------------------


def test_fhir_answers_note_an_out_of_population_patient(client: Any) -> None:
    """/fhir/predict and /fhir/explain say when the patient is outside the training population (here: male), as
    the card does; inside it the list is empty."""
    bundle = clean_bundle()
    assert client.post("/fhir/predict", json=bundle).json()["fhir"]["outside_population"] == []
    bundle["entry"][0]["resource"]["gender"] = "male"
    for path in ("/fhir/predict", "/fhir/explain"):
        body = client.post(path, json=bundle).json()
        assert body["fhir"]["outside_population"] == ["recorded gender is male"]


# ---- nothing echoed as markup --------------------------------------------------------------------------------------

PAYLOADS = [
    "![t](https://evil.example/t.png)",
    "<img src=https://evil.example/p.gif onerror=alert(1)>",
    "[click](javascript:alert(1))",
    "<script>alert(1)</script>",
    "**bold** _em_ `code` | cell | ~~x~~",
    "https://evil.example/a www.evil.example mail@evil.example",
    "line\nbreak\r\n# heading",
]


def _poison(value: Any, payload: str) -> Any:
    """Every free-text string of FHIR resources replaced by ``payload`` (structure, codes, dates and
    references kept so that the resources still parse and count)."""
    keep = {"resourceType", "status", "reference", "effectiveDateTime", "birthDate", "issued", "code", "system"}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if k in ("unit", "display", "text") or (isinstance(v, str) and k not in keep and k != "id"):
                out[k] = payload
            else:
                out[k] = _poison(v, payload)
        return out
    if isinstance(value, list):
        return [_poison(v, payload) for v in value]
    return value


def _rendered_tags(markdown: str) -> set[str]:
    html = markdown_it.MarkdownIt("commonmark", {"html": True}).enable(["table", "strikethrough"]).render(markdown)
    return set(re.findall(r"<([a-zA-Z][a-zA-Z0-9]*)", html))


@pytest.mark.parametrize("payload", PAYLOADS)
def test_hostile_strings_never_reach_the_card_as_markup(client: Any, payload: str) -> None:
    """Markdown, HTML and JavaScript in every free-text field of the prefetch (units, unit systems, displays,
    texts, the gender, ids that autolink), and in the unit codes of a refused value: the card's detail renders
    to our own tags only (no link, image, script, heading), holds no raw '<', and no unescaped link syntax."""
    prefetch = prefetch_for(load("patient_bundle.json"))
    poisoned = {k: _poison(v, payload) for k, v in prefetch.items()}
    poisoned["patient"]["gender"] = "<img/src=x>" if "<" in payload else "www.evil.example"
    bad_unit = copy.deepcopy(prefetch["glucose"]["entry"][0]["resource"])
    bad_unit["id"] = "www.evil.example"
    code = " ".join(payload.split())  # a FHIR code holds no line break (else the resource itself is refused)
    bad_unit["valueQuantity"].update({"code": code, "system": payload, "unit": payload})
    poisoned["glucose"]["entry"].append({"resource": bad_unit})
    r = client.post(SERVICE, json=cds_request(poisoned))
    assert r.status_code == 200, r.text
    [card] = r.json()["cards"]
    detail = card["detail"]
    assert _rendered_tags(detail) <= {"p", "strong", "table", "thead", "tbody", "tr", "th", "td", "ul", "li"}
    assert "<" not in detail
    assert "](" not in detail.replace("\\](", "")
    assert not re.search(r"(?<!\\)://|(?i:www)(?!\\)\.|(?<!\\)@", detail)
    assert "evil" in detail  # the text is shown (as text), not dropped
    for key in ("summary", "source", "links"):
        assert "evil" not in json.dumps(card[key])


# ---- bodies and bombs ----------------------------------------------------------------------------------------------


def _padded(bundle: dict[str, Any], size: int) -> bytes:
    """``bundle`` with padding entries (resources of another type, skipped) up to ``size`` bytes, pretty-printed
    as generators write it."""
    out = copy.deepcopy(bundle)
    text = {"status": "generated", "div": '<div xmlns="http://www.w3.org/1999/xhtml">' + "visit " * 150 + "</div>"}
    pad = {"resource": {"resourceType": "Encounter", "id": "enc", "status": "finished", "text": text}}
    step = len(json.dumps(pad, indent=2)) + 2
    for i in range(size // step):
        out["entry"].append({"resource": {**pad["resource"], "id": f"enc-{i}"}})
    return json.dumps(out, indent=2).encode()


def test_fhir_routes_take_patient_sized_bundles_and_the_json_api_keeps_its_limit(client: Any) -> None:
    """A 1.5 MB pretty-printed Bundle is read by /fhir/predict and the CDS service (8 MiB limit), while /predict
    keeps its 1 MiB limit; over 8 MiB the FHIR route answers 413 naming fhir_max_body_bytes."""
    body = _padded(clean_bundle(), 1_500_000)
    assert len(body) > 1_048_576
    headers = {"content-type": "application/fhir+json"}
    assert client.post("/fhir/predict", content=body, headers=headers).status_code == 200
    big = client.post("/predict", content=body, headers={"content-type": "application/json"})
    assert big.status_code == 413
    assert big.json()["limit_name"] == "max_body_bytes"
    prefetch = prefetch_for(load("patient_bundle.json"))
    prefetch["glucose"]["entry"] += json.loads(_padded(searchset([]), 1_500_000))["entry"]
    assert client.post(SERVICE, json=cds_request(prefetch)).status_code == 200
    huge = client.post("/fhir/predict", content=b" " * (8 * 1024 * 1024 + 1), headers=headers)
    assert huge.status_code == 413
    assert huge.json()["limit_name"] == "fhir_max_body_bytes"


@pytest.mark.parametrize("bomb", ["deep", "entries", "string"])
def test_bundle_bombs_are_refused_fast_with_a_problem(client: Any, bomb: str) -> None:
    """Under the 8 MiB limit: 200,000-deep nesting, 2.5 million empty entries, a 6 MB string: each a problem
    (400/413/422), within seconds, and the service answers next."""
    if bomb == "deep":
        body = b'{"resourceType": "Bundle", "entry": [{"resource": ' + b"[" * 200_000 + b"]" * 200_000 + b"}]}"
    elif bomb == "entries":
        body = b'{"resourceType": "Bundle", "entry": [' + b",".join([b"{}"] * 2_500_000) + b"]}"
    else:
        patient = {"resourceType": "Patient", "id": "p-1001", "name": [{"text": "x" * 6_000_000}]}
        body = json.dumps({"resourceType": "Bundle", "entry": [{"resource": patient}]}).encode()
    assert len(body) < 8 * 1024 * 1024
    t0 = time.perf_counter()
    r = client.post("/fhir/predict", content=body, headers={"content-type": "application/json"})
    seconds = time.perf_counter() - t0
    assert r.status_code in (400, 413, 422), r.text[:300]
    assert r.headers["content-type"] == "application/problem+json"
    if bomb == "string":
        assert [e["rule"] for e in r.json()["errors"]] == ["string_too_long"]
    assert seconds < 10, f"{bomb}: {seconds:.1f} s"
    assert client.get("/healthz").status_code == 200


def test_hostile_strings_never_reach_the_plots_or_the_page(client: Any) -> None:
    """A Bundle whose displays and texts all carry Markdown/HTML/JavaScript: /fhir/explain answers (the text stays
    JSON data, never a display of ours), and the record it read, drawn by /explain/plot as SVG, and the page hold
    none of it: only numbers travel from FHIR to a plot."""
    payload = "<script>alert(1)</script>![t](https://evil.example/t.png)"

    def displays(value: Any) -> Any:  # every display and text (the units stay: /fhir/* refuses unknown ones)
        if isinstance(value, dict):
            return {k: payload if k in ("display", "text") and isinstance(v, str) else displays(v)
                    for k, v in value.items()}  # fmt: skip
        return [displays(v) for v in value] if isinstance(value, list) else value

    bundle = displays(clean_bundle())
    r = client.post("/fhir/explain", json=bundle)
    assert r.status_code == 200, r.text
    body = r.json()
    assert all("evil" not in s["display"] for s in body["fhir"]["sources"].values())
    record = {k: v["value"] for k, v in body["fhir"]["sources"].items()}
    record["pregnancies"] = int(record["pregnancies"])
    svg = client.post("/explain/plot?format=svg", json=record)
    assert svg.status_code == 200, svg.text[:300]
    assert "evil" not in svg.text
    assert "<script" not in svg.text
    assert "evil" not in client.get("/").text

"""The HTTP API, through HTTP, against the real bundle and the real engine: every endpoint, every refusal."""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import re
import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import pytest
from helpers import AppClient, app_client, default_spec, record

from service import __version__
from service.api.app import create_app, openapi_yaml
from service.config import Settings
from service.model.store import Bundle

SCHEMA_SPEC = default_spec()

PROBLEM = "application/problem+json"


@pytest.fixture(scope="module")
def client(bundle: Bundle) -> Iterator[AppClient]:
    with app_client(create_app(Settings(), bundle)) as c:
        yield c


def _problem(r: Any, status: int) -> dict[str, Any]:
    assert r.status_code == status, r.text
    assert r.headers["content-type"] == PROBLEM
    body: dict[str, Any] = r.json()
    assert body["status"] == status
    assert body["type"].startswith("/problems/")
    assert body["request_id"] == r.headers["x-request-id"]
    assert "Traceback" not in r.text
    return body


def _fields(body: dict[str, Any]) -> dict[str, str]:
    return {e["field"]: e["rule"] for e in body["errors"]}


# ---- /predict ---------------------------------------------------------------------------------------------


def test_predict_example_record(client: AppClient, bundle: Bundle) -> None:
    """The spec's example record gets a probability, its logit, the label at the threshold and the model version."""
    r = client.post("/predict", json=record())
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/json"
    p = r.json()
    assert 0.0 <= p["probability"] <= 1.0
    assert math.isclose(p["probability"], 1 / (1 + math.exp(-p["logit"])), rel_tol=1e-9)
    assert p["threshold"] == bundle.threshold
    assert p["label"] == int(p["probability"] >= p["threshold"])
    assert p["label_name"] == (SCHEMA_SPEC.positive_label if p["label"] else SCHEMA_SPEC.negative_label)
    assert p["model_version"] == f"{bundle.name}/{bundle.version}"
    assert p["imputed"] == ["insulin"]  # the example's insulin is 0: not measured
    assert p["warnings"] == []


def test_null_zero_and_omitted_mean_not_measured(client: AppClient) -> None:
    """glucose null, 0 or omitted: the same imputed prediction, and glucose is listed in `imputed`."""
    null = client.post("/predict", json=record(glucose=None)).json()
    zero = client.post("/predict", json=record(glucose=0)).json()
    omitted_body = record()
    del omitted_body["glucose"]
    omitted = client.post("/predict", json=omitted_body).json()
    assert null == zero == omitted
    assert null["imputed"] == ["glucose", "insulin"]
    assert null["probability"] != client.post("/predict", json=record()).json()["probability"]


def test_predict_warns_outside_training_range(client: AppClient, bundle: Bundle) -> None:
    """A plausible value beyond the training range is answered with a warning naming the feature and range."""
    r = client.post("/predict", json=record(insulin=900))
    [w] = r.json()["warnings"]
    j = SCHEMA_SPEC.names.index("insulin")
    assert w["feature"] == "insulin"
    assert w["code"] == "outside_training_range"
    assert w["value"] == 900
    assert w["train_max"] == pytest.approx(bundle.preprocessor.train_max[j])
    assert "900" in w["message"]
    assert "extrapolates" in w["message"]


def test_required_feature_may_not_be_null(client: AppClient) -> None:
    """age is required: null or omitted is a 422 naming age."""
    body = _problem(client.post("/predict", json=record(age=None)), 422)
    assert _fields(body) == {"age": "float_type"}
    no_age = record()
    del no_age["age"]
    body = _problem(client.post("/predict", json=no_age), 422)
    assert _fields(body) == {"age": "missing"}


def test_unknown_field_is_refused_not_ignored(client: AppClient) -> None:
    """A misspelled 'glucos' is a 422 naming it, never a silently missing glucose."""
    body = record()
    body["glucos"] = body.pop("glucose")
    problem = _problem(client.post("/predict", json=body), 422)
    assert problem["type"] == "/problems/validation"
    assert problem["instance"] == "/predict"
    assert _fields(problem) == {"glucos": "extra_forbidden"}
    assert "glucos" in problem["detail"]


@pytest.mark.parametrize(
    ("raw", "field", "rule"),
    [
        (json.dumps(record(glucose="148")), "glucose", "float_type"),
        (json.dumps(record(glucose=True)), "glucose", "float_type"),
        (json.dumps(record(pregnancies=2.5)), "pregnancies", "int_type"),
        (json.dumps(record(pregnancies="6")), "pregnancies", "int_type"),
        (json.dumps(record(glucose=-1)), "glucose", "greater_than_equal"),
        (json.dumps(record(glucose=601)), "glucose", "less_than_equal"),
        (json.dumps(record(age=121)), "age", "less_than_equal"),
        (json.dumps(record(bmi=[33.6])), "bmi", "float_type"),
        (json.dumps(record()).replace('"bmi": 33.6', '"bmi": NaN'), "bmi", "finite_number"),
        (json.dumps(record()).replace('"bmi": 33.6', '"bmi": Infinity'), "bmi", "finite_number"),
        (json.dumps(record()).replace('"bmi": 33.6', '"bmi": 1e999'), "bmi", "finite_number"),
    ],
    ids=[
        "string",
        "boolean",
        "fraction-for-count",
        "string-for-count",
        "negative",
        "implausible",
        "age-over-120",
        "array",
        "nan",
        "infinity",
        "overflow",
    ],
)
def test_invalid_values_name_field_and_rule(client: AppClient, raw: str, field: str, rule: str) -> None:
    """Wrong type, out of range, non-integer count, NaN/Infinity: 422 naming the field and the rule."""
    r = client.post("/predict", content=raw, headers={"content-type": "application/json"})
    problem = _problem(r, 422)
    assert _fields(problem) == {field: rule}
    assert all(e["message"] for e in problem["errors"])


def test_range_error_names_the_limit(client: AppClient) -> None:
    """A range refusal carries the bound in the field's unit."""
    problem = _problem(client.post("/predict", json=record(glucose=601)), 422)
    assert problem["errors"][0]["limit"] == 600


def test_refusals_do_not_echo_values(client: AppClient) -> None:
    """A 4xx problem names fields and rules but never repeats the submitted value."""
    r = client.post("/predict", json=record(glucose=598.123, age=150.456))
    _problem(r, 422)
    assert "598.123" not in r.text
    assert "150.456" not in r.text


def test_malformed_json_is_400(client: AppClient) -> None:
    """A body that is not JSON is a 400 malformed-body problem."""
    r = client.post("/predict", content=b'{"glucose": 148,', headers={"content-type": "application/json"})
    problem = _problem(r, 400)
    assert problem["type"].endswith("/malformed-body")
    assert _fields(problem) == {"body": "json_invalid"}


@pytest.mark.parametrize("content", [b"", b"[]", b"null", b"148"])
def test_empty_or_non_object_body_is_422(client: AppClient, content: bytes) -> None:
    """An empty body, or JSON that is not an object, is a 422 about the body."""
    r = client.post("/predict", content=content, headers={"content-type": "application/json"})
    problem = _problem(r, 422)
    assert [e["field"] for e in problem["errors"]] == ["body"]


def test_missing_body_without_content_type_is_422(client: AppClient) -> None:
    """POST with no body at all is a 422: the body is required."""
    problem = _problem(client.post("/predict"), 422)
    assert _fields(problem) == {"body": "missing"}


@pytest.mark.parametrize("content_type", ["text/plain", "application/x-www-form-urlencoded", None])
def test_wrong_content_type_is_415(client: AppClient, content_type: str | None) -> None:
    """A body that is not declared application/json is a 415 problem."""
    headers = {"content-type": content_type} if content_type else {}
    r = client.post("/predict", content=json.dumps(record()).encode(), headers=headers)
    _problem(r, 415)


def test_problem_json_content_type_is_accepted(client: AppClient) -> None:
    """application/*+json bodies are JSON too."""
    r = client.post("/predict", content=json.dumps(record()), headers={"content-type": "application/merge+json"})
    assert r.status_code == 200


def test_body_over_limit_is_413(bundle: Bundle) -> None:
    """A body over GSHAP_MAX_BODY_BYTES is a 413 problem, by Content-Length and by streamed size."""
    app = create_app(Settings(max_body_bytes=1024), bundle)
    big = json.dumps({**record(), "padding": "x" * 2000}).encode()

    async def chunks() -> AsyncIterator[bytes]:
        for i in range(0, len(big), 256):
            yield big[i : i + 256]

    with app_client(app) as c:
        problem = _problem(c.post("/predict", content=big, headers={"content-type": "application/json"}), 413)
        assert problem["limit"] == 1024
        streamed = c.post("/predict", content=chunks(), headers={"content-type": "application/json"})
        _problem(streamed, 413)
        assert c.post("/predict", json=record()).status_code == 200


def test_unsupported_method_is_405(client: AppClient) -> None:
    """GET on a POST route is a 405 problem with an Allow header."""
    r = client.get("/predict")
    problem = _problem(r, 405)
    assert r.headers["allow"] == "POST"
    assert problem["type"].endswith("/method-not-allowed")


def test_unknown_path_is_404(client: AppClient) -> None:
    """An unknown path is a 404 problem."""
    _problem(client.get("/nowhere"), 404)


# ---- /explain ---------------------------------------------------------------------------------------------


def test_explain_example_record(client: AppClient, bundle: Bundle) -> None:
    """Attributions in spec order with units, adding up (with the gap) to output - base; the /predict fields."""
    r = client.post("/explain", json=record())
    assert r.status_code == 200, r.text
    ex = r.json()
    assert ex["prediction"] == client.post("/predict", json=record()).json()
    assert ex["output"] == "logit"
    assert ex["method"] == "exact"
    assert ex["seed"] == 0
    assert ex["n_samples"] == 0  # exact samples nothing: the engine reports 0
    assert ex["n_baselines"] == len(bundle.baselines)
    assert ex["output_value"] == pytest.approx(ex["prediction"]["logit"], abs=1e-5)
    attrs = ex["attributions"]
    assert [a["feature"] for a in attrs] == SCHEMA_SPEC.names
    assert [a["unit"] for a in attrs] == [f.unit for f in SCHEMA_SPEC]
    assert [a["label"] for a in attrs] == [f.label for f in SCHEMA_SPEC]
    total = sum(a["attribution"] for a in attrs)
    assert total + ex["completeness_gap"] == pytest.approx(ex["output_value"] - ex["base_value"], abs=1e-6)
    assert abs(ex["completeness_gap"]) < 1e-3
    sent = record()
    for a in attrs:
        if a["feature"] != "insulin":
            assert a["value"] == sent[a["feature"]]
            assert a["imputed"] is False
        assert a["standard_error"] >= 0


def test_explain_flags_imputed_values(client: AppClient, bundle: Bundle) -> None:
    """A value not measured is explained at the imputed median, flagged imputed."""
    ex = client.post("/explain", json=record(glucose=None)).json()
    by = {a["feature"]: a for a in ex["attributions"]}
    j = SCHEMA_SPEC.names.index("glucose")
    assert by["glucose"]["imputed"] is True
    assert by["glucose"]["value"] == pytest.approx(bundle.preprocessor.fill[j])
    assert by["bmi"]["imputed"] is False


def test_explain_summary_names_strongest_drivers(client: AppClient) -> None:
    """The summary is one sentence naming the feature with the largest attribution, in its direction."""
    ex = client.post("/explain", json=record()).json()
    top = max(ex["attributions"], key=lambda a: abs(a["attribution"]))
    summary = ex["summary"]
    assert summary.endswith(".")
    assert summary.count(".") <= 3  # decimals only, one sentence
    assert top["label"] in summary
    assert ("up" if top["attribution"] > 0 else "down") in summary.split(";")[0]


def test_explain_probability_output(client: AppClient) -> None:
    """output=probability explains the probability: output_value is the predicted probability."""
    ex = client.post("/explain", json=record(output="probability")).json()
    assert ex["output"] == "probability"
    assert ex["output_value"] == pytest.approx(ex["prediction"]["probability"], abs=1e-6)
    assert 0 < ex["base_value"] < 1
    total = sum(a["attribution"] for a in ex["attributions"])
    assert total + ex["completeness_gap"] == pytest.approx(ex["output_value"] - ex["base_value"], abs=1e-6)


@pytest.mark.parametrize("method", ["sampled", "quadrature"])
def test_explain_other_methods_are_reproducible(client: AppClient, method: str) -> None:
    """sampled and quadrature: the settings are echoed and the same seed gives the same answer."""
    body = record(method=method, n_samples=16, seed=7)
    first = client.post("/explain", json=body).json()
    assert first["method"] == method
    assert first["seed"] == 7
    assert first["n_samples"] == 16
    assert client.post("/explain", json=body).json() == first


@pytest.mark.parametrize(
    ("changes", "field", "rule"),
    [
        ({"n_samples": 0}, "n_samples", "greater_than_equal"),
        ({"n_samples": 10**9}, "n_samples", "less_than_equal"),
        ({"seed": -1}, "seed", "greater_than_equal"),
        ({"seed": 2**31}, "seed", "less_than_equal"),
        ({"method": "captum"}, "method", "literal_error"),
        ({"output": "odds"}, "output", "literal_error"),
        ({"n_samples": "8"}, "n_samples", "int_type"),
        ({"n_samples": 1, "method": "sampled"}, "n_samples", "greater_than_equal"),
    ],
)
def test_explain_settings_are_validated(client: AppClient, changes: dict[str, Any], field: str, rule: str) -> None:
    """Out-of-bounds n_samples or seed, an unknown method or output: 422 naming the setting."""
    problem = _problem(client.post("/explain", json=record(**changes)), 422)
    assert _fields(problem) == {field: rule}


def test_server_can_lower_max_n_samples(bundle: Bundle) -> None:
    """GSHAP_MAX_N_SAMPLES lowers the bound: above it is a 422 naming n_samples and the limit."""
    with app_client(create_app(Settings(max_n_samples=32), bundle)) as c:
        problem = _problem(c.post("/explain", json=record(method="sampled", n_samples=33)), 422)
        assert problem["errors"][0]["field"] == "n_samples"
        assert problem["errors"][0]["limit"] == 32
        assert c.post("/explain", json=record(method="sampled", n_samples=32)).status_code == 200


# ---- batches ----------------------------------------------------------------------------------------------


def test_predict_batch_reports_a_bad_record_by_index(client: AppClient) -> None:
    """One bad record is refused by its index; the others are answered, in order, as /predict answers them."""
    bad = record()
    bad["glucos"] = bad.pop("glucose")
    records = [record(), bad, record(glucose=None), "not a record"]
    r = client.post("/predict/batch", json={"records": records})
    assert r.status_code == 200, r.text
    out = r.json()
    assert (out["succeeded"], out["failed"]) == (2, 2)
    assert [(i["index"], i["ok"]) for i in out["results"]] == [(0, True), (1, False), (2, True), (3, False)]
    single = client.post("/predict", json=record(glucose=None)).json()
    assert {k: out["results"][2][k] for k in single} == single
    error = out["results"][1]["error"]
    assert error["status"] == 422
    assert _fields(error) == {"glucos": "extra_forbidden"}
    assert error["instance"] == "/predict/batch#/records/1"
    assert out["results"][3]["error"]["errors"][0]["field"] == "body"


def test_explain_batch_matches_single_explanations(client: AppClient) -> None:
    """Batch explanations equal the single ones: a record's attributions do not depend on its neighbours."""
    records = [record(), record(glucose=180, age=31), record(bmi=None, pregnancies=0)]
    r = client.post("/explain/batch", json={"records": records, "method": "sampled", "n_samples": 16, "seed": 3})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    for i, rec in enumerate(records):
        single = client.post("/explain", json={**rec, "method": "sampled", "n_samples": 16, "seed": 3}).json()
        item = results[i]
        assert item["index"] == i
        assert item["ok"] is True
        assert item["summary"] == single["summary"]
        for a, b in zip(item["attributions"], single["attributions"], strict=True):
            assert a["attribution"] == pytest.approx(b["attribution"], abs=1e-9)


def test_batch_over_limit_is_413_naming_the_limit(bundle: Bundle) -> None:
    """More records than GSHAP_MAX_BATCH_RECORDS: 413 problem with `limit`; at the limit: answered."""
    with app_client(create_app(Settings(max_batch_records=2), bundle)) as c:
        problem = _problem(c.post("/predict/batch", json={"records": [record()] * 3}), 413)
        assert problem["limit"] == 2
        assert problem["received"] == 3
        assert "GSHAP_MAX_BATCH_RECORDS" in problem["detail"]
        _problem(c.post("/explain/batch", json={"records": [record()] * 3}), 413)
        assert c.post("/predict/batch", json={"records": [record()] * 2}).status_code == 200


def test_empty_batch_is_422(client: AppClient) -> None:
    """A batch needs at least one record."""
    problem = _problem(client.post("/predict/batch", json={"records": []}), 422)
    assert _fields(problem) == {"records": "too_short"}


# ---- /groups, /model, health ------------------------------------------------------------------------------


def test_groups_lists_outcome_groups(client: AppClient, bundle: Bundle) -> None:
    """/groups has TP, TN, FP, FN and ALL with counts adding up, each feature's mean and interval in spec order."""
    r = client.get("/groups")
    assert r.status_code == 200, r.text
    out = r.json()
    groups = out["groups"]
    assert {"TP", "TN", "FP", "FN", "ALL"} <= set(groups)
    assert sum(groups[g]["count"] for g in ("TP", "TN", "FP", "FN")) == groups["ALL"]["count"] == len(bundle.eval_y)
    for name, g in groups.items():
        assert g["group"] == name
        assert [f["feature"] for f in g["features"]] == SCHEMA_SPEC.names
        for f in g["features"]:
            assert {"mean", "ci_low", "ci_high", "std", "mean_abs", "mean_value"} <= set(f)
    assert out["model_version"] == f"{bundle.name}/{bundle.version}"
    matrix = out["confusion_matrix"]
    assert matrix == {k.lower(): groups[k]["count"] for k in ("TN", "FP", "FN", "TP")}
    assert out["evaluation_set_size"] == len(bundle.eval_y)
    assert out["threshold"] == bundle.threshold


def test_one_group_and_unknown_group(client: AppClient) -> None:
    """/groups/TP answers that group (any case); an unknown group is a 404 problem."""
    tp = client.get("/groups/TP").json()
    assert tp["group"] == "TP"
    assert tp == client.get("/groups/tp").json()
    assert tp == client.get("/groups").json()["groups"]["TP"]
    problem = _problem(client.get("/groups/XX"), 404)
    assert problem["type"].endswith("/not-found")


def test_model_card(client: AppClient, bundle: Bundle) -> None:
    """/model describes the model: versions, features with units and rules, metrics with intervals, provenance."""
    r = client.get("/model")
    assert r.status_code == 200, r.text
    card = r.json()
    assert card["model_version"] == r.headers["x-model-version"] == f"{bundle.name}/{bundle.version}"
    assert card["service_version"] == r.headers["x-service-version"] == __version__
    assert [f["name"] for f in card["features"]] == SCHEMA_SPEC.names
    glucose = card["features"][1]
    assert glucose["unit"] == "mg/dL"
    assert "not measured" in glucose["missing"]
    assert card["features"][-1]["missing"] == "required"
    auc = card["metrics"]["mlp"]["roc_auc"]
    assert auc["ci_low"] <= auc["value"] <= auc["ci_high"]
    assert card["threshold"] == bundle.threshold
    assert card["data"]["sha256"] == bundle.manifest["data"]["sha256"]
    assert card["baselines"]["count"] == len(bundle.baselines)
    assert card["explanation_defaults"]["method"] == "exact"
    assert card["limits"]["max_batch_records"] == Settings().max_batch_records
    # the card's words are the bundle's one model card, and the methods are the bundle's
    words = bundle.card.to_dict()
    for key in ("intended_use", "intended_users", "out_of_scope_uses", "population", "limitations", "outcome"):
        assert card[key] == words[key], key
    assert card["development_and_validation"] == bundle.card.development
    assert (card["methods"], card["default_method"]) == (list(bundle.methods), bundle.default_method)
    assert set(card["explanation_method"]["methods"]) == set(bundle.methods)


def test_health_and_readiness(client: AppClient, bundle: Bundle) -> None:
    """/healthz is ok; /readyz is ready with the model version once the lifespan has warmed up."""
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready", "model_version": f"{bundle.name}/{bundle.version}"}


def test_not_ready_before_startup(bundle: Bundle) -> None:
    """Before the lifespan has loaded the model, /readyz and the model routes are 503 problems; /healthz is ok."""
    with app_client(create_app(Settings(), bundle), lifespan=False) as c:
        assert c.get("/healthz").status_code == 200
        assert _problem(c.get("/readyz"), 503)["type"].endswith("/model-not-ready")
        _problem(c.post("/predict", json=record()), 503)


# ---- cross-cutting ----------------------------------------------------------------------------------------


def test_headers_on_every_answer(client: AppClient) -> None:
    """Request id, versions and security headers on answers and problems alike."""
    answers = [
        client.post("/predict", json=record()),
        client.post("/predict", json={"glucos": 1}),
        client.get("/nowhere"),
        client.get("/predict"),
        client.get("/healthz"),
    ]
    for r in answers:
        assert len(r.headers["x-request-id"]) >= 16
        assert r.headers["x-service-version"] == __version__
        assert r.headers["x-model-version"] == "pima-diabetes/1.1.0"
        assert r.headers["x-content-type-options"] == "nosniff"
        assert r.headers["x-frame-options"] == "DENY"
        assert r.headers["referrer-policy"] == "no-referrer"
        assert r.headers["cache-control"] == "no-store"
        assert r.headers["content-security-policy"].startswith("default-src 'none'")


def test_request_id_is_echoed_when_plain(client: AppClient) -> None:
    """A plain X-Request-ID is echoed and used in problems; a dubious one is replaced."""
    r = client.post("/predict", json={"glucos": 1}, headers={"X-Request-ID": "clinic-42.a"})
    assert r.headers["x-request-id"] == "clinic-42.a"
    assert r.json()["request_id"] == "clinic-42.a"
    for dubious in ["has space", "x" * 200, "a\tb"]:
        assert client.get("/healthz", headers={"X-Request-ID": dubious}).headers["x-request-id"] != dubious


def test_docs_are_served_with_a_csp_that_lets_them_load(client: AppClient) -> None:
    """/docs and /redoc are HTML whose assets are all on this server (CSP 'self'); /openapi.json is the spec."""
    for path in ("/docs", "/redoc"):
        r = client.get(path)
        assert r.status_code == 200
        assert "text/html" in r.headers["content-type"]
        assert "http" not in r.headers["content-security-policy"]
        assert "http" not in r.text.replace('"/openapi.json"', "")
        for asset in re.findall(r'(?:src|href)="(/static/[^"]+)"', r.text):
            assert client.get(asset).status_code == 200, asset
    assert client.get("/openapi.json").json()["info"]["version"] == __version__


def test_openapi_yaml_is_what_the_app_serves(client: AppClient, root: Path) -> None:
    """openapi.yaml at the repository root equals the app's OpenAPI document (run `gshap openapi` if not)."""
    import yaml

    assert (root / "openapi.yaml").read_text() == openapi_yaml()
    # served by an app of the shipped store (every version of every model), started and asked over HTTP
    with app_client(create_app(Settings())) as store_client:
        assert yaml.safe_load((root / "openapi.yaml").read_text()) == store_client.get("/openapi.json").json()


def test_openapi_documents_every_field_and_body(client: AppClient) -> None:
    """Every schema property has a description, every request body an example, every problem its media type."""
    doc = client.get("/openapi.json").json()
    for name, schema in doc["components"]["schemas"].items():
        for prop, spec in schema.get("properties", {}).items():
            assert spec.get("description"), f"{name}.{prop} has no description"
    ids = set()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            ids.add(op["operationId"])
            if "requestBody" in op:
                content = op["requestBody"]["content"]["application/json"]
                has_example = "examples" in content or "example" in content
                schema = content["schema"]
                ref = schema.get("$ref", "").rsplit("/", 1)[-1]
                assert has_example or doc["components"]["schemas"][ref].get("examples"), f"{method} {path}"
            for code, response in op["responses"].items():
                if code.startswith(("4", "5")):
                    # the Open Inference Protocol's paths answer its own {"error": ...} (docs/V2.md)
                    expected = ["application/json"] if path.startswith("/v2") else [PROBLEM]
                    assert list(response["content"]) == expected, f"{method} {path} {code}"
    per_model = {
        "predict",
        "predict_batch",
        "explain",
        "explain_batch",
        "explain_plot",
        "list_groups",
        "get_group",
        "get_group_plot",
        "get_model_card",
        "monitoring",
        "fhir_predict",
        "fhir_explain",
    }
    # each served model again under /models/{name} and each version under /models/{name}/versions/{version}
    suffixes = []
    for m in client.get("/models").json()["models"]:
        slug = re.sub(r"\W", "_", m["name"])
        suffixes += [slug, *(slug + "__" + re.sub(r"\W", "_", v["version"]) for v in m["versions"])]
    assert ids == {
        *per_model,
        *(f"{op}__{suffix}" for op in per_model for suffix in suffixes),
        "liveness",
        "readiness",
        "metrics",
        "cds_discovery",
        "cds_service",
        "cds_service_feedback",
        "cds_feedback_summary",
        "v2_server_metadata",
        "v2_server_live",
        "v2_server_ready",
        "v2_model_metadata",
        "v2_model_version_metadata",
        "v2_model_ready",
        "v2_model_version_ready",
        "v2_model_infer",
        "v2_model_version_infer",
        "list_models",
        "get_served_model",
    }
    glucose = doc["components"]["schemas"]["PatientRecord"]["properties"]["glucose"]
    assert "mg/dL" in glucose["description"]
    assert doc["components"]["schemas"]["PatientRecord"]["additionalProperties"] is False


def test_access_log_never_contains_patient_values(client: AppClient, caplog: pytest.LogCaptureFixture) -> None:
    """Access logs carry request id, route template, status and latency, and no value from the body."""
    caplog.set_level(logging.INFO, logger="gshap")
    values = record(glucose=147.123, bmi=31.987, age=49)
    client.post("/predict", json=values, headers={"X-Request-ID": "log-check-1"})
    client.post("/explain", json=values)
    client.post("/predict", json={**values, "glucos": 1})
    client.get("/groups/XX")
    text = "\n".join(r.getMessage() + json.dumps(getattr(r, "fields", {})) for r in caplog.records)
    assert "147.123" not in text
    assert "31.987" not in text
    assert "glucos" not in text
    access = [r for r in caplog.records if r.name == "gshap.access"]
    first = next(r for r in access if r.fields["request_id"] == "log-check-1")  # type: ignore[attr-defined]
    assert first.fields["route"] == "/predict"  # type: ignore[attr-defined]
    assert first.fields["status"] == 200  # type: ignore[attr-defined]
    assert first.fields["latency_ms"] >= 0  # type: ignore[attr-defined]
    assert any(r.fields["route"] == "/groups/{group}" for r in access)  # type: ignore[attr-defined]


def test_unhandled_error_is_a_bare_500_problem(bundle: Bundle, caplog: pytest.LogCaptureFixture) -> None:
    """An unexpected exception becomes a 500 problem with the request id only; the log has no message."""
    app = create_app(Settings(), bundle)

    async def boom() -> None:
        raise RuntimeError("glucose=147.123 leaked")

    app.add_api_route("/boom", boom)
    caplog.set_level(logging.INFO, logger="gshap")
    with app_client(app) as c:
        r = c.get("/boom")
    problem = _problem(r, 500)
    assert set(problem) == {"type", "title", "status", "detail", "instance", "request_id"}
    assert "147.123" not in r.text
    assert "RuntimeError" not in r.text
    logged = "\n".join(r.getMessage() + json.dumps(getattr(r, "fields", {})) for r in caplog.records)
    assert "RuntimeError" in logged
    assert "147.123" not in logged


def test_cors_closed_by_default_and_open_when_configured(client: AppClient, bundle: Bundle) -> None:
    """No CORS headers unless GSHAP_CORS_ORIGINS names the origin."""
    preflight = {"Origin": "https://clinic.example", "Access-Control-Request-Method": "POST"}
    r = client.request("OPTIONS", "/predict", headers=preflight)
    assert "access-control-allow-origin" not in r.headers
    with app_client(create_app(Settings(cors_origins=["https://clinic.example"]), bundle)) as c:
        r = c.request("OPTIONS", "/predict", headers=preflight)
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "https://clinic.example"
        r = c.post("/predict", json=record(), headers={"Origin": "https://clinic.example"})
        assert r.headers["access-control-allow-origin"] == "https://clinic.example"
        assert "x-request-id" in r.headers["access-control-expose-headers"].lower()


# ---- authentication and rate limit ------------------------------------------------------------------------


def test_api_keys_are_required_when_configured(bundle: Bundle) -> None:
    """With GSHAP_API_KEYS, no key or a wrong key is the same 401; either rotated key works, both header forms."""
    with app_client(create_app(Settings(api_keys=["key-old", "key-new"]), bundle)) as c:
        missing = c.post("/predict", json=record())
        wrong = c.post("/predict", json=record(), headers={"Authorization": "Bearer key-guess"})
        for r in (missing, wrong):
            _problem(r, 401)
            assert r.headers["www-authenticate"].startswith("Bearer")

        def strip(r: Any) -> dict[str, Any]:
            return {k: v for k, v in r.json().items() if k != "request_id"}

        assert strip(missing) == strip(wrong)
        assert c.post("/predict", json=record(), headers={"Authorization": "Bearer key-old"}).status_code == 200
        assert c.post("/predict", json=record(), headers={"X-API-Key": "key-new"}).status_code == 200
        assert c.get("/model", headers={"X-API-Key": "key-new"}).status_code == 200
        assert c.get("/openapi.json").status_code == 401
        assert c.get("/healthz").status_code == 200
        assert c.get("/readyz").status_code == 200


def test_rate_limit_is_429_with_retry_after(bundle: Bundle) -> None:
    """Over GSHAP_RATE_LIMIT_PER_MINUTE a key gets 429 with Retry-After; another key is unaffected."""
    settings = Settings(api_keys=["a", "b"], rate_limit_per_minute=2)
    with app_client(create_app(settings, bundle)) as c:
        a = {"X-API-Key": "a"}
        assert c.get("/model", headers=a).status_code == 200
        assert c.get("/model", headers=a).status_code == 200
        r = c.get("/model", headers=a)
        problem = _problem(r, 429)
        assert int(r.headers["retry-after"]) >= 1
        assert problem["retry_after"] == int(r.headers["retry-after"])
        assert c.get("/model", headers={"X-API-Key": "b"}).status_code == 200
        assert c.get("/healthz").status_code == 200


def test_start_sets_the_gil_switch_interval(bundle: Bundle) -> None:
    """GSHAP_GIL_SWITCH_INTERVAL_MS becomes Python's switch interval when the app starts (the engine thread's
    hand-over of each batch waits up to that long for the GIL)."""
    before = sys.getswitchinterval()
    try:
        with app_client(create_app(Settings(gil_switch_interval_ms=0.25), bundle)) as c:
            assert c.get("/readyz").status_code == 200
            assert sys.getswitchinterval() == pytest.approx(0.25e-3)
    finally:
        sys.setswitchinterval(before)


def _without_exact(bundle: Bundle) -> Bundle:
    """The default bundle whose spec declares a tanh network: the exact kernel does not cover it (the served weights
    stay the ReLU network's; what is tested is the web layer's reading of ``bundle.methods``)."""
    from service.model.spec import Layer

    layers = tuple(Layer("tanh") if layer.kind == "relu" else layer for layer in bundle.model_spec.network)
    return dataclasses.replace(bundle, model_spec=dataclasses.replace(bundle.model_spec, network=layers))


def test_a_model_without_exact_refuses_it_and_defaults_to_quadrature(bundle: Bundle) -> None:
    """For a model whose bundle does not offer 'exact', /explain defaults to 'quadrature', a request for 'exact' is a
    422 naming the rule and the methods that apply, /model lists the methods, and the OpenAPI document says so."""
    served = _without_exact(bundle)
    assert served.methods == ("sampled", "quadrature")
    with app_client(create_app(Settings(), served)) as c:
        answer = c.post("/explain", json=record())
        assert answer.status_code == 200, answer.text
        assert answer.json()["method"] == "quadrature"
        refused = _problem(c.post("/explain", json=record(method="exact")), 422)
        assert refused["type"] == "/problems/method-not-offered"
        assert refused["methods"] == ["sampled", "quadrature"]
        [error] = refused["errors"]
        assert error["field"] == "method"
        assert "sampled, quadrature" in error["message"]
        batch = _problem(c.post("/explain/batch", json={"records": [record()], "method": "exact"}), 422)
        assert batch["type"] == "/problems/method-not-offered"
        card = c.get("/model").json()
        assert (card["methods"], card["default_method"]) == (["sampled", "quadrature"], "quadrature")
        assert "exact" not in card["explanation_method"]["methods"]
        method = c.get("/openapi.json").json()["components"]["schemas"]["ExplainRequest"]["properties"]["method"]
        assert method["default"] == "quadrature"
        assert "does not offer 'exact'" in method["description"]


def test_a_bundle_with_other_feature_names_is_served_with_its_own_schema(bundle: Bundle, tmp_path: Path) -> None:
    """The request schema is built from the loaded bundle: a copy whose second feature is named `plasma_glucose`
    takes `plasma_glucose` (and refuses `glucose` as unknown), and the served OpenAPI document says so."""
    import shutil

    from service.model.store import _write_checksums, load_bundle

    copy = tmp_path / "bundle"
    shutil.copytree(bundle.path, copy)
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["features"]["features"][1]["name"] = "plasma_glucose"
    spec = manifest["spec"]  # the bundle's own spec (format 3): its features and their FHIR mappings
    spec["features"][1]["name"] = "plasma_glucose"
    spec["fhir"] = {("plasma_glucose" if k == "glucose" else k): v for k, v in spec["fhir"].items()}
    (copy / "manifest.json").write_text(json.dumps(manifest))
    _write_checksums(copy)
    renamed = load_bundle(copy)
    body = {("plasma_glucose" if k == "glucose" else k): v for k, v in record().items()}
    with app_client(create_app(Settings(), renamed)) as c:
        answer = c.post("/predict", json=body)
        assert answer.status_code == 200, answer.text
        assert answer.json()["probability"] == c.post("/predict", json=body).json()["probability"]
        assert _fields(_problem(c.post("/predict", json=record()), 422)) == {"glucose": "extra_forbidden"}
        properties = c.get("/openapi.json").json()["components"]["schemas"]["PatientRecord"]["properties"]
        assert list(properties)[1] == "plasma_glucose"

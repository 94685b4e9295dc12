"""The Open Inference Protocol (V2 REST) against a real ``gshap serve``, with clients no one here wrote.

- ``tritonclient[http]`` with its defaults (binary tensors in and out), and with JSON tensors;
- KServe's ``InferenceRESTClient`` with ``RESTConfig(protocol="v2")``, run in a virtual environment of its own,
  ``.venv-kserve/`` (the ``kserve`` package pins older psutil and protobuf than this project), created on first
  use from PyPI and reused after;
- raw HTTP for the refusals.

Every number is compared with ``/predict/batch`` and ``/explain/batch`` of the same server, bit for bit (``==`` on
floats, never a tolerance). The records are drawn (seeded) from the valid ranges the model's V2 metadata
publishes, so the test follows whichever bundle is served.
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
import tritonclient.http as triton
from live_server import ROOT, LiveServer, running_server
from tritonclient.utils import InferenceServerException

KSERVE_VENV = ROOT / ".venv-kserve"
KSERVE_REQUIREMENTS = ROOT / "tests" / "kserve-requirements.txt"
KSERVE_SCRIPT = ROOT / "tests" / "kserve_v2_client.py"
N_RECORDS = 12
MAX_BATCH = 20  # the server's GSHAP_MAX_BATCH_RECORDS in this module


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with running_server({"GSHAP_MAX_BATCH_RECORDS": str(MAX_BATCH)}) as server:
        yield server


@pytest.fixture(scope="module")
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=60) as client:
        yield client


@pytest.fixture(scope="module")
def served(http: httpx.Client) -> tuple[str, str]:
    """The served model's name and version, as the JSON API's readiness names it."""
    name, version = http.get("/readyz").json()["model_version"].split("/")
    return name, version


@pytest.fixture(scope="module")
def metadata(http: httpx.Client, served: tuple[str, str]) -> dict[str, Any]:
    answer: dict[str, Any] = http.get(f"/v2/models/{served[0]}").json()
    return answer


@pytest.fixture(scope="module")
def triton_client(live: LiveServer) -> Iterator[Any]:
    client = triton.InferenceServerClient(live.url.removeprefix("http://"), network_timeout=120.0)
    yield client
    client.close()


def _records(metadata: dict[str, Any], n: int = N_RECORDS, seed: int = 23) -> list[dict[str, Any]]:
    """``n`` valid records drawn in the published ranges; optional features sometimes left out (not measured)."""
    rng = np.random.default_rng(seed)
    records = []
    for _ in range(n):
        record: dict[str, Any] = {}
        for tensor in metadata["inputs"]:
            p = tensor["parameters"]
            if p["optional"] and rng.random() < 0.25:
                continue
            value = rng.uniform(p["valid_min"], p["valid_max"])
            record[tensor["name"]] = round(value) if p["integer"] else float(value)
        records.append(record)
    return records


def _features(metadata: dict[str, Any]) -> list[str]:
    return [t["name"] for t in metadata["inputs"]]


def _triton_inputs(records: list[dict[str, Any]], features: list[str], *, binary: bool = True) -> list[Any]:
    """One FP64 [N] tensor per feature; a value a record leaves out is NaN (not measured)."""
    inputs = []
    for name in features:
        tensor = triton.InferInput(name, [len(records)], "FP64")
        column = np.array([r.get(name, np.nan) for r in records], dtype=np.float64)
        tensor.set_data_from_numpy(column, binary_data=binary)
        inputs.append(tensor)
    return inputs


def _batch(http: httpx.Client, path: str, body: dict[str, Any]) -> list[dict[str, Any]]:
    answer = http.post(path, json=body)
    assert answer.status_code == 200, answer.text
    results: list[dict[str, Any]] = answer.json()["results"]
    assert all(r["ok"] for r in results)
    return results


def _assert_predictions_equal(outputs: dict[str, list[Any]], expected: list[dict[str, Any]]) -> None:
    """probability, logit, label and imputed equal the JSON API's, bit for bit."""
    assert outputs["probability"] == [r["probability"] for r in expected]
    assert outputs["logit"] == [r["logit"] for r in expected]
    assert outputs["label"] == [r["label_name"] for r in expected]
    assert outputs["imputed"] == [",".join(r["imputed"]) for r in expected]
    assert outputs["warnings"] == [",".join(w["feature"] for w in r["warnings"]) for r in expected]


def _assert_explanations_equal(outputs: dict[str, Any], expected: list[dict[str, Any]]) -> None:
    """attributions, standard errors, base value, output value and gap equal the JSON API's, bit for bit."""
    assert outputs["attributions"] == [[a["attribution"] for a in r["attributions"]] for r in expected]
    assert outputs["standard_error"] == [[a["standard_error"] for a in r["attributions"]] for r in expected]
    assert outputs["base_value"] == [r["base_value"] for r in expected]
    assert outputs["output_value"] == [r["output_value"] for r in expected]
    assert outputs["completeness_gap"] == [r["completeness_gap"] for r in expected]
    _assert_predictions_equal(outputs, [r["prediction"] for r in expected])


def _decoded(result: Any) -> dict[str, Any]:
    """Every output of a tritonclient result as Python lists (strings decoded)."""
    out: dict[str, Any] = {}
    for tensor in result.get_response()["outputs"]:
        array = result.as_numpy(tensor["name"])
        values = array.tolist()
        out[tensor["name"]] = [v.decode() if isinstance(v, bytes) else v for v in values]
    return out


# ---- metadata and health --------------------------------------------------------------------------------


def test_server_metadata_and_health_answer_tritonclient(triton_client: Any, served: tuple[str, str]) -> None:
    """tritonclient sees a live, ready server with the binary extension, and the served model ready by version."""
    assert triton_client.is_server_live()
    assert triton_client.is_server_ready()
    assert "binary_tensor_data" in triton_client.get_server_metadata()["extensions"]
    name, version = served
    assert triton_client.is_model_ready(name)
    assert triton_client.is_model_ready(name, version)
    assert triton_client.is_model_ready(name + "-explainer", version)
    assert not triton_client.is_model_ready(name, "0.0.0-none")


def test_model_metadata_follows_the_bundle(triton_client: Any, http: httpx.Client, served: tuple[str, str]) -> None:
    """Inputs are the bundle's features in order (FP64 [-1], with their ranges); the explainer lists its outputs."""
    name, version = served
    card = http.get("/model").json()
    meta = triton_client.get_model_metadata(name, version)
    assert meta["versions"][0] == version  # the default version first
    assert [t["name"] for t in meta["inputs"]] == [f["name"] for f in card["features"]]
    assert all(t["datatype"] == "FP64" and t["shape"] == [-1] for t in meta["inputs"])
    assert [(t["parameters"]["valid_min"], t["parameters"]["valid_max"]) for t in meta["inputs"]] == [
        (f["valid_min"], f["valid_max"]) for f in card["features"]
    ]
    assert [t["name"] for t in meta["outputs"]] == ["probability", "logit", "label", "imputed", "warnings"]
    assert meta["parameters"]["explainer"] == name + "-explainer"
    explainer = triton_client.get_model_metadata(name + "-explainer")
    width = len(card["features"])
    shapes = {t["name"]: (t["datatype"], t["shape"]) for t in explainer["outputs"]}
    assert shapes["attributions"] == ("FP64", [-1, width])
    assert shapes["base_value"] == shapes["completeness_gap"] == ("FP64", [-1])
    with pytest.raises(InferenceServerException) as refused:
        triton_client.get_model_metadata("no-such-model")
    assert refused.value.status() == "404"


# ---- predictions ----------------------------------------------------------------------------------------


def test_tritonclient_defaults_send_binary_and_match_predict_batch(
    triton_client: Any, http: httpx.Client, served: tuple[str, str], metadata: dict[str, Any]
) -> None:
    """tritonclient's defaults (binary inputs, binary outputs) give /predict/batch's numbers, bit for bit."""
    records = _records(metadata)
    expected = _batch(http, "/predict/batch", {"records": records})
    for version in ("", served[1]):
        result = triton_client.infer(served[0], _triton_inputs(records, _features(metadata)), model_version=version)
        outputs = result.get_response()["outputs"]
        assert all("binary_data_size" in o["parameters"] for o in outputs), "the answer was not sent as bytes"
        assert result.get_response()["model_version"] == served[1]
        _assert_predictions_equal(_decoded(result), expected)
    assert any(r["imputed"] for r in expected), "no record exercised a value left out"
    assert any(r["warnings"] for r in expected), "no record exercised a value outside the training range"


def test_tritonclient_json_tensors_match_predict_batch(
    triton_client: Any, http: httpx.Client, served: tuple[str, str], metadata: dict[str, Any]
) -> None:
    """JSON tensors both ways (binary_data off on inputs and outputs) give the same numbers, bit for bit."""
    records = _records(metadata, seed=5)
    expected = _batch(http, "/predict/batch", {"records": records})
    names = ("probability", "logit", "label", "imputed", "warnings")
    outputs = [triton.InferRequestedOutput(n, binary_data=False) for n in names]
    result = triton_client.infer(served[0], _triton_inputs(records, _features(metadata), binary=False), outputs=outputs)
    assert all("data" in o for o in result.get_response()["outputs"])
    _assert_predictions_equal(_decoded(result), expected)


def test_column_tensors_n_by_1_and_nested_json_read_as_flat(
    http: httpx.Client, served: tuple[str, str], metadata: dict[str, Any]
) -> None:
    """Shape [N, 1] with nested JSON data ([[v], [v]]) and null for not measured give /predict/batch's answers."""
    records = _records(metadata, n=4, seed=13)
    expected = _batch(http, "/predict/batch", {"records": records})
    inputs = [
        {"name": f, "datatype": "FP64", "shape": [len(records), 1], "data": [[r.get(f)] for r in records]}
        for f in _features(metadata)
    ]
    answer = http.post(f"/v2/models/{served[0]}/infer", json={"inputs": inputs, "id": "n-by-1"})
    assert answer.status_code == 200, answer.text
    body = answer.json()
    assert body["id"] == "n-by-1"
    assert body["model_name"] == served[0]
    _assert_predictions_equal({o["name"]: o["data"] for o in body["outputs"]}, expected)


def test_one_input_matrix_in_fp32_matches_the_records_it_holds(
    triton_client: Any, http: httpx.Client, served: tuple[str, str], metadata: dict[str, Any]
) -> None:
    """One FP32 tensor 'input' [N, F] is read as the float32 values it holds, feature by feature."""
    features = _features(metadata)
    records = [{**r} for r in _records(metadata, seed=9)]
    for r in records:  # the matrix has every feature: fill the left-out ones with a measured value
        for t in metadata["inputs"]:
            r.setdefault(t["name"], t["parameters"]["valid_min"] + 1)
    matrix = np.array([[r[f] for f in features] for r in records], dtype=np.float32)
    as_sent = [
        {
            f: (int(v) if t["parameters"]["integer"] else float(v))
            for f, v, t in zip(features, row, metadata["inputs"], strict=True)
        }
        for row in matrix.tolist()
    ]
    expected = _batch(http, "/predict/batch", {"records": as_sent})
    tensor = triton.InferInput("input", list(matrix.shape), "FP32")
    tensor.set_data_from_numpy(matrix)
    _assert_predictions_equal(_decoded(triton_client.infer(served[0], [tensor])), expected)


def test_an_optional_feature_left_out_is_imputed_and_reported(
    triton_client: Any, http: httpx.Client, served: tuple[str, str], metadata: dict[str, Any]
) -> None:
    """Leaving an optional feature's tensor out imputes it and names it in `imputed`, as /predict does."""
    optional = [t["name"] for t in metadata["inputs"] if t["parameters"]["optional"]]
    assert optional, "the served model has no optional feature"
    records = [{k: v for k, v in r.items() if k != optional[0]} for r in _records(metadata, seed=11)]
    expected = _batch(http, "/predict/batch", {"records": records})
    features = [f for f in _features(metadata) if f != optional[0]]
    outputs = _decoded(triton_client.infer(served[0], _triton_inputs(records, features)))
    assert all(optional[0] in imputed.split(",") for imputed in outputs["imputed"])
    _assert_predictions_equal(outputs, expected)


# ---- explanations ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "settings",
    [{}, {"method": "sampled", "n_samples": 64, "seed": 7, "output": "probability"}, {"method": "quadrature"}],
    ids=["defaults", "sampled-probability", "quadrature"],
)
def test_explainer_matches_explain_batch(
    triton_client: Any,
    http: httpx.Client,
    served: tuple[str, str],
    metadata: dict[str, Any],
    settings: dict[str, Any],
) -> None:
    """'{name}-explainer', and the model with explain: true, give /explain/batch's attributions, bit for bit."""
    records = _records(metadata, n=6, seed=3)
    expected = _batch(http, "/explain/batch", {"records": records, **settings})
    inputs = _triton_inputs(records, _features(metadata))
    by_explainer = triton_client.infer(served[0] + "-explainer", inputs, parameters=settings or None)
    by_model = triton_client.infer(served[0], inputs, served[1], parameters={"explain": True, **settings})
    for result in (by_explainer, by_model):
        _assert_explanations_equal(_decoded(result), expected)
        used = result.get_response()["parameters"]
        assert (used["method"], used["output"], used["seed"]) == (
            expected[0]["method"],
            expected[0]["output"],
            expected[0]["seed"],
        )
    assert by_explainer.get_response()["model_name"] == served[0] + "-explainer"


# ---- every model and version of the store ---------------------------------------------------------------

TARGETS = [("pima-diabetes", "1.0.0"), ("pima-diabetes", "1.1.0"), ("breast-cancer-wisconsin", "1.0.0")]
"""Served side by side by the module's server (the shipped store): both Pima versions and the breast-cancer model."""


@pytest.fixture(scope="module")
def listing(http: httpx.Client) -> dict[str, dict[str, Any]]:
    """The JSON API's ``GET /models``, by model name."""
    return {m["name"]: m for m in http.get("/models").json()["models"]}


def test_every_served_model_and_version_is_on_v2_with_its_own_metadata(
    triton_client: Any, http: httpx.Client, listing: dict[str, dict[str, Any]]
) -> None:
    """Every model and version ``GET /models`` lists is ready on V2, as is its explainer; its metadata's inputs are
    that bundle's features (the breast-cancer model's 30); ``versions`` lists the default first, and the bare name
    answers for the default version."""
    assert {"pima-diabetes", "breast-cancer-wisconsin"} <= set(listing)
    for name, model in listing.items():
        versions = [v["version"] for v in model["versions"]]
        default = model["default_version"]
        bare = triton_client.get_model_metadata(name)
        assert bare["parameters"]["version"] == default
        assert bare["versions"][0] == default
        assert sorted(bare["versions"]) == sorted(versions)
        for version in versions:
            assert triton_client.is_model_ready(name, version)
            assert triton_client.is_model_ready(name + "-explainer", version)
            card = http.get(f"/models/{name}/versions/{version}/model").json()
            for v2_name in (name, name + "-explainer"):
                meta = triton_client.get_model_metadata(v2_name, version)
                assert meta["name"] == v2_name
                assert meta["parameters"]["version"] == version
                assert [t["name"] for t in meta["inputs"]] == [f["name"] for f in card["features"]]
                assert [(t["parameters"]["valid_min"], t["parameters"]["valid_max"]) for t in meta["inputs"]] == [
                    (f["valid_min"], f["valid_max"]) for f in card["features"]
                ]
            explainer = triton_client.get_model_metadata(name + "-explainer", version)
            shapes = {t["name"]: t["shape"] for t in explainer["outputs"]}
            assert shapes["attributions"] == [-1, len(card["features"])]
    cancer = triton_client.get_model_metadata("breast-cancer-wisconsin")
    assert len(cancer["inputs"]) == 30
    unknown = http.get("/v2/models/no-such-model").json()["error"]
    assert all(name in unknown for name in listing)


@pytest.mark.parametrize("target", TARGETS, ids=[f"{n}@{v}" for n, v in TARGETS])
def test_tritonclient_defaults_match_each_model_versions_batches(
    triton_client: Any, http: httpx.Client, listing: dict[str, dict[str, Any]], target: tuple[str, str]
) -> None:
    """tritonclient's defaults (binary tensors) on ``{name}`` at a version, and on ``{name}-explainer``, give that
    version's ``/models/{name}/versions/{version}/predict/batch`` and ``.../explain/batch`` numbers, bit for bit;
    the bare name does too when the version is the model's default."""
    name, version = target
    meta = http.get(f"/v2/models/{name}/versions/{version}").json()
    records = _records(meta, n=8, seed=31)
    inputs = _triton_inputs(records, _features(meta))
    base = f"/models/{name}/versions/{version}"
    expected = _batch(http, f"{base}/predict/batch", {"records": records})
    asked = [version] + ([""] if listing[name]["default_version"] == version else [])
    for asked_version in asked:
        result = triton_client.infer(name, inputs, model_version=asked_version)
        response = result.get_response()
        assert all("binary_data_size" in o["parameters"] for o in response["outputs"]), "not sent as bytes"
        assert (response["model_name"], response["model_version"]) == (name, version)
        _assert_predictions_equal(_decoded(result), expected)
    for settings in ({}, {"method": "sampled", "n_samples": 32, "seed": 5, "output": "probability"}):
        explained = _batch(http, f"{base}/explain/batch", {"records": records, **settings})
        result = triton_client.infer(name + "-explainer", inputs, model_version=version, parameters=settings or None)
        assert result.get_response()["model_version"] == version
        _assert_explanations_equal(_decoded(result), explained)


def test_each_version_answers_with_its_own_model(triton_client: Any, http: httpx.Client) -> None:
    """The same records sent to Pima 1.0.0 and 1.1.0 over V2 get different probabilities (1.1.0 recalibrated
    every one): the version in the path picks the model that answers, not the store's default."""
    meta = http.get("/v2/models/pima-diabetes/versions/1.0.0").json()
    records = _records(meta, n=6, seed=41)
    inputs = _triton_inputs(records, _features(meta))
    old, new = (
        _decoded(triton_client.infer("pima-diabetes", inputs, model_version=v))["probability"]
        for v in ("1.0.0", "1.1.0")
    )
    assert all(a != b for a, b in zip(old, new, strict=True))


def test_a_reload_adds_and_removes_models_on_v2(tmp_path: Path) -> None:
    """A model added to the store, and a version removed from it, appear on and disappear from V2 at a reload
    (POST /admin/reload), metadata, readiness and inference alike; the added model answers with its own numbers."""
    store = tmp_path / "store"
    for version in ("1.0.0", "1.1.0"):
        shutil.copytree(ROOT / "model_store" / "pima-diabetes" / version, store / "pima-diabetes" / version)
    (store / "pima-diabetes" / "DEFAULT").write_text("1.1.0\n")
    (store / "DEFAULT").write_text("pima-diabetes\n")
    admin = {"X-Admin-Key": "v2-admin"}
    env = {"GSHAP_MODEL_STORE": str(store), "GSHAP_ADMIN_KEYS": "v2-admin"}
    with running_server(env) as server, httpx.Client(base_url=server.url, timeout=60) as c:
        cancer = "/v2/models/breast-cancer-wisconsin"
        assert c.get(cancer).status_code == 404
        assert c.get("/v2/models/pima-diabetes/versions/1.0.0/ready").status_code == 200
        shutil.copytree(
            ROOT / "model_store" / "breast-cancer-wisconsin" / "1.0.0", store / "breast-cancer-wisconsin" / "1.0.0"
        )
        (store / "breast-cancer-wisconsin" / "DEFAULT").write_text("1.0.0\n")
        shutil.rmtree(store / "pima-diabetes" / "1.0.0")
        reloaded = c.post("/admin/reload", headers=admin)
        assert reloaded.status_code == 200, reloaded.text
        assert reloaded.json()["added"] == ["breast-cancer-wisconsin@1.0.0"]
        assert reloaded.json()["removed"] == ["pima-diabetes@1.0.0"]
        meta = c.get(cancer).json()
        assert len(meta["inputs"]) == 30
        assert c.get(f"{cancer}-explainer/versions/1.0.0/ready").status_code == 200
        [record] = _records(meta, n=1, seed=2)
        inputs = [_tensor(k, [float(v)]) for k, v in record.items()]
        answer = c.post(f"{cancer}/infer", json={"inputs": inputs})
        assert answer.status_code == 200, answer.text
        expected = _batch(c, "/models/breast-cancer-wisconsin/predict/batch", {"records": [record]})
        _assert_predictions_equal({o["name"]: o["data"] for o in answer.json()["outputs"]}, expected)
        for path in (
            "/v2/models/pima-diabetes/versions/1.0.0",
            "/v2/models/pima-diabetes-explainer/versions/1.0.0/ready",
        ):
            _refusal(c.get(path), 404, "1.0.0", "1.1.0")
        assert c.get("/v2/models/pima-diabetes").json()["versions"] == ["1.1.0"]
        shutil.rmtree(store / "breast-cancer-wisconsin")
        assert c.post("/admin/reload", headers=admin).json()["removed"] == ["breast-cancer-wisconsin@1.0.0"]
        _refusal(c.post(f"{cancer}/infer", json={"inputs": inputs}), 404, "breast-cancer-wisconsin")
        _refusal(c.get(f"{cancer}-explainer"), 404, "breast-cancer-wisconsin-explainer")


# ---- refusals -------------------------------------------------------------------------------------------


def _tensor(name: str, values: list[Any], datatype: str = "FP64", shape: list[int] | None = None) -> dict[str, Any]:
    return {"name": name, "datatype": datatype, "shape": shape or [len(values)], "data": values}


def _valid_inputs(metadata: dict[str, Any]) -> list[dict[str, Any]]:
    [record] = _records(metadata, n=1, seed=1)
    return [_tensor(k, [float(v)]) for k, v in record.items()]


def _refusal(answer: httpx.Response, status: int, *words: str) -> str:
    """The answer is V2's {"error": "..."} with ``status``, naming ``words``, with no stack trace."""
    assert answer.status_code == status, answer.text
    assert answer.headers["content-type"] == "application/json"
    body = answer.json()
    assert set(body) == {"error"}
    text: str = body["error"]
    for word in words:
        assert word in text, text
    assert "Traceback" not in text
    assert "File " not in text
    return text


def test_malformed_tensors_are_refused_with_400(
    http: httpx.Client, served: tuple[str, str], metadata: dict[str, Any]
) -> None:
    """Each way a tensor can be malformed gets a 400 naming the tensor and the rule."""
    url = f"/v2/models/{served[0]}/infer"
    valid = _valid_inputs(metadata)
    first = valid[0]["name"]
    cases: list[tuple[Any, tuple[str, ...]]] = [
        ({"inputs": [{**valid[0], "shape": [3]}, *valid[1:]]}, (first, "elements")),
        ({"inputs": [{**valid[0], "datatype": "INT32"}, *valid[1:]]}, (first, "INT32", "FP64")),
        ({"inputs": [*valid, _tensor("glucos", [1.0])]}, ("glucos", "unknown")),
        ({"inputs": [*valid, valid[0]]}, (first, "more than once")),
        ({"inputs": [{**valid[0], "data": ["6"]}, *valid[1:]]}, (first, "numbers")),
        ({"inputs": [{**valid[0], "shape": [1, 2], "data": [1.0, 2.0]}, *valid[1:]]}, (first, "[N, 1]")),
        ({"inputs": []}, ("inputs",)),
        ({"inputs": valid, "extra": 1}, ("extra",)),
        ({"inputs": valid, "outputs": [{"name": "probabilty"}]}, ("probabilty", "unknown output")),
        ({"inputs": valid, "parameters": {"method": "sampled"}}, ("method", "explain")),
        ({"inputs": [_tensor("input", [1.0, 2.0], shape=[1, 2])]}, ("input", "[N,")),
    ]
    for body, words in cases:
        _refusal(http.post(url, json=body), 400, *words)
    _refusal(http.post(url, content=b"{not json", headers={"content-type": "application/json"}), 400, "JSON")
    # the binary extension: a size that does not fit the shape, and a header length past the body
    binary_input = {k: v for k, v in valid[0].items() if k != "data"} | {"parameters": {"binary_data_size": 16}}
    head = json.dumps({"inputs": [binary_input]}).encode()
    length = {"Inference-Header-Content-Length": str(len(head))}
    _refusal(http.post(url, content=head + struct.pack("<d", 1.0), headers=length), 400, "binary_data_size")
    beyond = {"Inference-Header-Content-Length": "999999"}
    _refusal(http.post(url, content=head, headers=beyond), 400, "Inference-Header-Content-Length")


def test_invalid_values_are_refused_with_the_json_apis_rules_and_no_value(
    http: httpx.Client, served: tuple[str, str], metadata: dict[str, Any]
) -> None:
    """Out of range, a fraction for a whole number, a required feature left out: 400 naming the feature, the rule
    and the limit, never the value sent."""
    url = f"/v2/models/{served[0]}/infer"
    inputs = metadata["inputs"]
    valid = {t["name"]: t for t in _valid_inputs(metadata)}
    ranged = next(t for t in inputs if not t["parameters"]["integer"])
    too_high = ranged["parameters"]["valid_max"] + 987.654321
    body = {"inputs": [*(t for n, t in valid.items() if n != ranged["name"]), _tensor(ranged["name"], [too_high])]}
    limit = ranged["parameters"]["valid_max"]
    text = _refusal(http.post(url, json=body), 400, ranged["name"], "less_than_equal", f"{limit:g}")
    assert "987.654321" not in text
    assert str(too_high) not in text
    integer = next(t for t in inputs if t["parameters"]["integer"])
    body = {"inputs": [*(t for n, t in valid.items() if n != integer["name"]), _tensor(integer["name"], [2.5])]}
    _refusal(http.post(url, json=body), 400, integer["name"], "int_type")
    required = next(t for t in inputs if not t["parameters"]["optional"])
    body = {"inputs": [t for n, t in valid.items() if n != required["name"]]}
    _refusal(http.post(url, json=body), 400, required["name"], "missing")


def test_explanation_settings_keep_the_json_apis_limits(
    http: httpx.Client, served: tuple[str, str], metadata: dict[str, Any]
) -> None:
    """n_samples over the server's bound, an unknown method or output, a bad seed: 400 naming the parameter."""
    url = f"/v2/models/{served[0]}-explainer/infer"
    inputs = _valid_inputs(metadata)
    for parameters, word in [
        ({"method": "sampled", "n_samples": 10**6}, "n_samples"),
        ({"method": "sampled", "n_samples": 1}, "n_samples"),
        ({"method": "integrated"}, "method"),
        ({"output": "odds"}, "output"),
        ({"seed": -1}, "seed"),
        ({"explain": "yes"}, "explain"),
    ]:
        _refusal(http.post(url, json={"inputs": inputs, "parameters": parameters}), 400, word)


def test_unknown_models_limits_and_media_types(
    http: httpx.Client, served: tuple[str, str], metadata: dict[str, Any]
) -> None:
    """404 for an unknown model or version; the JSON API's batch and body limits (413); 415 for other media."""
    name, version = served
    inputs = _valid_inputs(metadata)
    _refusal(http.post("/v2/models/no-such-model/infer", json={"inputs": inputs}), 404, "no-such-model")
    _refusal(http.get(f"/v2/models/{name}/versions/9.9.9"), 404, "9.9.9", version)
    _refusal(http.get(f"/v2/models/{name}/versions/9.9.9/ready"), 404, "9.9.9")
    too_many = [_tensor(t["name"], t["data"] * (MAX_BATCH + 1)) for t in inputs]
    _refusal(http.post(f"/v2/models/{name}/infer", json={"inputs": too_many}), 413, "GSHAP_MAX_BATCH_RECORDS")
    huge = b" " * (1_048_576 + 1)
    _refusal(http.post(f"/v2/models/{name}/infer", content=huge), 413, "GSHAP_MAX_BODY_BYTES")
    plain = http.post(
        f"/v2/models/{name}/infer", content=json.dumps({"inputs": inputs}), headers={"content-type": "text/plain"}
    )
    _refusal(plain, 415, "application/json")
    _refusal(http.get("/v2/nothing-here"), 404)


# ---- KServe's client, in its own virtual environment ----------------------------------------------------


def _kserve_python() -> Path:
    """The Python of ``.venv-kserve/`` with kserve installed (created on first use, then reused)."""
    python = KSERVE_VENV / "bin" / "python"
    probe = [str(python), "-c", "import kserve"]
    if python.exists() and subprocess.run(probe, check=False, capture_output=True, timeout=120).returncode == 0:
        return python
    subprocess.run([sys.executable, "-m", "venv", "--clear", str(KSERVE_VENV)], check=True, timeout=300)
    install = [str(python), "-m", "pip", "install", "--quiet", "-r", str(KSERVE_REQUIREMENTS)]
    done = subprocess.run(install, check=False, capture_output=True, text=True, timeout=1200)
    assert done.returncode == 0, f"installing kserve failed:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    return python


KSERVE_TARGETS = [("pima-diabetes", "1.0.0"), ("breast-cancer-wisconsin", "1.1.0")]
"""Versions that are not their model's default: the bare name and the version's path answer differently."""


@pytest.mark.slow
@pytest.mark.parametrize("target", KSERVE_TARGETS, ids=[f"{n}@{v}" for n, v in KSERVE_TARGETS])
def test_kserve_rest_client_gets_the_json_apis_numbers(
    live: LiveServer, http: httpx.Client, target: tuple[str, str], tmp_path: Path
) -> None:
    """KServe's InferenceRESTClient (protocol v2; JSON and binary tensors; the explainer), on a model's bare name
    and on a version that is not its default, gets ``/models/{name}/...`` and ``/models/{name}/versions/{version}/``
    ``predict/batch`` and ``explain/batch`` numbers, bit for bit; an unknown model comes back as the server's V2
    error text."""
    name, version = target
    python = _kserve_python()
    metadata = http.get(f"/v2/models/{name}/versions/{version}").json()
    records = _records(metadata, n=8, seed=17)
    settings = {"method": "sampled", "n_samples": 32, "seed": 3}
    case = tmp_path / "case.json"
    case.write_text(json.dumps({"records": records, "features": _features(metadata), "explain": settings}))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    done = subprocess.run(
        [str(python), str(KSERVE_SCRIPT), live.url, name, version, str(case)],
        check=False, capture_output=True, text=True, timeout=300, env=env, cwd=tmp_path,
    )  # fmt: skip
    assert done.returncode == 0, done.stderr[-4000:]
    found = json.loads(done.stdout.strip().splitlines()[-1])
    assert found["server_live"] is True
    assert found["server_ready"] is True
    assert found["model_ready"] is True
    default, versioned = f"/models/{name}", f"/models/{name}/versions/{version}"
    for key in ("predict.binary=False", "predict.binary=True"):
        _assert_predictions_equal(found[key], _batch(http, f"{default}/predict/batch", {"records": records}))
    _assert_predictions_equal(
        found["predict.versioned"], _batch(http, f"{versioned}/predict/batch", {"records": records})
    )
    assert found["predict.versioned"]["probability"] != found["predict.binary=True"]["probability"]
    width = len(metadata["inputs"])
    for key, prefix in (("explain", default), ("explain.versioned", versioned)):
        explained = _batch(http, f"{prefix}/explain/batch", {"records": records, **settings})
        outputs = found[key]
        assert outputs["attributions.shape"] == [len(records), width]
        for matrix in ("attributions", "standard_error"):
            outputs[matrix] = [outputs[matrix][i * width : (i + 1) * width] for i in range(len(records))]
        _assert_explanations_equal(outputs, explained)
    assert found["explain.parameters"]["method"] == "sampled"
    assert "no-such-model" in found["unknown_model_error"]
    assert "404" in found["unknown_model_error"]

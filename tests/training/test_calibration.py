"""Calibration: Platt scaling folded into the network keeps the explanation exact, and every output uses it.

Tolerances. The calibrated network is the raw one with its last layer scaled by ``a`` (``a·w3``, one rounding per
weight) and shifted by ``b``. An exact attribution is a fixed-order sum of a few thousand float64 products
(64 baselines × 64 units × the pieces of a path), so the calibrated one differs from ``a`` times the raw one by
rounding only: a relative error of order 1e-16 per operation, bounded here by 1e-11 of the largest attribution
(measured: about 1e-15). The completeness gap is rounding of a 9-term sum of numbers of size ~1: about 1e-15.
"""

from __future__ import annotations

import json
import math
import shutil
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from live_server import running_server

from service.contract import label_of, sigmoid
from service.engine.gradient_shap import GradientShapEngine
from service.model.nn import IDENTITY, CalibratedClassification, Calibration
from service.model.spec import build_network
from service.model.store import FORMAT_VERSION, BundleError, _write_checksums, load_bundle
from service.runtime.inference import ExplainOptions, InferenceRuntime
from service.training.calibration import (
    calibration_metrics,
    ece,
    fit_logistic_1d,
    fit_platt,
    reliability_bins,
)
from service.training.data import load_dataset
from service.training.metrics import youden_threshold

GAP = 1e-13
RELATIVE = 1e-11


def _raw_network(bundle: Any) -> CalibratedClassification:
    raw = CalibratedClassification.wrap(build_network(bundle.model_spec.network))  # the identity calibration
    raw.load_state_dict(bundle.model.state_dict())
    return raw.eval()


def _engines(bundle: Any) -> tuple[GradientShapEngine, GradientShapEngine]:
    cal = GradientShapEngine(bundle.model, bundle.baselines, bundle.baseline_weights)
    raw = GradientShapEngine(_raw_network(bundle), bundle.baselines, bundle.baseline_weights)
    return cal, raw


def test_the_served_model_is_platt_calibrated_on_validation(bundle: Any) -> None:
    """The committed bundle serves a Platt calibration fitted on the validation split, recorded in its manifest."""
    cal = bundle.calibration
    assert cal.name == "platt/validation"
    assert bundle.manifest["format_version"] == FORMAT_VERSION
    assert bundle.manifest["calibration"]["a"] == cal.a > 0
    assert bundle.manifest["calibration"]["b"] == cal.b
    assert isinstance(bundle.model, CalibratedClassification)
    assert bundle.model.calibration == cal


def test_calibrated_explanations_add_up_exactly(bundle: Any) -> None:
    """Exact attributions of the calibrated logit add up to it: gap ~1e-15 on every evaluation record."""
    cal, _ = _engines(bundle)
    ex = cal.explain(bundle.eval_x, method="exact", output="logit")
    assert float(np.max(np.abs(ex.completeness_gap))) < GAP
    assert cal.compiled is not None  # the compiled kernel computed them, on the folded calibrated weights


def test_calibrated_attributions_are_a_times_the_raw_ones(bundle: Any) -> None:
    """Attributions scale by a, the base value maps to a·base + b and the logit to a·logit + b (rounding only)."""
    cal, raw = _engines(bundle)
    a, b = bundle.calibration.a, bundle.calibration.b
    x = bundle.eval_x
    ec, er = cal.explain(x, method="exact"), raw.explain(x, method="exact")
    scale = float(np.max(np.abs(ec.attributions)))
    np.testing.assert_allclose(ec.attributions, a * er.attributions, rtol=0, atol=RELATIVE * scale)
    assert ec.base_value == pytest.approx(a * er.base_value + b, rel=0, abs=RELATIVE)
    np.testing.assert_allclose(ec.output_value, a * er.output_value + b, rtol=0, atol=RELATIVE)
    assert not np.allclose(ec.attributions, er.attributions)  # the calibration is not the identity here
    assert float(np.max(np.abs(er.completeness_gap))) < GAP


def test_probability_outputs_refer_to_the_calibrated_model(bundle: Any) -> None:
    """Prediction, label and output='probability' explanations use sigmoid(a·logit + b) and the calibrated threshold."""
    _, raw = _engines(bundle)
    runtime = InferenceRuntime(bundle)
    records = [dict(zip(bundle.spec.names, row, strict=True)) for row in bundle.eval_raw[:12].tolist()]
    records = [{k: (None if math.isnan(v) else v) for k, v in r.items()} for r in records]
    expected = sigmoid(bundle.calibration.a * raw.predict_logit(bundle.eval_x[:12]) + bundle.calibration.b)
    predictions = runtime.predict(records)
    got = np.array([p.probability for p in predictions])
    np.testing.assert_allclose(got, expected, rtol=0, atol=1e-12)
    assert [p.label for p in predictions] == label_of(got, bundle.threshold).tolist()
    assert {p.calibration for p in predictions} == {"platt/validation"}
    ex = runtime.explain(records[:3], ExplainOptions(method="exact", output="probability"))
    for e, p in zip(ex, expected[:3], strict=True):
        assert e.output_value == pytest.approx(p, abs=1e-12)
        assert abs(e.completeness_gap) < GAP
        assert e.prediction.calibration == "platt/validation"


def test_a_record_is_the_same_alone_or_in_a_batch(bundle: Any) -> None:
    """Calibrated attributions and logits of a record are bitwise equal alone and inside any batch."""
    cal, _ = _engines(bundle)
    x = bundle.eval_x
    together = cal.explain(x[:40], method="exact")
    for i in (0, 17, 39):
        alone = cal.explain(x[i : i + 1], method="exact")
        assert np.array_equal(alone.attributions[0], together.attributions[i])
        assert alone.output_value[0] == together.output_value[i]


def test_threshold_is_youden_on_the_calibrated_validation_probabilities(bundle: Any) -> None:
    """The served threshold is Youden's J on the validation split's calibrated probabilities (6 decimals)."""
    ds = load_dataset()
    rows = bundle.manifest["data"]["split_rows"]["validation"]
    cal, raw = _engines(bundle)
    y = ds.y[rows]
    x = bundle.to_model_space(ds.x[rows])
    p_cal = sigmoid(cal.predict_logit(x))
    assert bundle.threshold == pytest.approx(youden_threshold(y, p_cal), abs=5e-7)
    raw_threshold = bundle.metrics["calibration"]["mlp"]["threshold_before"]
    assert raw_threshold == pytest.approx(youden_threshold(y, sigmoid(raw.predict_logit(x))), abs=5e-7)
    # Platt a, b are the maximum-likelihood fit on these validation logits, as stored (rounded to 6 decimals)
    assert fit_platt(raw.predict_logit(x), y) == pytest.approx((bundle.calibration.a, bundle.calibration.b), abs=2e-6)


def test_manifest_calibration_numbers_are_the_models(bundle: Any) -> None:
    """The stored after-calibration ECE, Brier and mean risk are what the served model gives on the test split."""
    cal, raw = _engines(bundle)
    y = bundle.eval_y.astype(np.float64)
    stored = bundle.metrics["calibration"]["mlp"]
    p_after = sigmoid(cal.predict_logit(bundle.eval_x))
    p_before = sigmoid(raw.predict_logit(bundle.eval_x))
    assert stored["after"]["ece"]["value"] == pytest.approx(ece(y, p_after), abs=2e-6)
    assert stored["before"]["ece"]["value"] == pytest.approx(ece(y, p_before), abs=2e-6)
    assert stored["after"]["brier"]["value"] == pytest.approx(float(np.mean((p_after - y) ** 2)), abs=2e-6)
    assert stored["after"]["mean_predicted"]["value"] == pytest.approx(float(p_after.mean()), abs=2e-6)
    assert [b["count"] for b in stored["after"]["bins"]] == [b["count"] for b in reliability_bins(y, p_after)]
    changed = label_of(p_before, stored["threshold_before"]) != label_of(p_after, stored["threshold_after"])
    assert int(changed.sum()) == stored["test_decisions_changed"]
    # the finding, and its correction: mean risk from ~0.48 to inside the prevalence interval
    prev = stored["after"]["observed_prevalence"]
    assert stored["before"]["mean_predicted"]["value"] > prev["ci_high"]
    assert prev["ci_low"] <= stored["after"]["mean_predicted"]["value"] <= prev["ci_high"]


def test_subgroups_cover_the_test_split_with_counts(bundle: Any) -> None:
    """Age and BMI bands partition the 154 test records; each band reports n, positives and intervals."""
    sub = bundle.metrics["subgroups"]
    ds = load_dataset()
    test = bundle.manifest["data"]["split_rows"]["test"]
    age = ds.x[test, bundle.spec.names.index("age")]
    for key in ("age", "bmi"):
        bands = sub[key]["bands"]
        assert sum(b["n"] for b in bands) == len(test)
        assert sum(b["positives"] for b in bands) == int(bundle.eval_y.sum())
    by_band = {b["band"]: b for b in sub["age"]["bands"]}
    assert by_band["50+"]["n"] == int((age >= 50).sum())
    assert by_band["21-29"]["n"] == int((age < 30).sum())
    full = by_band["21-29"]
    assert full["roc_auc"]["ci_low"] <= full["roc_auc"]["value"] <= full["roc_auc"]["ci_high"]
    no_positive = [b for b in sub["bmi"]["bands"] if b["positives"] == 0]
    assert all(b["roc_auc"]["value"] is None and b["sensitivity"]["value"] is None for b in no_positive)


def _as_format_1(source: Path, folder: Path) -> Path:
    """A copy of ``source`` as a format-1 bundle: no calibration in the manifest, checksums rewritten."""
    shutil.copytree(source, folder)
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = 1
    del manifest["calibration"]
    (folder / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    _write_checksums(folder)
    return folder


def test_a_bundle_without_calibration_loads_with_the_identity(bundle: Any, tmp_path: Path) -> None:
    """A format-1 bundle loads with the identity calibration and serves its raw network bitwise, scale 'none'."""
    old = load_bundle(_as_format_1(bundle.path, tmp_path / "old"))
    assert old.calibration == IDENTITY
    assert old.calibration.name == "none"
    served = GradientShapEngine(old.model, old.baselines, old.baseline_weights)
    _, raw = _engines(bundle)
    x = old.eval_x
    assert np.array_equal(served.predict_logit(x), raw.predict_logit(x))
    assert np.array_equal(served.explain(x[:8]).attributions, raw.explain(x[:8]).attributions)
    prediction = InferenceRuntime(old).predict([InferenceRuntime(old).example_record()])[0]
    assert prediction.calibration == "none"


def test_format_2_without_calibration_is_refused(bundle: Any, tmp_path: Path) -> None:
    """A format-2 manifest without its calibration is a one-line bundle error naming it."""
    folder = _as_format_1(bundle.path, tmp_path / "broken")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["format_version"] = 2
    (folder / "manifest.json").write_text(json.dumps(manifest) + "\n")
    _write_checksums(folder)
    with pytest.raises(BundleError, match=r"manifest\.json has no calibration"):
        load_bundle(folder)


def test_a_calibration_that_reverses_the_order_is_refused() -> None:
    """a <= 0 or a non-finite parameter is not a calibration (it would reverse or destroy the ranking)."""
    with pytest.raises(ValueError, match="a > 0"):
        Calibration.from_dict({"method": "platt", "fitted_on": "validation", "a": -1.0, "b": 0.0})
    with pytest.raises(ValueError, match="a > 0"):
        Calibration.from_dict({"method": "platt", "a": 1.0, "b": float("nan")})


def test_platt_fit_recovers_known_parameters() -> None:
    """On outcomes drawn from sigmoid(2z − 1), the fit finds a ≈ 2 and b ≈ −1; one class only has no fit."""
    rng = np.random.default_rng(7)
    z = rng.normal(size=20_000)
    y = (rng.random(20_000) < sigmoid(2 * z - 1)).astype(np.float64)
    a, b = fit_platt(z, y)
    assert a == pytest.approx(2.0, abs=0.08)
    assert b == pytest.approx(-1.0, abs=0.06)
    assert all(math.isnan(v) for v in fit_logistic_1d(z, np.zeros_like(z)))
    with pytest.raises(ValueError, match="Platt scaling failed"):
        fit_platt(z, (z > 0).astype(np.float64))  # perfectly separated: no maximum-likelihood fit


def test_calibration_metrics_of_a_calibrated_model() -> None:
    """Outcomes drawn from the predictions: slope ≈ 1, intercept ≈ 0, mean risk ≈ prevalence, ECE near its null."""
    rng = np.random.default_rng(11)
    p = rng.beta(2, 3, size=5000)
    y = (rng.random(5000) < p).astype(np.float64)
    m = calibration_metrics(y, p, n_boot=200, seed=1)
    assert m["slope"]["ci_low"] < 1 < m["slope"]["ci_high"]
    assert m["intercept"]["ci_low"] < 0 < m["intercept"]["ci_high"]
    diff = m["mean_predicted_minus_prevalence"]
    assert diff["ci_low"] < 0 < diff["ci_high"]
    assert m["ece"]["value"] < 0.03
    assert sum(b["count"] for b in m["bins"]) == 5000
    assert len(m["bins"]) == 10


def test_ece_by_hand() -> None:
    """ECE with 10 equal-width bins on a hand-computed example (1.0 falls in the last bin)."""
    p = np.array([0.05, 0.05, 0.95, 1.0, 0.55])
    y = np.array([0.0, 1.0, 1.0, 1.0, 0.0])
    # bins: [0, .1): mean p .05, rate .5 -> .45 x 2; [.5, .6): .55 vs 0 -> .55 x 1; [.9, 1]: .975 vs 1 -> .025 x 2
    assert ece(y, p) == pytest.approx((0.45 * 2 + 0.55 + 0.025 * 2) / 5, abs=1e-15)


def test_answers_name_their_scale_and_the_card_is_complete() -> None:
    """Over HTTP: predictions and explanations say 'platt/validation'; /model carries the card's items."""
    from helpers import record

    with running_server() as server, httpx.Client(base_url=server.url, timeout=30) as client:
        p = client.post("/predict", json=record()).json()
        ex = client.post("/explain", json={**record(), "output": "probability"}).json()
        batch = client.post("/predict/batch", json={"records": [record(), record(age=30)]}).json()
        card = client.get("/model").json()
    assert p["calibration"] == ex["prediction"]["calibration"] == "platt/validation"
    assert {r["calibration"] for r in batch["results"]} == {"platt/validation"}
    assert ex["output_value"] == pytest.approx(p["probability"], abs=1e-12)
    served = card["calibration"]["served"]
    assert served["name"] == "platt/validation"
    assert served["a"] > 0
    assert p["logit"] == pytest.approx(math.log(p["probability"] / (1 - p["probability"])), abs=1e-9)
    for item in (
        "intended_use",
        "intended_users",
        "out_of_scope_uses",
        "population",
        "not_measured",
        "development_and_validation",
        "limitations",
        "explanation_method",
        "update_schedule",
        "training_date",
    ):
        assert card[item], item
    assert "decades" in card["population"]["description"]
    assert any("not measured" in q for q in card["population"]["quirks"])
    assert card["explanation_method"]["measured_error"]["completeness_gap_max_abs"] < GAP
    assert sum(b["n"] for b in card["subgroups"]["age"]["bands"]) == 154
    assert card["calibration"]["mlp"]["after"]["ece"]["ci_low"] is not None
    assert card["threshold"] == card["calibration"]["mlp"]["threshold_after"]
    assert card["features"][0]["unit"]  # the existing fields stay

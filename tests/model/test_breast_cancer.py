"""The second real data set: scikit-learn's Wisconsin breast-cancer data, its CSV, its spec and its bundle
(``model_store/breast-cancer-wisconsin/1.0.0``, trained by ``gshap train --spec`` with two hidden ReLU layers).
The web layer's end-to-end checks of this bundle are in tests/model/test_second_model.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.datasets import load_breast_cancer

from service.engine.gradient_shap import GradientShapEngine
from service.model.spec import SPECS, load_spec
from service.model.store import DEFAULT_STORE, Bundle, default_bundle_path, load_bundle
from service.training.data import ROOT, file_sha256, load_dataset

CSV = ROOT / "data" / "breast-cancer-wisconsin.csv"
SPEC = SPECS / "breast-cancer-wisconsin.yaml"


@pytest.fixture(scope="module")
def second() -> Bundle:
    return load_bundle(DEFAULT_STORE / "breast-cancer-wisconsin" / "1.0.0")


def test_csv_is_scikit_learns_data_bit_for_bit() -> None:
    """The CSV holds scikit-learn's 569 records and 30 features exactly, its target as given, and the sha256 that
    data/PROVENANCE.md states."""
    data = load_breast_cancer()
    frame = pd.read_csv(CSV)
    assert frame.shape == (569, 31)
    np.testing.assert_array_equal(frame.iloc[:, :30].to_numpy(), data.data)
    np.testing.assert_array_equal(frame["target"].to_numpy(), data.target)
    assert file_sha256(CSV) in (ROOT / "data" / "PROVENANCE.md").read_text()


def test_positive_means_malignant_which_is_target_0(second: Bundle) -> None:
    """The spec's positive value is scikit-learn's 0 (malignant): y = 1 exactly for the malignant records."""
    spec = load_spec(SPEC)
    assert spec.outcome.positive == 0
    assert spec.outcome.positive_label == "malignant"
    ds = load_dataset(CSV, spec.features)
    target = load_breast_cancer().target
    np.testing.assert_array_equal(ds.y, (target == 0).astype(int))
    assert int(ds.y.sum()) == 212
    np.testing.assert_array_equal(second.eval_y, (target[second.eval_rows] == 0).astype(int))


def test_bundle_was_trained_from_its_spec_with_exact_explanations(second: Bundle) -> None:
    """The bundle carries its spec file's content (plus the development text training writes where the spec's
    card has none); its network (30-32-16-1, two hidden ReLU layers, batch norm)
    gets exact explanations, which add up to the output within 1e-12 on the whole evaluation set."""
    spec = load_spec(SPEC)
    stored = dict(second.manifest["spec"])
    card = dict(stored.pop("card"))
    assert card.pop("development_and_validation").startswith("Stratified, seeded split of 569 records")
    assert {**stored, "card": card} == dict(spec.data)
    assert second.methods == ("exact", "sampled", "quadrature")
    assert second.default_method == "exact"
    assert second.cds is None
    assert second.card.outcome.positive_label == "malignant"
    assert len(second.eval_y) == 114
    engine = GradientShapEngine(second.model, second.baselines, second.baseline_weights)
    for output in ("logit", "probability"):
        ex = engine.explain(second.eval_x, method="exact", output=output)
        assert float(np.abs(ex.completeness_gap).max()) <= 1e-12


def test_the_default_model_stays_pima(second: Bundle) -> None:
    """model_store/DEFAULT still names the Pima bundle; the second model sits beside it."""
    assert default_bundle_path().parent.name == "pima-diabetes"
    assert second.path.parent.parent == DEFAULT_STORE

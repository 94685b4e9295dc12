"""Glue between training, the explanation engine and the bundle: what ``gshap train`` and ``gshap groups`` do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from service.contract import label_of, sigmoid
from service.model.store import DEFAULT_STORE, Bundle, load_bundle, write_bundle, write_groups
from service.training.card import card_text
from service.training.train import TrainResult, config_dict, describe_environment

__all__ = [
    "DEFAULT_NAME",
    "DEFAULT_VERSION",
    "EXPLAIN_DEFAULTS",
    "compute_groups",
    "save_result",
    "set_default",
]

DEFAULT_NAME = "pima-diabetes"
DEFAULT_VERSION = "1.1.0"
EXPLAIN_DEFAULTS: dict[str, Any] = {"method": "exact", "output": "logit", "seed": 0, "n_samples": None}


def compute_groups(bundle: Bundle) -> dict[str, Any]:
    """Explain every evaluation record with the default settings and summarise by outcome group."""
    from service.engine.gradient_shap import GradientShapEngine
    from service.model.groups import summarize_groups

    engine = GradientShapEngine(bundle.model, bundle.baselines, bundle.baseline_weights)
    x = bundle.eval_x
    ex = engine.explain(x, method="exact", seed=0, output="logit")
    y_pred = label_of(sigmoid(ex.output_value), bundle.threshold)
    values = bundle.preprocessor.impute(bundle.eval_raw)
    groups: dict[str, Any] = summarize_groups(ex.attributions, values, bundle.eval_y, y_pred, bundle.spec.names)
    groups["evaluation_set_size"] = len(bundle.eval_y)
    groups["threshold"] = bundle.threshold
    groups["explanation"] = {
        "method": ex.method,
        "output": ex.output,
        "calibration": bundle.calibration.name,
        "seed": ex.seed,
        "n_samples": ex.n_samples,
        "base_value": ex.base_value,
        "completeness_gap_max_abs": float(np.max(np.abs(ex.completeness_gap))),
    }
    groups["mean_feature_value"] = "original units, with not-measured values imputed by the training median"
    return groups


def save_result(
    result: TrainResult,
    out: Path = DEFAULT_STORE,
    name: str = DEFAULT_NAME,
    version: str = DEFAULT_VERSION,
    with_groups: bool = True,
) -> Path:
    """Write ``out/name/version`` from a training result and (by default) its group summaries."""
    ds, split = result.dataset, result.split
    manifest: dict[str, Any] = {
        "name": name,
        "version": version,
        "task": f"binary classification: {ds.spec.target_label}",
        "features": ds.spec.to_dict(),
        "preprocessing": result.preprocessor.to_dict(),
        "calibration": result.model.calibration.to_dict(),
        "threshold": result.threshold,
        "threshold_rule": result.metrics["threshold_rule"],
        "metrics": result.metrics,
        "training": {
            **config_dict(result.config),
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "history": [{k: round(v, 6) for k, v in h.items()} for h in result.history],
        },
        "data": {
            "file": Path(ds.path).name,
            "sha256": ds.sha256,
            "records": len(ds.y),
            "positives": int(ds.y.sum()),
            "provenance": "data/PROVENANCE.md",
            "split": {k: len(v) for k, v in split.to_dict().items()},
            "split_rule": "stratified, seeded: test = evaluation set, then validation from the rest",
            "split_rows": split.to_dict(),
        },
        "baselines": {
            "count": len(result.baseline_weights),
            "rule": "weighted k-means summary of the training split in model space; weights = "
            "cluster sizes / training rows",
            "points_original_units": [
                [round(float(v), 4) for v in row] for row in result.preprocessor.inverse(result.baselines)
            ],
            "weights": [round(float(w), 6) for w in result.baseline_weights],
        },
        "card": card_text(ds.spec, Path(ds.path).name),
        "explanation_defaults": EXPLAIN_DEFAULTS,
        "environment": describe_environment(),
    }
    folder = write_bundle(
        Path(out) / name / version,
        model=result.model,
        manifest=manifest,
        baselines=result.baselines,
        baseline_weights=result.baseline_weights,
        eval_raw=ds.x[split.test],
        eval_y=ds.y[split.test],
        eval_rows=split.test,
    )
    if with_groups:
        write_groups(folder, compute_groups(load_bundle(folder)))
    return folder


def set_default(store: Path, name: str, version: str) -> None:
    """Make ``name`` the store's default model and ``version`` its default version (both DEFAULT files)."""
    (Path(store) / name / "DEFAULT").write_text(f"{version}\n")
    (Path(store) / "DEFAULT").write_text(f"{name}\n")

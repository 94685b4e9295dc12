"""Glue between training, the explanation engine and the bundle: what ``gshap train`` and ``gshap groups`` do."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

from service.contract import label_of, sigmoid
from service.model.nn import CalibratedClassification
from service.model.spec import ModelSpec, build_network, layer_summary, spec_from_dict
from service.model.store import DEFAULT_STORE, FORMAT_VERSION, Bundle, load_bundle, write_bundle, write_groups
from service.training.train import TrainResult, config_dict, describe_environment

__all__ = [
    "compute_groups",
    "explain_defaults",
    "save_result",
    "set_default",
    "upgrade_bundle",
]


def explain_defaults(exact: bool) -> dict[str, Any]:
    """The explanation defaults a bundle records: exact where the kernel covers the network, else quadrature."""
    return {"method": "exact" if exact else "quadrature", "output": "logit", "seed": 0, "n_samples": None}


def compute_groups(bundle: Bundle) -> dict[str, Any]:
    """Explain every evaluation record with the default settings and summarise by outcome group."""
    from service.engine.gradient_shap import GradientShapEngine
    from service.model.groups import summarize_groups

    engine = GradientShapEngine(bundle.model, bundle.baselines, bundle.baseline_weights)
    x = bundle.eval_x
    ex = engine.explain(x, method=bundle.default_method, seed=0, output="logit")  # type: ignore[arg-type]
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
    name: str | None = None,
    version: str | None = None,
    with_groups: bool = True,
) -> Path:
    """Write ``out/name/version`` (default: the spec's name and version) from a training result and (by
    default) its group summaries."""
    ds, split = result.dataset, result.split
    spec = result.model_spec
    name, version = name or spec.name, version or spec.version
    if (name, version) != (spec.name, spec.version):
        spec = spec.with_identity(name, version)
    if "development_and_validation" not in spec.data.get("card", {}):  # what this pipeline did, at least
        card = {**spec.data.get("card", {}), "development_and_validation": _development(result)}
        spec = spec_from_dict({**spec.data, "card": card})
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
            **config_dict(result.config, spec.network),
            "best_epoch": result.best_epoch,
            "epochs_run": len(result.history),
            "history": [{k: round(v, 6) for k, v in h.items()} for h in result.history],
        },
        "data": {
            "file": Path(ds.path).name,
            "sha256": ds.sha256,
            "records": len(ds.y),
            "positives": int(ds.y.sum()),
            "provenance": str(spec.training.get("provenance", "not recorded in the model spec")),
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
        "card": spec.card.to_dict(),
        "explanation_defaults": explain_defaults(spec.exact),
        "environment": describe_environment(),
        "spec": dict(spec.data),
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


def upgrade_bundle(source: Path, spec: ModelSpec, out: Path = DEFAULT_STORE) -> Path:
    """Rewrite a bundle of an older format (1 or 2: the seed MLP, no spec in the manifest) as format 3 from its
    model spec, keeping every number: the weight tensors (renamed to the Sequential's keys), the baselines, the
    evaluation set, the calibration, threshold, metrics, group summaries and training date. The spec must
    describe the same features and the seed MLP's network. Returns ``out/<name>/<version>``."""
    old = load_bundle(source)
    if old.manifest.get("format_version") == FORMAT_VERSION:
        raise ValueError(f"{source} is already a format-{FORMAT_VERSION} bundle")
    if spec.features.to_dict()["features"] != old.spec.to_dict()["features"]:
        raise ValueError(f"the spec's features differ from the bundle's in {source}")
    manifest = {k: v for k, v in old.manifest.items() if k not in ("format_version", "created_at")}
    manifest["name"], manifest["version"] = spec.name, spec.version
    manifest["features"] = spec.features.to_dict()
    manifest["training"] = {
        **manifest.get("training", {}),
        "architecture": {"layers": layer_summary(spec.network), "network": [x.to_yaml() for x in spec.network]},
    }
    manifest["card"] = spec.card.to_dict()
    manifest["explanation_defaults"] = explain_defaults(spec.exact)
    manifest["spec"] = dict(spec.data)
    model = CalibratedClassification.wrap(build_network(spec.network), old.calibration)
    model.load_state_dict(old.model.state_dict())  # the legacy loader already renamed the tensors
    folder: Path = write_bundle(
        Path(out) / spec.name / spec.version,
        model=model,
        manifest=manifest,
        baselines=old.baselines.numpy(),
        baseline_weights=old.baseline_weights.numpy(),
        eval_raw=old.eval_raw,
        eval_y=old.eval_y,
        eval_rows=old.eval_rows,
        groups=old.groups,
        created_at=str(old.manifest["created_at"]),
    )
    load_bundle(folder)
    return folder


def _development(result: TrainResult) -> str:
    sizes = {k: len(v) for k, v in result.split.to_dict().items()}
    return (
        f"Stratified, seeded split of {len(result.dataset.y)} records: {sizes['train']} training, "
        f"{sizes['validation']} validation, {sizes['test']} test (evaluation). Median imputation and "
        f"standardisation fitted on the training split only. The network {layer_summary(result.model_spec.network)} "
        "trained with class-weighted cross-entropy and early stopping on the validation loss; Platt scaling and "
        "the decision threshold (Youden's J) fitted on the validation split; metrics on the test split with "
        "bootstrap intervals, next to a logistic-regression reference. Internal validation only."
    )


def set_default(store: Path, name: str, version: str) -> None:
    """Make ``name`` the store's default model and ``version`` its default version (both DEFAULT files)."""
    (Path(store) / name / "DEFAULT").write_text(f"{version}\n")
    (Path(store) / "DEFAULT").write_text(f"{name}\n")

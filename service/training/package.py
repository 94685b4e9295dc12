"""``gshap bundle``: package a network trained elsewhere into a bundle the service verifies and serves.

Inputs: a model spec (its layer list says how to build the ``torch.nn.Sequential``), the network's state dict
saved with safetensors (a pickle, such as ``torch.save``'s ``.pt``, is refused: the service loads no pickle), a
reference CSV (the imputation medians, the range seen and the GradientSHAP baseline distribution, as training
takes them from its training split), an evaluation CSV with the outcome (the metrics and the outcome groups) and
optionally a validation CSV with the outcome (Platt scaling and the decision threshold). Without a validation
CSV the calibration is ``none`` and the threshold 0.5: metrics are never computed on the data that tuned them.

The preprocessing is the spec's ``preprocessing`` (``(x - mean) / scale``) or the identity; "not measured"
values are imputed with the reference CSV's medians before it. No web framework here.
"""

from __future__ import annotations

import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from service.contract import sigmoid
from service.model.nn import IDENTITY, CalibratedClassification, Calibration
from service.model.preprocess import Preprocessor
from service.model.spec import ModelSpec, build_network, layer_summary
from service.model.store import DEFAULT_STORE, load_bundle, weights_problem, write_bundle, write_groups
from service.training.calibration import calibration_metrics, fit_platt
from service.training.data import Dataset, file_sha256, load_dataset
from service.training.metrics import classification_metrics, youden_threshold
from service.training.train import describe_environment

__all__ = ["PICKLE_SUFFIXES", "PackageError", "package", "read_weights"]

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".bin", ".ckpt")
CALIBRATIONS = ("platt", "none")
N_BOOTSTRAP = 2000
SEED = 42

_CONVERT = (
    'convert it once, on a machine where you trust the file, with: python -c "import torch; from '
    "safetensors.torch import save_file; sd = torch.load('{name}', weights_only=True); "
    "save_file({{k: v.contiguous() for k, v in sd.items()}}, '{stem}.safetensors')\" (for a whole saved module, "
    "save its .state_dict())"
)


class PackageError(ValueError):
    """A bundle that cannot be made from these inputs: the message names the file and what is wrong."""


def read_weights(path: Path) -> dict[str, torch.Tensor]:
    """A safetensors state dict; a pickle is refused with the conversion to run, never loaded."""
    if path.suffix.lower() in PICKLE_SUFFIXES:
        raise PackageError(
            f"{path}: a {path.suffix} file is a pickle, which can run code when loaded; the service loads no "
            f"pickle. Save the weights with safetensors instead, or {_CONVERT.format(name=path.name, stem=path.stem)}"
        )
    if not path.is_file():
        raise PackageError(f"{path}: no such file")
    head = path.read_bytes()[:9]
    looks_safe = len(head) == 9 and struct.unpack("<Q", head[:8])[0] < path.stat().st_size and head[8:9] == b"{"
    if not looks_safe and (head[:4] == b"PK\x03\x04" or head[:1] == b"\x80"):  # torch.save's zip, or a pickle
        raise PackageError(
            f"{path}: this is a torch.save file (zip or pickle), not safetensors; "
            + _CONVERT.format(name=path.name, stem=path.stem)
        )
    if not looks_safe:
        raise PackageError(f"{path}: not a safetensors file (no safetensors header)")
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except Exception as exc:  # safetensors' own errors: a truncated or corrupt file
        raise PackageError(f"{path}: not a readable safetensors file ({' '.join(str(exc).split())})") from exc


def _dataset(path: Path, spec: ModelSpec, what: str, outcome: bool) -> Dataset:
    try:
        return load_dataset(path, spec.features, require_outcome=outcome)
    except (OSError, ValueError) as exc:
        raise PackageError(f"{what} CSV: {exc}") from exc


def _reference_preprocessor(spec: ModelSpec, x: np.ndarray) -> Preprocessor:
    fill = np.nanmedian(x, axis=0) if len(x) else np.full(x.shape[1], np.nan)
    empty = [f.name for f, v in zip(spec.features, fill, strict=True) if np.isnan(v)]
    if empty:
        raise PackageError(f"reference CSV: feature {empty[0]!r} has no measured value (nothing to impute with)")
    pre = spec.preprocessing
    mean = np.asarray(pre["mean"], dtype=np.float64) if pre else np.zeros(x.shape[1])
    scale = np.asarray(pre["scale"], dtype=np.float64) if pre else np.ones(x.shape[1])
    return Preprocessor(
        fill=fill, mean=mean, scale=scale, train_min=np.nanmin(x, axis=0), train_max=np.nanmax(x, axis=0)
    )


def package(
    spec: ModelSpec,
    weights: Path,
    reference: Path,
    evaluation: Path,
    *,
    validation: Path | None = None,
    calibrate: str | None = None,
    out: Path = DEFAULT_STORE,
    n_baselines: int | None = None,
) -> Path:
    """Write ``out/<name>/<version>`` from a network trained elsewhere; returns the bundle's folder (verified by
    loading it). ``calibrate`` defaults to ``platt`` with a validation CSV and ``none`` without one."""
    from service.engine.baselines import summarize_baselines
    from service.engine.gradient_shap import GradientShapEngine
    from service.training.pipeline import compute_groups, explain_defaults

    calibrate = calibrate or ("platt" if validation is not None else "none")
    if calibrate not in CALIBRATIONS:
        raise PackageError(f"--calibrate must be one of {', '.join(CALIBRATIONS)}, got {calibrate!r}")
    if calibrate == "platt" and validation is None:
        raise PackageError(
            "--calibrate platt needs --validation: calibration is fitted on a validation CSV, never on the "
            "evaluation CSV whose metrics it would then flatter"
        )
    state = read_weights(weights)
    network = build_network(spec.network)
    if problem := weights_problem(state, spec.network):
        raise PackageError(f"{weights}: does not fit the spec's network {layer_summary(spec.network)}: {problem}")
    network.load_state_dict(state)
    network.eval()
    if not all(bool(torch.isfinite(t).all()) for t in state.values() if t.is_floating_point()):
        raise PackageError(f"{weights}: holds NaN or infinite values")

    ref = _dataset(reference, spec, "reference", outcome=False)
    ev = _dataset(evaluation, spec, "evaluation", outcome=True)
    if len(set(ev.y.tolist())) < 2:
        raise PackageError("evaluation CSV: needs records of both outcomes for its metrics")
    pre = _reference_preprocessor(spec, ref.x)
    xr = pre.transform(ref.x)
    k = min(n_baselines or int(spec.training.get("n_baselines", 64)), len(xr))
    seed = int(spec.training.get("seed", SEED))
    baselines, bweights = summarize_baselines(xr, k=k, seed=seed)

    raw_logit = GradientShapEngine(network, baselines, bweights).predict_logit
    calibration, threshold, threshold_rule = IDENTITY, 0.5, "0.5 (no validation CSV was given: nothing was tuned)"
    val_info: dict[str, Any] | None = None
    if validation is not None:
        va = _dataset(validation, spec, "validation", outcome=True)
        if len(set(va.y.tolist())) < 2:
            raise PackageError("validation CSV: needs records of both outcomes to fit a calibration and a threshold")
        xv = pre.transform(va.x)
        if calibrate == "platt":
            a, b = fit_platt(raw_logit(xv), va.y)
            calibration = Calibration(method="platt", fitted_on="validation", a=a, b=b)
        p_val = sigmoid(calibration.a * raw_logit(xv) + calibration.b)
        t = youden_threshold(va.y, p_val)
        rounded = round(t, 6)
        threshold = rounded if bool(np.array_equal(p_val >= t, p_val >= rounded)) else t
        threshold_rule = "Youden's J (sensitivity + specificity - 1) maximised on the validation CSV, on the " + (
            "calibrated probabilities" if calibrate == "platt" else "network's probabilities"
        )
        val_info = {"file": validation.name, "sha256": va.sha256, "records": len(va.y), "positives": int(va.y.sum())}

    model = CalibratedClassification.wrap(network, calibration)
    model.eval()
    xe = pre.transform(ev.x)
    p_raw = sigmoid(raw_logit(xe))
    p_eval = sigmoid(calibration.a * raw_logit(xe) + calibration.b)
    boot = {"n_boot": int(spec.training.get("n_bootstrap", N_BOOTSTRAP)), "seed": seed}
    metrics: dict[str, Any] = {
        "evaluation_set": f"evaluation CSV, {len(ev.y)} records",
        "threshold_rule": threshold_rule,
        "mlp": classification_metrics(ev.y, p_eval, threshold, **boot),
        "calibration": {
            "method": (
                "Platt scaling: calibrated logit = a * logit + b, fitted by maximum likelihood on the validation CSV"
                if calibration.method == "platt"
                else "none: the network's own probabilities are served"
            ),
            "mlp": {
                "a": calibration.a,
                "b": calibration.b,
                "before": calibration_metrics(ev.y, p_raw, **boot),
                "after": calibration_metrics(ev.y, p_eval, **boot),
            },
        },
        "not_computed": "no logistic-regression reference and no cross-validation: the network was trained "
        "elsewhere, and its training data are not part of the bundle",
    }
    preprocessing = pre.to_dict()
    preprocessing["imputation"] = "median of the reference CSV's measured values"
    preprocessing["scaling"] = (
        "the spec's preprocessing: (x - mean) / scale" if spec.preprocessing else "none (the identity)"
    )
    manifest: dict[str, Any] = {
        "name": spec.name,
        "version": spec.version,
        "task": f"binary classification: {spec.outcome.label}",
        "features": spec.features.to_dict(),
        "preprocessing": preprocessing,
        "calibration": calibration.to_dict(),
        "threshold": threshold,
        "threshold_rule": threshold_rule,
        "metrics": metrics,
        "training": {
            "trained": "elsewhere: packaged by gshap bundle",
            "architecture": {
                "layers": layer_summary(spec.network),
                "network": [layer.to_yaml() for layer in spec.network],
            },
            "weights": {"file": weights.name, "sha256": file_sha256(weights)},
            "seed": seed,
            "n_baselines": k,
            "n_bootstrap": boot["n_boot"],
        },
        "data": {
            "reference": {"file": reference.name, "sha256": ref.sha256, "records": len(ref.y)},
            "validation": val_info,
            "evaluation": {
                "file": evaluation.name,
                "sha256": ev.sha256,
                "records": len(ev.y),
                "positives": int(ev.y.sum()),
            },
            "provenance": str(spec.training.get("provenance", "not recorded in the model spec")),
        },
        "baselines": {
            "count": len(bweights),
            "rule": "weighted k-means summary of the reference CSV in model space; weights = cluster sizes / rows",
            "points_original_units": [[round(float(v), 4) for v in row] for row in pre.inverse(baselines)],
            "weights": [round(float(w), 6) for w in bweights],
        },
        "card": spec.card.to_dict(),
        "explanation_defaults": explain_defaults(spec.exact),
        "environment": describe_environment(),
        "spec": dict(spec.data),
    }
    folder = write_bundle(
        Path(out) / spec.name / spec.version,
        model=model,
        manifest=manifest,
        baselines=np.asarray(baselines, dtype=np.float64),
        baseline_weights=np.asarray(bweights, dtype=np.float64),
        eval_raw=ev.x,
        eval_y=ev.y,
        eval_rows=np.arange(len(ev.y)),
    )
    write_groups(folder, compute_groups(load_bundle(folder)))
    load_bundle(folder)  # verified like every bundle: checksums, spec against weights
    return folder

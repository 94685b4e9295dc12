"""Training: data → split → preprocessing → the spec's network with early stopping → evaluation → bundle.

No web framework here. Determinism: every random draw comes from the seed (split, initial weights, batch
order, dropout masks, bootstrap), training runs on one thread with deterministic algorithms, so the same seed
on the same machine gives byte-identical weights.
"""

from __future__ import annotations

import copy
import platform
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.model_selection import StratifiedKFold, train_test_split
from torch import nn

from service.contract import label_of, sigmoid
from service.model.nn import CalibratedClassification, Calibration
from service.model.preprocess import Preprocessor
from service.model.spec import Layer, ModelSpec, build_network, layer_summary
from service.training.calibration import (
    AGE_BANDS,
    BMI_BANDS,
    band_masks,
    calibration_metrics,
    fit_platt,
    subgroup_metrics,
)
from service.training.data import Dataset, Split, default_spec, load_dataset, spec_data_path, stratified_split
from service.training.metrics import classification_metrics, confusion, youden_threshold

__all__ = ["TrainConfig", "TrainResult", "fit_mlp", "train"]

Progress = Callable[[dict[str, float]], None]


@dataclass(frozen=True)
class TrainConfig:
    """Everything that decides the trained weights; stored in the manifest."""

    seed: int = 42
    max_epochs: int = 300
    batch_size: int = 64
    learning_rate: float = 1e-3
    weight_decay: float = 1e-4
    patience: int = 20
    test_fraction: float = 0.2
    validation_fraction: float = 0.2
    cv_folds: int = 5
    n_baselines: int = 64
    n_bootstrap: int = 2000

    @classmethod
    def from_spec(cls, training: Mapping[str, Any], **overrides: Any) -> TrainConfig:
        """The spec's ``training`` section (its data, provenance and other keys aside), then ``overrides`` that
        are not None (the command line's flags)."""
        fields = cls.__dataclass_fields__
        values = {k: v for k, v in training.items() if k in fields}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls(**values)


@dataclass
class TrainResult:
    model: CalibratedClassification
    preprocessor: Preprocessor
    split: Split
    threshold: float
    metrics: dict[str, Any]
    baselines: np.ndarray
    baseline_weights: np.ndarray
    history: list[dict[str, float]]
    best_epoch: int
    config: TrainConfig
    dataset: Dataset
    model_spec: ModelSpec


@contextmanager
def _deterministic() -> Iterator[None]:
    threads = torch.get_num_threads()
    was = torch.are_deterministic_algorithms_enabled()
    torch.set_num_threads(1)
    torch.use_deterministic_algorithms(True)
    try:
        yield
    finally:
        torch.set_num_threads(threads)
        torch.use_deterministic_algorithms(was)


def _logits(model: nn.Module, x: np.ndarray) -> np.ndarray:
    model.eval()
    with torch.inference_mode():
        out: np.ndarray = model(torch.as_tensor(x, dtype=torch.float32)).squeeze(1).double().numpy()
    return out


def fit_mlp(
    x_train: np.ndarray,
    y_train: np.ndarray,
    x_val: np.ndarray,
    y_val: np.ndarray,
    config: TrainConfig,
    seed: int,
    progress: Progress | None = None,
    *,
    layers: Sequence[Layer],
) -> tuple[nn.Sequential, list[dict[str, float]], int]:
    """Train the network of ``layers`` on model-space ``(N, F)`` arrays; early stopping on validation loss.

    The class imbalance is handled with ``pos_weight = negatives / positives`` of the training split. The
    weights of the epoch with the lowest validation loss are restored before returning (the seed's notebook
    saved them but kept using the last epoch's).
    """
    with _deterministic():
        torch.manual_seed(seed)
        gen = torch.Generator().manual_seed(seed)
        model = build_network(layers)
        pos = float(y_train.sum())
        pos_weight = torch.tensor([(len(y_train) - pos) / max(pos, 1.0)])
        loss_fn = nn.BCEWithLogitsLoss(pos_weight=pos_weight)
        opt = torch.optim.Adam(model.parameters(), lr=config.learning_rate, weight_decay=config.weight_decay)
        xt = torch.as_tensor(x_train, dtype=torch.float32)
        yt = torch.as_tensor(y_train, dtype=torch.float32).unsqueeze(1)
        xv = torch.as_tensor(x_val, dtype=torch.float32)
        yv = torch.as_tensor(y_val, dtype=torch.float32).unsqueeze(1)
        best_loss, best_epoch, best_state = float("inf"), 0, copy.deepcopy(model.state_dict())
        history: list[dict[str, float]] = []
        n = len(xt)
        for epoch in range(1, config.max_epochs + 1):
            model.train()
            order = torch.randperm(n, generator=gen)
            total = 0.0
            for start in range(0, n, config.batch_size):
                idx = order[start : start + config.batch_size]
                if len(idx) < 2:  # BatchNorm cannot train on a batch of one
                    continue
                opt.zero_grad()
                loss = loss_fn(model(xt[idx]), yt[idx])
                loss.backward()
                opt.step()
                total += float(loss.detach()) * len(idx)
            model.eval()
            with torch.inference_mode():
                val_loss = float(loss_fn(model(xv), yv))
            row = {"epoch": float(epoch), "train_loss": total / n, "val_loss": val_loss}
            history.append(row)
            if progress:
                progress(row)
            if val_loss < best_loss - 1e-6:
                best_loss, best_epoch, best_state = val_loss, epoch, copy.deepcopy(model.state_dict())
            elif epoch - best_epoch >= config.patience:
                break
        model.load_state_dict(best_state)
        model.eval()
    return model, history, best_epoch


def _logistic(x: np.ndarray, y: np.ndarray) -> LogisticRegression:
    return LogisticRegression(class_weight="balanced", max_iter=5000).fit(x, y)


def _cross_validated_auc(ds: Dataset, dev: np.ndarray, config: TrainConfig, layers: Sequence[Layer]) -> dict[str, Any]:
    """Stratified k-fold AUC of the MLP and the logistic baseline over the development rows (train+validation).

    Each fold refits the preprocessing on its own training part; the MLP's early stopping uses a stratified
    20 % of that training part. The test split is never touched.
    """
    skf = StratifiedKFold(n_splits=config.cv_folds, shuffle=True, random_state=config.seed)
    mlp_aucs, lr_aucs = [], []
    for k, (tr, te) in enumerate(skf.split(dev, ds.y[dev])):
        tr_idx, te_idx = dev[tr], dev[te]
        fit_idx, stop_idx = train_test_split(
            tr_idx, test_size=0.2, stratify=ds.y[tr_idx], random_state=config.seed + 100 + k
        )
        pre = Preprocessor.fit(ds.x[fit_idx])
        model, _, _ = fit_mlp(
            pre.transform(ds.x[fit_idx]),
            ds.y[fit_idx],
            pre.transform(ds.x[stop_idx]),
            ds.y[stop_idx],
            config,
            seed=config.seed + 1000 + k,
            layers=layers,
        )
        mlp_aucs.append(float(roc_auc_score(ds.y[te_idx], _logits(model, pre.transform(ds.x[te_idx])))))
        pre_lr = Preprocessor.fit(ds.x[tr_idx])
        lr = _logistic(pre_lr.transform(ds.x[tr_idx]), ds.y[tr_idx])
        lr_aucs.append(float(roc_auc_score(ds.y[te_idx], lr.decision_function(pre_lr.transform(ds.x[te_idx])))))

    def summary(a: list[float]) -> dict[str, Any]:
        return {
            "mean": round(float(np.mean(a)), 6),
            "std": round(float(np.std(a, ddof=1)), 6),
            "folds": [round(v, 6) for v in a],
        }

    return {
        "folds": config.cv_folds,
        "rows": len(dev),
        "description": "stratified k-fold over the training+validation rows; test split untouched",
        "mlp_roc_auc": summary(mlp_aucs),
        "logistic_roc_auc": summary(lr_aucs),
    }


def train(
    data: str | Path | None = None,
    spec: ModelSpec | None = None,
    config: TrainConfig | None = None,
    progress: Progress | None = None,
    stage: Callable[[str], None] | None = None,
) -> TrainResult:
    """Run the whole pipeline on ``data`` (default: the spec's ``training.data``) for the network of ``spec``
    (default: the Pima spec) and return everything the bundle stores."""
    from service.engine.baselines import summarize_baselines  # the engine's choice of baseline distribution
    from service.engine.gradient_shap import GradientShapEngine  # the service's own evaluation of the logit

    spec = spec if spec is not None else default_spec()
    config = config or TrainConfig.from_spec(spec.training)
    say = stage or (lambda _msg: None)
    data = data if data is not None else spec_data_path(spec)
    if data is None:
        raise ValueError(f"spec {spec.name!r} names no training.data: give the CSV (gshap train --data FILE.csv)")
    ds = load_dataset(data, spec.features)
    split = stratified_split(ds.y, config.seed, config.test_fraction, config.validation_fraction)
    pre = Preprocessor.fit(ds.x[split.train])
    xtr, xva, xte = (pre.transform(ds.x[i]) for i in (split.train, split.validation, split.test))
    ytr, yva, yte = (ds.y[i] for i in (split.train, split.validation, split.test))

    say(f"summarising the training split into {config.n_baselines} weighted baselines")
    baselines, weights = summarize_baselines(xtr, k=config.n_baselines, seed=config.seed)

    say(f"training {layer_summary(spec.network)} on {len(ytr)} records (validation {len(yva)}, test {len(yte)})")
    raw, history, best_epoch = fit_mlp(
        xtr, ytr, xva, yva, config, seed=config.seed, progress=progress, layers=spec.network
    )

    say("Platt scaling of the logit on the validation split; threshold on the calibrated scale")
    # logits as the service computes them (the engine's fixed-order float64 evaluation, no BLAS)
    raw_logit = GradientShapEngine(raw, baselines, weights).predict_logit
    raw_threshold = youden_threshold(yva, sigmoid(raw_logit(xva)))
    a, b = fit_platt(raw_logit(xva), yva)
    calibration = Calibration(method="platt", fitted_on="validation", a=a, b=b)
    model = CalibratedClassification.wrap(build_network(spec.network), calibration)
    model.load_state_dict(raw.state_dict())
    model.eval()
    cal_logit = GradientShapEngine(model, baselines, weights).predict_logit
    threshold = _rounded_threshold(yva, sigmoid(cal_logit(xva)))

    say("fitting the logistic-regression baseline and its Platt scaling")
    lr = _logistic(xtr, ytr)
    lr_a, lr_b = fit_platt(lr.decision_function(xva), yva)
    lr_raw_val, lr_val = lr.predict_proba(xva)[:, 1], sigmoid(lr_a * lr.decision_function(xva) + lr_b)
    lr_raw_threshold = youden_threshold(yva, lr_raw_val)
    lr_threshold = youden_threshold(yva, lr_val)

    say(f"evaluating on the test split with {config.n_bootstrap} bootstrap resamples")
    p_test = sigmoid(cal_logit(xte))
    p_test_raw = sigmoid(raw_logit(xte))
    lr_test_raw = lr.predict_proba(xte)[:, 1]
    lr_test = sigmoid(lr_a * lr.decision_function(xte) + lr_b)
    boot = {"n_boot": config.n_bootstrap, "seed": config.seed}
    metrics: dict[str, Any] = {
        "evaluation_set": f"test split, {len(yte)} records",
        "threshold_rule": "Youden's J (sensitivity + specificity - 1) maximised on the validation split, "
        "on the calibrated probabilities",
        "mlp": classification_metrics(yte, p_test, threshold, **boot),
        "logistic_regression": classification_metrics(yte, lr_test, lr_threshold, **boot),
        "calibration": _calibration_report(
            yte,
            {"mlp": (p_test_raw, p_test), "logistic_regression": (lr_test_raw, lr_test)},
            {"mlp": (raw_threshold, threshold), "logistic_regression": (lr_raw_threshold, lr_threshold)},
            {"mlp": (a, b), "logistic_regression": (lr_a, lr_b)},
            ds.spec.target_label,
            boot,
        ),
        "subgroups": _subgroups(ds, split.test, yte, p_test, threshold, boot),
        "validation_loss_best": round(min(h["val_loss"] for h in history), 6),
        "best_epoch": best_epoch,
        "epochs_run": len(history),
    }
    say(f"{config.cv_folds}-fold cross-validation of both models")
    dev = np.concatenate([split.train, split.validation])
    metrics["cross_validation"] = _cross_validated_auc(ds, dev, config, spec.network)

    return TrainResult(
        model=model,
        preprocessor=pre,
        split=split,
        threshold=threshold,
        metrics=metrics,
        baselines=np.asarray(baselines, dtype=np.float64),
        baseline_weights=np.asarray(weights, dtype=np.float64),
        history=history,
        best_epoch=best_epoch,
        config=config,
        dataset=ds,
        model_spec=spec,
    )


def _rounded_threshold(y: np.ndarray, p: np.ndarray) -> float:
    """Youden's threshold on ``(y, p)`` rounded to 6 decimals (``p`` comes through ``exp``, whose last bits may
    differ between machines), if rounding keeps every validation decision; unrounded otherwise."""
    t = youden_threshold(y, p)
    rounded = round(t, 6)
    return rounded if bool(np.array_equal(p >= t, p >= rounded)) else t


def _calibration_report(
    y: np.ndarray,
    probabilities: dict[str, tuple[np.ndarray, np.ndarray]],
    thresholds: dict[str, tuple[float, float]],
    params: dict[str, tuple[float, float]],
    target: str,
    boot: dict[str, int],
) -> dict[str, Any]:
    """Before/after calibration on the test split for each model, and the decisions that changed."""
    out: dict[str, Any] = {
        "method": "Platt scaling: calibrated logit = a * logit + b, fitted by maximum likelihood on the "
        "validation split (never the test split)",
        "target": target,
        "binning": "10 equal-width bins of the predicted probability on [0, 1]",
        "slope_intercept": "logistic recalibration fit on the test split: logit P(y=1) = intercept + slope * "
        "logit(p); a calibrated model has slope 1, intercept 0",
        "goal": "ECE <= 0.05 and mean predicted risk inside the 95% interval of the observed prevalence",
    }
    for name, (before, after) in probabilities.items():
        t_before, t_after = thresholds[name]
        changed = label_of(before, t_before) != label_of(after, t_after)
        res_before = calibration_metrics(y, before, **boot)
        res_after = calibration_metrics(y, after, **boot)
        prev = res_after["observed_prevalence"]
        out[name] = {
            "a": params[name][0],
            "b": params[name][1],
            "threshold_before": round(float(t_before), 6),
            "threshold_after": round(float(t_after), 6),
            "before": res_before,
            "after": res_after,
            "goal_met": {
                "ece_at_most_0.05": bool(res_after["ece"]["value"] <= 0.05),
                "mean_predicted_within_prevalence_interval": bool(
                    prev["ci_low"] <= res_after["mean_predicted"]["value"] <= prev["ci_high"]
                ),
            },
            "test_decisions_changed": int(changed.sum()),
            "test_confusion_before": confusion(y, label_of(before, t_before)),
            "test_confusion_after": confusion(y, label_of(after, t_after)),
        }
    return out


def _subgroups(
    ds: Dataset, rows: np.ndarray, y: np.ndarray, p: np.ndarray, threshold: float, boot: dict[str, int]
) -> dict[str, Any]:
    """Served-model performance by age and BMI band on the test split (when the data has those features)."""
    out: dict[str, Any] = {
        "evaluation_set": f"test split, {len(y)} records",
        "model": "mlp (calibrated, as served), at the served threshold",
        "interval": f"95% percentile bootstrap within each band, {boot['n_boot']} resamples",
        "caution": "bands hold few records (see n): intervals are wide, and a band without both outcomes has no "
        "AUC and no sensitivity or specificity",
    }
    names = ds.spec.names
    for key, feature, bands, unit, missing in (
        ("age", "age", AGE_BANDS, "years", None),
        ("bmi", "bmi", BMI_BANDS, "kg/m²", "not measured"),
    ):
        if feature not in names:
            continue
        values = ds.x[rows, names.index(feature)]
        out[key] = {
            "feature": feature,
            "unit": unit,
            "bands": subgroup_metrics(y, p, threshold, band_masks(values, bands, missing), **boot),
        }
    return out


def describe_environment() -> dict[str, str]:
    import captum
    import sklearn

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "scikit-learn": sklearn.__version__,
        "captum": captum.__version__,
    }


def config_dict(config: TrainConfig, layers: Sequence[Layer]) -> dict[str, Any]:
    return {
        **asdict(config),
        "architecture": {
            "layers": layer_summary(layers),
            "network": [layer.to_yaml() for layer in layers],
        },
        "optimizer": "Adam",
        "loss": "BCEWithLogitsLoss(pos_weight=negatives/positives of the training split); the class weighting "
        "inflates the raw probabilities, which Platt scaling on the validation split corrects",
    }

"""Pictures of a bundle: confusion matrix, outcome-group attributions, global influence, one record's waterfall,
the reliability diagram (calibration before and after).

Every label comes from the bundle's feature specification (label and unit), every number from the bundle's
stored group summaries or from the engine. PNG for the README, SVG for print. No web framework here.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.axes import Axes
from matplotlib.figure import Figure

from service.contract import sigmoid
from service.model.store import Bundle, load_bundle

__all__ = ["GROUP_TITLES", "write_figures"]

matplotlib.rcParams["svg.hashsalt"] = "gshap-service"  # stable element ids: identical SVGs run to run

GROUP_TITLES = {
    "TP": "True positives (diabetes, predicted diabetes)",
    "TN": "True negatives (no diabetes, predicted none)",
    "FP": "False positives (no diabetes, predicted diabetes)",
    "FN": "False negatives (diabetes, predicted none)",
    "ALL": "All evaluation records",
}
UP, DOWN = "#c0392b", "#2471a3"  # pushes toward the positive class / away from it
_META = {"png": {"Software": None}, "svg": {"Date": None}}


def _save(fig: Figure, out: Path, stem: str) -> list[Path]:
    paths = []
    for ext in ("png", "svg"):
        p = out / f"{stem}.{ext}"
        fig.savefig(p, dpi=130, bbox_inches="tight", metadata=_META[ext])
        paths.append(p)
    plt.close(fig)
    return paths


def _labels(bundle: Bundle) -> list[str]:
    return [f.label_with_unit() for f in bundle.spec]


def confusion_figure(bundle: Bundle) -> Figure:
    cm = bundle.metrics["mlp"]["confusion_matrix"]
    m = np.array([[cm["tn"], cm["fp"]], [cm["fn"], cm["tp"]]])
    fig, ax = plt.subplots(figsize=(4.8, 4.2))
    ax.imshow(m, cmap="Blues")
    names = [["TN", "FP"], ["FN", "TP"]]
    for i in range(2):
        for j in range(2):
            share = m[i, j] / m[i].sum() if m[i].sum() else 0.0
            ax.text(
                j,
                i,
                f"{names[i][j]}\n{m[i, j]}\n({share:.0%} of row)",
                ha="center",
                va="center",
                color="white" if m[i, j] > m.max() / 2 else "black",
                fontsize=11,
            )
    neg, pos = bundle.spec.negative_label, bundle.spec.positive_label
    ax.set_xticks([0, 1], [f"predicted\n{neg}", f"predicted\n{pos}"])
    ax.set_yticks([0, 1], [f"actual\n{neg}", f"actual\n{pos}"])
    met = bundle.metrics["mlp"]
    ax.set_title(
        f"Evaluation set, n={m.sum()}, threshold {bundle.threshold:.3f}\n"
        f"accuracy {met['accuracy']['value']:.3f}, sensitivity {met['sensitivity']['value']:.3f}, "
        f"specificity {met['specificity']['value']:.3f}",
        fontsize=9,
    )
    return fig


def _bars(
    ax: Axes, labels: list[str], mean: np.ndarray, lo: np.ndarray | None, hi: np.ndarray | None, title: str, xlabel: str
) -> None:
    order = np.argsort(np.abs(mean))
    y = np.arange(len(order))
    colours = [UP if mean[i] > 0 else DOWN for i in order]
    ax.barh(y, mean[order], color=colours, alpha=0.85)
    if lo is not None and hi is not None:
        err = np.vstack([mean[order] - lo[order], hi[order] - mean[order]])
        ax.errorbar(mean[order], y, xerr=err, fmt="none", ecolor="black", capsize=3, lw=1)
    ax.set_yticks(y, [labels[i] for i in order])
    ax.axvline(0, color="grey", lw=0.8)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel(xlabel, fontsize=9)
    ax.grid(axis="x", alpha=0.3)


def _group_arrays(group: dict[str, Any], key: str) -> np.ndarray:
    return np.array([np.nan if f[key] is None else f[key] for f in group["features"]], dtype=float)


def _group_bars(ax: Axes, bundle: Bundle, group: dict[str, Any], title: str, xlabel: str) -> None:
    """One outcome group's mean attributions, with their intervals where the group has them (n ≥ 2)."""
    mean = np.nan_to_num(_group_arrays(group, "mean"))
    lo, hi = _group_arrays(group, "ci_low"), _group_arrays(group, "ci_high")
    has_ci = not np.isnan(lo).all()
    _bars(ax, _labels(bundle), mean, lo if has_ci else None, hi if has_ci else None, title, xlabel)


def group_figure(bundle: Bundle, groups: dict[str, Any], name: str) -> Figure:
    g = groups[name]
    fig, ax = plt.subplots(figsize=(7, 4.2))
    _group_bars(
        ax,
        bundle,
        g,
        f"{GROUP_TITLES.get(name, name)}: n={g['count']}",
        f"mean GradientSHAP attribution (logit) with {groups.get('interval', '95% interval')}",
    )
    ax.text(
        0.99,
        0.02,
        "red: pushes toward diabetes · blue: pushes away\nrelative to the base value",
        transform=ax.transAxes,
        ha="right",
        va="bottom",
        fontsize=7,
        color="dimgrey",
    )
    return fig


def groups_panel(bundle: Bundle, groups: dict[str, Any]) -> Figure:
    fig, axes = plt.subplots(2, 2, figsize=(13, 8), sharex=True)
    for ax, name in zip(axes.flat, ("TP", "FP", "FN", "TN"), strict=True):
        g = groups[name]
        _group_bars(ax, bundle, g, f"{GROUP_TITLES[name]}: n={g['count']}", "mean attribution (logit), 95% CI")
    fig.suptitle("GradientSHAP by outcome group on the evaluation set", fontsize=12)
    fig.tight_layout()
    return fig


def global_figure(bundle: Bundle, groups: dict[str, Any]) -> Figure:
    g = groups["ALL"]
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(12, 4.2), sharey=False)
    labels = _labels(bundle)
    _bars(
        a1,
        labels,
        _group_arrays(g, "mean"),
        _group_arrays(g, "ci_low"),
        _group_arrays(g, "ci_high"),
        f"Signed mean attribution, all {g['count']} records",
        "mean attribution (logit), 95% CI",
    )
    mean_abs = _group_arrays(g, "mean_abs")
    order = np.argsort(mean_abs)
    a2.barh(np.arange(len(order)), mean_abs[order], color="#7d3c98", alpha=0.85)
    a2.set_yticks(np.arange(len(order)), [labels[i] for i in order])
    a2.set_title("Mean |attribution|: how much each feature moves predictions", fontsize=10)
    a2.set_xlabel("mean absolute attribution (logit)", fontsize=9)
    a2.grid(axis="x", alpha=0.3)
    fig.tight_layout()
    return fig


def waterfall_figure(bundle: Bundle, record: int) -> Figure:
    from service.engine.gradient_shap import GradientShapEngine

    engine = GradientShapEngine(bundle.model, bundle.baselines, bundle.baseline_weights)
    x = bundle.eval_x[record : record + 1]
    ex = engine.explain(x, method="exact", seed=0, output="logit")
    attr = ex.attributions[0]
    raw = bundle.eval_raw[record]
    shown = bundle.preprocessor.impute(raw[None, :])[0]
    order = np.argsort(np.abs(attr))[::-1]
    fig, ax = plt.subplots(figsize=(8, 4.8))
    running = ex.base_value
    ends = [running]
    for k, j in enumerate(order):
        a = attr[j]
        ax.barh(k, a, left=running, color=UP if a > 0 else DOWN, alpha=0.85)
        ax.text(
            running + a + (0.02 if a > 0 else -0.02),
            k,
            f"{a:+.2f}",
            va="center",
            ha="left" if a > 0 else "right",
            fontsize=8,
        )
        running += a
        ends.append(running)
    span = max(ends) - min(ends) or 1.0
    ax.set_xlim(min(ends) - 0.18 * span, max(ends) + 0.18 * span)
    f = bundle.spec.features
    names = []
    for j in order:
        value = f"{shown[j]:g} {f[j].unit}".strip()
        names.append(f"{f[j].label} = {value}" + (" (imputed)" if np.isnan(raw[j]) else ""))
    ax.set_yticks(np.arange(len(order)), names)
    ax.invert_yaxis()
    ax.axvline(ex.base_value, color="grey", ls="--", lw=1)
    ax.axvline(float(ex.output_value[0]), color="black", lw=1)
    top = len(order) - 0.4
    ax.text(
        ex.base_value, top, f" base value\n E[f(b)] = {ex.base_value:.2f}", fontsize=8, color="dimgrey", va="bottom"
    )
    ax.text(float(ex.output_value[0]), top, f" f(x) = {ex.output_value[0]:.2f}", fontsize=8, va="bottom")
    truth = bundle.spec.positive_label if bundle.eval_y[record] else bundle.spec.negative_label
    prob = sigmoid(float(ex.output_value[0]))
    ax.set_title(
        f"Evaluation record {record} (data record {int(bundle.eval_rows[record]) + 1} of the CSV, actual: {truth})\n"
        f"base value {ex.base_value:.2f} → logit {ex.output_value[0]:.2f} (probability {prob:.2f}); "
        f"completeness gap {ex.completeness_gap[0]:.1e}",
        fontsize=9,
    )
    ax.set_xlabel("logit (log-odds of diabetes)")
    ax.grid(axis="x", alpha=0.3)
    return fig


def reliability_figure(bundle: Bundle) -> Figure | None:
    """Reliability diagram of the test split, before and after calibration, for the MLP and the logistic
    reference: observed rate against mean predicted risk per bin, the record count written at each point, and the
    counts as bars below. From the bundle's stored bins (``metrics.calibration``); ``None`` if it has none."""
    cal = bundle.metrics.get("calibration")
    if not isinstance(cal, dict) or "mlp" not in cal:
        return None
    models = [(k, t) for k, t in (("mlp", "MLP (served)"), ("logistic_regression", "Logistic regression")) if k in cal]
    fig, axes = plt.subplots(
        2, len(models), figsize=(5.2 * len(models), 6.6), gridspec_kw={"height_ratios": [3, 1]}, squeeze=False
    )
    styles = {"before": ("#7f8c8d", "s", "--"), "after": (UP, "o", "-")}
    for col, (key, title) in enumerate(models):
        ax, bars = axes[0, col], axes[1, col]
        ax.plot([0, 1], [0, 1], color="black", lw=0.8, alpha=0.6, label="perfect calibration")
        width = 0.04
        for i, state in enumerate(("before", "after")):
            res = cal[key][state]
            color, marker, line = styles[state]
            rows = [b for b in res["bins"] if b["count"]]
            xs = [b["mean_predicted"] for b in rows]
            ys = [b["observed"] for b in rows]
            ece = res["ece"]
            label = (
                f"{state} calibration: ECE {ece['value']:.3f} [{ece['ci_low']:.3f}, {ece['ci_high']:.3f}], "
                f"mean risk {res['mean_predicted']['value']:.2f}"
            )
            ax.plot(xs, ys, marker=marker, ls=line, color=color, label=label)
            for b in rows:
                ax.annotate(
                    f"n={b['count']}",
                    (b["mean_predicted"], b["observed"]),
                    textcoords="offset points",
                    xytext=(4, -11 if state == "before" else 5),
                    fontsize=7,
                    color=color,
                )
            centres = [(b["low"] + b["high"]) / 2 + (i - 0.5) * width for b in res["bins"]]
            bars.bar(centres, [b["count"] for b in res["bins"]], width=width, color=color, label=state)
        prev = cal[key]["after"]["observed_prevalence"]
        ax.axhspan(prev["ci_low"], prev["ci_high"], color="#2471a3", alpha=0.08, lw=0)
        ax.axhline(
            prev["value"], color=DOWN, lw=0.8, ls=":", label=f"observed prevalence {prev['value']:.2f} (95% CI band)"
        )
        ax.set_xlim(0, 1)
        ax.set_ylim(-0.02, 1.02)
        ax.set_title(f"{title}: test split, {cal[key]['after']['n']} records", fontsize=10)
        ax.set_xlabel("mean predicted risk in the bin")
        ax.set_ylabel("observed rate of diabetes in the bin")
        ax.legend(fontsize=7, loc="upper left")
        ax.grid(alpha=0.3)
        bars.set_xlim(0, 1)
        bars.set_xticks(np.linspace(0, 1, 11))
        bars.set_xlabel("predicted risk (10 equal-width bins)")
        bars.set_ylabel("records")
        bars.legend(fontsize=7)
        bars.grid(axis="y", alpha=0.3)
    fig.suptitle(
        "Reliability before and after Platt scaling (fitted on the validation split); "
        f"served: {bundle.calibration.name}",
        fontsize=11,
    )
    fig.tight_layout()
    return fig


def write_figures(model: str | Path | None = None, out: Path = Path("docs/figures"), record: int = 0) -> list[Path]:
    """Write every figure of a bundle as PNG and SVG into ``out``; returns the paths written."""
    bundle = load_bundle(model)
    if bundle.groups is None:
        raise ValueError(f"bundle {bundle.path} has no groups.json: run `gshap groups` first")
    if not 0 <= record < len(bundle.eval_y):
        raise ValueError(f"--record must lie in [0, {len(bundle.eval_y) - 1}]")
    out.mkdir(parents=True, exist_ok=True)
    groups = bundle.groups
    paths = _save(confusion_figure(bundle), out, "confusion_matrix")
    for name in ("TP", "TN", "FP", "FN"):
        paths += _save(group_figure(bundle, groups, name), out, f"group_{name}")
    paths += _save(groups_panel(bundle, groups), out, "groups_panel")
    paths += _save(global_figure(bundle, groups), out, "global_influence")
    paths += _save(waterfall_figure(bundle, record), out, f"waterfall_record_{record}")
    reliability = reliability_figure(bundle)
    if reliability is not None:
        paths += _save(reliability, out, "reliability")
    return paths

"""Pictures of a bundle: confusion matrix, outcome-group attributions, global influence, one record's waterfall,
the reliability diagram (calibration before and after).

Every label comes from the bundle's feature specification (label and unit), every number from the bundle's
stored group summaries or from the engine. The charts themselves are drawn by :mod:`service.render`, the one
place the API's plots (``POST /explain/plot``, ``GET /groups/{group}/plot``) come from too: the waterfall and
group SVGs here are the bytes those endpoints would write for the same numbers. PNG for the README, SVG for
print. No web framework here.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from service.model.store import Bundle, load_bundle
from service.render import GROUP_TITLES, BarChart, group_chart, influence_chart, waterfall_chart
from service.render.mpl import chart_figure, chart_grid, confusion_figure, figure_bytes, reliability_figure
from service.render.svg import chart_svg

__all__ = ["GROUP_TITLES", "waterfall_of_record", "write_figures"]


@dataclass(frozen=True)
class _Contribution:
    feature: str
    label: str
    unit: str
    value: float
    imputed: bool
    attribution: float


def _write(out: Path, stem: str, png: bytes, svg: bytes) -> list[Path]:
    paths = []
    for ext, data in (("png", png), ("svg", svg)):
        p = out / f"{stem}.{ext}"
        p.write_bytes(data)
        paths.append(p)
    return paths


def _save_chart(chart: BarChart, out: Path, stem: str) -> list[Path]:
    return _write(out, stem, figure_bytes(chart_figure(chart), "png"), chart_svg(chart))


def _labels(bundle: Bundle) -> dict[str, str]:
    return {f.name: f.label_with_unit() for f in bundle.spec}


def waterfall_of_record(bundle: Bundle, record: int) -> BarChart:
    """The exact explanation (logit) of evaluation record ``record`` as a waterfall chart."""
    from service.engine.gradient_shap import GradientShapEngine

    engine = GradientShapEngine(bundle.model, bundle.baselines, bundle.baseline_weights)
    ex = engine.explain(bundle.eval_x[record : record + 1], method="exact", seed=0, output="logit")
    raw = bundle.eval_raw[record]
    shown = bundle.preprocessor.impute(raw[None, :])[0]
    contributions = [
        _Contribution(f.name, f.label, f.unit, float(shown[j]), bool(np.isnan(raw[j])), float(ex.attributions[0, j]))
        for j, f in enumerate(bundle.spec)
    ]
    truth = bundle.spec.positive_label if bundle.eval_y[record] else bundle.spec.negative_label
    return waterfall_chart(
        contributions,
        float(ex.base_value),
        float(ex.output_value[0]),
        title=(
            f"Evaluation record {record} (data record {int(bundle.eval_rows[record]) + 1} of the CSV, "
            f"actual: {truth}); completeness gap {ex.completeness_gap[0]:.1e}"
        ),
    )


def write_figures(model: str | Path | None = None, out: Path = Path("docs/figures"), record: int = 0) -> list[Path]:
    """Write every figure of a bundle as PNG and SVG into ``out``; returns the paths written."""
    bundle = load_bundle(model)
    if bundle.groups is None:
        raise ValueError(f"bundle {bundle.path} has no groups.json: run `gshap groups` first")
    if not 0 <= record < len(bundle.eval_y):
        raise ValueError(f"--record must lie in [0, {len(bundle.eval_y) - 1}]")
    out.mkdir(parents=True, exist_ok=True)
    groups: dict[str, Any] = bundle.groups
    labels = _labels(bundle)
    interval = "95% interval"
    met = bundle.metrics["mlp"]
    cm = met["confusion_matrix"]
    confusion = confusion_figure(
        cm,
        (bundle.spec.negative_label, bundle.spec.positive_label),
        f"Evaluation set, n={sum(cm.values())}, threshold {bundle.threshold:.3f}\n"
        f"accuracy {met['accuracy']['value']:.3f}, sensitivity {met['sensitivity']['value']:.3f}, "
        f"specificity {met['specificity']['value']:.3f}",
    )
    paths = _write(out, "confusion_matrix", figure_bytes(confusion, "png"), figure_bytes(confusion, "svg"))
    for name in ("TP", "TN", "FP", "FN"):
        paths += _save_chart(group_chart(name, groups[name], labels, interval=interval), out, f"group_{name}")
    panel = chart_grid(
        [group_chart(name, groups[name], labels, interval=interval) for name in ("TP", "FP", "FN", "TN")],
        2,
        (13, 8),
        title="GradientSHAP by outcome group on the evaluation set",
    )
    paths += _write(out, "groups_panel", figure_bytes(panel, "png"), figure_bytes(panel, "svg"))
    everyone = groups["ALL"]
    signed = group_chart(
        "ALL", everyone, labels, interval=interval, title=f"Signed mean attribution, all {everyone['count']} records"
    )
    both = chart_grid([signed, influence_chart(everyone, labels)], 2, (13, 4.6), shared=False)
    paths += _write(out, "global_influence", figure_bytes(both, "png"), figure_bytes(both, "svg"))
    paths += _save_chart(waterfall_of_record(bundle, record), out, f"waterfall_record_{record}")
    reliability = reliability_figure(bundle.metrics, bundle.calibration.name)
    if reliability is not None:
        paths += _write(out, "reliability", figure_bytes(reliability, "png"), figure_bytes(reliability, "svg"))
    return paths

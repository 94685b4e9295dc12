"""``GET /model``: the model card, from the bundle's manifest."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service import __version__
from service.api.routes import GET_PROBLEMS, RuntimeDep, SettingsDep, problem_responses
from service.model.card import NOT_RECORDED
from service.runtime.inference import InferenceRuntime
from service.schemas import FeatureCard, ModelCardPublic

__all__ = ["model_card", "router"]

router = APIRouter(tags=["model"])

# large or internal parts of the manifest that a model card does not need
_DROP_TRAINING = ("history",)
_DROP_DATA = ("split_rows",)


def model_card(runtime: InferenceRuntime, limits: dict[str, int]) -> ModelCardPublic:
    """The model card of the runtime's bundle."""
    bundle = runtime.bundle
    manifest: dict[str, Any] = bundle.manifest
    pre = bundle.preprocessor
    features: list[FeatureCard] = []
    for j, f in enumerate(bundle.spec):
        missing = (
            "may be null, 0 or omitted: 'not measured', imputed with the training median"
            if f.may_be_missing
            else "required"
        )
        features.append(
            FeatureCard(
                **{
                    "name": f.name,
                    "column": f.column,
                    "label": f.label,
                    "unit": f.unit,
                    "description": f.description,
                    "valid_min": f.valid_min,
                    "valid_max": f.valid_max,
                    "integer": f.integer,
                    "missing": missing,
                    "imputed_with": float(pre.fill[j]),
                    "train_min": float(pre.train_min[j]),
                    "train_max": float(pre.train_max[j]),
                    "example": f.example,
                }
            )
        )
    spec = bundle.spec
    return ModelCardPublic(
        name=bundle.name,
        version=bundle.version,
        model_version=runtime.model_version,
        service_version=__version__,
        task=str(manifest.get("task", "")),
        created_at=manifest.get("created_at"),
        target={
            "column": spec.target_column,
            "label": spec.target_label,
            "positive_label": spec.positive_label,
            "negative_label": spec.negative_label,
        },
        features=features,
        threshold=bundle.threshold,
        threshold_rule=manifest.get("threshold_rule"),
        metrics=bundle.metrics,
        preprocessing={
            k: str(v) for k, v in manifest.get("preprocessing", {}).items() if k in ("imputation", "scaling")
        },
        training={k: v for k, v in manifest.get("training", {}).items() if k not in _DROP_TRAINING},
        data={k: v for k, v in manifest.get("data", {}).items() if k not in _DROP_DATA},
        baselines=manifest.get("baselines", {}),
        explanation_defaults=manifest.get("explanation_defaults", {}),
        limits=limits,
        **_card(runtime),
    )


_METHOD_WORDS = {
    "exact": "'exact': GradientSHAP computed exactly: the network is piecewise linear (ReLU), so each path integral "
    "from a baseline to the record is a sum over its linear pieces, in closed form (no sampling; standard errors 0)",
    "quadrature": "'quadrature': each path integral by Gauss-Legendre quadrature (n_samples nodes a baseline); "
    "deterministic, its completeness gap reported in every answer",
    "sampled": "'sampled': Monte-Carlo GradientSHAP (random baselines and points on the path, like Captum), with "
    "standard errors, reproducible with a seed",
}


def explanation_method(runtime: InferenceRuntime) -> dict[str, Any]:
    """How the served model's explanations are computed: the methods its bundle offers (``bundle.methods``) and
    the default (``bundle.default_method``), the output, the baselines, completeness and calibration."""
    bundle = runtime.bundle
    methods, default = bundle.methods, bundle.default_method
    exact = "exact" in methods
    out: dict[str, Any] = {
        "method": f"GradientSHAP; by default {_METHOD_WORDS[default]}",
        "methods": list(methods),
        "default_method": default,
        "estimators": {m: _METHOD_WORDS[m].split(": ", 1)[1] for m in methods},
        "output": "attributions of the calibrated logit (log-odds) by default; output='probability' explains the "
        "calibrated probability",
        "baselines": "a weighted summary of the training split (see baselines)",
        "completeness": "base_value + sum(attributions) = output_value; completeness_gap in every answer reports "
        "the difference",
        "calibration": "the calibrated logit is a*logit + b, so its attributions are a times the raw network's "
        "and its base value is a*base + b"
        + (": the explanation stays exact" if exact else ": the estimators' error scales by a too"),
    }
    if not exact:
        out["why_not_exact"] = (
            f"{bundle.exact_unavailable}; a request for 'exact' is refused with a 422 problem (method-not-offered) "
            "naming the methods above"
        )
    groups = bundle.groups or {}
    explained = groups.get("explanation")
    if isinstance(explained, dict):
        method = explained.get("method", "exact")
        out["measured_error"] = {
            "completeness_gap_max_abs": explained.get("completeness_gap_max_abs"),
            "measured_on": f"the evaluation set ({groups.get('evaluation_set_size')} records), {method} "
            f"method, {explained.get('output', 'logit')} output"
            + (": floating-point rounding only" if method == "exact" else ""),
        }
    return out


def _card(runtime: InferenceRuntime) -> dict[str, Any]:
    """The model-card items a clinician and an EHR reviewer check: the bundle's one model card
    (:class:`service.model.card.ModelCard`, ``bundle.card``), its calibration and subgroup metrics."""
    bundle = runtime.bundle
    card = bundle.card.to_dict()
    calibration: dict[str, Any] = {"served": bundle.calibration.to_dict(), **bundle.metrics.get("calibration", {})}
    return {
        "outcome": card["outcome"],
        "intended_use": card["intended_use"],
        "intended_users": card["intended_users"],
        "out_of_scope_uses": card["out_of_scope_uses"],
        "population": card["population"],
        "not_measured": card["not_measured"],
        "development_and_validation": card["development_and_validation"],
        "calibration": calibration,
        "subgroups": dict(bundle.metrics.get("subgroups", {})),
        "limitations": card["limitations"],
        "explanation_method": explanation_method(runtime),
        "methods": list(bundle.methods),
        "default_method": bundle.default_method,
        "update_schedule": str(card.get("update_schedule", NOT_RECORDED)),
        "training_date": bundle.manifest.get("created_at"),
        "signed_by": bundle.signed_by,
        "signing_key": bundle.signing_key,
    }


@router.get(
    "/model",
    operation_id="get_model_card",
    summary="Model card",
    responses=problem_responses(*GET_PROBLEMS),
)
async def get_model(runtime: RuntimeDep, settings: SettingsDep) -> ModelCardPublic:
    """What the model is and how far to trust it, as a model card a clinician and an EHR reviewer can check:
    intended use and users, out-of-scope uses, population and provenance, the inputs with units and the
    'not measured' rule, development and validation, metrics with 95% intervals, calibration before and after,
    subgroup results, limitations, the explanation methods offered and their measured error, version,
    training date and update schedule; also the threshold, the baseline distribution and the explanation
    defaults."""
    return model_card(
        runtime,
        {
            "max_batch_records": settings.max_batch_records,
            "max_n_samples": runtime.max_n_samples,
            "max_body_bytes": settings.max_body_bytes,
        },
    )

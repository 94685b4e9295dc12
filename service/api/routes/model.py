"""``GET /model``: the model card, from the bundle's manifest."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter

from service import __version__
from service.api.routes import GET_PROBLEMS, RuntimeDep, SettingsDep, problem_responses
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


_NOT_RECORDED = "not recorded in this bundle (trained before the model card was part of the bundle)"


def _card(runtime: InferenceRuntime) -> dict[str, Any]:
    """The model-card items a clinician and an EHR reviewer check, from the manifest (``card``, ``metrics``)."""
    bundle = runtime.bundle
    manifest: dict[str, Any] = bundle.manifest
    card: dict[str, Any] = manifest.get("card", {})
    explanation: dict[str, Any] = {
        "method": "GradientSHAP, computed exactly: the network is piecewise linear (ReLU), so each path integral "
        "from a baseline to the record is a sum over its linear pieces, in closed form (no sampling)",
        "output": "attributions of the calibrated logit (log-odds) by default; output='probability' explains the "
        "calibrated probability",
        "baselines": "a weighted summary of the training split (see baselines)",
        "completeness": "base_value + sum(attributions) = output_value; completeness_gap in every answer reports "
        "the difference",
        "calibration": "the calibrated logit is a*logit + b, so its attributions are a times the raw network's "
        "and its base value is a*base + b: the explanation stays exact",
    }
    if bundle.groups is not None and isinstance(bundle.groups.get("explanation"), dict):
        gap = bundle.groups["explanation"].get("completeness_gap_max_abs")
        explanation["measured_error"] = {
            "completeness_gap_max_abs": gap,
            "measured_on": f"the evaluation set ({bundle.groups.get('evaluation_set_size')} records), exact "
            "method, logit output: floating-point rounding only",
        }
    calibration: dict[str, Any] = {"served": bundle.calibration.to_dict(), **bundle.metrics.get("calibration", {})}
    return {
        "intended_use": str(card.get("intended_use", _NOT_RECORDED)),
        "intended_users": list(card.get("intended_users", [_NOT_RECORDED])),
        "out_of_scope_uses": list(card.get("out_of_scope_uses", [_NOT_RECORDED])),
        "population": dict(card.get("population", {"description": _NOT_RECORDED})),
        "not_measured": str(card.get("not_measured", _NOT_RECORDED)),
        "development_and_validation": str(card.get("development_and_validation", _NOT_RECORDED)),
        "calibration": calibration,
        "subgroups": dict(bundle.metrics.get("subgroups", {})),
        "limitations": list(card.get("limitations", [_NOT_RECORDED])),
        "explanation_method": explanation,
        "update_schedule": str(card.get("update_schedule", _NOT_RECORDED)),
        "training_date": manifest.get("created_at"),
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
    subgroup results by age and BMI band, limitations, the explanation method and its measured error, version,
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

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
    )


@router.get(
    "/model",
    operation_id="get_model_card",
    summary="Model card",
    responses=problem_responses(*GET_PROBLEMS),
)
async def get_model(runtime: RuntimeDep, settings: SettingsDep) -> ModelCardPublic:
    """What the model is and how far to trust it: feature specification (units, ranges, the 'missing' rule),
    metrics with 95% intervals, threshold, training data and provenance, the baseline distribution and the
    explanation defaults."""
    return model_card(
        runtime,
        {
            "max_batch_records": settings.max_batch_records,
            "max_n_samples": runtime.max_n_samples,
            "max_body_bytes": settings.max_body_bytes,
        },
    )

"""``POST /predict`` and ``POST /predict/batch``: the model's probability, label and caveats.

The request body is the served model's record: :func:`build_router` makes the routes for the request models that
the app built from the bundle's feature specification (:func:`service.schemas.request_models`).
"""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, Response

from service.api.routes import (
    POST_PROBLEMS,
    RequestIdDep,
    RuntimeDep,
    SettingsDep,
    batch_answer,
    body_as,
    fast_route,
    json_answer,
    problem_responses,
    require_json,
    split_batch,
)
from service.model.features import Feature
from service.schemas import (
    PatientRecord,
    PredictBatchRequest,
    PredictionBatchPublic,
    PredictionPublic,
    RequestModels,
)

__all__ = ["batch_examples", "build_router", "record_examples"]


def _largest(feat: Feature) -> int | float:
    return int(feat.valid_max) if feat.integer else float(feat.valid_max)


def record_examples(models: RequestModels) -> dict[str, Any]:
    """The OpenAPI examples of one record, from the specification: its example patient, the same with values not
    measured (where the specification allows it), and with the largest valid value of its first feature."""
    spec = models.spec
    example = models.example()
    out: dict[str, Any] = {"typical": {"summary": "The specification's example record", "value": example}}
    optional = [f for f in spec if f.may_be_missing]
    if optional:
        nulled, omitted = optional[0], optional[1:3]
        value = {k: v for k, v in example.items() if k not in {f.name for f in omitted}}
        value[nulled.name] = None
        names = ", ".join(f.name for f in omitted)
        out["not_measured"] = {
            "summary": "Values not measured: null (or 0 where zero means so) or omitted",
            "description": f"{nulled.name} is null{f' and {names} omitted' if names else ''}: imputed.",
            "value": value,
        }
    first = next(iter(spec))
    out["largest_value"] = {
        "summary": f"{first.label} at its largest valid value (beyond the training range, the answer warns)",
        "value": {**example, first.name: _largest(first)},
    }
    return out


def batch_examples(models: RequestModels) -> dict[str, Any]:
    """The OpenAPI example of a batch: two records, the second with a value not measured (where one may be)."""
    example = models.example()
    optional = [f.name for f in models.spec if f.may_be_missing]
    second = {**example, optional[0]: None} if optional else example
    words = f", the second with {optional[0]} not measured" if optional else ""
    return {"two_records": {"summary": f"Two records{words}", "value": {"records": [example, second]}}}


def build_router(models: RequestModels) -> APIRouter:
    """The predict routes for the served model's request models."""
    router = APIRouter(tags=["predict"], dependencies=[Depends(require_json)])
    examples, batch = record_examples(models), batch_examples(models)

    @router.post(
        "/predict",
        operation_id="predict",
        summary="Predict one patient",
        response_description="The prediction, with imputed features and warnings.",
        response_model=PredictionPublic,
        responses=problem_responses(*POST_PROBLEMS),
    )
    @fast_route
    @body_as(record=Annotated[models.record, Body(openapi_examples=examples)])
    async def predict(record: PatientRecord, runtime: RuntimeDep) -> Response:
        """The probability of the model's positive outcome, the label at the model's threshold, the features
        that were not measured (imputed) and warnings where the model extrapolates."""
        # the validated fields as they are (model_dump() would copy them through the serialiser): read, not kept
        [prediction] = await runtime.apredict([record.__dict__])
        return json_answer(prediction)

    @router.post(
        "/predict/batch",
        operation_id="predict_batch",
        summary="Predict several patients",
        response_description="One result per record, in order; refused records carry a problem.",
        response_model=PredictionBatchPublic,
        response_model_exclude_none=True,
        responses=problem_responses(*POST_PROBLEMS),
    )
    @body_as(body=Annotated[models.predict_batch, Body(openapi_examples=batch)])
    async def predict_batch(
        body: PredictBatchRequest,
        request: Request,
        runtime: RuntimeDep,
        settings: SettingsDep,
        request_id: RequestIdDep,
    ) -> Response:
        """Predict up to GSHAP_MAX_BATCH_RECORDS records (default 100; more: 413). Records are validated one by
        one: a refused record is reported by its index with a 422 problem, and the others are still answered."""
        valid, refused = split_batch(
            body.records,
            record_model=models.record,
            limit=settings.max_batch_records,
            instance=request.url.path,
            request_id=request_id,
        )
        predictions = await runtime.apredict([record for _, record in valid])
        return batch_answer([(i, p) for (i, _), p in zip(valid, predictions, strict=True)], refused)

    return router

"""``POST /predict`` and ``POST /predict/batch``: the model's probability, label and caveats."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Body, Depends, Request, Response

from service.api.routes import (
    POST_PROBLEMS,
    RequestIdDep,
    RuntimeDep,
    SettingsDep,
    batch_answer,
    json_answer,
    problem_responses,
    require_json,
    split_batch,
)
from service.schemas import (
    PatientRecord,
    PredictBatchRequest,
    PredictionBatchPublic,
    PredictionPublic,
    example_record,
)

__all__ = ["BATCH_EXAMPLES", "RECORD_EXAMPLES", "router"]

router = APIRouter(tags=["predict"], dependencies=[Depends(require_json)])

_example = example_record()
RECORD_EXAMPLES: dict[str, Any] = {
    "typical": {
        "summary": "A typical record (insulin 0 = not measured)",
        "value": _example,
    },
    "not_measured": {
        "summary": "Values not measured: 0 (or null) or omitted",
        "description": "blood_pressure is 0 and skin_thickness and insulin are omitted: all three are imputed.",
        "value": {k: v for k, v in {**_example, "blood_pressure": 0}.items() if k not in ("skin_thickness", "insulin")},
    },
    "outside_training_range": {
        "summary": "A value outside the training range (answer carries a warning)",
        "value": {**_example, "insulin": 900},
    },
}


BATCH_EXAMPLES: dict[str, Any] = {
    "two_records": {
        "summary": "Two records, the second with glucose not measured",
        "value": {"records": [_example, {**_example, "glucose": 0}]},
    },
}


@router.post(
    "/predict",
    operation_id="predict",
    summary="Predict one patient",
    response_description="The prediction, with imputed features and warnings.",
    response_model=PredictionPublic,
    responses=problem_responses(*POST_PROBLEMS),
)
async def predict(
    record: Annotated[PatientRecord, Body(openapi_examples=RECORD_EXAMPLES)], runtime: RuntimeDep
) -> Response:
    """The probability that the patient tests positive for diabetes, the label at the model's threshold, the
    features that were not measured (imputed) and warnings where the model extrapolates."""
    [prediction] = await runtime.apredict([record.model_dump()])
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
async def predict_batch(
    body: Annotated[PredictBatchRequest, Body(openapi_examples=BATCH_EXAMPLES)],
    request: Request,
    runtime: RuntimeDep,
    settings: SettingsDep,
    request_id: RequestIdDep,
) -> Response:
    """Predict up to GSHAP_MAX_BATCH_RECORDS records (default 100; more: 413). Records are validated one by
    one: a refused record is reported by its index with a 422 problem, and the others are still answered."""
    valid, refused = split_batch(
        body.records, limit=settings.max_batch_records, instance=request.url.path, request_id=request_id
    )
    predictions = await runtime.apredict([record for _, record in valid])
    return batch_answer([(i, p) for (i, _), p in zip(valid, predictions, strict=True)], refused)

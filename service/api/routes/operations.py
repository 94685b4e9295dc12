"""``GET /metrics`` (Prometheus text format) and ``GET /monitoring`` (drift against the evaluation set, JSON).

Both are served on the service's port when GSHAP_METRICS_ENABLED is true (the default). They are open to any
client that reaches the port, like ``/healthz``, unless GSHAP_METRICS_REQUIRE_KEY=true puts them behind the API
keys (GSHAP_API_KEYS).
"""

from __future__ import annotations

from fastapi import APIRouter, Request, Response

from service.api.errors import ModelNotReady
from service.api.routes import get_runtime, get_state, problem_responses
from service.observe.drift import PSI_ACT, PSI_WATCH
from service.observe.metrics import CONTENT_TYPE, Telemetry
from service.schemas import DriftThresholdsPublic, DriftVariablePublic, MonitoringPublic

__all__ = ["BINNING", "monitoring_router", "router"]

router = APIRouter(tags=["operations"])
monitoring_router = APIRouter()  # its tag comes from router, which includes it

BINNING = (
    "Per variable: the evaluation set's deciles of its measured values (ties merged, a value on an edge goes "
    "to the bin above), plus a 'missing' bin for a feature that may be missing; the served probability is "
    "binned by the deciles of the evaluation set's served probabilities. Shares smoothed as (count + 0.5) / "
    "(n + 0.5 k) over k bins; PSI = Σ (recent − expected) · ln(recent / expected)."
)


def _telemetry(request: Request) -> Telemetry:
    telemetry = get_state(request).telemetry
    if telemetry is None:  # the routes are only included when metrics are enabled
        raise ModelNotReady("Metrics are not enabled on this server.", headers={"Retry-After": "1"})
    return telemetry


@router.get(
    "/metrics",
    operation_id="metrics",
    summary="Prometheus metrics",
    response_class=Response,
    responses={
        200: {
            "description": "Every metric in the Prometheus text exposition format 0.0.4.",
            "content": {CONTENT_TYPE: {"schema": {"type": "string"}}},
        },
        **problem_responses(401, 429, 500),
    },
)
async def metrics(request: Request) -> Response:
    """Requests, latency and requests in flight by route template, method and status; the engine's batch sizes
    and queue waits; explanations by method and output and their completeness gaps; imputed and out-of-range
    values by feature; predictions by label and the predicted probability; build and model info; drift indices.
    No label or sample carries a patient's value. With several workers, every worker's metrics, added up."""
    return Response(_telemetry(request).render(), media_type=CONTENT_TYPE)


@monitoring_router.get(
    "/monitoring",
    operation_id="monitoring",
    summary="Drift of recent inputs and predictions",
    response_model=MonitoringPublic,
    responses=problem_responses(401, 429, 500, 503),
)
async def monitoring(request: Request) -> MonitoringPublic:
    """The population stability index of each feature and of the served probability over the rolling window,
    against the model's evaluation set, with a verdict each: stable (< 0.1), watch (0.1-0.25), act (> 0.25), or
    insufficient_data below GSHAP_MONITORING_MIN_RECORDS records. Counts only: no record's values are kept."""
    _telemetry(request)
    try:
        runtime = get_runtime(request)  # the default model at /monitoring, else the one the path names
    except ModelNotReady:
        runtime = None
    telemetry = runtime.telemetry if runtime is not None else None
    report = telemetry.drift_report() if telemetry is not None else None
    if report is None or runtime is None:
        raise ModelNotReady("The model is loading or shutting down; retry shortly.", headers={"Retry-After": "1"})
    return MonitoringPublic(
        status=report.status,
        model_version=runtime.model_version,
        window_seconds=report.window_seconds,
        records=report.records,
        reference="evaluation set",
        reference_records=report.reference_records,
        binning=BINNING,
        thresholds=DriftThresholdsPublic(psi_watch=PSI_WATCH, psi_act=PSI_ACT, min_records=report.min_records),
        variables=[
            DriftVariablePublic(
                name=v.name,
                kind="output" if i == len(report.variables) - 1 else "feature",
                psi=v.psi,
                status=v.status,
                bins=v.bins,
                recent_missing_rate=v.recent_missing_rate,
                reference_missing_rate=v.reference_missing_rate,
                recent_out_of_range_rate=v.recent_out_of_range_rate,
                reference_out_of_range_rate=v.reference_out_of_range_rate,
            )
            for i, v in enumerate(report.variables)
        ],
    )


router.include_router(monitoring_router)

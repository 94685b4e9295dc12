"""``GET /healthz`` (liveness) and ``GET /readyz`` (readiness): open even when API keys are required."""

from __future__ import annotations

from fastapi import APIRouter, Request

from service.api.routes import get_runtime, problem_responses
from service.schemas import HealthPublic, ReadinessPublic

__all__ = ["router"]

router = APIRouter(tags=["health"])


@router.get(
    "/healthz",
    operation_id="liveness",
    summary="Liveness",
    responses=problem_responses(500),
    openapi_extra={"security": []},
)
async def healthz() -> HealthPublic:
    """200 while the process can answer at all; says nothing about the model."""
    return HealthPublic(status="ok")


@router.get(
    "/readyz",
    operation_id="readiness",
    summary="Readiness",
    responses=problem_responses(500, 503),
    openapi_extra={"security": []},
)
async def readyz(request: Request) -> ReadinessPublic:
    """200 once the bundle is loaded and verified, the engine built and a warm-up explanation has run; a 503
    problem before that and while shutting down."""
    runtime = get_runtime(request)
    return ReadinessPublic(status="ready", model_version=runtime.model_version)

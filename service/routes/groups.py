"""``GET /groups`` and ``GET /groups/{group}``: the outcome-group summaries cached in the bundle at training."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path

from service.errors import NotFound
from service.inference import InferenceRuntime
from service.routes import GET_PROBLEMS, RuntimeDep, problem_responses
from service.schemas import GroupPublic, GroupsPublic

__all__ = ["router"]

router = APIRouter(tags=["groups"])

GROUP_NAMES = ("TP", "TN", "FP", "FN", "ALL")


def _summaries(runtime: InferenceRuntime) -> dict[str, Any]:
    groups = runtime.bundle.groups
    if not groups or not isinstance(groups.get("groups"), dict):
        raise NotFound("This model bundle carries no group summaries (they are written by 'gshap groups').")
    return groups


def _group(name: str, raw: dict[str, Any]) -> GroupPublic:
    return GroupPublic.model_validate({**raw, "group": name})


@router.get(
    "/groups",
    operation_id="list_groups",
    summary="Mean explanations by outcome group",
    responses=problem_responses(404, *GET_PROBLEMS),
)
async def list_groups(runtime: RuntimeDep) -> GroupsPublic:
    """How each feature drove the model, on average, for the evaluation set's true positives (TP), true
    negatives (TN), false positives (FP), false negatives (FN) and all records (ALL): mean attribution with
    its 95% interval, spread, mean absolute attribution and mean feature value. Computed at training time."""
    summaries = _summaries(runtime)
    groups = {name: _group(name, raw) for name, raw in summaries["groups"].items()}
    rest = {k: v for k, v in summaries.items() if k != "groups"}
    return GroupsPublic.model_validate({**rest, "groups": groups, "model_version": runtime.model_version})


@router.get(
    "/groups/{group}",
    operation_id="get_group",
    summary="Mean explanation of one outcome group",
    responses=problem_responses(404, *GET_PROBLEMS),
)
async def get_group(
    runtime: RuntimeDep,
    group: str = Path(description="TP, TN, FP, FN or ALL (case-insensitive).", examples=["TP"]),
) -> GroupPublic:
    """One outcome group's summary; an unknown group is a 404 problem."""
    summaries = _summaries(runtime)["groups"]
    key = group.upper()
    if key not in summaries:
        raise NotFound(f"No outcome group of that name; known groups: {', '.join(summaries)}.")
    return _group(key, summaries[key])

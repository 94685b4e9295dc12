"""``GET /groups`` and ``GET /groups/{group}``: the outcome-group summaries cached in the bundle at training."""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Path, Request, Response

from service.api.errors import NotFound
from service.api.plots import FormatQuery, WidthQuery, plot_answer, plot_responses
from service.api.routes import GET_PROBLEMS, RuntimeDep, problem_responses
from service.contract import GROUPS as GROUP_NAMES
from service.render import group_chart
from service.runtime.inference import InferenceRuntime
from service.schemas import GroupPublic, GroupsPublic

__all__ = ["router"]

router = APIRouter(tags=["groups"])


def _summaries(runtime: InferenceRuntime) -> dict[str, Any]:
    """``bundle.groups`` (groups.json): one key a group plus the evaluation's settings; 404 without it."""
    groups = runtime.bundle.groups
    if not groups or not any(g in groups for g in GROUP_NAMES):
        raise NotFound("This model bundle carries no group summaries (they are written by 'gshap groups').")
    return groups


def _group(runtime: InferenceRuntime, name: str, raw: dict[str, Any]) -> GroupPublic:
    spec = runtime.spec
    features = [
        {**f, "label": spec.by_name(f["feature"]).label, "unit": spec.by_name(f["feature"]).unit}
        if f.get("feature") in spec.names
        else f
        for f in raw.get("features", [])
    ]
    return GroupPublic.model_validate({**raw, "group": name, "features": features})


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
    groups = {name: _group(runtime, name, summaries[name]) for name in GROUP_NAMES if name in summaries}
    counts = {name: g.count for name, g in groups.items()}
    rest = {k: v for k, v in summaries.items() if k not in GROUP_NAMES}
    return GroupsPublic.model_validate(
        {
            **rest,
            "model_version": runtime.model_version,
            "groups": groups,
            "confusion_matrix": {k.lower(): counts[k] for k in ("TN", "FP", "FN", "TP") if k in counts},
        }
    )


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
    key, summaries = _known(runtime, group)
    return _group(runtime, key, summaries[key])


def _known(runtime: InferenceRuntime, group: str) -> tuple[str, dict[str, Any]]:
    summaries = _summaries(runtime)
    key = group.upper()
    if key not in GROUP_NAMES or key not in summaries:
        raise NotFound(f"No outcome group of that name; known groups: {', '.join(GROUP_NAMES)}.")
    return key, summaries


@router.get(
    "/groups/{group}/plot",
    operation_id="get_group_plot",
    summary="Mean explanation of one outcome group as a picture",
    response_class=Response,
    responses={
        **plot_responses("The group's mean attribution of each feature with its interval, largest first."),
        **problem_responses(404, 422, *GET_PROBLEMS),
    },
)
async def get_group_plot(
    request: Request,
    runtime: RuntimeDep,
    group: str = Path(description="TP, TN, FP, FN or ALL (case-insensitive).", examples=["TP"]),
    format: FormatQuery = None,
    width: WidthQuery = 720,
) -> Response:
    """GET /groups/{group} drawn as bars: each feature's mean attribution (logit) in the group with its 95%
    interval, largest first. image/svg+xml by default, image/png with `?format=png`; the same figure code as
    `gshap figures`."""
    key, summaries = _known(runtime, group)
    labels = {f.name: f.label_with_unit() for f in runtime.spec}
    interval = "95% interval" if key != "ALL" or summaries[key].get("count", 0) > 1 else "no interval"
    spec = runtime.spec
    chart = group_chart(
        key, summaries[key], labels, interval=interval, positive=spec.positive_label, negative=spec.negative_label
    )
    return await plot_answer(request, chart, format, width)

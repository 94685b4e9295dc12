"""``POST /explain`` and ``POST /explain/batch``: a prediction and its GradientSHAP attributions."""

from __future__ import annotations

from typing import Annotated, Any, cast

from fastapi import APIRouter, Body, Depends, Request, Response

from service.api.errors import FieldError, MethodNotOffered, invalid_input
from service.api.plots import FormatQuery, WidthQuery, plot_answer, plot_responses
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
from service.api.routes.predict import batch_examples, record_examples
from service.contract import ServedMethod
from service.render import waterfall_chart
from service.runtime.inference import MIN_N_SAMPLES, ExplainOptions, InferenceRuntime
from service.schemas import (
    ExplainBatchRequest,
    ExplainRequest,
    ExplainSettings,
    ExplanationBatchPublic,
    ExplanationPublic,
    RequestModels,
)

__all__ = ["build_router", "explain_options"]


def explain_examples(models: RequestModels) -> dict[str, Any]:
    """The OpenAPI examples of one explain request, from the specification's example record."""
    example = models.example()
    out: dict[str, Any] = {
        "default": {"summary": "Attributions of the logit (the model's default method)", "value": example},
        "probability": {
            "summary": "Attributions on the probability scale",
            "value": {**example, "output": "probability"},
        },
        "sampled": {
            "summary": "Monte-Carlo estimate with a seed (reproducible)",
            "value": {**example, "method": "sampled", "n_samples": 200, "seed": 7},
        },
    }
    record = record_examples(models)
    if "not_measured" in record:
        out["not_measured"] = record["not_measured"]
    return out


def explain_batch_examples(models: RequestModels) -> dict[str, Any]:
    """The OpenAPI example of an explain batch: :func:`batch_examples` on the probability scale."""
    [(name, example)] = batch_examples(models).items()
    value = {**example["value"], "output": "probability"}
    return {name: {"summary": example["summary"] + ", on the probability scale", "value": value}}


def explain_options(settings: ExplainSettings, runtime: InferenceRuntime) -> ExplainOptions:
    """The request's settings, checked against this server's sample bound (which may be below the schema's) and the
    methods the served model offers (a 422 ``method-not-offered`` problem otherwise)."""
    n = settings.n_samples
    if n is not None and n > runtime.max_n_samples:
        raise invalid_input(
            [
                FieldError(
                    "n_samples",
                    "less_than_equal",
                    f"Input should be less than or equal to {runtime.max_n_samples} on this server",
                    runtime.max_n_samples,
                )
            ]
        )
    bundle = runtime.bundle
    method = settings.method if "method" in settings.model_fields_set else bundle.default_method
    if method not in bundle.methods:
        offered = ", ".join(bundle.methods)
        raise MethodNotOffered(
            f"Method '{method}' is not offered by the model {bundle.name} {bundle.version}: "
            f"{bundle.exact_unavailable or 'not offered'}. Methods that apply: {offered}.",
            errors=[FieldError("method", "offered_methods", f"Input should be one of {offered} for this model")],
            extra={"methods": list(bundle.methods)},
        )
    low = MIN_N_SAMPLES[method]
    # the published schema bounds n_samples per method only where the request names the method (an if/then on
    # "method"); without it the default method applies, and noise-free exact ignores n_samples anyway
    if n is not None and n < low and "method" in settings.model_fields_set:
        raise invalid_input(
            [
                FieldError(
                    "n_samples",
                    "greater_than_equal",
                    f"Input should be greater than or equal to {low} for method '{method}'",
                    low,
                )
            ]
        )
    return ExplainOptions(
        method=cast("ServedMethod", method), n_samples=settings.n_samples, seed=settings.seed, output=settings.output
    )


def build_router(models: RequestModels) -> APIRouter:
    """The explain routes for the served model's request models."""
    router = APIRouter(tags=["explain"], dependencies=[Depends(require_json)])
    examples, batch = explain_examples(models), explain_batch_examples(models)
    fields = set(models.spec.names)
    names = tuple(models.spec.names)

    @router.post(
        "/explain",
        operation_id="explain",
        summary="Explain one patient's prediction",
        response_description="The prediction, the attributions in the feature specification's order and a summary.",
        response_model=ExplanationPublic,
        responses=problem_responses(*POST_PROBLEMS),
    )
    @fast_route
    @body_as(body=Annotated[models.explain, Body(openapi_examples=examples)])
    async def explain(body: ExplainRequest, runtime: RuntimeDep) -> Response:
        """Why the model scored this patient as it did: each feature's GradientSHAP attribution relative to the
        training population (the baseline distribution), adding up to output_value - base_value, with a
        one-sentence summary of the strongest drivers."""
        options = explain_options(body, runtime)
        given = body.__dict__  # the validated fields: model_dump(include=fields) without the serialiser
        record = {name: given[name] for name in names}
        [explanation] = await runtime.aexplain([record], options)
        return json_answer(explanation)

    @router.post(
        "/explain/plot",
        operation_id="explain_plot",
        summary="Explain one patient's prediction as a picture",
        response_class=Response,
        responses={
            **plot_responses("The waterfall of the attributions, largest first."),
            **problem_responses(*POST_PROBLEMS),
        },
    )
    @body_as(body=Annotated[models.explain, Body(openapi_examples=examples)])
    async def explain_plot(
        body: ExplainRequest,
        request: Request,
        runtime: RuntimeDep,
        format: FormatQuery = None,
        width: WidthQuery = 720,
    ) -> Response:
        """The same explanation as POST /explain, drawn as a waterfall from the base value to this patient's
        output: one bar per feature, largest first, red where it raises the risk and blue where it lowers it,
        with the value used (imputed values marked). image/svg+xml by default (one `<g data-feature="...">` per
        feature, embeddable as is), image/png with `?format=png`. The same figure code as `gshap figures`."""
        options = explain_options(body, runtime)
        record = body.model_dump(include=fields)
        [explanation] = await runtime.aexplain([record], options)
        chart = waterfall_chart(
            explanation.attributions,
            explanation.base_value,
            explanation.output_value,
            output=explanation.output,
            title=f"{explanation.prediction.probability:.0%} predicted risk of {runtime.spec.positive_label}",
            positive=runtime.spec.positive_label,
        )
        return await plot_answer(request, chart, format, width)

    @router.post(
        "/explain/batch",
        operation_id="explain_batch",
        summary="Explain several patients' predictions",
        response_description="One result per record, in order; refused records carry a problem.",
        response_model=ExplanationBatchPublic,
        response_model_exclude_none=True,
        responses=problem_responses(*POST_PROBLEMS),
    )
    @body_as(body=Annotated[models.explain_batch, Body(openapi_examples=batch)])
    async def explain_batch(
        body: ExplainBatchRequest,
        request: Request,
        runtime: RuntimeDep,
        settings: SettingsDep,
        request_id: RequestIdDep,
    ) -> Response:
        """Explain up to GSHAP_MAX_BATCH_RECORDS records (default 100; more: 413) with the same settings, given
        at the top level. A refused record is reported by its index with a 422 problem; the others are answered,
        and each record's attributions are the same as if it were explained alone."""
        options = explain_options(body, runtime)
        valid, refused = split_batch(
            body.records,
            record_model=models.record,
            limit=settings.max_batch_records,
            instance=request.url.path,
            request_id=request_id,
        )
        explanations = await runtime.aexplain([record for _, record in valid], options)
        return batch_answer([(i, e) for (i, _), e in zip(valid, explanations, strict=True)], refused)

    return router

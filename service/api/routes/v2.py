"""The Open Inference Protocol (V2 REST), as KServe, Triton, MLServer and Seldon speak it, for their clients.

- ``GET /v2``, ``GET /v2/health/live``, ``GET /v2/health/ready``: the server's metadata and health.
- ``GET /v2/models/{name}[/versions/{version}]``: a model's metadata (inputs, outputs, datatypes, shapes from
  the bundle's feature specification); ``.../ready``: its readiness; ``POST .../infer``: inference.
- Inputs: one tensor per feature, named by the feature, ``FP64`` or ``FP32``, shape ``[N]`` or ``[N, 1]`` (an
  optional feature may be left out: it is imputed and reported in the output ``imputed``), or one tensor
  ``input`` of shape ``[N, F]`` in the specification's feature order. Each record then passes the JSON API's own
  validation (that model version's own record model, :func:`service.schemas.request_models`: ranges, whole
  numbers, the missing rules), record by record.
- Outputs: ``probability``, ``logit`` (``FP64 [N]``), ``label`` (``BYTES [N]``, the label's name), ``imputed`` and
  ``warnings`` (``BYTES [N]``: the features imputed, and those outside the training range, joined by commas).
- Explanations: the model ``{name}-explainer`` (or ``parameters: {"explain": true}`` on the model itself)
  answers with ``attributions`` (``FP64 [N, F]``, the specification's order), ``standard_error`` (``[N, F]``),
  ``base_value``, ``output_value`` and ``completeness_gap`` (``[N]``) besides the prediction's outputs; its
  ``parameters`` take the JSON API's explanation settings (``method``, ``output``, ``n_samples``, ``seed``).
- Errors: ``{"error": "..."}`` (see :func:`service.api.errors.v2_error_response`), never a problem document.

- Models: every model version of the store that the server serves (the model registry's served set, as on
  ``GET /models``), followed across reloads; ``/v2/models/{name}`` is the model's default version. An inference
  holds a lease on its model version, so a reload never closes it under a request in flight.

The binary tensor data extension is :mod:`service.api.v2_codec`. Which models exist is :func:`served_models`, the
one place that knows; the routes look a model up by name and version through :func:`find_model` only.
"""

from __future__ import annotations

import contextlib
import weakref
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from fastapi import APIRouter, FastAPI, Path, Request, Response
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.routing import BaseRoute, Match
from starlette.types import Receive, Scope, Send

from service import __version__
from service.api.errors import (
    FieldError,
    InvalidInput,
    MalformedBody,
    ModelNotReady,
    NotFound,
    PayloadTooLarge,
    UnsupportedMediaType,
    field_errors,
    invalid_input,
    is_v2_path,
)
from service.api.routes import get_state
from service.api.routes.explain import explain_options
from service.api.v2_codec import (
    BINARY_MEDIA_TYPE,
    HEADER_LENGTH,
    InferRequest,
    InputTensor,
    OutputTensor,
    TensorError,
    decode_request,
    encode_response,
)
from service.runtime.inference import InferenceRuntime, Prediction, RecordExplanation
from service.runtime.registry import ModelRegistry
from service.schemas import ExplainSettings, RequestModels, request_models

__all__ = [
    "EXPLAINER_SUFFIX",
    "EXPLAIN_OUTPUTS",
    "PREDICT_OUTPUTS",
    "ServedModel",
    "V2Model",
    "build_router",
    "find_model",
    "infer_example",
    "route_v2_first",
    "router",
    "served_models",
]

router = APIRouter(prefix="/v2", tags=["v2"])
"""The routes that do not depend on the served model's features; :func:`build_router` adds inference in front."""

EXPLAINER_SUFFIX = "-explainer"
PLATFORM = "gshap-pytorch"
"""The ``platform`` of every model's metadata: a PyTorch network served by this service."""
INPUT_MATRIX = "input"
"""The name of the one-tensor form of the inputs, ``[N, F]``."""
PREDICT_OUTPUTS = ("probability", "logit", "label", "imputed", "warnings")
EXPLAIN_OUTPUTS = ("attributions", "standard_error", "base_value", "output_value", "completeness_gap")
EXPLAIN_PARAMETERS = ("method", "output", "n_samples", "seed")
"""The JSON API's explanation settings, taken from an inference request's ``parameters``."""
_JSON_TYPES = frozenset({"application/json"})


# ---- which models: the one place that knows --------------------------------------------------------------


@dataclass(frozen=True)
class ServedModel:
    """One served model version: its store name and version, the runtime that answers for it and the JSON API's
    record model for it (its validation: ranges, whole numbers, the missing rules)."""

    name: str
    version: str
    runtime: InferenceRuntime
    record_model: type[BaseModel]


@dataclass(frozen=True)
class V2Model:
    """A model as a V2 path names it: a served version, as itself or as its explainer (``{name}-explainer``)."""

    served: ServedModel
    explainer: bool
    versions: tuple[str, ...]

    @property
    def name(self) -> str:
        return self.served.name + EXPLAINER_SUFFIX if self.explainer else self.served.name


def served_models(request: Request) -> list[ServedModel]:
    """Every model version this server serves (the registry's served set), the default version of each model first.

    Each version is answered by its own runtime and validated by its own bundle's record model. The list is made
    again after each reload (the registry's ``generation``), so that a model added or removed by a reload appears
    or disappears here too; between reloads it is reused.
    """
    state = get_state(request)
    registry = state.registry
    if registry is None or registry.served is None:
        raise _not_ready()
    cached = _SERVED.get(registry)
    if cached is not None and cached[0] == registry.generation:
        return cached[1]
    schemas = state.schemas
    entries = sorted(registry.entries(), key=lambda e: (e[0], not e[3]))  # by name, the default version first
    served: list[ServedModel] = []
    for name, version, entry, _ in entries:
        bundle = entry.runtime.bundle
        if schemas is not None:
            record_model = schemas(bundle).record
        elif state.models is not None and entry.runtime is state.runtime:
            record_model = state.models.record
        else:
            record_model = request_models(bundle.spec, bundle.methods, bundle.default_method).record
        served.append(ServedModel(name, version, entry.runtime, record_model))
    _SERVED[registry] = (registry.generation, served)
    return served


_SERVED: weakref.WeakKeyDictionary[ModelRegistry, tuple[int, list[ServedModel]]] = weakref.WeakKeyDictionary()
"""The served models of each registry (an app's), by the registry's generation at the time."""


def _not_ready() -> ModelNotReady:
    return ModelNotReady("The model is loading or shutting down; retry shortly.", headers={"Retry-After": "1"})


@contextlib.contextmanager
def _leased(request: Request, runtime: InferenceRuntime) -> Iterator[None]:
    """Hold a lease on ``runtime`` for the block: a reload that removes or replaces it closes it only after the
    block, so that a request in flight finishes on the model it started on."""
    registry = get_state(request).registry
    entry = registry.entry_of(runtime) if registry is not None else None
    if entry is None:  # not served (any more): it keeps running until the leases already held end
        yield
        return
    entry.leases += 1
    try:
        yield
    finally:
        entry.leases -= 1


def find_model(request: Request, name: str, version: str | None) -> V2Model:
    """The model ``name`` (``{model}-explainer`` for its explainer) at ``version`` (None: its default), or a 404."""
    served = served_models(request)
    for explainer in (False, True):
        base = name
        if explainer:
            if not name.endswith(EXPLAINER_SUFFIX):
                continue
            base = name[: -len(EXPLAINER_SUFFIX)]
        versions = [m for m in served if m.name == base]
        if not versions:
            continue
        chosen = versions[0] if version is None else next((m for m in versions if m.version == version), None)
        if chosen is None:
            raise NotFound(f"Model {_quote(name)} has no version {_quote(version)}; it serves: "
                           f"{', '.join(m.version for m in versions)}.")  # fmt: skip
        if not chosen.runtime.ready:
            raise _not_ready()
        return V2Model(chosen, explainer, tuple(m.version for m in versions))
    names = sorted({m.name for m in served} | {m.name + EXPLAINER_SUFFIX for m in served})
    raise NotFound(f"Unknown model {_quote(name)}; this server serves: {', '.join(names)}.")


def _quote(text: str | None) -> str:
    text = text or ""
    return repr(text if len(text) <= 64 else text[:63] + "…")


# ---- the documented answers (OpenAPI) --------------------------------------------------------------------


class V2Error(BaseModel):
    """An error of the Open Inference Protocol: what went wrong, in words; never a stack trace or an input value."""

    error: str = Field(..., description="What went wrong: the tensor, field or limit, and the rule.")


class ServerMetadata(BaseModel):
    """The server's metadata."""

    name: str = Field(..., description="The server's name.")
    version: str = Field(..., description="The server's version (this service's).")
    extensions: list[str] = Field(..., description="The protocol extensions supported: 'binary_tensor_data'.")


class Liveness(BaseModel):
    """The server answers."""

    live: bool = Field(..., description="True.")


class Readiness(BaseModel):
    """Whether the server (or a model) is ready for inference; a 503 error while it is not."""

    name: str | None = Field(None, description="The model, for a model's readiness.")
    ready: bool = Field(..., description="True when ready.")


class MetadataTensor(BaseModel):
    """One input or output tensor of a model: its name, datatype and shape (-1: any size)."""

    name: str = Field(..., description="The tensor's name: a feature name for an input.")
    datatype: str = Field(..., description="FP64 (inputs: FP32 too) or BYTES.")
    shape: list[int] = Field(..., description="The shape; -1 is the number of records N.")
    parameters: dict[str, Any] | None = Field(
        None, description="For inputs: the feature's unit, valid range, whether it is optional and how it is imputed."
    )


class ModelMetadata(BaseModel):
    """A model's metadata: versions, platform, inputs and outputs."""

    model_config = ConfigDict(protected_namespaces=())

    name: str = Field(..., description="The model's name ('{name}-explainer' for its explainer).")
    versions: list[str] = Field(..., description="The versions served, the default first.")
    platform: str = Field(..., description="How the model is served.")
    inputs: list[MetadataTensor] = Field(
        ...,
        description=(
            "One input per feature, in the specification's order. Instead, one tensor 'input' of shape [N, F] "
            "may carry every feature."
        ),
    )
    outputs: list[MetadataTensor] = Field(..., description="The outputs, in the order an answer lists them.")
    parameters: dict[str, Any] | None = Field(
        None, description="The version answering, its explainer model, and the explanation settings accepted."
    )


class ResponseTensor(BaseModel):
    """One output tensor: ``data`` (row-major), or, sent as raw bytes, ``parameters.binary_data_size``."""

    name: str = Field(..., description="The output's name.")
    datatype: Literal["FP64", "BYTES"] = Field(..., description="FP64 or BYTES.")
    shape: list[int] = Field(..., description="The shape, e.g. [N] or [N, F].")
    data: list[float | str] | None = Field(None, description="The elements, row-major (absent when sent as bytes).")
    parameters: dict[str, Any] | None = Field(None, description="binary_data_size when sent as raw bytes.")


class InferenceResponse(BaseModel):
    """The answer to an inference request."""

    model_config = ConfigDict(protected_namespaces=())

    model_name: str = Field(..., description="The model that answered (as the path named it).")
    model_version: str = Field(..., description="The version that answered.")
    id: str | None = Field(None, description="The request's id, when it sent one.")
    parameters: dict[str, Any] | None = Field(
        None, description="For explanations: method, output, n_samples, n_baselines and seed used."
    )
    outputs: list[ResponseTensor] = Field(..., description="The outputs requested (all when none was named).")


def _error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    words = {
        400: "A malformed request, tensor or parameter, or an input refused by the feature's rules.",
        401: "API key missing or wrong (only when the server is configured with GSHAP_API_KEYS).",
        404: "No model of that name or version.",
        413: "Body over GSHAP_MAX_BODY_BYTES, or more records than GSHAP_MAX_BATCH_RECORDS.",
        415: "A body that is neither application/json nor application/octet-stream (the binary extension).",
        429: "Rate limit exceeded (GSHAP_RATE_LIMIT_PER_MINUTE); see the Retry-After header.",
        500: "Internal error.",
        503: "The model is loading or shutting down.",
    }
    return {code: {"model": V2Error, "description": words[code]} for code in codes}


_GET_ERRORS = _error_responses(401, 429, 500, 503)
_MODEL_ERRORS = _error_responses(401, 404, 429, 500, 503)
_INFER_ERRORS = _error_responses(400, 401, 404, 413, 415, 429, 500, 503)

_NAME = Annotated[str, Path(description="The model's name; '{name}-explainer' for its explainer.")]
_VERSION = Annotated[str, Path(description="The model's version (without it: the default version).")]

_TENSOR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["name", "datatype", "shape"],
    "properties": {
        "name": {"type": "string", "description": "A feature name, or 'input' for the [N, F] matrix."},
        "datatype": {"type": "string", "enum": ["FP64", "FP32"]},
        "shape": {"type": "array", "items": {"type": "integer", "minimum": 0}, "minItems": 1, "maxItems": 2},
        "data": {
            "type": "array",
            "description": "The elements, flat or nested, row-major; null: not measured.",
            "items": {},
        },
        "parameters": {
            "type": "object",
            "properties": {"binary_data_size": {"type": "integer", "minimum": 0}},
            "description": "binary_data_size: the tensor's bytes after the JSON header (binary extension).",
        },
    },
    "additionalProperties": False,
}
_PARAMETERS_SCHEMA: dict[str, Any] = {
    "type": "object",
    "description": (
        "binary_data_output (all outputs as raw bytes); explain (true: explain); the explanation settings "
        "method, output, n_samples and seed, as on POST /explain."
    ),
    "properties": {
        "binary_data_output": {"type": "boolean"},
        "explain": {"type": "boolean"},
        "method": {"type": "string", "enum": ["exact", "sampled", "quadrature"]},
        "output": {"type": "string", "enum": ["logit", "probability"]},
        "n_samples": {"type": ["integer", "null"], "minimum": 1},
        "seed": {"type": "integer", "minimum": 0, "maximum": 2**31 - 1},
    },
}
INFER_REQUEST_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["inputs"],
    "properties": {
        "id": {"type": "string", "description": "An id sent back in the answer."},
        "model_name": {"type": "string", "description": "Ignored (the path names the model)."},
        "model_version": {"type": "string", "description": "Ignored (the path names the version)."},
        "parameters": _PARAMETERS_SCHEMA,
        "inputs": {"type": "array", "minItems": 1, "items": _TENSOR_SCHEMA},
        "outputs": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {
                    "name": {"type": "string"},
                    "parameters": {"type": "object", "properties": {"binary_data": {"type": "boolean"}}},
                },
                "additionalProperties": False,
            },
        },
    },
    "additionalProperties": False,
}
_INFER_OPENAPI: dict[str, Any] = {
    "requestBody": {
        "required": True,
        "content": {
            "application/json": {"schema": INFER_REQUEST_SCHEMA},
            BINARY_MEDIA_TYPE: {
                "schema": {"type": "string", "format": "binary"},
                "description": (
                    "The binary tensor data extension: a JSON request of Inference-Header-Content-Length bytes, "
                    "then each binary input's bytes (little-endian, row-major) in the order of the inputs."
                ),
            },
        },
    },
    "parameters": [
        {
            "name": HEADER_LENGTH,
            "in": "header",
            "required": False,
            "schema": {"type": "integer", "minimum": 1},
            "description": "The length of the JSON part of a binary request (binary tensor data extension).",
        }
    ],
}
_INFER_200: dict[int | str, dict[str, Any]] = {
    200: {
        "model": InferenceResponse,
        "description": "The outputs; with raw-byte outputs, a JSON header of Inference-Header-Content-Length bytes "
        "followed by the outputs' bytes.",
        "content": {BINARY_MEDIA_TYPE: {"schema": {"type": "string", "format": "binary"}}},
    }
}


# ---- server and health -----------------------------------------------------------------------------------


@router.get("", operation_id="v2_server_metadata", summary="V2: server metadata", responses=_GET_ERRORS)
async def server_metadata() -> ServerMetadata:
    """The server's name, version and the protocol extensions it supports."""
    return ServerMetadata(name="gshap-service", version=__version__, extensions=["binary_tensor_data"])


@router.get(
    "/health/live",
    operation_id="v2_server_live",
    summary="V2: liveness",
    responses=_error_responses(500),
    openapi_extra={"security": []},
)
async def server_live() -> Liveness:
    """200 while the process can answer at all."""
    return Liveness(live=True)


@router.get(
    "/health/ready",
    operation_id="v2_server_ready",
    summary="V2: readiness",
    responses=_error_responses(500, 503),
    response_model_exclude_none=True,
    openapi_extra={"security": []},
)
async def server_ready(request: Request) -> Readiness:
    """200 once every served model is loaded and warmed up; a 503 error before that and while shutting down."""
    if not all(m.runtime.ready for m in served_models(request)):
        raise _not_ready()
    return Readiness(ready=True)


# ---- model metadata and readiness ------------------------------------------------------------------------


def _input_tensors(runtime: InferenceRuntime) -> list[MetadataTensor]:
    tensors = []
    for feat in runtime.spec:
        parameters: dict[str, Any] = {
            "unit": feat.unit,
            "valid_min": feat.valid_min,
            "valid_max": feat.valid_max,
            "integer": feat.integer,
            "optional": feat.may_be_missing,
        }
        tensors.append(MetadataTensor(name=feat.name, datatype="FP64", shape=[-1], parameters=parameters))
    return tensors


def _output_tensors(n_features: int) -> list[MetadataTensor]:
    shapes = {"attributions": [-1, n_features], "standard_error": [-1, n_features]}
    predicted = [
        MetadataTensor(name=name, datatype="FP64" if name in ("probability", "logit") else "BYTES", shape=[-1])
        for name in PREDICT_OUTPUTS
    ]
    explained = [MetadataTensor(name=n, datatype="FP64", shape=shapes.get(n, [-1])) for n in EXPLAIN_OUTPUTS]
    return predicted + explained


def _metadata(model: V2Model) -> ModelMetadata:
    runtime = model.served.runtime
    outputs = _output_tensors(len(runtime.spec))
    parameters: dict[str, Any] = {"version": model.served.version, "explainer": model.served.name + EXPLAINER_SUFFIX}
    if model.explainer:
        parameters["explanation_settings"] = list(EXPLAIN_PARAMETERS)
        parameters["max_n_samples"] = runtime.max_n_samples
    else:
        outputs = outputs[: len(PREDICT_OUTPUTS)]
    return ModelMetadata(
        name=model.name,
        versions=list(model.versions),
        platform=PLATFORM,
        inputs=_input_tensors(runtime),
        outputs=outputs,
        parameters=parameters,
    )


@router.get("/models/{name}", operation_id="v2_model_metadata", summary="V2: model metadata", responses=_MODEL_ERRORS)
async def model_metadata(request: Request, name: _NAME) -> ModelMetadata:
    """The default version's inputs and outputs, their datatypes and shapes (from the bundle's specification)."""
    return _metadata(find_model(request, name, None))


@router.get(
    "/models/{name}/versions/{version}",
    operation_id="v2_model_version_metadata",
    summary="V2: model version metadata",
    responses=_MODEL_ERRORS,
)
async def model_version_metadata(request: Request, name: _NAME, version: _VERSION) -> ModelMetadata:
    """This version's inputs and outputs, their datatypes and shapes (from the bundle's specification)."""
    return _metadata(find_model(request, name, version))


@router.get("/models/{name}/ready", operation_id="v2_model_ready", summary="V2: model readiness",
            responses=_MODEL_ERRORS)  # fmt: skip
async def model_ready(request: Request, name: _NAME) -> Readiness:
    """200 when the model's default version is ready; 404 for an unknown model; 503 while loading."""
    return Readiness(name=find_model(request, name, None).name, ready=True)


@router.get(
    "/models/{name}/versions/{version}/ready",
    operation_id="v2_model_version_ready",
    summary="V2: model version readiness",
    responses=_MODEL_ERRORS,
)
async def model_version_ready(request: Request, name: _NAME, version: _VERSION) -> Readiness:
    """200 when this version is ready; 404 for an unknown model or version; 503 while loading."""
    return Readiness(name=find_model(request, name, version).name, ready=True)


# ---- inference -------------------------------------------------------------------------------------------


def _check_media_type(request: Request) -> None:
    """The body is JSON, or the binary extension's bytes (octet-stream, or no type at all, as tritonclient sends)."""
    content_type = request.headers.get("content-type")
    if content_type is None:
        return
    media = content_type.split(";", 1)[0].strip().lower()
    if media in _JSON_TYPES or media.endswith("+json") or media == BINARY_MEDIA_TYPE:
        return
    raise UnsupportedMediaType(
        "Send the request as application/json, or as application/octet-stream with Inference-Header-Content-Length "
        "(the binary tensor data extension)."
    )


def _columns(inputs: list[InputTensor], runtime: InferenceRuntime) -> tuple[int, dict[str, list[float | None]]]:
    """The inputs as one column per feature given, and the number of records N (all tensors must agree on it)."""
    names = runtime.spec.names
    seen: set[str] = set()
    for tensor in inputs:
        if tensor.name in seen:
            raise TensorError(f"input {_quote(tensor.name)} is given more than once.")
        seen.add(tensor.name)
    if INPUT_MATRIX in seen and INPUT_MATRIX not in names:
        if len(inputs) > 1:
            raise TensorError(f"input {_quote(INPUT_MATRIX)} carries every feature; send no other input beside it.")
        [matrix] = inputs
        width = len(names)
        if len(matrix.shape) != 2 or matrix.shape[1] != width:
            raise TensorError(
                f"input {_quote(INPUT_MATRIX)} must have shape [N, {width}] ({width} features, in the order of the "
                f"model's metadata); it has {list(matrix.shape)}."
            )
        n = matrix.shape[0]
        return n, {name: matrix.values[j::width] for j, name in enumerate(names)}
    unknown = sorted(seen - set(names))
    if unknown:
        raise TensorError(
            f"unknown input(s) {', '.join(_quote(u) for u in unknown[:5])}; the inputs are the features "
            f"{', '.join(names)}, or one tensor {_quote(INPUT_MATRIX)} [N, {len(names)}]."
        )
    sizes = set()
    for tensor in inputs:
        if (len(tensor.shape) == 2 and tensor.shape[1] != 1) or len(tensor.shape) > 2:
            shape = list(tensor.shape)
            raise TensorError(f"input {_quote(tensor.name)} must have shape [N] or [N, 1]; it has {shape}.")
        sizes.add(tensor.shape[0])
    if len(sizes) > 1:
        raise TensorError(f"the inputs disagree on the number of records N: {sorted(sizes)}.")
    return sizes.pop(), {tensor.name: tensor.values for tensor in inputs}


def _records(decoded: InferRequest, served: ServedModel, limit: int) -> list[dict[str, Any]]:
    """The request's records, each validated by the JSON API's record model (its ranges and missing rules)."""
    record_model = served.record_model
    n, columns = _columns(decoded.inputs, served.runtime)
    if n == 0:
        raise TensorError("the inputs hold no record (N = 0).")
    if n > limit:
        raise PayloadTooLarge(
            f"The request has {n} records; at most {limit} are accepted (GSHAP_MAX_BATCH_RECORDS).",
            extra={"limit": limit, "limit_name": "max_batch_records", "received": n},
        )
    items = list(columns.items())
    records: list[dict[str, Any]] = []
    for i in range(n):
        # a feature left out, or not measured in this record (null, NaN), is absent: the record model's missing
        # rule decides (imputed when optional, refused when required), as for a field omitted on the JSON API
        record = {name: column[i] for name, column in items if column[i] is not None}
        try:
            records.append(record_model.model_validate(record).model_dump())
        except ValidationError as exc:
            errors = field_errors(exc.errors())
            raise InvalidInput(
                detail=f"Record {i} (of {n}) breaks the input rules:",
                errors=[FieldError(f"input {e.field!r}", e.rule, e.message, e.limit) for e in errors],
            ) from None
    return records


def _explain_settings(decoded: InferRequest, explainer: bool) -> ExplainSettings | None:
    """The explanation settings of the request's parameters when it asks for an explanation, else None."""
    parameters = decoded.parameters
    explain = parameters.get("explain", False)
    if not isinstance(explain, bool):
        raise TensorError("parameters.explain must be true or false.")
    given = {k: parameters[k] for k in EXPLAIN_PARAMETERS if k in parameters}
    if not (explain or explainer):
        if given:
            raise TensorError(
                f"parameters {', '.join(sorted(given))} are explanation settings: infer on the explainer model, "
                "or add parameters.explain = true."
            )
        return None
    try:
        return ExplainSettings.model_validate(given)
    except ValidationError as exc:
        errors = [FieldError(f"parameters.{e.field}", e.rule, e.message, e.limit) for e in field_errors(exc.errors())]
        raise invalid_input(errors) from None


def _prediction_outputs(predictions: list[Prediction]) -> dict[str, OutputTensor]:
    n = (len(predictions),)
    return {
        "probability": OutputTensor("probability", "FP64", n, [p.probability for p in predictions]),
        "logit": OutputTensor("logit", "FP64", n, [p.logit for p in predictions]),
        "label": OutputTensor("label", "BYTES", n, [p.label_name for p in predictions]),
        "imputed": OutputTensor("imputed", "BYTES", n, [",".join(p.imputed) for p in predictions]),
        "warnings": OutputTensor(
            "warnings", "BYTES", n, [",".join(w.feature for w in p.warnings) for p in predictions]
        ),
    }


def _explanation_outputs(explanations: list[RecordExplanation], width: int) -> dict[str, OutputTensor]:
    n, matrix = (len(explanations),), (len(explanations), width)
    return {
        **_prediction_outputs([e.prediction for e in explanations]),
        "attributions": OutputTensor(
            "attributions", "FP64", matrix, [a.attribution for e in explanations for a in e.attributions]
        ),
        "standard_error": OutputTensor(
            "standard_error", "FP64", matrix, [a.standard_error for e in explanations for a in e.attributions]
        ),
        "base_value": OutputTensor("base_value", "FP64", n, [e.base_value for e in explanations]),
        "output_value": OutputTensor("output_value", "FP64", n, [e.output_value for e in explanations]),
        "completeness_gap": OutputTensor("completeness_gap", "FP64", n, [e.completeness_gap for e in explanations]),
    }


async def _infer(request: Request, name: str, version: str | None) -> Response:
    model = find_model(request, name, version)
    _check_media_type(request)
    runtime = model.served.runtime
    request.scope.setdefault("state", {})["model_version"] = runtime.model_version
    with _leased(request, runtime):  # held from the lookup to the answer: a reload closes it only after
        return await _answer(request, model, runtime)


async def _answer(request: Request, model: V2Model, runtime: InferenceRuntime) -> Response:
    settings = get_state(request).settings
    try:
        decoded = decode_request(await request.body(), request.headers.get(HEADER_LENGTH))
        records = _records(decoded, model.served, settings.max_batch_records)
        explain = _explain_settings(decoded, model.explainer)
    except TensorError as exc:
        raise MalformedBody(str(exc)) from None
    parameters: dict[str, Any] | None = None
    if explain is None:
        outputs = _prediction_outputs(await runtime.apredict(records))
    else:
        explanations = await runtime.aexplain(records, explain_options(explain, runtime))
        outputs = _explanation_outputs(explanations, len(runtime.spec))
        first = explanations[0]
        parameters = {
            "method": first.method,
            "output": first.output,
            "n_samples": first.n_samples,
            "n_baselines": first.n_baselines,
            "seed": first.seed,
        }
    if decoded.outputs is None:
        chosen, binary = list(outputs.values()), [decoded.binary_output] * len(outputs)
    else:
        unknown = [o.name for o in decoded.outputs if o.name not in outputs]
        if unknown:
            raise MalformedBody(
                f"unknown output(s) {', '.join(_quote(u) for u in unknown[:5])}; this model answers "
                f"{', '.join(outputs)}."
            )
        chosen = [outputs[o.name] for o in decoded.outputs]
        binary = [decoded.binary_output if o.binary is None else o.binary for o in decoded.outputs]
    content, header = encode_response(
        model_name=model.name,
        model_version=model.served.version,
        request_id=decoded.id,
        outputs=chosen,
        binary=binary,
        parameters=parameters,
    )
    if header is None:
        return Response(content, media_type="application/json")
    return Response(content, media_type=BINARY_MEDIA_TYPE, headers={HEADER_LENGTH: str(header)})


async def model_infer(request: Request, name: _NAME) -> Response:
    """Predict (or, on '{name}-explainer' or with parameters.explain, explain) the records of the input tensors
    with the model's default version. JSON tensors or the binary tensor data extension, for inputs and outputs."""
    return await _infer(request, name, None)


async def model_version_infer(request: Request, name: _NAME, version: _VERSION) -> Response:
    """As POST /v2/models/{name}/infer, with this version of the model."""
    return await _infer(request, name, version)


# ---- routing ---------------------------------------------------------------------------------------------


def infer_example(models: RequestModels) -> dict[str, Any]:
    """The model's example patient as an inference request: one FP64 [1] tensor per feature."""
    return {
        "inputs": [
            {"name": name, "datatype": "FP64", "shape": [1], "data": [float(value)]}
            for name, value in models.example().items()
        ]
    }


def build_router(models: RequestModels) -> APIRouter:
    """The V2 routes for the served model: inference first (routes are tried in order, and inference is what
    clients call all the time; its documented example is the model's example patient), then :data:`router`."""
    openapi = {**_INFER_OPENAPI, "requestBody": {**_INFER_OPENAPI["requestBody"]}}
    openapi["requestBody"]["content"] = {
        **_INFER_OPENAPI["requestBody"]["content"],
        "application/json": {"schema": INFER_REQUEST_SCHEMA, "example": infer_example(models)},
    }
    built = APIRouter()
    common: dict[str, Any] = {
        "methods": ["POST"],
        "tags": ["v2"],
        "response_class": Response,
        "responses": {**_INFER_200, **_INFER_ERRORS},
        "openapi_extra": openapi,
    }
    built.add_api_route(
        "/v2/models/{name}/infer", model_infer, operation_id="v2_model_infer", summary="V2: inference", **common
    )
    built.add_api_route(
        "/v2/models/{name}/versions/{version}/infer",
        model_version_infer,
        operation_id="v2_model_version_infer",
        summary="V2: inference with a version",
        **common,
    )
    built.include_router(router)
    return built


class _V2First(BaseRoute):
    """The V2 routes, tried first for a path under ``/v2`` and ruled out by one prefix test for any other.

    The app tries its routes in order, and FastAPI takes tens of microseconds to rule out each included router
    (it matches the router's routes one by one): the V2 routes, included last, would pay for every router ahead
    of them on each request, a cost that the JSON API's ``/predict``, included first, does not have.
    """

    def __init__(self, included: BaseRoute) -> None:
        self.included = included

    def matches(self, scope: Scope) -> tuple[Match, Scope]:
        if scope["type"] == "http" and is_v2_path(scope["path"]):
            return self.included.matches(scope)
        return Match.NONE, {}

    async def handle(self, scope: Scope, receive: Receive, send: Send) -> None:
        await self.included.handle(scope, receive, send)


def route_v2_first(app: FastAPI, built: APIRouter) -> None:
    """Put a shortcut to the V2 routes (``built``, already included in ``app``) ahead of the app's other routes; the
    included routes stay where they are, for the OpenAPI document and the metrics' route templates."""
    included = next(r for r in app.router.routes if getattr(r, "original_router", None) is built)
    app.router.routes.insert(0, _V2First(included))

"""Request and response models, named by role, with units, ranges and examples in every description.

The patient record is not written out here, and it is not built at import: :func:`request_models` builds the
request models of one served model from its feature specification (the loaded bundle's ``spec``), one field a
feature, with the spec's description, unit, valid range, integer rule and "missing" rule, and the spec's example
values. The app calls it at creation with ``runtime.bundle.spec`` (:func:`service.api.app.create_app`), so the
OpenAPI document follows the bundle served. :class:`PatientRecord` and :class:`ExplainRequest` here are the bases
of those models (no feature fields), for typing and for the client, which takes any model's records.

Types are strict on purpose: a record is clinical data, so ``"148"`` (a string), ``true`` (a boolean),
``6.5`` for a count, ``NaN`` or ``Infinity`` are refused with a 422 naming the field rather than coerced; an
unknown field (``"glucos"``) is refused rather than ignored, because ignoring it would silently turn a
misspelled measurement into a missing one. ``6.0`` for a count is accepted as ``6``: JSON has one number type,
and the published schema (JSON Schema 2020-12, where ``integer`` is any number with a zero fractional part)
already calls it an integer; refusing it would refuse requests the contract allows, and nothing is guessed.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Annotated, Any, Literal

from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, PlainValidator, create_model

from service.contract import (
    DEFAULT_N_SAMPLES,
    MAX_N_SAMPLES,
    MIN_N_SAMPLES,
    SERVED_METHODS,
    Output,
    ServedMethod,
    format_value,
)
from service.model.features import Feature, FeatureSpec

__all__ = [
    "AttributionPublic",
    "BatchItemError",
    "DriftThresholdsPublic",
    "DriftVariablePublic",
    "ExplainBatchRequest",
    "ExplainRequest",
    "ExplainSettings",
    "ExplanationBatchItem",
    "ExplanationBatchPublic",
    "ExplanationPublic",
    "FeatureCard",
    "FeatureWarningPublic",
    "GroupFeaturePublic",
    "GroupPublic",
    "GroupsPublic",
    "HealthPublic",
    "ModelCardPublic",
    "MonitoringPublic",
    "PatientRecord",
    "PredictBatchRequest",
    "PredictionBatchItem",
    "PredictionBatchPublic",
    "PredictionPublic",
    "Problem",
    "ProblemFieldError",
    "ReadinessPublic",
    "RequestModels",
    "example_record",
    "patient_record_model",
    "request_models",
    "whole_number",
]

SEED_MAX = 2**31 - 1


# ---- the patient record, from the specification -----------------------------------------------------------


def _whole_float_to_int(value: Any) -> Any:
    # 6.0 and 6 are the same JSON number (and a JSON Schema integer); 6.5 stays a float and is refused
    if type(value) is float and value.is_integer():
        return int(value)
    return value


def whole_number(ge: int, le: int) -> Any:
    """A strict integer from ``ge`` to ``le`` that also takes ``6.0`` (never ``6.5``, ``"6"`` or ``true``).

    The bounds sit inside the type, before the validator, so that the JSON Schema shows them as
    ``minimum``/``maximum`` whether or not the field may be null.
    """
    return Annotated[int, Field(ge=ge, le=le), BeforeValidator(_whole_float_to_int)]


def _num(value: float, integer: bool = False) -> int | float:
    return int(value) if integer or float(value).is_integer() else float(value)


def example_record(spec: FeatureSpec) -> dict[str, Any]:
    """The specification's example patient, as a client would post it."""
    return {f.name: _num(f.example, f.integer) for f in spec}


def _unit_text(feat: Feature) -> str:
    return f" {feat.unit}" if feat.unit else ""


def _field(feat: Feature) -> tuple[Any, Any]:
    lo, hi = _num(feat.valid_min, feat.integer), _num(feat.valid_max, feat.integer)
    kind = "A whole number (JSON integer; 6.0 is read as 6)" if feat.integer else "A number"
    shown = f"{format_value(lo, feat.integer)} to {format_value(hi, feat.integer)}"
    text = (
        f"{feat.description} Unit: {feat.unit or 'none'}. {kind} from {shown}{_unit_text(feat)}; "
        "values outside are refused as implausible."
    )
    py_type: Any = whole_number(int(lo), int(hi)) if feat.integer else float
    bounds: dict[str, Any] = {} if feat.integer else {"ge": lo, "le": hi, "allow_inf_nan": False}
    if feat.may_be_missing:
        text += (
            " Optional: null, 0 or an omitted field mean 'not measured'; the value is then imputed with the "
            "training median and the feature is listed in `imputed`."
        )
        return (
            py_type | None,
            Field(
                None,
                title=feat.label_with_unit(),
                description=text,
                examples=[_num(feat.example, feat.integer)],
                **bounds,
            ),
        )
    return (
        py_type,
        Field(
            ...,
            title=feat.label_with_unit(),
            description=text + " Required.",
            examples=[_num(feat.example, feat.integer)],
            **bounds,
        ),
    )


def record_fields(spec: FeatureSpec) -> dict[str, Any]:
    """``create_model`` field definitions of a patient record, in the specification's order."""
    return {f.name: _field(f) for f in spec}


class PatientRecord(BaseModel):
    """One patient's measurements: the base of every served model's record, whose fields are its features
    (:func:`patient_record_model`); on its own it has no field."""

    model_config = ConfigDict(extra="forbid", strict=True)


def patient_record_model(spec: FeatureSpec, name: str = "PatientRecord") -> type[PatientRecord]:
    """The request model of one patient record, built from ``spec``."""
    return create_model(
        name,
        __base__=PatientRecord,
        __cls_kwargs__={"title": name, "json_schema_extra": {"examples": [example_record(spec)]}},
        __doc__=(
            f"One patient's measurements, in the data set's units. Every field is one model input; "
            f"{_missing_clause(spec)}"
        ),
        **record_fields(spec),
    )


def _missing_clause(spec: FeatureSpec) -> str:
    optional = [f.name for f in spec if f.may_be_missing]
    if not optional:
        return "all are required."
    return f"{', '.join(optional)} may be null, 0 or omitted when not measured."


NSamples = Annotated[int, Field(ge=1, le=MAX_N_SAMPLES), BeforeValidator(_whole_float_to_int)]
Seed = Annotated[int, Field(ge=0, le=SEED_MAX), BeforeValidator(_whole_float_to_int)]

# The lower bound of n_samples depends on the method ('sampled' needs two draws for a standard error): a rule
# across two fields, published as a JSON Schema if/then so that the document allows only what is accepted.
N_SAMPLES_BY_METHOD: dict[str, Any] = {
    "allOf": [
        {
            "if": {"properties": {"method": {"const": method}}, "required": ["method"]},
            "then": {"properties": {"n_samples": {"anyOf": [{"type": "integer", "minimum": low}, {"type": "null"}]}}},
        }
        for method, low in MIN_N_SAMPLES.items()
        if low > 1 and method in SERVED_METHODS
    ]
}


class ExplainSettings(BaseModel):
    """How to explain: GradientSHAP estimator, sample count, seed and the output explained."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=N_SAMPLES_BY_METHOD)

    n_samples: NSamples | None = Field(
        None,
        description=(
            f"Samples per record: Monte-Carlo draws for method 'sampled' (2 to {MAX_N_SAMPLES}, default "
            f"{DEFAULT_N_SAMPLES['sampled']}) or Gauss-Legendre nodes per baseline for 'quadrature' (1 to "
            f"{MAX_N_SAMPLES}, default {DEFAULT_N_SAMPLES['quadrature']}); ignored by 'exact', which samples "
            "nothing. The server may lower the upper bound (GSHAP_MAX_N_SAMPLES, see GET /model). null: the "
            "method's default. The answer reports the count used."
        ),
        examples=[64],
    )
    seed: Seed = Field(
        0,
        description="Seed of the random draws (method 'sampled'), 0 to 2^31-1: the same seed gives the same answer.",
        examples=[0],
    )
    output: Output = Field(
        "logit",
        description=(
            "What the attributions add up to: 'logit' (log-odds, additive, the default) or 'probability' (0-1 scale)."
        ),
    )
    method: ServedMethod = Field(
        "exact",
        description=(
            "GradientSHAP estimator: 'exact' (the expectation over all baselines, computed exactly for this "
            "piecewise-linear network; standard errors 0), 'sampled' (Monte-Carlo, like Captum; standard "
            "errors estimated) or 'quadrature' (numerical integration along each path)."
        ),
    )


class ExplainRequest(ExplainSettings):
    """The base of every served model's explain request: its record fields plus these settings, at the top
    level (:func:`request_models`); on its own it has only the settings."""


class PredictBatchRequest(BaseModel):
    """Several patient records; each is answered (or refused) on its own, in order."""

    model_config = ConfigDict(extra="forbid", strict=True)

    records: list[Any] = Field(
        ...,
        min_length=1,
        description=(
            "Patient records (PatientRecord). At most GSHAP_MAX_BATCH_RECORDS (default 100) per request, else 413."
        ),
    )


class ExplainBatchRequest(ExplainSettings):
    """Several patient records explained with the same settings; each is answered (or refused) on its own."""

    model_config = ConfigDict(extra="forbid", strict=True, json_schema_extra=N_SAMPLES_BY_METHOD)

    records: list[Any] = Field(
        ...,
        min_length=1,
        description=(
            "Patient records (PatientRecord). At most GSHAP_MAX_BATCH_RECORDS (default 100) per request, else 413."
        ),
    )


def _accept_any(value: Any) -> Any:
    return value


@dataclass(frozen=True)
class RequestModels:
    """The request models of one served model, built from its feature specification by :func:`request_models`."""

    spec: FeatureSpec
    record: type[PatientRecord]
    explain: type[ExplainRequest]
    predict_batch: type[PredictBatchRequest]
    explain_batch: type[ExplainBatchRequest]

    def example(self) -> dict[str, Any]:
        """The specification's example patient, as a client would post it."""
        return example_record(self.spec)


_METHOD_WORDS = {
    "exact": "'exact' (the expectation over all baselines, computed exactly for this piecewise-linear network; "
    "standard errors 0)",
    "sampled": "'sampled' (Monte-Carlo, like Captum; standard errors estimated)",
    "quadrature": "'quadrature' (Gauss-Legendre integration along each path; its completeness gap measured)",
}


def method_field(methods: Sequence[str], default: str) -> tuple[Any, Any]:
    """The ``method`` setting of a model that offers ``methods`` (default ``default``): the schema still takes
    every served method's name, so that asking for one the model does not offer gets a 422 that says why."""
    offered = [m for m in SERVED_METHODS if m in methods]
    words = ", ".join(_METHOD_WORDS[m] for m in offered)
    missing = [m for m in SERVED_METHODS if m not in methods]
    refused = (
        f" This model does not offer {' or '.join(repr(m) for m in missing)} (a 422 says why; GET /model lists the "
        "methods)."
        if missing
        else ""
    )
    return (
        ServedMethod,
        Field(default, description=f"GradientSHAP estimator: {words}. Default: '{default}'.{refused}"),
    )


def request_models(
    spec: FeatureSpec, methods: Sequence[str] = SERVED_METHODS, default_method: str = "exact", suffix: str = ""
) -> RequestModels:
    """``PatientRecord``, ``ExplainRequest``, ``PredictBatchRequest`` and ``ExplainBatchRequest`` for ``spec``,
    the ``method`` setting naming the ``methods`` the model offers and defaulting to ``default_method``.

    ``suffix`` is appended to the four names, so that the OpenAPI document of a server with several models holds
    each model's own schemas (two models named alike would show one schema for both)."""
    record = patient_record_model(spec, f"PatientRecord{suffix}")
    example = example_record(spec)
    options: dict[str, Any] = {k: (f.annotation, f) for k, f in ExplainSettings.model_fields.items()}
    options["method"] = method_field(methods, default_method)
    explain = create_model(
        f"ExplainRequest{suffix}",
        __base__=ExplainRequest,
        __cls_kwargs__={
            "title": f"ExplainRequest{suffix}",
            "json_schema_extra": {
                "examples": [{**example, "method": default_method, "output": "logit"}],
                **N_SAMPLES_BY_METHOD,
            },
        },
        __doc__="One patient record plus the optional explanation settings, all at the top level.",
        **record_fields(spec),
        **options,
    )
    # A batch item is validated record by record in the route, so that one bad record is reported by its index
    # without failing the others; the schema still documents each item as a PatientRecord.
    slot = Annotated[Any, PlainValidator(_accept_any, json_schema_input_type=record)]
    records_field = PredictBatchRequest.model_fields["records"]
    second = {**example, _first_optional(spec): None} if any(f.may_be_missing for f in spec) else example
    predict_batch = create_model(
        f"PredictBatchRequest{suffix}",
        __base__=PredictBatchRequest,
        __cls_kwargs__={"json_schema_extra": {"examples": [{"records": [example, second]}]}},
        __doc__=PredictBatchRequest.__doc__,
        records=(list[slot], records_field),
    )
    explain_batch = create_model(
        f"ExplainBatchRequest{suffix}",
        __base__=ExplainBatchRequest,
        __cls_kwargs__={
            "json_schema_extra": {
                "examples": [{"records": [example, second], "method": default_method}],
                **N_SAMPLES_BY_METHOD,
            }
        },
        __doc__=ExplainBatchRequest.__doc__,
        records=(list[slot], records_field),
        method=options["method"],
    )
    return RequestModels(spec, record, explain, predict_batch, explain_batch)


def _first_optional(spec: FeatureSpec) -> str:
    """The first feature that may be left unmeasured (the examples show one record with it missing)."""
    return next(f.name for f in spec if f.may_be_missing)


# ---- problems ---------------------------------------------------------------------------------------------


class ProblemFieldError(BaseModel):
    """One broken rule of the request."""

    field: str = Field(
        ...,
        description="Path of the offending field: a feature's name, 'n_samples', 'records', or 'body' (whole body).",
    )
    rule: str = Field(
        ...,
        description=(
            "Machine-readable rule (pydantic's error type): e.g. 'less_than_equal', 'greater_than_equal', "
            "'float_type', 'int_type', 'finite_number', 'missing', 'extra_forbidden', 'literal_error', "
            "'json_invalid', 'too_long'."
        ),
    )
    message: str = Field(..., description="The rule in words, without the offending value.")
    limit: float | int | str | None = Field(
        None, description="The bound of a range or length rule, in the field's unit (e.g. a feature's valid maximum)."
    )


class Problem(BaseModel):
    """An RFC 9457 problem document (media type application/problem+json).

    Extension members where they apply: `limit`, `limit_name` and `received` (413: the bound that was
    exceeded, e.g. max_batch_records), `retry_after` (429, seconds, as the Retry-After header).
    """

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "type": "/problems/validation",
                    "title": "Invalid input",
                    "status": 422,
                    "detail": "1 field breaks the request schema: glucos.",
                    "instance": "/predict",
                    "errors": [
                        {"field": "glucos", "rule": "extra_forbidden", "message": "Extra inputs are not permitted"}
                    ],
                    "request_id": "3f2c9f8e0d7b4a51a1e6c2b9d8f7e6a5",
                }
            ]
        },
    )

    type: str = Field(
        ...,
        description=(
            "Stable URI reference of the problem kind, relative to the service: /problems/ + one of validation, "
            "malformed-body, unauthorized, cors-refused, not-found, method-not-allowed, payload-too-large, "
            "unsupported-media-type, rate-limited, model-not-ready, internal, precondition-failed, "
            "method-not-offered, headers-too-large, store-unavailable, store-full. GET it for a page that says what "
            "the kind means (docs/PROBLEMS.md lists them)."
        ),
    )
    title: str = Field(..., description="Short summary of the problem kind.")
    status: int = Field(..., description="The HTTP status code.")
    detail: str = Field(..., description="What went wrong with this request, in words; never a stack trace.")
    instance: str | None = Field(None, description="The request path.")
    errors: list[ProblemFieldError] | None = Field(
        None, description="For 4xx input problems: every broken rule, each naming its field."
    )
    request_id: str | None = Field(
        None, description="The request id (also in the X-Request-ID header): quote it when reporting a problem."
    )


# ---- answers ----------------------------------------------------------------------------------------------


# Real answers of the shipped model (pima-diabetes/1.1.0) to the example record, rounded for reading.
EXAMPLE_PREDICTION: dict[str, Any] = {
    "probability": 0.6229,
    "logit": 0.502,
    "label": 1,
    "label_name": "diabetes",
    "threshold": 0.3866,
    "model_version": "pima-diabetes/1.1.0",
    "calibration": "platt/validation",
    "imputed": ["insulin"],
    "warnings": [],
}
EXAMPLE_WARNING: dict[str, Any] = {
    "feature": "insulin",
    "code": "outside_training_range",
    "message": (
        "Insulin of 900 µU/mL is above the highest value seen in training (744 µU/mL); the model extrapolates here."
    ),
    "value": 900.0,
    "train_min": 15.0,
    "train_max": 744.0,
}
_EXAMPLE_ATTRIBUTIONS = [
    ("pregnancies", "Pregnancies", "count", 6.0, False, 0.0557),
    ("glucose", "Glucose", "mg/dL", 148.0, False, 0.8148),
    ("blood_pressure", "Blood pressure", "mm Hg", 72.0, False, 0.0371),
    ("skin_thickness", "Skin thickness", "mm", 35.0, False, 0.0824),
    ("insulin", "Insulin", "µU/mL", 125.0, True, -0.003),
    ("bmi", "BMI", "kg/m²", 33.6, False, 0.1259),
    ("diabetes_pedigree_function", "Diabetes pedigree", "score", 0.627, False, 0.1569),
    ("age", "Age", "years", 50.0, False, 0.2314),
]
EXAMPLE_EXPLANATION: dict[str, Any] = {
    "prediction": EXAMPLE_PREDICTION,
    "output": "logit",
    "base_value": -0.9991,
    "output_value": 0.502,
    "attributions": [
        dict(zip(("feature", "label", "unit", "value", "imputed", "attribution"), row, strict=True))
        | {"standard_error": 0.0}
        for row in _EXAMPLE_ATTRIBUTIONS
    ],
    "completeness_gap": 2.2e-16,
    "method": "exact",
    "n_samples": 0,
    "n_baselines": 64,
    "seed": 0,
    "summary": "Glucose of 148 mg/dL and age of 50 years push the predicted risk up most.",
}


class _Public(BaseModel):
    model_config = ConfigDict(from_attributes=True)


class FeatureWarningPublic(_Public):
    """A caveat about one input value."""

    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [EXAMPLE_WARNING]})

    feature: str = Field(..., description="Feature name, as in the request.")
    code: str = Field(
        ...,
        description="Machine-readable kind: 'outside_training_range' (the model extrapolates beyond its data).",
    )
    message: str = Field(..., description="The caveat in words, with the value and the training range in units.")
    value: float = Field(..., description="The value received, in the feature's unit.")
    train_min: float = Field(..., description="Lowest measured value in the training split, in the feature's unit.")
    train_max: float = Field(..., description="Highest measured value in the training split, in the feature's unit.")


class PredictionPublic(_Public):
    """The model's prediction for one patient."""

    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [EXAMPLE_PREDICTION]})

    probability: float = Field(
        ..., ge=0, le=1, description="Predicted probability (0-1) of the positive outcome (GET /model: target)."
    )
    logit: float = Field(..., description="The model's raw output: log-odds of the probability (unitless).")
    label: Literal[0, 1] = Field(
        ..., description="1 = the positive outcome predicted (probability >= threshold), 0 = the negative one."
    )
    label_name: str = Field(
        ..., description="The label in words: the model's positive or negative label (GET /model: target)."
    )
    threshold: float = Field(
        ..., description="Probability threshold of the label (0-1), chosen on the validation split (Youden's J)."
    )
    model_version: str = Field(..., description="The model that answered: '<name>/<version>'.")
    calibration: str = Field(
        ...,
        description=(
            "The probability scale of `probability`, `logit` and `threshold` (and of the explanation's outputs): "
            "'platt/validation' = the network's logit recalibrated as a*logit + b (Platt scaling fitted on the "
            "validation split), so that a probability of 0.3 means about 30 of 100 such patients; 'none' = the "
            "raw network. GET /model gives a, b and the calibration measured on the test split."
        ),
    )
    imputed: list[str] = Field(
        ...,
        description="Features that were not measured (null, 0 or omitted) and were filled in with the training median.",
    )
    warnings: list[FeatureWarningPublic] = Field(
        ..., description="Caveats, e.g. values outside the range seen in training, where the model extrapolates."
    )


class AttributionPublic(_Public):
    """One feature's GradientSHAP attribution."""

    feature: str = Field(..., description="Feature name, as in the request.")
    label: str = Field(..., description="Human label of the feature.")
    unit: str = Field(..., description="Unit of `value` (e.g. 'mg/dL').")
    value: float = Field(
        ..., description="The value explained, in `unit`: as received, or the imputed median when `imputed` is true."
    )
    imputed: bool = Field(..., description="True when the feature was not measured and `value` is the imputed median.")
    attribution: float = Field(
        ...,
        description=(
            "This feature's share of output_value - base_value, in the unit of `output` (log-odds or "
            "probability); positive pushes towards the positive outcome."
        ),
    )
    standard_error: float = Field(
        ..., description="Monte-Carlo standard error of `attribution` (same unit); 0 for the exact method."
    )


class ExplanationPublic(_Public):
    """A prediction and its GradientSHAP explanation."""

    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [EXAMPLE_EXPLANATION]})

    prediction: PredictionPublic = Field(..., description="The prediction explained (as POST /predict answers).")
    output: Output = Field(..., description="The model output explained: 'logit' (log-odds) or 'probability' (0-1).")
    base_value: float = Field(
        ...,
        description=(
            "Expected output over the baseline distribution (the training population), in the unit of `output`."
        ),
    )
    output_value: float = Field(..., description="The model's output for this record, in the unit of `output`.")
    attributions: list[AttributionPublic] = Field(
        ..., description="One entry a feature, in the feature specification's order."
    )
    completeness_gap: float = Field(
        ...,
        description=(
            "output_value - base_value - sum(attributions), in the unit of `output`: how far the attributions are "
            "from adding up exactly (about 0 for 'exact' on the logit)."
        ),
    )
    method: str = Field(..., description="The GradientSHAP estimator used.")
    n_samples: int = Field(
        ..., description="Samples used per record, as the engine reports it: 0 for 'exact', which samples nothing."
    )
    n_baselines: int = Field(
        ..., description="Points in the baseline distribution the attributions are relative to (weighted)."
    )
    seed: int = Field(..., description="Seed used (matters for 'sampled' only).")
    summary: str = Field(..., description="One plain-language sentence naming the strongest drivers up and down.")


class _BatchOk(BaseModel):
    index: int = Field(..., ge=0, description="Position of the record in the request's `records` (0-based).")
    ok: Literal[True] = Field(..., description="True: this record was answered.")


class PredictionBatchItem(PredictionPublic, _BatchOk):
    """One answered record of a batch: its index and its prediction's fields."""

    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": [{"index": 0, "ok": True, **EXAMPLE_PREDICTION}]}
    )


class ExplanationBatchItem(ExplanationPublic, _BatchOk):
    """One answered record of a batch: its index and its explanation's fields."""

    model_config = ConfigDict(
        from_attributes=True, json_schema_extra={"examples": [{"index": 0, "ok": True, **EXAMPLE_EXPLANATION}]}
    )


class BatchItemError(BaseModel):
    """One refused record of a batch: its index and the problem (422, naming the fields)."""

    index: int = Field(..., ge=0, description="Position of the record in the request's `records` (0-based).")
    ok: Literal[False] = Field(..., description="False: this record was refused; see `error`.")
    error: Problem = Field(..., description="Why the record was refused (RFC 9457 problem, status 422).")


class PredictionBatchPublic(BaseModel):
    """Answers to a batch, one per record, in the request's order."""

    results: list[PredictionBatchItem | BatchItemError] = Field(
        ..., description="One item per record, in order; `ok` tells an answer from a refusal."
    )
    succeeded: int = Field(..., ge=0, description="Number of records answered.")
    failed: int = Field(..., ge=0, description="Number of records refused.")


class ExplanationBatchPublic(BaseModel):
    """Explanations of a batch, one per record, in the request's order."""

    results: list[ExplanationBatchItem | BatchItemError] = Field(
        ..., description="One item per record, in order; `ok` tells an answer from a refusal."
    )
    succeeded: int = Field(..., ge=0, description="Number of records answered.")
    failed: int = Field(..., ge=0, description="Number of records refused.")


# ---- groups -----------------------------------------------------------------------------------------------


class GroupFeaturePublic(BaseModel):
    """One feature's attribution statistics over the records of an outcome group (None for an empty group)."""

    feature: str = Field(..., description="Feature name.")
    label: str | None = Field(None, description="Human label of the feature.")
    unit: str | None = Field(None, description="Unit of `mean_value`.")
    mean: float | None = Field(..., description="Mean attribution over the group's records (log-odds).")
    ci_low: float | None = Field(
        ..., description="Lower bound of the 95% Student-t interval of the mean attribution (log-odds)."
    )
    ci_high: float | None = Field(
        ..., description="Upper bound of the 95% Student-t interval of the mean attribution (log-odds)."
    )
    std: float | None = Field(..., description="Standard deviation of the attributions in the group (log-odds).")
    mean_abs: float | None = Field(
        ..., description="Mean absolute attribution (log-odds): influence regardless of direction."
    )
    mean_value: float | None = Field(
        ..., description="Mean feature value in the group, in `unit`, not-measured values imputed by the median."
    )


class GroupPublic(BaseModel):
    """An outcome group of the evaluation set and its mean explanation."""

    group: str = Field(..., description="TP, TN, FP, FN (true/false positives/negatives) or ALL.")
    count: int = Field(..., ge=0, description="Records of the evaluation set in the group.")
    features: list[GroupFeaturePublic] = Field(..., description="One entry a feature, in the specification's order.")


class GroupsPublic(BaseModel):
    """Outcome-group summaries of the evaluation set, computed when the model was trained."""

    model_version: str = Field(..., description="The model summarised: '<name>/<version>'.")
    groups: dict[str, GroupPublic] = Field(..., description="By group: TP, TN, FP, FN and ALL.")
    evaluation_set_size: int | None = Field(None, description="Records in the evaluation (test) split.")
    threshold: float | None = Field(None, description="Probability threshold (0-1) of the predicted labels.")
    confusion_matrix: dict[str, int] = Field(
        ..., description="Counts of the evaluation set at the threshold: tn, fp, fn, tp."
    )
    interval: str | None = Field(None, description="How the intervals of the means were computed.")
    mean_feature_value: str | None = Field(None, description="How `mean_value` was computed.")
    explanation: dict[str, Any] | None = Field(
        None,
        description=(
            "Settings of the explanations summarised (method, output, seed, n_samples), their base_value "
            "(log-odds) and the largest completeness gap."
        ),
    )


# ---- model card -------------------------------------------------------------------------------------------


class FeatureCard(BaseModel):
    """One model input as the model card describes it."""

    name: str = Field(..., description="Field name in requests.")
    column: str = Field(..., description="Column in the training data set.")
    label: str = Field(..., description="Human label.")
    unit: str = Field(..., description="Unit of the values.")
    description: str = Field(..., description="What the value measures.")
    valid_min: float = Field(..., description="Lowest accepted value, in `unit`.")
    valid_max: float = Field(..., description="Highest accepted value, in `unit`.")
    integer: bool = Field(..., description="Whether values must be whole numbers.")
    missing: str = Field(..., description="The 'missing' rule: whether and how a value may be left out.")
    imputed_with: float = Field(..., description="Value filled in when not measured (training median), in `unit`.")
    train_min: float = Field(..., description="Lowest measured value in the training split, in `unit`.")
    train_max: float = Field(..., description="Highest measured value in the training split, in `unit`.")
    example: float = Field(..., description="Example value, in `unit`.")


class ModelCardPublic(BaseModel):
    """What the served model is, how good it is, what it was trained on and how it is explained."""

    model_config = ConfigDict(protected_namespaces=())

    name: str = Field(..., description="Model name.")
    version: str = Field(..., description="Model version.")
    model_version: str = Field(..., description="'<name>/<version>', as in the X-Model-Version header.")
    service_version: str = Field(..., description="Version of this service, as in the X-Service-Version header.")
    task: str = Field(..., description="What the model predicts.")
    created_at: str | None = Field(None, description="When the bundle was written (ISO 8601, UTC).")
    target: dict[str, str] = Field(..., description="Target column and the words for the positive/negative label.")
    features: list[FeatureCard] = Field(..., description="The feature specification, in input order.")
    threshold: float = Field(..., description="Probability threshold (0-1) of label 1.")
    threshold_rule: str | None = Field(None, description="How the threshold was chosen.")
    metrics: dict[str, Any] = Field(
        ...,
        description=(
            "Evaluation-set metrics of the MLP and of a logistic-regression reference, each "
            "{value, ci_low, ci_high} with 95% bootstrap intervals; confusion matrices; cross-validated ROC AUC."
        ),
    )
    preprocessing: dict[str, str] = Field(..., description="Imputation and scaling rules (fitted on training only).")
    training: dict[str, Any] = Field(..., description="Training configuration (seed, epochs, optimiser, ...).")
    data: dict[str, Any] = Field(..., description="Training data: file, sha256, record counts, split, provenance.")
    baselines: dict[str, Any] = Field(
        ..., description="The GradientSHAP baseline distribution: count, rule, weights, points in original units."
    )
    explanation_defaults: dict[str, Any] = Field(..., description="Default explanation settings.")
    limits: dict[str, int] = Field(
        ..., description="This server's limits: max_batch_records, max_n_samples, max_body_bytes."
    )
    # the model card a clinician and an EHR reviewer check (ONC HTI-1 source attributes; see the README)
    intended_use: str = Field(..., description="What the model is for, and that it supports a clinician's review.")
    intended_users: list[str] = Field(..., description="Who the answers are for.")
    out_of_scope_uses: list[str] = Field(..., description="Uses the model was not developed or validated for.")
    population: dict[str, Any] = Field(
        ..., description="Who the data describe, where and when they come from, and the data's known quirks."
    )
    not_measured: str = Field(..., description="What happens when an input is not measured (null, 0 or omitted).")
    development_and_validation: str = Field(
        ..., description="How the model was developed, calibrated, thresholded and validated (and on which split)."
    )
    calibration: dict[str, Any] = Field(
        ...,
        description=(
            "The probability scale served ('served': name, e.g. 'platt/validation', with a and b of a*logit + b) "
            "and the calibration measured on the test split before and after, for the MLP and the logistic "
            "reference: ECE, slope, intercept, Brier score, mean predicted risk against observed prevalence, "
            "with 95% intervals, reliability bins with counts, and the decisions that changed."
        ),
    )
    subgroups: dict[str, Any] = Field(
        ...,
        description=(
            "Performance of the served model on the test split by the subgroups its bundle defines: n, positives, "
            "ROC AUC, sensitivity, specificity, mean predicted risk against observed rate, ECE, with 95% intervals."
        ),
    )
    limitations: list[str] = Field(..., description="Known limitations: where not to trust the numbers.")
    explanation_method: dict[str, Any] = Field(
        ..., description="How the explanations are computed and their measured error (completeness gap)."
    )
    methods: list[str] = Field(
        ...,
        description=(
            "The explanation methods this model offers: 'exact' only where the exact kernel covers the network; "
            "asking for another is a 422."
        ),
    )
    default_method: str = Field(..., description="The method used when a request names none.")
    outcome: dict[str, Any] = Field(
        ...,
        description="What is predicted: the data's column, its positive value, the label and the definition.",
    )
    update_schedule: str = Field(..., description="When and how the model changes.")
    training_date: str | None = Field(None, description="When the bundle was trained and written (ISO 8601, UTC).")
    signed_by: str | None = Field(
        None, description="Id of the Ed25519 key that signed the bundle (gshap sign); null: the bundle is unsigned."
    )
    signing_key: str | None = Field(None, description="That public key, base64 of its 32 bytes; null: unsigned.")


# ---- health -----------------------------------------------------------------------------------------------


class HealthPublic(BaseModel):
    """Liveness: the process answers."""

    status: Literal["ok"] = Field(..., description="Always 'ok' when the process can answer.")


class ReadinessPublic(BaseModel):
    """Readiness: the bundle and the engine are loaded and warmed up."""

    status: Literal["ready"] = Field(..., description="'ready'; otherwise the answer is a 503 problem.")
    model_version: str = Field(..., description="The model served: '<name>/<version>'.")


# ---- monitoring -------------------------------------------------------------------------------------------

DriftStatusPublic = Literal["stable", "watch", "act", "insufficient_data"]


class DriftVariablePublic(BaseModel):
    """One monitored variable (a feature, or the served probability) over the window, against the evaluation set."""

    name: str = Field(..., description="A feature's name, or 'probability' (the served predicted probability).")
    kind: Literal["feature", "output"] = Field(..., description="'feature' (an input) or 'output' (the probability).")
    psi: float = Field(..., description="Population stability index of the recent records against the evaluation set.")
    status: DriftStatusPublic = Field(
        ...,
        description=(
            "'stable' (PSI < psi_watch), 'watch' (psi_watch ≤ PSI ≤ psi_act), 'act' (PSI > psi_act), or "
            "'insufficient_data' while the window holds fewer than min_records records."
        ),
    )
    bins: int = Field(..., description="Bins of the index: the evaluation set's deciles (ties merged), plus 'missing'.")
    recent_missing_rate: float | None = Field(
        ..., description="Share of the window's records in which the feature was not measured (null: no records)."
    )
    reference_missing_rate: float | None = Field(
        ..., description="The same share in the evaluation set (null for the probability)."
    )
    recent_out_of_range_rate: float | None = Field(
        ..., description="Share of the window's records with the feature outside the training range."
    )
    reference_out_of_range_rate: float | None = Field(
        ..., description="The same share in the evaluation set (null for the probability)."
    )


class DriftThresholdsPublic(BaseModel):
    """The rules the verdicts follow."""

    psi_watch: float = Field(..., description="From this index on, a variable is worth watching.")
    psi_act: float = Field(..., description="Above this index, a variable has shifted: act (see docs/OPERATIONS.md).")
    min_records: int = Field(
        ..., description="Records the window needs before any verdict (GSHAP_MONITORING_MIN_RECORDS)."
    )


class MonitoringPublic(BaseModel):
    """Drift of recent inputs and predicted probabilities against the model's evaluation set.

    Built from counts only (per-bin counts in the 60 time buckets of a rolling window); no record's
    values are kept. With several workers, every worker's counts are added up."""

    status: DriftStatusPublic = Field(..., description="The worst verdict of any variable.")
    model_version: str = Field(..., description="The model served: '<name>/<version>'.")
    window_seconds: float = Field(..., description="Length of the rolling window (GSHAP_MONITORING_WINDOW_SECONDS).")
    records: int = Field(..., description="Records predicted or explained in the window.")
    reference: Literal["evaluation set"] = Field(..., description="What the window is compared with.")
    reference_records: int = Field(..., description="Records of the evaluation set.")
    binning: str = Field(..., description="How the bins are drawn and the index smoothed.")
    thresholds: DriftThresholdsPublic = Field(..., description="The thresholds of the verdicts.")
    variables: list[DriftVariablePublic] = Field(
        ..., description="Every feature in the specification's order, then 'probability'."
    )

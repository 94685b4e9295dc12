"""``POST /fhir/predict`` and ``POST /fhir/explain``: a FHIR R4 Bundle (a Patient and Observations) in, the same
JSON as ``/predict`` and ``/explain`` out, plus ``fhir``: the resource, date, code and original unit of each value.

Strict, because the caller controls the Bundle: any refused value (unit not accepted, dated in the future, not a
whole number, implausible, undated, censored) or another patient's Observation is a 422 naming the entry and the
rule; a required input that is not found is a 422 naming the feature. Inputs the model may do without are imputed
and listed in ``imputed`` and ``fhir.not_found``. The CDS endpoint, which reads an EHR's data, is lenient instead:
it reports such values on the card.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
from typing import Annotated, Any

import orjson
from fastapi import APIRouter, Body, Depends, Query, Response

from service.api.errors import FieldError, PayloadTooLarge, invalid_input
from service.api.routes import POST_PROBLEMS, RuntimeDep, SettingsDep, problem_responses, require_json
from service.api.routes.explain import explain_options
from service.contract import MAX_N_SAMPLES, Output, ServedMethod
from service.fhir.extract import Extraction, extract, relevant_codes
from service.fhir.public import FhirBundleIn, FhirExplanationPublic, FhirPredictionPublic, provenance
from service.fhir.resources import FhirInputError, TooManyEntriesError, parse_bundle
from service.model.features import PIMA_POPULATION, PIMA_SPEC
from service.schemas import SCHEMA_SPEC, SEED_MAX, ExplainSettings

__all__ = ["fhir_input_problem", "router"]

router = APIRouter(tags=["fhir"], dependencies=[Depends(require_json)])


def _example() -> dict[str, Any]:
    p = "p-1001"
    return {
        "resourceType": "Bundle",
        "type": "collection",
        "entry": [
            {"resource": {"resourceType": "Patient", "id": p, "gender": "female", "birthDate": "1976-03-14"}},
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": "glu-1",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "14995-5"}]},
                    "subject": {"reference": f"Patient/{p}"},
                    "effectiveDateTime": "2025-06-01T10:40:00Z",
                    "valueQuantity": {"value": 8.2, "unit": "mmol/L", "system": "http://unitsofmeasure.org",
                                      "code": "mmol/L"},
                }
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": "preg-1",
                    "status": "final",
                    "code": {"coding": [{"system": "http://loinc.org", "code": "11996-6"}]},
                    "subject": {"reference": f"Patient/{p}"},
                    "effectiveDateTime": "2025-01-20",
                    "valueInteger": 3,
                }
            },
            {
                "resource": {
                    "resourceType": "Observation",
                    "id": "dpf-1",
                    "status": "final",
                    "code": {"coding": [{"system": "urn:gshap-service:feature", "code": "diabetes_pedigree_function"}]},
                    "subject": {"reference": f"Patient/{p}"},
                    "effectiveDateTime": "2025-01-20",
                    "valueQuantity": {"value": 0.52, "system": "http://unitsofmeasure.org", "code": "1"},
                }
            },
        ],
    }  # fmt: skip


BUNDLE_EXAMPLES = {"mmol": {"summary": "Glucose in mmol/L (converted × 18.016), BMI etc. not measured",
                            "value": _example()}}  # fmt: skip


def fhir_input_problem(exc: FhirInputError, prefix: str = "") -> Exception:
    """A :class:`FhirInputError` as the problem to answer: 413 for too many entries, else 422 naming the fields."""
    if isinstance(exc, TooManyEntriesError):
        return PayloadTooLarge(
            f"The Bundle has {exc.count} entries; at most {exc.limit} are accepted (GSHAP_FHIR_MAX_ENTRIES).",
            extra={"limit": exc.limit, "limit_name": "fhir_max_entries", "received": exc.count},
        )
    return invalid_input([FieldError(f"{prefix}{p.field}".strip("."), p.rule, p.message) for p in exc.problems])


def read_bundle(bundle: FhirBundleIn, max_entries: int) -> Extraction:
    """The strict reading of a posted Bundle (see the module's docstring)."""
    try:
        parsed = parse_bundle(bundle.as_json(), max_entries=max_entries, codes=relevant_codes(PIMA_SPEC))
    except FhirInputError as exc:
        raise fhir_input_problem(exc) from None
    if len(parsed.patients) != 1:
        raise invalid_input(
            [
                FieldError(
                    "entry",
                    "one_patient",
                    f"The Bundle must hold exactly one Patient; it holds {len(parsed.patients)}.",
                )
            ]
        )
    path, patient = parsed.patients[0]
    if not patient.id:
        raise invalid_input(
            [FieldError(f"{path}.id", "missing", "The Patient needs an id (Observations refer to it).")]
        )
    extraction = extract(
        patient,
        parsed.observations,
        spec=PIMA_SPEC,
        now=dt.datetime.now(dt.UTC),
        patient_path=path,
        patient_full_url=parsed.full_urls.get(path),
    )
    refused = [FieldError(i.path or "entry", i.code, i.said(strict=True)) for i in extraction.issues if i.refused]
    if refused:
        raise invalid_input(refused)
    if extraction.required_missing:
        conflicts = {i.feature for i in extraction.issues if i.code == "conflicting_values"}
        raise invalid_input(
            [
                FieldError(
                    name,
                    "conflicting_values" if name in conflicts else "required_input_missing",
                    (
                        f"The latest values of {SCHEMA_SPEC.by_name(name).label.lower()} tie on effective and "
                        "issued time and disagree; the model cannot do without it; the request is refused."
                    )
                    if name in conflicts
                    else (
                        f"No usable value of {SCHEMA_SPEC.by_name(name).label.lower()} in the Bundle; the model "
                        "cannot do without it (see GET /model and docs/CDS_HOOKS.md for its codes); the request is "
                        "refused."
                    ),
                )
                for name in extraction.required_missing
            ]
        )
    return extraction


def _answer(result: Any, extraction: Extraction) -> Response:
    content = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    content["fhir"] = provenance(extraction, PIMA_POPULATION)
    return Response(orjson.dumps(content), media_type="application/json")


@router.post(
    "/fhir/predict",
    operation_id="fhir_predict",
    summary="Predict from a FHIR R4 Bundle",
    response_description="As POST /predict, plus `fhir`: where each value came from.",
    response_model=FhirPredictionPublic,
    responses=problem_responses(*POST_PROBLEMS),
)
async def fhir_predict(
    bundle: Annotated[FhirBundleIn, Body(openapi_examples=BUNDLE_EXAMPLES)], runtime: RuntimeDep, settings: SettingsDep
) -> Response:
    """The prediction of POST /predict for the patient of a FHIR R4 Bundle: LOINC-coded Observations (or coded
    urn:gshap-service:feature|<name>), units converted from UCUM, the latest final value per input, age from
    Patient.birthDate at the time of the call."""
    extraction = read_bundle(bundle, settings.fhir_max_entries)
    [prediction] = await runtime.apredict([extraction.record])
    return _answer(prediction, extraction)


@router.post(
    "/fhir/explain",
    operation_id="fhir_explain",
    summary="Explain from a FHIR R4 Bundle",
    response_description="As POST /explain, plus `fhir`: where each value came from.",
    response_model=FhirExplanationPublic,
    responses=problem_responses(*POST_PROBLEMS),
)
async def fhir_explain(
    bundle: Annotated[FhirBundleIn, Body(openapi_examples=BUNDLE_EXAMPLES)],
    runtime: RuntimeDep,
    settings: SettingsDep,
    method: Annotated[ServedMethod, Query(description="GradientSHAP estimator, as in POST /explain.")] = "exact",
    output: Annotated[Output, Query(description="'logit' or 'probability', as in POST /explain.")] = "logit",
    n_samples: Annotated[int | None, Query(ge=1, le=MAX_N_SAMPLES, description="As in POST /explain.")] = None,
    seed: Annotated[int, Query(ge=0, le=SEED_MAX, description="As in POST /explain.")] = 0,
) -> Response:
    """The explanation of POST /explain for the patient of a FHIR R4 Bundle; the explanation settings are query
    parameters (the body is the Bundle)."""
    try:
        explain_settings = ExplainSettings(method=method, output=output, n_samples=n_samples, seed=seed)
    except ValueError as exc:  # pydantic's ValidationError
        raise invalid_input([FieldError("n_samples", "invalid", str(exc).split("\n")[-1][:200])]) from None
    options = explain_options(explain_settings, runtime)
    extraction = read_bundle(bundle, settings.fhir_max_entries)
    [explanation] = await runtime.aexplain([extraction.record], options)
    return _answer(explanation, extraction)

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
from typing import Annotated, Any, cast

import orjson
from fastapi import APIRouter, Body, Depends, Query, Response

from service.api.errors import FieldError, PayloadTooLarge, invalid_input
from service.api.routes import POST_PROBLEMS, RuntimeDep, SettingsDep, body_as, problem_responses, require_json
from service.api.routes.explain import explain_options
from service.contract import MAX_N_SAMPLES, Output, ServedMethod
from service.fhir.extract import Extraction, extract, relevant_codes
from service.fhir.public import FhirBundleIn, FhirExplanationPublic, FhirPredictionPublic, provenance
from service.fhir.resources import FhirInputError, TooManyEntriesError, parse_bundle
from service.model.card import Population
from service.model.features import FEATURE_CODE_SYSTEM, Feature, FeatureSpec
from service.model.store import Bundle
from service.schemas import SEED_MAX, ExplainSettings

__all__ = ["build_router", "example_bundle", "fhir_input_problem"]

_PATIENT = "p-1001"


def _observation(feat: Feature, n: int) -> dict[str, Any] | None:
    """An Observation carrying ``feat``'s example value, coded with its first standard code in a unit of factor 1
    (else with the service's own code, in the feature's own unit); None for a Patient element, a derived value or
    an example value that means "not measured"."""
    mapping = feat.fhir
    if mapping is None or mapping.patient_element or not (mapping.codes or mapping.own_units):
        return None
    if feat.zero_means_missing and feat.example == 0:  # the example's "not measured": no Observation
        return None
    system, code, units = FEATURE_CODE_SYSTEM, feat.name, mapping.own_units
    for c in mapping.codes:
        same = [u for u in c.units if u.factor == 1.0]
        if same and not c.panels:
            system, code, units = c.system, c.code, tuple(same)
            break
    value: dict[str, Any]
    if mapping.integer_values and feat.integer:
        value = {"valueInteger": int(feat.example)}
    else:
        ucum = units[0].ucum if units else mapping.ucum
        value = {"valueQuantity": {"value": feat.example, "system": "http://unitsofmeasure.org", "code": ucum}}
    return {
        "resource": {
            "resourceType": "Observation",
            "id": f"obs-{n}",
            "status": "final",
            "code": {"coding": [{"system": system, "code": code}]},
            "subject": {"reference": f"Patient/{_PATIENT}"},
            "effectiveDateTime": "2025-06-01T10:40:00Z",
            **value,
        }
    }


def example_bundle(bundle: Bundle) -> dict[str, Any]:
    """A FHIR R4 Bundle for the served model: a Patient and one Observation per feature with the specification's
    example value (its first standard code, or the service's own), built from the bundle's FHIR mappings."""
    sex = bundle.card.population.sex
    patient: dict[str, Any] = {"resourceType": "Patient", "id": _PATIENT, "birthDate": "1976-03-14"}
    if sex:
        patient["gender"] = sex
    entries = [{"resource": patient}]
    entries += [e for n, f in enumerate(bundle.spec) if (e := _observation(f, n)) is not None]
    return {"resourceType": "Bundle", "type": "collection", "entry": entries}


def fhir_input_problem(exc: FhirInputError, prefix: str = "") -> Exception:
    """A :class:`FhirInputError` as the problem to answer: 413 for too many entries, else 422 naming the fields."""
    if isinstance(exc, TooManyEntriesError):
        return PayloadTooLarge(
            f"The Bundle has {exc.count} entries; at most {exc.limit} are accepted (GSHAP_FHIR_MAX_ENTRIES).",
            extra={"limit": exc.limit, "limit_name": "fhir_max_entries", "received": exc.count},
        )
    return invalid_input([FieldError(f"{prefix}{p.field}".strip("."), p.rule, p.message) for p in exc.problems])


def read_bundle(bundle: FhirBundleIn, max_entries: int, spec: FeatureSpec) -> Extraction:
    """The strict reading of a posted Bundle for the model of feature specification ``spec`` (see the module's
    docstring)."""
    try:
        parsed = parse_bundle(bundle.as_json(), max_entries=max_entries, codes=relevant_codes(spec))
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
        spec=spec,
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
                        f"The latest values of {spec.by_name(name).label.lower()} tie on effective and "
                        "issued time and disagree; the model cannot do without it; the request is refused."
                    )
                    if name in conflicts
                    else (
                        f"No usable value of {spec.by_name(name).label.lower()} in the Bundle; the model "
                        "cannot do without it (see GET /model and docs/CDS_HOOKS.md for its codes); the request is "
                        "refused."
                    ),
                )
                for name in extraction.required_missing
            ]
        )
    return extraction


def _answer(result: Any, extraction: Extraction, population: Population) -> Response:
    content = {f.name: getattr(result, f.name) for f in dataclasses.fields(result)}
    content["fhir"] = provenance(extraction, population)
    return Response(orjson.dumps(content), media_type="application/json")


def build_router(served: Bundle) -> APIRouter:
    """The FHIR routes for the served model (its features' FHIR mappings, its example patient)."""
    router = APIRouter(tags=["fhir"], dependencies=[Depends(require_json)])
    examples: dict[str, Any] = {
        "example": {"summary": "The model's example patient as FHIR", "value": example_bundle(served)}
    }

    @router.post(
        "/fhir/predict",
        operation_id="fhir_predict",
        summary="Predict from a FHIR R4 Bundle",
        response_description="As POST /predict, plus `fhir`: where each value came from.",
        response_model=FhirPredictionPublic,
        responses=problem_responses(*POST_PROBLEMS),
    )
    @body_as(bundle=Annotated[FhirBundleIn, Body(openapi_examples=examples)])
    async def fhir_predict(bundle: FhirBundleIn, runtime: RuntimeDep, settings: SettingsDep) -> Response:
        """The prediction of POST /predict for the patient of a FHIR R4 Bundle: LOINC-coded Observations (or coded
        urn:gshap-service:feature|<name>), units converted from UCUM, the latest final value per input, age from
        Patient.birthDate at the time of the call."""
        extraction = read_bundle(bundle, settings.fhir_max_entries, served.spec)
        [prediction] = await runtime.apredict([extraction.record])
        return _answer(prediction, extraction, served.card.population)

    @router.post(
        "/fhir/explain",
        operation_id="fhir_explain",
        summary="Explain from a FHIR R4 Bundle",
        response_description="As POST /explain, plus `fhir`: where each value came from.",
        response_model=FhirExplanationPublic,
        responses=problem_responses(*POST_PROBLEMS),
    )
    @body_as(bundle=Annotated[FhirBundleIn, Body(openapi_examples=examples)])
    async def fhir_explain(
        bundle: FhirBundleIn,
        runtime: RuntimeDep,
        settings: SettingsDep,
        method: Annotated[
            ServedMethod | None,
            Query(description="GradientSHAP estimator, as in POST /explain (default: the model's)."),
        ] = None,
        output: Annotated[Output, Query(description="'logit' or 'probability', as in POST /explain.")] = "logit",
        n_samples: Annotated[int | None, Query(ge=1, le=MAX_N_SAMPLES, description="As in POST /explain.")] = None,
        seed: Annotated[int, Query(ge=0, le=SEED_MAX, description="As in POST /explain.")] = 0,
    ) -> Response:
        """The explanation of POST /explain for the patient of a FHIR R4 Bundle; the explanation settings are query
        parameters (the body is the Bundle)."""
        try:
            explain_settings = ExplainSettings(
                method=method or cast(ServedMethod, served.default_method),
                output=output,
                n_samples=n_samples,
                seed=seed,
            )
        except ValueError as exc:  # pydantic's ValidationError
            raise invalid_input([FieldError("n_samples", "invalid", str(exc).split("\n")[-1][:200])]) from None
        options = explain_options(explain_settings, runtime)
        extraction = read_bundle(bundle, settings.fhir_max_entries, served.spec)
        [explanation] = await runtime.aexplain([extraction.record], options)
        return _answer(explanation, extraction, served.card.population)

    return router

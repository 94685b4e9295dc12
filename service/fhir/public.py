"""The answers of ``POST /fhir/predict`` and ``POST /fhir/explain``: those of ``/predict`` and ``/explain`` plus a
``fhir`` member saying where each value came from (the existing fields are unchanged)."""

from __future__ import annotations

from dataclasses import asdict
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from service.fhir.extract import Extraction, SourceValue, outside_population
from service.model.features import Population
from service.schemas import ExplanationPublic, PredictionPublic

__all__ = [
    "BUNDLE_EXAMPLE_NOTE",
    "FhirBundleIn",
    "FhirExplanationPublic",
    "FhirPredictionPublic",
    "FhirProvenancePublic",
    "provenance",
]

BUNDLE_EXAMPLE_NOTE = "tests/data/fhir/patient_bundle.json is a complete example."


class FhirBundleIn(BaseModel):
    """A FHIR R4 Bundle: one Patient and that patient's Observations (other resource types are skipped)."""

    model_config = ConfigDict(extra="allow")

    resourceType: str = Field(..., pattern="^Bundle$", description="Must be 'Bundle'.")
    type: str | None = Field(None, description="Bundle.type (collection, searchset, ...); not checked.")
    entry: list[Any] | None = Field(
        None, description="Entries, each with a resource: exactly one Patient, and Observations of that patient."
    )

    def as_json(self) -> dict[str, Any]:
        """The Bundle as received (its entries not copied: a patient's Bundle may hold thousands)."""
        out: dict[str, Any] = dict(self.model_extra or {})
        out["resourceType"] = self.resourceType
        if "type" in self.model_fields_set:
            out["type"] = self.type
        if "entry" in self.model_fields_set:
            out["entry"] = self.entry
        return out


class FhirSourcePublic(BaseModel):
    """Where one input came from."""

    feature: str = Field(..., description="Feature name.")
    resource: str = Field(..., description="'Observation/<id>' or 'Patient/<id>' (or the JSON path if no id).")
    path: str = Field(..., description="JSON path of the value in the request, e.g. entry[3].resource.")
    date: str = Field(..., description="The Observation's effective date as written (age: the day of the call).")
    system: str = Field(..., description="Code system of the code used (http://loinc.org, urn:gshap-service:feature).")
    code: str = Field(..., description="The code used, e.g. 1518-0.")
    display: str = Field(..., description="The code's display.")
    original_value: float = Field(..., description="The value as written.")
    original_unit: str = Field(..., description="The unit as written (UCUM code, or the listed unit text).")
    value: float = Field(..., description="The value used, in the feature's unit.")
    unit: str = Field(..., description="The feature's unit.")
    derived_from: list[FhirSourcePublic] = Field(..., description="For a derived value (BMI): its inputs.")
    note: str = Field(..., description="Conversion factor and its source, or other caveats; may be empty.")


class FhirIssuePublic(BaseModel):
    """Something not used, or used with a caveat."""

    code: str = Field(..., description="unknown_unit, future_date, not_ogtt, other_patient, status_ignored, ...")
    message: str = Field(..., description="In words.")
    path: str = Field(..., description="JSON path in the request.")
    feature: str = Field(..., description="The feature concerned, if any (else empty).")
    resource: str = Field(..., description="The resource concerned, if any (else empty).")
    refused: bool = Field(..., description="True when a value was refused.")


class FhirProvenancePublic(BaseModel):
    """How the record was read from FHIR."""

    patient: str = Field(..., description="'Patient/<id>'.")
    as_of: str = Field(..., description="The time of the call (UTC): ages are counted to this day.")
    sources: dict[str, FhirSourcePublic] = Field(..., description="By feature: the value used and its resource.")
    not_found: list[str] = Field(..., description="Features not found ('not measured'; imputed by the model).")
    derived: list[str] = Field(..., description="Features computed from other observations (BMI).")
    issues: list[FhirIssuePublic] = Field(
        ...,
        description=(
            "Resources or values not used, and why; conflicting_values: the latest values of an input tie on "
            "effective[x] and issued and disagree, so none is used (imputed, or a 422 for a required input)."
        ),
    )
    outside_population: list[str] = Field(
        ...,
        description=(
            "Why this patient is outside the population the model was trained on (e.g. the recorded gender, the "
            "age); empty when inside it. The card says the same."
        ),
    )


class FhirPredictionPublic(PredictionPublic):
    """The answer of POST /predict, plus where each value came from."""

    fhir: FhirProvenancePublic = Field(..., description="Where each value came from, and what was not used.")


class FhirExplanationPublic(ExplanationPublic):
    """The answer of POST /explain, plus where each value came from."""

    fhir: FhirProvenancePublic = Field(..., description="Where each value came from, and what was not used.")


def _source(s: SourceValue) -> dict[str, Any]:
    out = asdict(s)
    out["derived_from"] = [_source(d) for d in s.derived_from]
    return out


def provenance(extraction: Extraction, population: Population) -> dict[str, Any]:
    """The ``fhir`` member of an answer."""
    issues = []
    for issue in extraction.issues:
        item = asdict(issue)
        item["message"] = issue.said()
        issues.append(item)
    return {
        "patient": f"Patient/{extraction.patient_id}",
        "as_of": extraction.as_of,
        "sources": {k: _source(v) for k, v in extraction.sources.items()},
        "not_found": list(extraction.not_found),
        "derived": list(extraction.derived),
        "issues": issues,
        "outside_population": outside_population(extraction, population),
    }

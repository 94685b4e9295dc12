"""CDS Hooks 2.0 (HL7 STU2, published as 2.0.1) on the wire: request, response, discovery and feedback models,
the prefetch templates derived from the feature specification, and the specification's JSON rules.

Source: HL7/cds-hooks, tag v2.0.1, ``input/pagecontent/index.md`` (https://cds-hooks.hl7.org/2.0/):
"JSON elements SHALL NOT be null, unless otherwise specified", "SHALL NOT be empty" (``""``, ``[]``, ``{}``), except
the empty ``cards`` array that means "no guidance"; the Discovery fields (``hook``, ``title``, ``description``,
``id``, ``prefetch``, ``usageRequirements``); the request (``hook``, ``hookInstance``, ``fhirServer``,
``fhirAuthorization``, ``context``, ``prefetch``, ``extension``); 412 "when unable to retrieve the necessary FHIR
data ... either through a prefetch request or directly calling the FHIR server"; feedback ``card``, ``outcome``
(``accepted``/``overridden``), ``acceptedSuggestions`` (required for ``accepted``), ``overrideReason``,
``outcomeTimestamp``. The hook ``patient-view`` (context ``userId``, ``patientId``, optional ``encounterId``) is
from the CDS Hooks Library (HL7/cds-hooks-library, ``patient-view.md``).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Mapping
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from service.model.card import CdsService, ModelCard
from service.model.features import FEATURE_CODE_SYSTEM, FeatureSpec

__all__ = [
    "FHIR_ID_PATTERN",
    "HOOK",
    "Card",
    "CdsRequest",
    "CdsResponse",
    "DiscoveryResponse",
    "FeedbackRequest",
    "discovery_document",
    "json_rule_violations",
    "prefetch_templates",
    "required_prefetch_keys",
]

HOOK = "patient-view"
FHIR_ID_PATTERN = r"^[A-Za-z0-9\-\.]{1,64}$"
PATIENT_KEY = "patient"
AUX_KEYS = {"29463-7": "body_weight", "8302-2": "body_height"}
SEARCH_COUNT = 20  # latest first: enough to skip entered-in-error and other ignored observations


def _query(codes: list[tuple[str, str]]) -> str:
    joined = ",".join(f"{system}|{code}" for system, code in codes)
    return f"Observation?patient={{{{context.patientId}}}}&code={joined}&_sort=-date&_count={SEARCH_COUNT}"


def prefetch_templates(spec: FeatureSpec) -> dict[str, str]:
    """The prefetch templates: the Patient, then one search per feature (its LOINC codes and the service's own
    code, latest first; for age, read from Patient.birthDate, the service's code only, used when the Patient has no
    birthDate), then the inputs of derived values (body weight and height for BMI)."""
    out = {PATIENT_KEY: "Patient/{{context.patientId}}"}
    aux: dict[str, str] = {}
    for feat in spec:
        mapping = feat.fhir
        if mapping is None:
            continue
        codes = [(c.system, c.code) for c in mapping.codes]
        codes += [(c.system, panel) for c in mapping.codes for panel in c.panels]
        codes.append((FEATURE_CODE_SYSTEM, feat.name))
        out[feat.name] = _query(codes)
        for code in mapping.derived_from:
            aux[AUX_KEYS.get(code.code, code.code)] = _query([(code.system, code.code)])
    out.update(aux)
    return out


def required_prefetch_keys(spec: FeatureSpec) -> tuple[str, ...]:
    """Keys without which no risk can be computed: the Patient and the searches of the required features."""
    templates = prefetch_templates(spec)
    return (
        PATIENT_KEY,
        *(
            f.name
            for f in spec
            if not f.may_be_missing and f.name in templates and not (f.fhir and f.fhir.patient_element)
        ),
    )


def _listed(items: list[str]) -> str:
    return items[0] if len(items) == 1 else ", ".join(items[:-1]) + " and " + items[-1]


def discovery_document(spec: FeatureSpec, card: ModelCard, service: CdsService, model_version: str) -> dict[str, Any]:
    """``GET /cds-services``: the one service the model declares (``service``: id, title, description), on
    ``patient-view``. The usage requirements name the model's population and its inputs, from the model card and
    the feature specification."""
    required = [f.label.lower() for f in spec if not f.may_be_missing and f.fhir is not None]
    optional = []
    for f in spec:
        if not f.may_be_missing or f.fhir is None:
            continue
        inputs = [c.display for c in f.fhir.derived_from]
        optional.append(f.label + (f" (or {_listed(inputs)})" if inputs else ""))
    needs = f"Needs the Patient (birthDate) and, as FHIR R4 Observations coded with LOINC or {FEATURE_CODE_SYSTEM}: "
    needs += f"{', '.join(required)} (required)" if required else "no required input"
    needs += f"; {', '.join(optional)} when measured (imputed otherwise)." if optional else "."
    return {
        "services": [
            {
                "hook": HOOK,
                "title": service.title,
                "description": f"{service.description.rstrip('.')} (model {model_version}).",
                "id": service.id,
                "usageRequirements": f"Population: {card.population.description} {needs}",
                "prefetch": prefetch_templates(spec),
            }
        ]
    }


def json_rule_violations(value: Any, path: str = "$") -> list[str]:
    """Paths that break CDS Hooks' JSON rules: ``null``, ``""``, ``[]`` or ``{}`` anywhere but ``$.cards``."""
    out: list[str] = []
    if value is None or (isinstance(value, str | list | dict) and len(value) == 0 and path != "$.cards"):
        return [path]
    if isinstance(value, Mapping):
        for key, item in value.items():
            out += json_rule_violations(item, f"{path}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            out += json_rule_violations(item, f"{path}[{i}]")
    return out


# ---- request ------------------------------------------------------------------------------------------------------

NonEmpty = Field(min_length=1, max_length=2048)


class FhirAuthorization(BaseModel):
    """The OAuth 2.0 bearer token the service may use to call ``fhirServer`` (never stored, never logged)."""

    model_config = ConfigDict(extra="allow", hide_input_in_errors=True)

    access_token: str = Field(
        ...,
        min_length=1,
        max_length=16384,
        pattern=r"^[\x21-\x7e]+$",
        description="The bearer token (visible ASCII: it goes into an Authorization header).",
    )
    token_type: Literal["Bearer"] = Field(..., description="Fixed value: Bearer.")
    expires_in: int = Field(..., ge=0, description="Lifetime of the token in seconds.")
    scope: str = Field(..., min_length=1, max_length=4096, description="The SMART scopes granted.")
    subject: str = Field(..., min_length=1, max_length=1024, description="The OAuth client id of this service.")
    patient: str | None = Field(None, min_length=1, max_length=64, description="The patient the scopes are about.")


class CdsContext(BaseModel):
    """The ``patient-view`` context."""

    model_config = ConfigDict(extra="allow")

    patientId: str = Field(..., pattern=FHIR_ID_PATTERN, description="FHIR Patient.id of the patient in context.")
    userId: str = Field(
        ..., min_length=1, max_length=256, description="The user: Practitioner/123, PractitionerRole/..., Patient/..."
    )
    encounterId: str | None = Field(None, pattern=FHIR_ID_PATTERN, description="FHIR Encounter.id, if any.")


class CdsRequest(BaseModel):
    """A CDS Hooks 2.0 service call for ``patient-view``. Unknown members are tolerated (as the spec asks)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "examples": [
                {
                    "hook": HOOK,
                    "hookInstance": "d1577c69-dfbe-44ad-ba6d-3e05e953b2ea",
                    "context": {"userId": "Practitioner/example", "patientId": "p-1001"},
                    "prefetch": {
                        "patient": {
                            "resourceType": "Patient",
                            "id": "p-1001",
                            "gender": "female",
                            "birthDate": "1976-03-14",
                        }
                    },
                }
            ]
        },
    )

    hook: Literal["patient-view"] = Field(..., description="The hook that fired; this service answers patient-view.")
    hookInstance: str = Field(
        ..., min_length=1, max_length=256, description="A UUID unique to this call of the hook (for the audit log)."
    )
    context: CdsContext = Field(..., description="Hook context: patientId and userId (encounterId optional).")
    fhirServer: str | None = Field(
        None,
        min_length=1,
        max_length=2048,
        pattern=r"^https?://[^\s\x00-\x1f\x7f]+$",
        description=(
            "Base URL of the client's FHIR server (http or https, no space or control character); used only when it "
            "is in GSHAP_CDS_FHIR_SERVERS."
        ),
    )
    fhirAuthorization: FhirAuthorization | None = Field(
        None, description="Bearer token for fhirServer (requires fhirServer)."
    )
    prefetch: dict[str, dict[str, Any] | None] | None = Field(
        None,
        description=(
            "Prefetched FHIR data by the keys of the discovery document's prefetch templates: a resource, a "
            "searchset Bundle, null (no data exists) or an OperationOutcome (the client could not fetch it)."
        ),
    )
    extension: dict[str, Any] | None = Field(None, description="Reverse-domain extensions; ignored.")

    @model_validator(mode="after")
    def _server_with_authorization(self) -> CdsRequest:
        if self.fhirAuthorization is not None and self.fhirServer is None:
            raise ValueError("fhirAuthorization requires fhirServer (CDS Hooks invariant cds-r-1)")
        return self


# ---- response -----------------------------------------------------------------------------------------------------


class Coding(BaseModel):
    """A CDS Hooks Coding."""

    system: str = Field(..., min_length=1, description="The code system's URI.")
    code: str = Field(..., min_length=1, description="The code.")
    display: str | None = Field(None, min_length=1, description="The code in words (required for override reasons).")


class Source(BaseModel):
    label: str = Field(..., min_length=1, description="The service and the model version.")
    url: str | None = Field(None, min_length=1, description="The model card.")
    topic: Coding | None = Field(None, description="What the card is about (for the EHR's grouping).")


class Link(BaseModel):
    """A link on the card."""

    label: str = Field(..., min_length=1, description="The link's text.")
    url: str = Field(..., min_length=1, description="Absolute URL.")
    type: Literal["absolute", "smart"] = Field(..., description="absolute (a web page) or smart (a SMART app).")


class Card(BaseModel):
    """One card (CDS Hooks 2.0 Card)."""

    uuid: str = Field(..., min_length=1, description="Identifies the card in feedback.")
    summary: str = Field(..., min_length=1, max_length=139, description="Under 140 characters; states the risk.")
    detail: str | None = Field(None, min_length=1, description="GitHub-flavoured Markdown: drivers, inputs, caveats.")
    indicator: Literal["info", "warning", "critical"] = Field(
        ..., description="warning when the predicted label is positive (risk at or above the threshold), else info."
    )
    source: Source = Field(..., description="The service and model version; url: the model card.")
    links: list[Link] | None = Field(None, min_length=1, description="The model card and the documentation.")
    overrideReasons: list[Coding] | None = Field(
        None, min_length=1, description="Reasons the clinician may pick when dismissing the card."
    )
    extension: dict[str, Any] | None = Field(
        None,
        min_length=1,
        description=(
            "urn:gshap-service:prediction: probability, threshold, label, model version (also under the former "
            "key dev.gshap.prediction, for one release)."
        ),
    )


class CdsResponse(BaseModel):
    """The answer: one card, or none (``"cards": []``)."""

    cards: list[Card] = Field(..., description="One card (or none).")


class DiscoveryService(BaseModel):
    """One CDS service."""

    hook: str = Field(..., description="The hook it answers: patient-view.")
    title: str = Field(..., description="Its name.")
    description: str = Field(..., description="What it does.")
    id: str = Field(..., description="Its id: the service is at /cds-services/{id}.")
    usageRequirements: str = Field(..., description="The population and the inputs it needs.")
    prefetch: dict[str, str] = Field(..., description="Prefetch templates by key (FHIR searches, latest first).")


class DiscoveryResponse(BaseModel):
    """The discovery document."""

    services: list[DiscoveryService] = Field(..., description="The services offered.")


# ---- feedback -----------------------------------------------------------------------------------------------------


class AcceptedSuggestion(BaseModel):
    """A suggestion the user accepted."""

    model_config = ConfigDict(extra="forbid")
    id: str = Field(..., min_length=1, max_length=256, description="The suggestion's uuid.")


class OverrideReason(BaseModel):
    """Why the user dismissed the card."""

    model_config = ConfigDict(extra="forbid")
    reason: Coding | None = Field(
        None, description="One of the card's overrideReasons (same system and code; stored by code, display not)."
    )
    userComment: str | None = Field(
        None, min_length=1, max_length=4096, description="Free text; never stored (only that there was one)."
    )


class Feedback(BaseModel):
    """One card's outcome."""

    model_config = ConfigDict(extra="forbid")

    card: str = Field(..., min_length=1, max_length=256, description="The card's uuid.")
    outcome: Literal["accepted", "overridden"] = Field(..., description="accepted or overridden.")
    acceptedSuggestions: list[AcceptedSuggestion] | None = Field(
        None, min_length=1, max_length=100, description="Required for accepted outcomes."
    )
    overrideReason: OverrideReason | None = Field(None, description="For overridden outcomes, optional.")
    outcomeTimestamp: str = Field(
        ...,
        min_length=1,
        max_length=64,
        pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|\+00:00)$",
        description="When the user acted, RFC 3339 in UTC, e.g. 2026-05-02T10:05:31Z.",
    )

    @field_validator("outcomeTimestamp")
    @classmethod
    def _utc(cls, value: str) -> str:
        try:
            parsed = dt.datetime.fromisoformat(value.replace("Z", "+00:00"))
        except ValueError:
            raise ValueError("must be an RFC 3339 date-time, e.g. 2026-05-02T10:05:31Z") from None
        if parsed.tzinfo is None or parsed.utcoffset() != dt.timedelta(0):
            raise ValueError("must be in UTC (Z or +00:00)")
        return value

    @model_validator(mode="after")
    def _accepted_has_suggestions(self) -> Feedback:
        if self.outcome == "accepted" and not self.acceptedSuggestions:
            raise ValueError("an 'accepted' outcome requires acceptedSuggestions")
        if self.outcome == "overridden" and self.acceptedSuggestions:
            raise ValueError("an 'overridden' outcome takes no acceptedSuggestions")
        return self


class FeedbackRequest(BaseModel):
    """``POST /cds-services/{id}/feedback``."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "feedback": [
                        {
                            "card": "9368d37b-283f-44a0-93ea-547cebab93ed",
                            "outcome": "overridden",
                            "overrideReason": {
                                "reason": {
                                    "system": "urn:gshap-service:override-reason",
                                    "code": "not-relevant",
                                    "display": "Not relevant for this patient",
                                }
                            },
                            "outcomeTimestamp": "2026-05-02T10:05:31Z",
                        }
                    ]
                }
            ]
        },
    )

    feedback: list[Feedback] = Field(
        ...,
        min_length=1,
        description="One entry per card outcome; at most GSHAP_CDS_FEEDBACK_MAX_ENTRIES (20) per request, else 413.",
    )


class FeedbackStored(BaseModel):
    """How many outcomes were stored."""

    stored: int = Field(..., ge=1, description="Outcomes stored.")

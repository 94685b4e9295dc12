"""CDS Hooks 2.0: ``GET /cds-services`` (discovery), ``POST /cds-services/{id}`` (the card) and
``POST /cds-services/{id}/feedback``, where ``{id}`` is the CDS service the served bundle declares
(``bundle.cds``: id, title, description; the Pima bundle's is ``diabetes-risk``). A bundle that declares none is
served without CDS Hooks: none of these paths exists (a discovery document may not hold an empty ``services``
array: the specification's JSON rules forbid empty arrays but ``cards``). The prefetch templates, the
required keys, the extraction and the card follow the bundle's features, FHIR mappings and model card.

Data for the call, per prefetch key of the discovery document (HL7/cds-hooks v2.0.1, "Prefetch Template"):

- a resource or searchset Bundle: used (malformed: 422 naming ``prefetch.<key>...``);
- ``null``: the client has no such data (not measured);
- absent, or an ``OperationOutcome`` (the client could not fetch it): fetched from ``fhirServer`` with the
  client's bearer token when that server is in ``GSHAP_CDS_FHIR_SERVERS``. When it cannot be had, the keys the model
  cannot do without (``patient`` and the required features) make the answer a **412** naming the key and the
  reason; the others are reported on the card as not available.

The card rules are in :mod:`service.fhir.card`; the answer is checked against the spec's JSON rules (no null, no
empty string/array/object but ``"cards": []``) before it leaves. Other patients' resources in the prefetch are
ignored and reported; unusable values are reported on the card, never guessed.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from typing import Annotated, Any, cast

import anyio
import orjson
from fastapi import APIRouter, Body, Depends, Request, Response

from service.api.cds_auth import CdsJwtVerifier
from service.api.errors import FieldError, PreconditionFailed, ServiceError, invalid_input
from service.api.observability import log_event
from service.api.routes import RuntimeDep, SettingsDep, body_as, problem_responses, require_json
from service.api.routes.fhir import fhir_input_problem
from service.config import Settings
from service.contract import ServedMethod
from service.fhir.card import CardLinks, cannot_compute_card, risk_card
from service.fhir.cdshooks import (
    PATIENT_KEY,
    CdsRequest,
    CdsResponse,
    DiscoveryResponse,
    FeedbackRequest,
    FeedbackStored,
    discovery_document,
    json_rule_violations,
    prefetch_templates,
    required_prefetch_keys,
)
from service.fhir.extract import Issue, extract, relevant_codes
from service.fhir.feedback import FeedbackStore
from service.fhir.resources import FhirInputError, parse_search_result
from service.fhir.server import FhirServerError, fetch_all, has_control_characters, render, server_allowed
from service.model.store import Bundle
from service.runtime.inference import ExplainOptions

__all__ = ["CdsState", "build_router", "cds_state"]


@dataclass
class CdsState:
    """Per-app CDS state: the JWT verifier (None: open), the feedback store (opened on first use)."""

    settings: Settings
    verifier: CdsJwtVerifier | None = None
    store: FeedbackStore | None = None
    templates: dict[str, str] = field(default_factory=dict)
    required: tuple[str, ...] = ()

    @classmethod
    def build(cls, settings: Settings, bundle: Bundle) -> CdsState:
        """The state for ``bundle``'s features (their prefetch templates and the keys it cannot do without)."""
        verifier = (
            CdsJwtVerifier(
                settings.cds_jwt_issuers,
                max_lifetime=settings.cds_jwt_max_lifetime_seconds,
                ca_file=settings.cds_jwks_ca_file,
            )
            if settings.cds_jwt_issuers
            else None
        )
        return cls(
            settings=settings,
            verifier=verifier,
            templates=prefetch_templates(bundle.spec),
            required=required_prefetch_keys(bundle.spec),
        )

    def feedback_store(self) -> FeedbackStore:
        if self.store is None:
            self.store = FeedbackStore(self.settings.feedback_db_path())
        return self.store

    def close(self) -> None:
        if self.store is not None:
            self.store.close()
            self.store = None


def cds_state(request: Request) -> CdsState:
    state: CdsState = request.app.state.gshap_cds
    return state


def base_url(request: Request, settings: Settings) -> str:
    """The service's public base URL: GSHAP_CDS_BASE_URL, else as this request reached it."""
    if settings.cds_base_url:
        return settings.cds_base_url.rstrip("/")
    return f"{request.url.scheme}://{request.url.netloc}{request.scope.get('root_path', '')}".rstrip("/")


async def cds_auth(request: Request) -> None:
    """The CDS client's JWT, when issuers are configured (401 otherwise); the aud is this endpoint's URL."""
    state = cds_state(request)
    if state.verifier is None:
        return
    audience = base_url(request, state.settings) + request.url.path
    await state.verifier.verify(request.headers.get("authorization"), audience)


CdsAuth = Depends(cds_auth)
CDS_PROBLEMS = (400, 401, 412, 413, 415, 422, 429, 500, 503)


def cds_json(content: dict[str, Any]) -> Response:
    """A CDS Hooks answer, refused (500, logged) if it breaks the spec's JSON rules."""
    bad = json_rule_violations(content)
    if bad:
        log_event("cds_json_rule_broken", 40, paths=bad[:10])
        raise ServiceError()
    return Response(orjson.dumps(content), media_type="application/json")


def _unavailable(keys: list[str], reason: str) -> PreconditionFailed:
    return PreconditionFailed(
        f"The FHIR data for {', '.join(keys)} can be had neither from the prefetch nor from the FHIR server: {reason}",
        errors=[FieldError(f"prefetch.{k}", "prefetch_unavailable", reason) for k in keys],
    )


async def _gather(body: CdsRequest, state: CdsState) -> tuple[dict[str, Any], list[Issue]]:
    """Prefetch values by key (None = no data), fetching what is absent; issues for unavailable optional keys."""
    prefetch = body.prefetch or {}
    values: dict[str, Any] = {}
    to_fetch: list[str] = []
    for key in state.templates:
        if key not in prefetch:
            to_fetch.append(key)
            continue
        value = prefetch[key]
        if isinstance(value, dict) and value.get("resourceType") == "OperationOutcome":
            to_fetch.append(key)
        else:
            values[key] = value
    issues: list[Issue] = []
    if not to_fetch:
        return values, issues
    settings = state.settings
    required = [k for k in to_fetch if k in state.required]
    reason = ""
    if not body.fhirServer:
        reason = "the prefetch lacks them and the request names no fhirServer"
    elif not settings.cds_fhir_servers:
        reason = "this service calls no FHIR server (GSHAP_CDS_FHIR_SERVERS is empty)"
    elif has_control_characters(body.fhirServer):
        reason = "fhirServer holds a space or a control character"
    elif not server_allowed(body.fhirServer, settings.cds_fhir_servers):
        reason = "fhirServer is not in this service's allow-list (GSHAP_CDS_FHIR_SERVERS)"
    else:
        token = body.fhirAuthorization.access_token if body.fhirAuthorization else None
        queries = {k: render(state.templates[k], body.context.patientId) for k in to_fetch}
        try:
            fetched = await fetch_all(
                body.fhirServer,
                queries,
                token=token,
                timeout_s=settings.cds_fhir_timeout_seconds,
                max_bytes=settings.cds_fhir_max_bytes,
                max_pages=settings.fhir_max_pages,
                max_entries=settings.fhir_max_entries,
            )
        except FhirServerError as exc:
            reason = exc.reason
        else:
            for key, value in fetched.items():
                if isinstance(value, dict) and value.get("resourceType") == "OperationOutcome":
                    if key in state.required:
                        raise _unavailable([key], "the FHIR server answered an OperationOutcome")
                    issues.append(Issue("not_available", f"{key}: the FHIR server answered an OperationOutcome."))
                    continue
                values[key] = value
            return values, issues
    if required:
        raise _unavailable(required, reason)
    issues += [Issue("not_available", f"{k}: not in the prefetch; {reason}.") for k in to_fetch]
    return values, issues


def _read(
    values: dict[str, Any], body: CdsRequest, max_entries: int, codes: frozenset[tuple[str, str]]
) -> tuple[Any, list[tuple[str, Any]], str, str | None]:
    patient = None
    observations: list[tuple[str, Any]] = []
    # the same Observation may answer two searches (a panel and its component code): read once if equal, else 422
    seen: dict[str, tuple[str, Any]] = {}
    full_urls: dict[str, str] = {}
    patient_path = f"prefetch.{PATIENT_KEY}"
    for key, value in values.items():
        if value is None:
            continue
        path = f"prefetch.{key}"
        try:
            parsed = parse_search_result(value, max_entries=max_entries, path=path, seen=seen, codes=codes)
        except FhirInputError as exc:
            raise fhir_input_problem(exc) from None
        if key == PATIENT_KEY:
            if len(parsed.patients) != 1:
                raise invalid_input([FieldError(path, "one_patient", "prefetch.patient must be the Patient resource.")])
            patient_path, patient = parsed.patients[0]
        observations += parsed.observations
        full_urls.update(parsed.full_urls)
    if patient is None:
        raise _unavailable([PATIENT_KEY], "the client has no Patient resource for context.patientId")
    if patient.id != body.context.patientId:
        raise invalid_input(
            [FieldError(f"{patient_path}.id", "patient_mismatch", "The prefetched Patient is not context.patientId.")]
        )
    return patient, observations, patient_path, full_urls.get(patient_path)


def build_router(bundle: Bundle) -> APIRouter:
    """Discovery, and the call and feedback paths of the CDS service ``bundle`` declares (none: no path at all)."""
    router = APIRouter(tags=["cds-hooks"], dependencies=[CdsAuth])
    service = bundle.cds
    if service is None:
        return router
    path = f"/cds-services/{service.id}"

    @router.get(
        "/cds-services",
        operation_id="cds_discovery",
        summary="CDS Hooks discovery",
        response_model=DiscoveryResponse,
        responses=problem_responses(401, 429, 500, 503),
    )
    async def discovery(runtime: RuntimeDep) -> Response:
        """The CDS service the served model declares, on the `patient-view` hook, with its prefetch templates
        (LOINC-coded Observation searches, latest first) and its usage requirements (the population)."""
        return cds_json(discovery_document(bundle.spec, bundle.card, service, runtime.model_version))

    templates = prefetch_templates(bundle.spec)
    example: dict[str, Any] = CdsRequest.model_config["json_schema_extra"]["examples"][0]  # type: ignore[index,assignment]
    example = {**example, "prefetch": {k: v for k, v in example["prefetch"].items() if k in templates}}
    examples: dict[str, Any] = {"prefetch": {"summary": "patient-view with prefetch", "value": example}}

    @router.post(
        path,
        operation_id="cds_service",
        summary="CDS Hooks service call (patient-view)",
        response_model=CdsResponse,
        responses=problem_responses(*CDS_PROBLEMS),
        dependencies=[Depends(require_json)],
    )
    @body_as(body=Annotated[CdsRequest, Body(openapi_examples=examples)])
    async def call_service(
        body: CdsRequest,
        request: Request,
        runtime: RuntimeDep,
        settings: SettingsDep,
    ) -> Response:
        """One card: the risk of the model's outcome as a percentage, its top drivers with the patient's values,
        units and dates, the inputs not found, imputed or refused, out-of-range warnings, the training population
        and the explanation's completeness. 412 when the data can be had neither from the prefetch nor from an
        allowed FHIR server."""
        state = cds_state(request)
        values, fetch_issues = await _gather(body, state)
        bundle = runtime.bundle
        patient, observations, patient_path, full_url = _read(
            values, body, settings.fhir_max_entries, relevant_codes(bundle.spec)
        )
        extraction = extract(
            patient,
            observations,
            spec=bundle.spec,
            now=dt.datetime.now(dt.UTC),
            patient_path=patient_path,
            patient_full_url=full_url,
        )
        if fetch_issues:
            extraction = type(extraction)(**{**extraction.__dict__, "issues": (*extraction.issues, *fetch_issues)})
        base = base_url(request, settings)
        # the page's model-card view (a human page), not GET /model's JSON
        links = CardLinks(model_card=f"{base}/#model", documentation=f"{base}/docs#/cds-hooks")
        if extraction.required_missing:
            card = cannot_compute_card(
                extraction,
                spec=bundle.spec,
                card=bundle.card,
                service=service,
                links=links,
                model_version=runtime.model_version,
            )
        else:
            [explanation] = await runtime.aexplain(
                [extraction.record], ExplainOptions(method=cast(ServedMethod, bundle.default_method))
            )
            card = risk_card(explanation, extraction, spec=bundle.spec, card=bundle.card, service=service, links=links)
        return cds_json({"cards": [card]})

    @router.post(
        f"{path}/feedback",
        operation_id="cds_service_feedback",
        summary="CDS Hooks feedback",
        response_model=FeedbackStored,
        responses=problem_responses(400, 401, 413, 415, 422, 429, 500),
        dependencies=[Depends(require_json)],
    )
    async def feedback(body: FeedbackRequest, request: Request) -> Response:
        """Stores each card's outcome (`accepted` with its suggestions, or `overridden` with an optional reason)
        durably in SQLite (GSHAP_CDS_FEEDBACK_DB, one file per replica). No patient value and no free-text comment
        is stored."""
        store = cds_state(request).feedback_store()
        stored = await anyio.to_thread.run_sync(store.add, service.id, body.feedback)
        return Response(orjson.dumps({"stored": stored}), media_type="application/json")

    return router

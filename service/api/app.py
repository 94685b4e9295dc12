"""Assembles the app: settings, lifespan, middlewares, error handlers, routers, OpenAPI. Nothing else.

- :func:`create_app` builds an app; its lifespan loads and verifies the bundle once (unless one is handed in),
  builds the engine and runs a warm-up explanation before ``/readyz`` turns ready.
- :func:`serve` is ``gshap serve``: it loads and verifies the bundle and warms the model up *before* uvicorn
  starts, so that a missing, tampered or incompatible bundle, or a model whose answers are not finite, ends the
  process with a one-line reason and exit code 2.
- :func:`openapi_yaml` is ``gshap openapi``: the served OpenAPI document as YAML (``openapi.yaml``).
"""

from __future__ import annotations

import gc
import shutil
import signal
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import Any

import anyio
import yaml
from fastapi import FastAPI
from starlette.middleware import Middleware

from service import __version__
from service.api.cds_auth import JwksSourceError, check_jwks_sources
from service.api.errors import PROBLEM_BASE, PROBLEM_MEDIA_TYPE, install_exception_handlers, is_v2_path
from service.api.http_limits import http_protocol_options
from service.api.metrics import HttpMetrics
from service.api.observability import REQUEST_ID_HEADER, RequestContextMiddleware, configure_logging, log_event
from service.api.page import PageCompressionMiddleware, install_pages
from service.api.routes import AppState, cds, explain, fhir, groups, health, model, operations, predict, problems, v2
from service.api.security import (
    OPEN_PATHS,
    ApiKeyMiddleware,
    BodySizeLimitMiddleware,
    HeaderSizeLimitMiddleware,
    ProblemCORSMiddleware,
    SecurityHeadersMiddleware,
)
from service.config import Settings
from service.model.store import Bundle, BundleError, load_bundle
from service.observe.metrics import Telemetry, enable_multiprocess, prepare_multiprocess_dir
from service.runtime.inference import InferenceRuntime, configure_torch, ensure_compatible
from service.schemas import EXAMPLE_PREDICTION, request_models

__all__ = ["create_app", "description", "openapi_yaml", "serve", "tags", "uvicorn_options"]

V2_OPEN_PATHS = frozenset({"/v2/health/live", "/v2/health/ready"})
"""The Open Inference Protocol's health probes: open even when API keys are required, like /healthz and /readyz."""

ANSWER_EXAMPLE_SCHEMAS = (
    "PredictionPublic",
    "FeatureWarningPublic",
    "ExplanationPublic",
    "PredictionBatchItem",
    "ExplanationBatchItem",
    "Problem",
)
"""The schemas whose examples are real answers of the shipped default model (:mod:`service.schemas`), or name its
fields (the problem's)."""


def description(bundle: Bundle) -> str:
    """The OpenAPI document's description, for the model served (its task and its features' "missing" rules)."""
    optional = [f.label for f in bundle.spec if f.may_be_missing]
    missing = (
        f"{_words(optional)} may be `null`, `0` or omitted when not measured: they are imputed and listed in `imputed`."
        if optional
        else "Every field is required."
    )
    intro = (
        f"Why did the model score this patient as it did? Predictions of the model {bundle.name}/{bundle.version} "
        f"({bundle.manifest.get('task', 'binary classification')}), with per-feature **GradientSHAP** attributions "
        "relative to the training population."
    )
    records = f"- Records are in the data set's units (see each field). {missing}"
    return f"""\
{textwrap.fill(intro, 110)}

{textwrap.fill(records, 110, subsequent_indent="  ")}
- Types are strict: numbers must be JSON numbers (not strings or booleans), counts JSON integers, values
  finite and within each field's range; unknown fields are refused. Refusals are RFC 9457
  `application/problem+json` documents (`type` = `{PROBLEM_BASE}<kind>`, a page on this service that says
  what the kind means) whose `errors` name the field and the rule.
- Batches (`/predict/batch`, `/explain/batch`) answer every record on its own, in order; over
  GSHAP_MAX_BATCH_RECORDS records (default 100) the whole request is refused with 413.
- When the server is started with GSHAP_API_KEYS, every endpoint but `/healthz` and `/readyz` needs
  `Authorization: Bearer <key>` or `X-API-Key: <key>`.
- Every answer carries `X-Request-ID` (yours, if you sent a plain one), `X-Service-Version` and
  `X-Model-Version`.
"""


def _words(items: list[str]) -> str:
    """``a``, ``a and b``, ``a, b and c``: a list in a sentence (the first item capitalised as written)."""
    lowered = [items[0], *(i if i[:2].isupper() else i[:1].lower() + i[1:] for i in items[1:])]
    return lowered[0] if len(lowered) == 1 else ", ".join(lowered[:-1]) + " and " + lowered[-1]


def tags(bundle: Bundle) -> list[dict[str, str]]:
    """The OpenAPI tags; the CDS Hooks one names the model's CDS service, when its bundle declares one."""
    cds_service = bundle.cds
    cds_words = (
        f"CDS Hooks 2.0: discovery, the {cds_service.id} card for the patient-view hook, feedback. "
        if cds_service is not None
        else "CDS Hooks 2.0: discovery (this model declares no CDS service, so it lists none). "
    )
    return [
        {"name": "predict", "description": "The model's probability and label."},
        {"name": "explain", "description": "GradientSHAP attributions of a prediction."},
        {"name": "groups", "description": "Mean explanations by outcome group of the evaluation set."},
        {"name": "model", "description": "The model card."},
        {"name": "health", "description": "Liveness and readiness for orchestrators."},
        {"name": "operations", "description": "Prometheus metrics and drift monitoring for operators."},
        {
            "name": "cds-hooks",
            "description": cds_words + "Authenticated by the CDS client's JWT when GSHAP_CDS_JWT_ISSUERS is set (API "
            "keys do not apply). See docs/CDS_HOOKS.md.",
        },
        {
            "name": "fhir",
            "description": "Predictions and explanations from a FHIR R4 Bundle (codes and units from the model spec).",
        },
        {
            "name": "v2",
            "description": (
                "The Open Inference Protocol (V2 REST) of KServe, Triton and MLServer: tensors in and out (JSON or "
                "the binary tensor data extension), explanations from the model '{name}-explainer'. Errors are V2's "
                '{"error": "..."}, not problem documents. See docs/V2.md.'
            ),
        },
    ]


SECURITY_SCHEMES = {
    "BearerAuth": {
        "type": "http",
        "scheme": "bearer",
        "description": "An API key as a bearer token; required only when the server sets GSHAP_API_KEYS.",
    },
    "ApiKeyHeader": {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "The same API key in X-API-Key; required only when the server sets GSHAP_API_KEYS.",
    },
}


async def _start(state: AppState) -> None:
    settings = state.settings
    configure_logging(settings.log_level)
    t0 = time.perf_counter()
    try:
        bundle = state.preloaded
        if bundle is None:
            bundle = await anyio.to_thread.run_sync(load_bundle, settings.model_path)
        ensure_compatible(bundle, state.models.spec if state.models is not None else bundle.spec)
    except BundleError as exc:
        log_event("startup_failed", 40, reason=str(exc))
        raise
    threads = configure_torch(settings.torch_threads)
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    engine_threads = settings.engine_threads
    runtime = state.prebuilt if state.prebuilt is not None else build_runtime(settings, bundle)
    if state.telemetry is not None:
        runtime.attach_telemetry(state.telemetry)
    state.runtime = runtime
    try:
        await runtime.start()
    except BundleError as exc:  # the warm-up refused the model (serve() has refused it before uvicorn started)
        log_event("startup_failed", 40, reason=str(exc))
        raise
    # Everything alive now (modules, torch, the schemas, the bundle: a few hundred thousand objects) lives as long as
    # the process.
    # Frozen, it is no longer scanned by the cyclic GC, whose full collections otherwise stop the event loop
    # for tens of milliseconds now and then under load (the p99 latency).
    gc.collect()
    gc.freeze()
    if settings.cds_jwt_issuers:
        try:  # a JWK Set that is not there at start is a refusal, not a 401 for every call later
            await anyio.to_thread.run_sync(check_jwks_sources, settings.cds_jwt_issuers, settings.cds_jwks_ca_file)
        except JwksSourceError as exc:
            log_event("startup_failed", 40, reason=str(exc))
            raise
        log_event("cds_auth", issuers=sorted(settings.cds_jwt_issuers), fhir_servers=len(settings.cds_fhir_servers))
    else:
        log_event(
            "cds_auth_off",
            30,
            message="GSHAP_CDS_JWT_ISSUERS is empty: the CDS Hooks endpoints accept calls without a JWT",
            fhir_servers=len(settings.cds_fhir_servers),
        )
    log_event(
        "ready",
        model_version=runtime.model_version,
        torch_threads=threads,
        engine_threads=engine_threads,
        engine_processes=settings.engine_processes,
        gil_switch_interval_ms=settings.gil_switch_interval_ms,
        startup_ms=round((time.perf_counter() - t0) * 1000, 1),
    )


def build_runtime(settings: Settings, bundle: Bundle) -> InferenceRuntime:
    """The runtime that ``settings`` (their engine and limits groups) describe for ``bundle`` (not started)."""
    engine = settings.engine
    return InferenceRuntime(
        bundle,
        max_n_samples=settings.limits.max_n_samples,
        engine_threads=engine.threads,
        engine_processes=engine.processes,
        max_coalesce=engine.max_coalesce,
        batch_window_ms=engine.batch_window_ms,
    )


def create_app(
    settings: Settings | None = None, bundle: Bundle | None = None, runtime: InferenceRuntime | None = None
) -> FastAPI:
    """The service's app, for the model it serves. ``settings`` default to the environment; ``bundle`` (already
    loaded) skips loading; ``runtime`` (built from that bundle and these settings, warmed up once, not started)
    skips building one.

    Without ``bundle``, the bundle is loaded and verified here (a few milliseconds; a ``BundleError`` otherwise):
    everything model-specific of the app (the request models, hence the OpenAPI document, the page's form, CDS
    discovery) is derived from it now, never from a module constant. The lifespan then builds and warms up the
    engine before ``/readyz`` turns ready."""
    settings = settings or Settings()
    if runtime is not None and runtime.bundle is not bundle:
        raise ValueError("a prebuilt runtime must come with the bundle it was built from")
    if bundle is None:
        bundle = load_bundle(settings.model_path)
    models = request_models(bundle.spec, bundle.methods, bundle.default_method)
    state = AppState(settings=settings, preloaded=bundle, prebuilt=runtime, models=models)
    monitoring = settings.monitoring
    if monitoring.metrics_enabled:
        if monitoring.metrics_dir is not None:
            enable_multiprocess(monitoring.metrics_dir)
        state.telemetry = Telemetry(
            multiprocess_dir=monitoring.metrics_dir,
            monitoring_window_seconds=monitoring.window_seconds,
            monitoring_min_records=monitoring.min_records,
        )
    cds_state = cds.CdsState.build(settings, bundle)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await _start(state)
        try:
            yield
        finally:
            if state.runtime is not None:
                state.runtime.close()
            if state.telemetry is not None:
                state.telemetry.close()
            cds_state.close()
            log_event("stopped")

    def model_version() -> str | None:
        return state.runtime.model_version if state.runtime is not None else None

    middleware = [
        Middleware(SecurityHeadersMiddleware),
        Middleware(
            RequestContextMiddleware,
            service_version=__version__,
            model_version=model_version,
            metrics=HttpMetrics(state.telemetry, routes=lambda: app.routes) if state.telemetry is not None else None,
        ),
    ]
    if settings.cors_origins:
        middleware.append(
            Middleware(
                ProblemCORSMiddleware,
                allow_origins=settings.cors_origins,
                allow_methods=["GET", "POST"],
                allow_headers=["Authorization", "X-API-Key", "Content-Type", REQUEST_ID_HEADER],
                expose_headers=[REQUEST_ID_HEADER, "X-Service-Version", "X-Model-Version", "Retry-After"],
                max_age=600,
            )
        )
    open_paths = set(OPEN_PATHS) | V2_OPEN_PATHS
    if settings.metrics_enabled and not settings.metrics_require_key:
        open_paths |= {"/metrics", "/monitoring"}
    middleware += [
        Middleware(
            HeaderSizeLimitMiddleware,
            max_bytes=settings.max_header_bytes,
            max_authorization_bytes=settings.max_authorization_bytes,
        ),
        Middleware(
            ApiKeyMiddleware,
            open_paths=open_paths,
            api_keys=settings.api_key_values(),
            rate_limit_per_minute=settings.rate_limit_per_minute,
            rate_limit_burst=settings.rate_limit_burst,
        ),
        Middleware(
            BodySizeLimitMiddleware,
            max_bytes=settings.max_body_bytes,
            routes=[
                (prefix, settings.fhir_max_body_bytes, "fhir_max_body_bytes") for prefix in ("/fhir/", "/cds-services/")
            ],
        ),
        Middleware(PageCompressionMiddleware),
    ]
    app = FastAPI(
        title="gshap-service",
        summary=f"Predictions and GradientSHAP explanations of {bundle.name}/{bundle.version}.",
        description=description(bundle),
        version=__version__,
        openapi_tags=tags(bundle),
        lifespan=lifespan,
        middleware=middleware,
        # /docs and /redoc are served offline by service.api.page (install_pages)
        docs_url=None,
        redoc_url=None,
    )
    app.state.gshap = state
    app.state.gshap_cds = cds_state
    install_exception_handlers(app)
    app.include_router(predict.build_router(models))
    app.include_router(explain.build_router(models))
    for area in (groups, model, health, problems):
        app.include_router(area.router)
    app.include_router(cds.build_router(bundle))
    app.include_router(fhir.build_router(bundle))
    v2_router = v2.build_router(models)
    app.include_router(v2_router)
    v2.route_v2_first(app, v2_router)
    if state.telemetry is not None:
        app.include_router(operations.router)
    install_pages(app, app.title)
    app.openapi = lambda: _openapi(app, bundle)  # type: ignore[method-assign]
    return app


def _openapi(app: FastAPI, bundle: Bundle) -> dict[str, Any]:
    """FastAPI's document, plus: problem answers as application/problem+json, and the optional API keys.

    The answers' examples (:data:`service.schemas.EXAMPLE_PREDICTION`, ...) are real answers of one model; for any
    other model served they are left out rather than shown with another model's fields."""
    if app.openapi_schema is not None:
        return app.openapi_schema
    doc = FastAPI.openapi(app)
    fastapi_422 = {"$ref": "#/components/schemas/HTTPValidationError"}
    for path, path_item in doc.get("paths", {}).items():
        for operation in path_item.values():
            responses = operation.get("responses", {})
            # FastAPI adds its own 422 to routes with parameters; ours are problems, declared where they occur
            if responses.get("422", {}).get("content", {}).get("application/json", {}).get("schema") == fastapi_422:
                del responses["422"]
            for code, response in responses.items():
                content = response.get("content", {})
                if code[:1] in "45" and "application/json" in content and not is_v2_path(path):
                    response["content"] = {PROBLEM_MEDIA_TYPE: content.pop("application/json")}
    components = doc.setdefault("components", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.get("schemas", {}).pop(unused, None)
    if f"{bundle.name}/{bundle.version}" != EXAMPLE_PREDICTION["model_version"]:
        for name in ANSWER_EXAMPLE_SCHEMAS:
            components.get("schemas", {}).get(name, {}).pop("examples", None)
    components["securitySchemes"] = SECURITY_SCHEMES
    # either scheme, or none: keys are optional, decided by the server's configuration
    doc["security"] = [{"BearerAuth": []}, {"ApiKeyHeader": []}, {}]
    app.openapi_schema = doc
    return doc


class _OpenAPIDumper(yaml.SafeDumper):
    """Multi-line strings as literal blocks (readable descriptions in diffs)."""


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_OpenAPIDumper.add_representer(str, _str_representer)


def openapi_yaml() -> str:
    """The OpenAPI document the app serves, as YAML in the document's own key order (deterministic)."""
    doc = create_app(Settings()).openapi()
    return yaml.dump(doc, Dumper=_OpenAPIDumper, sort_keys=False, allow_unicode=True, width=120)


def _exit_cleanly(signum: int, frame: FrameType | None) -> None:
    raise SystemExit(0)


def uvicorn_options(settings: Settings) -> dict[str, Any]:
    """uvicorn's options for ``settings`` (shared with the benchmark's ceiling app, so both run alike)."""
    return {
        "host": settings.host,
        "port": settings.port,
        "log_config": None,
        "access_log": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": settings.graceful_shutdown_seconds,
        "server_header": False,
        **http_protocol_options(settings.max_header_bytes, settings.workers),
    }


def serve(settings: Settings) -> int:
    """Run uvicorn until SIGTERM/SIGINT (exit 0); a bundle that cannot be served raises ``BundleError`` first.

    Every refusal happens before uvicorn starts, so that ``gshap serve`` reports it in one line with exit code 2:
    a bundle that does not load or verify, one that does not fit the request schema, and a model whose warm-up
    answers are not finite (the runtime is built and warmed up here, then handed to the app, which starts it).
    """
    configure_logging(settings.log_level)
    if settings.cds_jwt_issuers:  # JwksSourceError: gshap serve says it in one line, exit 2
        check_jwks_sources(settings.cds_jwt_issuers, settings.cds_jwks_ca_file)
    bundle = load_bundle(settings.model_path)
    ensure_compatible(bundle, bundle.spec)
    configure_torch(settings.torch_threads)  # as the lifespan does, before this process's first explanation
    runtime = build_runtime(settings, bundle)
    try:
        runtime.warm_up()
    except BundleError:
        runtime.close()
        raise
    import uvicorn

    # uvicorn re-raises the signal it handled once it has shut down: make that a clean exit
    signal.signal(signal.SIGTERM, _exit_cleanly)
    settings, made = _metrics_folder(settings)
    common = uvicorn_options(settings)
    try:
        if settings.workers == 1:
            uvicorn.run(create_app(settings, bundle, runtime), **common)
        else:
            import os

            # each worker builds its own app from the environment (and loads the bundle in its lifespan); the
            # warm-up above has checked the model they load
            runtime.close()
            os.environ.update(settings.as_env())
            del bundle, runtime
            uvicorn.run("service.api.app:create_app", factory=True, workers=settings.workers, **common)
    except KeyboardInterrupt:
        return 130
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
    return 0


def _metrics_folder(settings: Settings) -> tuple[Settings, Path | None]:
    """Several processes (workers, engine processes) share their metrics through a folder (prometheus-client's
    multiprocess mode): GSHAP_METRICS_DIR, emptied, or a temporary folder made here (returned, to be removed at
    exit). The settings returned name the folder, so that every worker's app finds it."""
    several = settings.workers > 1 or settings.engine_processes > 0
    if not settings.metrics_enabled or not (several or settings.metrics_dir is not None):
        return settings, None
    made = None
    folder = settings.metrics_dir
    if folder is None:
        folder = made = Path(tempfile.mkdtemp(prefix="gshap-metrics-"))
    prepare_multiprocess_dir(folder)
    enable_multiprocess(folder)
    log_event("metrics_multiprocess", folder=str(folder))
    return settings.model_copy(update={"metrics_dir": folder}), made

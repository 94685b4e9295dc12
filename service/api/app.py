"""Assembles the app: settings, lifespan, middlewares, error handlers, routers, OpenAPI. Nothing else.

- :func:`create_app` builds an app; its lifespan loads and verifies the bundle once (unless one is handed in),
  builds the engine and runs a warm-up explanation before ``/readyz`` turns ready.
- :func:`serve` is ``gshap serve``: it loads and verifies the bundle and warms the model up *before* uvicorn
  starts, so that a missing, tampered or incompatible bundle, or a model whose answers are not finite, ends the
  process with a one-line reason and exit code 2.
- :func:`openapi_yaml` is ``gshap openapi``: the served OpenAPI document as YAML (``openapi.yaml``).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import gc
import json
import shutil
import signal
import sys
import tempfile
import textwrap
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from contextlib import asynccontextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

import anyio
from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute
from starlette.routing import BaseRoute
from starlette.types import ASGIApp

from service import __version__
from service.api.cds_auth import JwksSourceError, check_jwks_sources
from service.api.errors import PROBLEM_BASE, PROBLEM_MEDIA_TYPE, install_exception_handlers, is_v2_path
from service.api.http_limits import http_protocol_options
from service.api.metrics import HttpMetrics, leaf_routes
from service.api.observability import REQUEST_ID_HEADER, configure_logging, log_event
from service.api.page import install_pages
from service.api.route_copies import pinned_copy
from service.api.routes import (
    AppState,
    cds,
    explain,
    fast_table,
    fhir,
    groups,
    health,
    install_fast_routes,
    model,
    operations,
    pin_model,
    predict,
    problems,
    v2,
)
from service.api.routes import models as models_routes
from service.api.security import (
    OPEN_PATHS,
    ApiKeyMiddleware,
    BodySizeLimitMiddleware,
    HeaderSizeLimitMiddleware,
)
from service.api.stack import ServiceApp, ServiceLayer
from service.config import Settings
from service.fhir.cdshooks import discovery_document
from service.model.card import CdsService
from service.model.repository import StorePlan, plan_single, plan_store, version_key
from service.model.signing import SigningKeyError, TrustedKeys
from service.model.store import Bundle, BundleError
from service.observe.metrics import Telemetry, enable_multiprocess, prepare_multiprocess_dir
from service.runtime.inference import InferenceRuntime, configure_torch, ensure_compatible
from service.runtime.registry import ModelRegistry
from service.schemas import EXAMPLE_PREDICTION, RequestModels, request_models

if TYPE_CHECKING:
    import yaml

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


ADMIN_SCHEME = {
    "AdminKey": {
        "type": "http",
        "scheme": "bearer",
        "description": "An admin key (GSHAP_ADMIN_KEYS) as a bearer token, or in X-Admin-Key: POST /admin/reload only.",
    }
}
RELOAD_POLL_SECONDS = 0.5
"""How often a worker looks at GSHAP_RELOAD_FILE (one stat call)."""

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
    registry = state.registry
    assert registry is not None
    threads = configure_torch(settings.torch_threads)
    sys.setswitchinterval(settings.gil_switch_interval_ms / 1000)
    engine_threads = settings.engine_threads
    try:
        # loads and warms up every served version (the warm-up refuses a model whose answers are not finite;
        # serve() has refused such a bundle before uvicorn started)
        await registry.start()
    except BundleError as exc:
        log_event("startup_failed", 40, reason=str(exc))
        raise
    served = registry.default_runtime()
    assert served is not None
    state.runtime = runtime = served
    registry.on_change.append(lambda r: setattr(state, "runtime", r.default_runtime()))
    if state.telemetry is not None:
        state.telemetry.set_ready(True)
    # Everything alive now (modules, torch, the schemas, the bundle: a few hundred thousand objects) lives as long as
    # the process.
    # Frozen, it is no longer scanned by the cyclic GC, whose full collections otherwise stop the event loop
    # for tens of milliseconds now and then under load (the p99 latency).
    gc.collect()
    gc.freeze()
    gc.enable()  # gshap serve starts with the collector off (service.cli): this collection is the start's only one
    if settings.cds_jwt_issuers:
        try:  # a JWK Set that is not there at start is a refusal, not a 401 for every call later
            await anyio.to_thread.run_sync(check_jwks_sources, settings.cds_jwt_issuers, settings.cds_jwks_ca_file)
        except JwksSourceError as exc:
            log_event("startup_failed", 40, reason=str(exc))
            raise
        log_event("cds_auth", issuers=sorted(settings.cds_jwt_issuers), fhir_servers=len(settings.cds_fhir_servers))
    else:
        cds_service = runtime.bundle.cds
        feedback = f"POST /cds-services/{cds_service.id if cds_service is not None else '{id}'}/feedback"
        log_event(
            "cds_auth_off",
            30,
            message="GSHAP_CDS_JWT_ISSUERS is empty: the CDS Hooks endpoints accept calls without a JWT"
            + (
                f"; {feedback} takes an API key (GSHAP_API_KEYS)"
                if settings.api_keys
                else f"; {feedback} accepts feedback from anyone (no JWT issuer, no API key): set "
                "GSHAP_CDS_JWT_ISSUERS or GSHAP_API_KEYS"
            ),
            fhir_servers=len(settings.cds_fhir_servers),
        )
    log_event(
        "ready",
        model_version=runtime.model_version,
        models=[f"{name}@{version}" for name, version, _, _ in registry.entries()],
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


def plan_source(settings: Settings) -> Callable[[], StorePlan]:
    """What the settings say to serve, read again at each reload: GSHAP_MODEL_PATH alone, else the store's
    choice (GSHAP_MODEL_STORE, GSHAP_MODELS)."""
    path = settings.model_path
    if path is not None:
        return lambda: plan_single(path)
    return lambda: plan_store(settings.model_store, settings.models)


def build_registry(settings: Settings, telemetry: Telemetry | None = None) -> ModelRegistry:
    """The registry the settings describe (nothing loaded yet); a GSHAP_TRUSTED_KEYS entry that is not an Ed25519
    public key raises :class:`BundleError` (one line)."""
    try:
        trusted = TrustedKeys.parse(settings.trusted_keys) if settings.trusted_keys else None
    except SigningKeyError as exc:
        raise BundleError(str(exc)) from None
    return ModelRegistry(
        plan_source(settings),
        lambda bundle: build_runtime(settings, bundle),
        trusted=trusted,
        check=lambda bundle: ensure_compatible(bundle, bundle.spec),
        telemetry=telemetry,
    )


def _install_reload_triggers(state: AppState) -> Callable[[], None]:
    """SIGHUP (in the main thread's loop) and, with several workers, GSHAP_RELOAD_FILE's changes reload the store.
    Returns the function that removes them."""
    registry = state.registry
    assert registry is not None
    loop = asyncio.get_running_loop()
    tasks: set[asyncio.Task[Any]] = set()

    def trigger(reason: str) -> None:
        task = loop.create_task(registry.reload(reason))
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    hup = False
    with contextlib.suppress(ValueError, RuntimeError, NotImplementedError):  # not the main thread (tests)
        loop.add_signal_handler(signal.SIGHUP, trigger, "SIGHUP")
        hup = True
    watcher: asyncio.Task[None] | None = None
    reload_file = state.settings.reload_file
    if reload_file is not None:
        state.reload_seen = models_routes.mtime_ns(reload_file)

        async def watch() -> None:
            while True:
                await asyncio.sleep(RELOAD_POLL_SECONDS)
                seen = models_routes.mtime_ns(reload_file)
                if seen != state.reload_seen:
                    state.reload_seen = seen
                    await registry.reload("reload file")

        watcher = loop.create_task(watch())

    def remove() -> None:
        if hup:
            loop.remove_signal_handler(signal.SIGHUP)
        if watcher is not None:
            watcher.cancel()
        for task in tasks:
            task.cancel()

    return remove


def create_app(
    settings: Settings | None = None,
    bundle: Bundle | None = None,
    runtime: InferenceRuntime | None = None,
    registry: ModelRegistry | None = None,
) -> FastAPI:
    """The service's app, for the models it serves. ``settings`` default to the environment; ``bundle`` (already
    loaded) is served alone and skips loading; ``runtime`` (built from that bundle and these settings, warmed up
    once, not started) skips building one; ``registry`` (preloaded by ``serve``) serves its models.

    Otherwise the store is read and every served bundle loaded and verified here (a ``BundleError`` otherwise):
    everything model-specific of the app (the request models, hence the OpenAPI document with one path per served
    model, the page's form, CDS discovery) is derived from the bundles now, never from a module constant; the
    per-model routes are built again at each reload. The lifespan then builds and warms up the engines before
    ``/readyz`` turns ready."""
    settings = settings or Settings()
    if runtime is not None and runtime.bundle is not bundle:
        raise ValueError("a prebuilt runtime must come with the bundle it was built from")
    if registry is None:
        registry = build_registry(settings)
        if bundle is not None:
            registry.adopt(runtime if runtime is not None else build_runtime(settings, bundle))
        else:
            registry.prepare()  # loads and verifies every served bundle (BundleError: refused)
    bundle = registry.pending_default().runtime.bundle
    models = request_models(bundle.spec, bundle.methods, bundle.default_method)
    state = AppState(settings=settings, preloaded=bundle, prebuilt=runtime, models=models, registry=registry)
    monitoring = settings.monitoring
    if monitoring.metrics_enabled:
        if monitoring.metrics_dir is not None:
            enable_multiprocess(monitoring.metrics_dir)
        state.telemetry = Telemetry(
            multiprocess_dir=monitoring.metrics_dir,
            monitoring_window_seconds=monitoring.window_seconds,
            monitoring_min_records=monitoring.min_records,
        )
    registry.telemetry = state.telemetry
    cds_state = cds.CdsState.build(settings, bundle)

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        await _start(state)
        await cds_state.open()
        remove_triggers = _install_reload_triggers(state)
        try:
            yield
        finally:
            remove_triggers()
            if state.telemetry is not None:
                state.telemetry.set_ready(False)
            registry.close()
            if state.telemetry is not None:
                state.telemetry.close()
            cds_state.close()
            log_event("stopped")

    def model_version() -> str | None:
        return state.runtime.model_version if state.runtime is not None else None

    open_paths = set(OPEN_PATHS) | V2_OPEN_PATHS
    if settings.metrics_enabled and not settings.metrics_require_key:
        open_paths |= {"/metrics", "/monitoring"}
    if settings.admin_keys:
        open_paths |= {"/admin/reload"}  # its own keys (GSHAP_ADMIN_KEYS), checked by the route, not API keys
    cors = (
        {
            "allow_origins": settings.cors_origins,
            "allow_methods": ["GET", "POST"],
            "allow_headers": ["Authorization", "X-API-Key", "Content-Type", REQUEST_ID_HEADER],
            "expose_headers": [REQUEST_ID_HEADER, "X-Service-Version", "X-Model-Version", "Retry-After"],
            "max_age": 600,
        }
        if settings.cors_origins
        else None
    )

    # POST /predict, /explain and their per-model copies, by path: sent past the router (service.api.stack)
    fast: dict[str, tuple[APIRoute, ASGIApp]] = {}

    http_metrics = HttpMetrics(state.telemetry, routes=lambda: app.routes) if state.telemetry is not None else None

    def service_layer(router: ASGIApp, handlers: Mapping[Any, Any]) -> ASGIApp:
        # the request context, security headers, CORS, size limits, API keys, rate limit, gzip and the exception
        # handlers in one layer (service.api.stack): each layer cost every request an await and a send wrapper
        return ServiceLayer(
            router,
            service_version=__version__,
            model_version=model_version,
            metrics=http_metrics,
            header_limits=HeaderSizeLimitMiddleware(
                router, max_bytes=settings.max_header_bytes, max_authorization_bytes=settings.max_authorization_bytes
            ),
            keys=ApiKeyMiddleware(
                router,
                open_paths=open_paths,
                api_keys=settings.api_key_values(),
                rate_limit_per_minute=settings.rate_limit_per_minute,
                rate_limit_burst=settings.rate_limit_burst,
            ),
            body_limits=BodySizeLimitMiddleware(
                router,
                max_bytes=settings.max_body_bytes,
                routes=[
                    (prefix, settings.fhir_max_body_bytes, "fhir_max_body_bytes")
                    for prefix in ("/fhir/", "/cds-services/")
                ],
            ),
            exception_handlers=handlers,
            cors=cors,
            fast_routes=fast,
        )

    app = ServiceApp(
        # FastAPI's native OpenTelemetry hooks looked up the global providers on every request (~2 % of /predict in
        # docs/bench/profile.md); the service reports through Prometheus metrics and its JSON logs instead
        telemetry={"tracing": False, "metrics": False, "logs": False, "operation_spans": False},
        title="gshap-service",
        summary=f"Predictions and GradientSHAP explanations of {bundle.name}/{bundle.version}.",
        description=description(bundle),
        version=__version__,
        openapi_tags=tags(bundle),
        lifespan=lifespan,
        # /docs and /redoc are served offline by service.api.page (install_pages)
        docs_url=None,
        redoc_url=None,
    )
    app.service_layer = service_layer
    app.state.gshap = state
    app.state.gshap_cds = cds_state
    install_exception_handlers(app)
    root_predict, root_explain = predict.build_router(models), explain.build_router(models)
    for router in (root_predict, root_explain):
        install_fast_routes(router.routes)  # POST /predict, /explain without FastAPI's request handling
        app.include_router(router)
    for area in (groups, model, health, problems):
        app.include_router(area.router)
    cds_others: list[dict[str, Any]] = []  # discovery entries of the other served versions' CDS services
    app.include_router(cds.build_router(bundle, others=lambda: list(cds_others)))
    root_fhir = fhir.build_router(bundle)
    app.include_router(root_fhir)
    v2_router = v2.build_router(models)
    app.include_router(v2_router)
    v2.route_v2_first(app, v2_router)
    if state.telemetry is not None:
        app.include_router(operations.router)
    # every served model under its name (its default version) and under each version, with its own request
    # models: built now for the served set, and again after each reload
    app.include_router(models_routes.router)
    # The per-model routes follow those of GET /models in the app's own routes, not in an included router: FastAPI
    # builds every route of an included router again (its "effective route") at the first request that walks past
    # them and after every change of them, which for these routes undid what RouteCache saves (~0.25 s at the
    # first such request after start and after each reload). They are what an included router (no prefix, tags
    # or dependencies) would serve: the app is their dependency_overrides_provider, as for the included routes.
    after = app.router.routes[-1]
    per_model: list[BaseRoute] = []

    route_cache = RouteCache((bundle, models), (root_predict, root_explain, root_fhir))
    state.schemas = route_cache.request_models  # the V2 routes validate each model's records with its own

    def rebuild(changed: ModelRegistry) -> None:
        services = _other_cds_services(changed)
        routes = _per_model_routes(
            changed,
            with_monitoring=state.telemetry is not None,
            cds_services=services,
            cache=route_cache,
            dependency_overrides_provider=app.router.dependency_overrides_provider,
        )
        _replace_after(app.router.routes, after, per_model, routes)
        per_model[:] = routes
        cds_others[:] = [
            discovery_document(b.spec, b.card, svc, f"{name}/{version}")["services"][0]
            for name, version, b, svc in services
        ]
        app.router._mark_routes_changed()
        app.openapi_schema = None
        fast.clear()
        fast.update(fast_table(leaf_routes(app.routes)))

    rebuild(registry)
    registry.on_change.append(rebuild)
    if settings.admin_keys:
        app.include_router(models_routes.admin_router)
    install_pages(app, app.title)
    fast.update(fast_table(leaf_routes(app.routes)))
    app.openapi = lambda: _openapi(app, bundle)  # type: ignore[method-assign]
    return app


def _replace_after(routes: list[BaseRoute], after: BaseRoute, old: list[BaseRoute], new: list[BaseRoute]) -> None:
    """Replace ``old``, the routes that follow ``after`` in ``routes``, with ``new`` (in one list assignment)."""
    at = next(i for i, route in enumerate(routes) if route is after) + 1
    if any(a is not b for a, b in zip(routes[at : at + len(old)], old, strict=True)):
        raise RuntimeError("the per-model routes are no longer where they were put")
    routes[at : at + len(old)] = new


def _other_cds_services(registry: ModelRegistry) -> list[tuple[str, str, Bundle, CdsService]]:
    """The CDS services of the served versions beside the root one (the default model's default version, which
    keeps its bare id, e.g. ``diabetes-risk``), each under its own id: a model's default version keeps its
    service's bare id, another version gets ``<id>-<version>`` (``diabetes-risk-1.0.0``); an id already taken gets
    the model's name too (``<id>-<name>``, ``<id>-<name>-<version>``)."""
    root = registry.pending_default().runtime.bundle
    taken = {root.cds.id} if root.cds is not None else set()
    entries = sorted(registry.served_or_pending(), key=lambda e: (not e[3], e[0], version_key(e[1])))
    out = []
    for name, version, entry, is_default in entries:
        bundle = entry.runtime.bundle
        service = bundle.cds
        if service is None or (name, version) == (root.name, root.version):
            continue
        new_id = service.id if is_default else f"{service.id}-{version}"
        if new_id in taken:
            new_id = f"{service.id}-{name}" + ("" if is_default else f"-{version}")
        taken.add(new_id)
        title = f"{service.title} ({name} {version})"
        out.append((name, version, bundle, dataclasses.replace(service, id=new_id, title=title)))
    return out


class RouteCache:
    """The per-model routes already built, by what they depend on (the prefix, the bundle object and its load time,
    the CDS service id), so that a reload builds only the routes of the versions it adds or replaces, on the event
    loop's time.

    It also keeps the routes the copies are made from (:func:`service.api.route_copies.pinned_copy`), each built
    once: the predict and explain routes once per request models (versions with the same features share them; the
    root app's own for the root bundle's), the FHIR routes once per bundle. Building those is what costs (tens of
    milliseconds a router: FastAPI analyses each route); a prefix's copies of them take a few milliseconds."""

    def __init__(self, root: tuple[Bundle, RequestModels] | None = None, root_routes: Sequence[APIRouter] = ()) -> None:
        self.routes: dict[tuple[Any, ...], list[BaseRoute]] = {}
        self.models: dict[str, RequestModels] = {}
        # the predict and explain routes by request models' key, with the models they were built for
        self.record_routes: dict[str, tuple[RequestModels, list[BaseRoute]]] = {}
        # by bundle id, with the bundle itself: its request models' key, and its FHIR routes once built
        self.bundles: dict[int, tuple[Bundle, str, list[BaseRoute] | None]] = {}
        if root is not None:  # the root routes' models: a version with the same features shares their schemas
            key = self._key(root[0])
            self.models[key] = root[1]
            if root_routes:  # the root app's predict, explain and FHIR routers, built for the root bundle
                predict_router, explain_router, fhir_router = root_routes
                self.record_routes[key] = (root[1], [*predict_router.routes, *explain_router.routes])
                self.bundles[id(root[0])] = (root[0], key, list(fhir_router.routes))

    def _key(self, bundle: Bundle) -> str:
        """What request models depend on (the spec, the methods), as a key; computed once per bundle."""
        known = self.bundles.get(id(bundle))
        if known is not None and known[0] is bundle:
            return known[1]
        key = json.dumps([bundle.spec.to_dict(), list(bundle.methods), bundle.default_method], default=str)
        self.bundles[id(bundle)] = (bundle, key, None)
        return key

    def request_models(self, bundle: Bundle) -> RequestModels:
        """Versions with the same features share their request models (and so their schemas); other models get
        their own, named after the model and version that first needs them (``PatientRecord_breast_cancer_...``)."""
        key = self._key(bundle)
        if key not in self.models:
            suffix = f"_{_slug(bundle.name)}_{_slug(bundle.version)}"
            self.models[key] = request_models(bundle.spec, bundle.methods, bundle.default_method, suffix)
        return self.models[key]

    def model_routes(self, bundle: Bundle, *, with_monitoring: bool) -> list[BaseRoute]:
        """The routes every prefix of ``bundle`` copies, in order: predict, explain, groups, model, FHIR and (with
        the metrics) monitoring; each built once (for its request models, for its bundle) and kept."""
        req = self.request_models(bundle)
        key = self._key(bundle)
        if key not in self.record_routes or self.record_routes[key][0] is not req:
            self.record_routes[key] = (req, [*predict.build_router(req).routes, *explain.build_router(req).routes])
        fhir_routes = self.bundles[id(bundle)][2]
        if fhir_routes is None:
            fhir_routes = list(fhir.build_router(bundle).routes)
            self.bundles[id(bundle)] = (bundle, key, fhir_routes)
        monitoring = operations.monitoring_router.routes if with_monitoring else []
        return [*self.record_routes[key][1], *groups.router.routes, *model.router.routes, *fhir_routes, *monitoring]

    def keep_only(self, keys: set[tuple[Any, ...]], bundles: Sequence[Bundle] | None = None) -> None:
        """Forget the routes not under ``keys`` and, given the bundles served, what was built for the others."""
        self.routes = {k: v for k, v in self.routes.items() if k in keys}
        if bundles is not None:
            ids = {id(b) for b in bundles}
            self.bundles = {k: v for k, v in self.bundles.items() if k in ids}


def _per_model_routes(
    registry: ModelRegistry,
    *,
    with_monitoring: bool,
    cds_services: Sequence[tuple[str, str, Bundle, CdsService]] = (),
    cache: RouteCache | None = None,
    dependency_overrides_provider: Any = None,
) -> list[BaseRoute]:
    """The routes of every served model version under ``/models/{name}/versions/{version}`` and of every model's
    default version under ``/models/{name}``: the root routes' modules built for that bundle (its own request
    models, CDS and FHIR facts; once per request models, once per bundle, see :class:`RouteCache`) and copied
    under each prefix, pinned to it, each operation id suffixed with the model (and version). The copies are made
    from the built routes without FastAPI analysing them again (:mod:`service.api.route_copies`). Routes of a
    version whose bundle did not change come from ``cache`` (made with the same ``dependency_overrides_provider``,
    the app whose ``dependency_overrides`` apply to them)."""
    cache = cache or RouteCache()
    out: list[BaseRoute] = []
    used: set[tuple[Any, ...]] = set()
    bundles: list[Bundle] = []
    for name, version, entry, is_default in registry.served_or_pending():
        bundle = entry.runtime.bundle
        bundles.append(bundle)
        slug = _slug(name)
        targets: list[tuple[str, str | None, str]] = [
            (f"/models/{name}/versions/{version}", version, f"{slug}__{_slug(version)}")
        ]
        if is_default:
            targets.append((f"/models/{name}", None, slug))
        for prefix, pinned, suffix in targets:
            key: tuple[Any, ...] = (prefix, id(bundle), entry.loaded_at, with_monitoring)
            used.add(key)
            if key not in cache.routes:
                pin = Depends(pin_model(name, pinned))
                copies: list[BaseRoute] = []
                for route in cache.model_routes(bundle, with_monitoring=with_monitoring):
                    if not isinstance(route, APIRoute):
                        raise TypeError(f"only plain routes are served per model, not {route!r}")
                    copies.append(_copy(route, prefix, suffix, pin, overrides=dependency_overrides_provider))
                install_fast_routes(copies, (name, pinned))
                cache.routes[key] = copies
            out += cache.routes[key]
    for name, version, bundle, service in cds_services:
        key = ("cds", service.id, service.title, id(bundle), name, version)
        used.add(key)
        if key not in cache.routes:
            copies = []
            for route in cds.build_router(bundle, service).routes:
                # one discovery lists all; the feedback summary (its path takes the service id) is the default's
                if isinstance(route, APIRoute) and route.operation_id not in ("cds_discovery", "cds_feedback_summary"):
                    suffix = f"{_slug(name)}__{_slug(version)}"
                    pin = Depends(pin_model(name, version))
                    copies.append(_copy(route, "", suffix, pin, ["cds-hooks"], overrides=dependency_overrides_provider))
            cache.routes[key] = copies
        out += cache.routes[key]
    cache.keep_only(used, bundles)
    return out


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def _copy(
    route: APIRoute, prefix: str, suffix: str, pin: Any, tags: list[str | Any] | None = None, *, overrides: Any = None
) -> APIRoute:
    """``route`` under ``prefix``, its operation id suffixed, tagged ``tags`` (``models``), with the ``pin``
    dependency before its own: built from ``route``'s analysis (:func:`~service.api.route_copies.pinned_copy`)."""
    return pinned_copy(
        route,
        path=prefix + route.path,
        operation_id=f"{route.operation_id}__{suffix}" if route.operation_id else None,
        tags=tags or ["models"],
        prepend=[pin],
        dependency_overrides_provider=overrides,
    )


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
    components["securitySchemes"] = {
        **SECURITY_SCHEMES,
        **(ADMIN_SCHEME if app.state.gshap.settings.admin_keys else {}),
    }
    # either scheme, or none: keys are optional, decided by the server's configuration
    doc["security"] = [{"BearerAuth": []}, {"ApiKeyHeader": []}, {}]
    app.openapi_schema = doc
    return doc


def _str_representer(dumper: yaml.SafeDumper, value: str) -> yaml.Node:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


@functools.cache
def _openapi_dumper() -> type[yaml.SafeDumper]:
    """yaml's safe dumper writing multi-line strings as literal blocks (readable descriptions in diffs). yaml is
    imported here, by ``gshap openapi``, not with the app (~13 ms of the server's start)."""
    import yaml

    class OpenAPIDumper(yaml.SafeDumper):
        pass

    OpenAPIDumper.add_representer(str, _str_representer)
    return OpenAPIDumper


def openapi_yaml() -> str:
    """The OpenAPI document the app serves, as YAML in the document's own key order (deterministic)."""
    import yaml

    doc = create_app(Settings()).openapi()
    return yaml.dump(doc, Dumper=_openapi_dumper(), sort_keys=False, allow_unicode=True, width=120)


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
    a bundle that does not load or verify, one that is unsigned or signed by an untrusted key (when
    GSHAP_TRUSTED_KEYS is set), one that does not fit the request schema, and a model whose warm-up answers are
    not finite (every served version's runtime is built and warmed up here, then handed to the app, which starts
    them). SIGHUP re-reads the store without a restart; with several workers every worker does.
    """
    configure_logging(settings.log_level)
    if settings.cds_jwt_issuers:  # JwksSourceError: gshap serve says it in one line, exit 2
        check_jwks_sources(settings.cds_jwt_issuers, settings.cds_jwks_ca_file)
    configure_torch(settings.torch_threads)  # as the lifespan does, before this process's first explanation
    registry = build_registry(settings)
    registry.preload()  # BundleError: refused before uvicorn starts
    import uvicorn

    # uvicorn re-raises the signal it handled once it has shut down: make that a clean exit
    signal.signal(signal.SIGTERM, _exit_cleanly)
    settings, made = _metrics_folder(settings)
    common = uvicorn_options(settings)
    reload_dir: Path | None = None
    try:
        if settings.workers == 1:
            # a SIGHUP before the app's loop handles it must not end the process: it reloads once started
            signal.signal(signal.SIGHUP, signal.SIG_IGN)
            uvicorn.run(create_app(settings, registry=registry), **common)
        else:
            import os

            # each worker builds its own app from the environment (and loads the store in its lifespan); the
            # warm-up above has checked the models they load. SIGHUP to this process touches the reload file,
            # which every worker watches (uvicorn's own SIGHUP would restart the workers).
            registry.close()
            del registry
            gc.enable()  # off while starting (service.cli); this process supervises, no lifespan turns it on
            reload_dir = Path(tempfile.mkdtemp(prefix="gshap-reload-"))
            settings = settings.model_copy(update={"reload_file": reload_dir / "reload"})
            assert settings.reload_file is not None
            models_routes.touch_reload_file(settings.reload_file)
            os.environ.update(settings.as_env())
            config = uvicorn.Config("service.api.app:create_app", factory=True, workers=settings.workers, **common)
            _ReloadingSupervisor(config, sockets=[config.bind_socket()], reload_file=settings.reload_file).run()
    except KeyboardInterrupt:
        return 130
    finally:
        if made is not None:
            shutil.rmtree(made, ignore_errors=True)
        if reload_dir is not None:
            shutil.rmtree(reload_dir, ignore_errors=True)
    return 0


def _supervisor_class() -> type:
    from uvicorn.supervisors.multiprocess import Multiprocess

    class ReloadingSupervisor(Multiprocess):
        """uvicorn's worker supervisor, but SIGHUP reloads the store in every worker (through the reload file)
        instead of restarting them: no connection is dropped and no request fails."""

        def __init__(self, *args: Any, reload_file: Path, **kwargs: Any) -> None:
            super().__init__(*args, **kwargs)
            self.reload_file = reload_file

        def handle_hup(self) -> None:
            log_event("reload_requested", signal="SIGHUP", workers=self.processes_num)
            models_routes.touch_reload_file(self.reload_file)

    return ReloadingSupervisor


def _ReloadingSupervisor(*args: Any, **kwargs: Any) -> Any:  # noqa: N802 (a class made on first use)
    return _supervisor_class()(*args, **kwargs)


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

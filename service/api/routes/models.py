"""``GET /models`` (what is served: models, versions, defaults, readiness, methods, signing keys, links),
``GET /models/{name}`` (one model) and ``POST /admin/reload`` (re-read the store, behind GSHAP_ADMIN_KEYS).

The per-model routes themselves (``/models/{name}/predict``, ``/models/{name}/versions/{version}/explain``, ...)
are the root routes' modules included again under those prefixes by :func:`service.api.app.create_app`; they find
their runtime through :func:`service.api.routes.get_runtime`.
"""

from __future__ import annotations

import hmac
import os
import time
import typing
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Request
from fastapi import Path as PathParam
from pydantic import BaseModel, ConfigDict, Field

from service.api.errors import ModelNotReady, NotFound, Unauthorized
from service.api.routes import get_state, problem_responses
from service.contract import ServedMethod
from service.model.repository import NAME_PATTERN, VERSION_PATTERN
from service.runtime.inference import InferenceRuntime
from service.runtime.registry import ModelRegistry, ServedVersion

__all__ = ["NameParam", "VersionParam", "admin_router", "mtime_ns", "router", "touch_reload_file"]

router = APIRouter(tags=["models"])
admin_router = APIRouter(tags=["admin"])

NameParam = Annotated[str, PathParam(pattern=f"^{NAME_PATTERN}$", description="A served model's name.")]
VersionParam = Annotated[str, PathParam(pattern=f"^{VERSION_PATTERN}$", description="A served version of it.")]
_ALL_METHODS: tuple[str, ...] = typing.get_args(ServedMethod)


class ModelVersionPublic(BaseModel):
    """One served version of a model."""

    model_config = ConfigDict(extra="forbid")

    version: str = Field(description="The version (its folder in the store).")
    default: bool = Field(description="Whether /models/{name}/... (without a version) answers with this version.")
    ready: bool = Field(description="Whether it is loaded, warmed up and served.")
    model_version: str = Field(description="NAME/VERSION, as every answer of this version names it.")
    methods: list[str] = Field(description="The explanation methods this version offers.")
    default_method: str = Field(description="The method /explain uses when the request names none.")
    signed_by: str | None = Field(description="Id of the Ed25519 key that signed the bundle; null: unsigned.")
    signing_key: str | None = Field(description="That public key, base64 of its 32 bytes; null: unsigned.")
    loaded_at: str = Field(description="When this process loaded the bundle (UTC, ISO 8601).")
    links: dict[str, str] = Field(description="This version's model card, predict and explain routes.")


class ServedModelPublic(BaseModel):
    """One served model and its versions."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="The model's name (its folder in the store).")
    default_version: str = Field(description="The version /models/{name}/... answers with (its DEFAULT).")
    default: bool = Field(description="Whether the root routes (/predict, /explain, ...) answer for this model.")
    ready: bool = Field(description="Whether its default version is ready.")
    methods: list[str] = Field(description="The explanation methods of its default version.")
    versions: list[ModelVersionPublic] = Field(description="Every served version, oldest first.")
    links: dict[str, str] = Field(description="The model's routes (its default version).")


class ModelsPublic(BaseModel):
    """Every served model."""

    model_config = ConfigDict(extra="forbid")

    default_model: str = Field(description="The model the root routes (/predict, /explain, ...) answer for.")
    models: list[ServedModelPublic] = Field(description="Every served model, by name.")


class ReloadPublic(BaseModel):
    """What a reload did."""

    model_config = ConfigDict(extra="forbid")

    outcome: str = Field(description="ok: every bundle of the store is served; partial: some were refused.")
    added: list[str] = Field(description="NAME@VERSION loaded and served now.")
    replaced: list[str] = Field(description="NAME@VERSION whose files changed, loaded again and swapped in.")
    removed: list[str] = Field(description="NAME@VERSION unloaded (requests in flight finish on them).")
    kept: list[str] = Field(description="NAME@VERSION unchanged.")
    refused: dict[str, str] = Field(description="NAME@VERSION -> why; a refused version's old bundle stays.")
    defaults: dict[str, str] = Field(description="Each model's default version after the reload.")
    default_model: str = Field(description="The default model after the reload.")
    seconds: float = Field(description="How long this process's reload took.")
    workers: str = Field(description="'this process', or 'every worker' when the others are told too.")


def _methods(runtime: InferenceRuntime) -> tuple[list[str], str]:
    bundle = runtime.bundle
    methods = list(getattr(bundle, "methods", _ALL_METHODS))
    return methods, str(getattr(bundle, "default_method", methods[0]))


def _version(name: str, version: str, entry: ServedVersion, default: bool) -> ModelVersionPublic:
    runtime = entry.runtime
    methods, default_method = _methods(runtime)
    base = f"/models/{name}/versions/{version}"
    return ModelVersionPublic(
        version=version,
        default=default,
        ready=runtime.ready,
        model_version=runtime.model_version,
        methods=methods,
        default_method=default_method,
        signed_by=runtime.bundle.signed_by,
        signing_key=runtime.bundle.signing_key,
        loaded_at=datetime.fromtimestamp(entry.loaded_at, UTC).replace(microsecond=0).isoformat(),
        links={"model": f"{base}/model", "predict": f"{base}/predict", "explain": f"{base}/explain"},
    )


def _registry(request: Request) -> ModelRegistry:
    registry = get_state(request).registry
    if registry is None or registry.served is None:
        raise ModelNotReady("The models are loading or shutting down; retry shortly.", headers={"Retry-After": "1"})
    return registry


def _listing(registry: ModelRegistry) -> ModelsPublic:
    served = registry.served
    assert served is not None
    models: list[ServedModelPublic] = []
    for name, versions in served.models.items():
        default_version = served.defaults[name]
        default_runtime = versions[default_version].runtime
        methods, _ = _methods(default_runtime)
        base = f"/models/{name}"
        models.append(
            ServedModelPublic(
                name=name,
                default_version=default_version,
                default=name == served.default_model,
                ready=default_runtime.ready,
                methods=methods,
                versions=[_version(name, v, e, v == default_version) for v, e in versions.items()],
                links={
                    "self": base,
                    "model": f"{base}/model",
                    "predict": f"{base}/predict",
                    "explain": f"{base}/explain",
                },
            )
        )
    return ModelsPublic(default_model=served.default_model, models=models)


@router.get(
    "/models",
    operation_id="list_models",
    summary="Served models",
    responses=problem_responses(401, 429, 500, 503),
)
async def list_models(request: Request) -> ModelsPublic:
    """Every served model: its versions, which one is the default, whether each is ready, the explanation methods
    it offers, the key that signed it, and links to its routes (``/models/{name}/...`` answers with the default
    version, ``/models/{name}/versions/{version}/...`` with that version). The root routes answer for
    ``default_model``."""
    return _listing(_registry(request))


@router.get(
    "/models/{name}",
    operation_id="get_served_model",
    summary="One served model",
    responses=problem_responses(401, 404, 422, 429, 500, 503),
)
async def get_served_model(request: Request, name: NameParam) -> ServedModelPublic:
    """One served model, as ``/models`` lists it; 404 for a model that is not served."""
    listing = _listing(_registry(request))
    for model in listing.models:
        if model.name == name:
            return model
    raise NotFound(f"No model named {name!r} is served here.", extra={"served": [m.name for m in listing.models]})


def touch_reload_file(path: Path) -> None:
    """Tell every worker to reload (each watches this file's modification time)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a"):
        pass
    os.utime(path, ns=(os.stat(path).st_atime_ns, max(os.stat(path).st_mtime_ns + 1, _now_ns())))


def _now_ns() -> int:
    return time.time_ns()


def _admin_key(request: Request) -> str | None:
    auth = request.headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        return auth[7:].strip()
    return request.headers.get("x-admin-key")


@admin_router.post(
    "/admin/reload",
    operation_id="admin_reload",
    summary="Reload the model store",
    responses=problem_responses(401, 429, 500, 503),
    openapi_extra={"security": [{"AdminKey": []}]},
)
async def admin_reload(request: Request) -> ReloadPublic:
    """Re-read the store as SIGHUP does: new versions are loaded, removed ones unloaded, a changed DEFAULT
    followed, and a broken, tampered or untrusted bundle refused (the one served before stays). Needs one of
    GSHAP_ADMIN_KEYS in ``Authorization: Bearer <key>`` or ``X-Admin-Key`` (API keys do not open it); without
    admin keys this route does not exist. With several workers, every worker reloads."""
    state = get_state(request)
    given = _admin_key(request)
    keys = state.settings.admin_key_values()
    if given is None or not any(hmac.compare_digest(given.encode(), k.encode()) for k in keys):
        raise Unauthorized("This route needs an admin key (GSHAP_ADMIN_KEYS).", headers={"WWW-Authenticate": "Bearer"})
    registry = _registry(request)
    reload_file = state.settings.reload_file
    if reload_file is not None and state.settings.workers > 1:
        touch_reload_file(reload_file)  # the other workers reload when they see it; this one reloads now
        state.reload_seen = mtime_ns(reload_file)
    report = await registry.reload("POST /admin/reload")
    return ReloadPublic(
        outcome=report.outcome,
        added=report.added,
        replaced=report.replaced,
        removed=report.removed,
        kept=report.kept,
        refused=report.refused,
        defaults=report.defaults,
        default_model=report.default_model,
        seconds=report.seconds,
        workers="every worker" if reload_file is not None and state.settings.workers > 1 else "this process",
    )


def mtime_ns(path: Path) -> int:
    try:
        return os.stat(path).st_mtime_ns
    except OSError:
        return 0

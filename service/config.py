"""The service's settings: one class, the only place that reads the environment, its fields grouped by concern.

Every setting has an environment variable ``GSHAP_<NAME>`` (``GSHAP_PORT=9000``); lists are comma-separated
(``GSHAP_API_KEYS=key-2025-a,key-2025-b``). ``gshap serve`` passes its command-line options as keyword
arguments, which win over the environment. With several workers the settings travel to the worker processes
through the environment again (:meth:`Settings.as_env`), because uvicorn builds each worker's app itself.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

__all__ = [
    "ENV_PREFIX",
    "SETTING_GROUPS",
    "CdsFhirSettings",
    "EngineSettings",
    "LimitSettings",
    "MonitoringSettings",
    "Settings",
]

ENV_PREFIX = "GSHAP_"

LogLevel = Literal["debug", "info", "warning", "error", "critical"]

SETTING_GROUPS: dict[str, tuple[str, tuple[str, ...]]] = {
    "server": (
        "Server: where it listens, the bundle it serves, its logs and its shutdown",
        ("host", "port", "workers", "model_path", "log_level", "graceful_shutdown_seconds"),
    ),
    "limits": (
        "Limits: the most one request may send or ask for",
        ("max_batch_records", "max_body_bytes", "max_n_samples", "max_header_bytes", "max_authorization_bytes"),
    ),
    "access": (
        "Access: API keys, rate limit, CORS",
        ("api_keys", "rate_limit_per_minute", "rate_limit_burst", "cors_origins"),
    ),
    "engine": (
        "Engine: the threads and processes that compute, and how requests are merged",
        (
            "torch_threads",
            "engine_threads",
            "engine_processes",
            "gil_switch_interval_ms",
            "max_coalesce",
            "batch_window_ms",
            "plot_threads",
        ),
    ),
    "monitoring": (
        "Monitoring: Prometheus metrics and drift",
        (
            "metrics_enabled",
            "metrics_require_key",
            "metrics_dir",
            "monitoring_window_seconds",
            "monitoring_min_records",
        ),
    ),
    "cds_fhir": (
        "CDS Hooks and FHIR",
        (
            "cds_fhir_servers",
            "cds_fhir_timeout_seconds",
            "cds_fhir_max_bytes",
            "cds_jwt_issuers",
            "cds_jwt_max_lifetime_seconds",
            "cds_jwks_ca_file",
            "cds_base_url",
            "cds_feedback_db",
            "fhir_max_entries",
            "fhir_max_body_bytes",
            "fhir_max_pages",
        ),
    ),
    "repository": (
        "Model repository: which models are served, who signed them, reloads",
        ("model_store", "models", "trusted_keys", "admin_keys", "reload_file"),
    ),
    "state": (
        "CDS state: the database shared by replicas (issued cards, feedback, the JWT replay cache)",
        (
            "database_url",
            "state_db",
            "database_pool_size",
            "database_timeout_seconds",
            "cds_card_retention_days",
            "cds_max_cards",
            "cds_feedback_retention_days",
            "cds_feedback_max_entries",
            "cds_feedback_max_per_card",
            "cds_feedback_max_rows",
        ),
    ),
}
"""The settings by concern: group key -> (title, field names, in the class order). Every field is in exactly one
group (tests/test_settings.py); a field's variable stays ``GSHAP_<FIELD>`` whatever its group."""


@dataclass(frozen=True)
class LimitSettings:
    """The most one request may send or ask for (``Settings.limits``)."""

    max_batch_records: int
    max_body_bytes: int
    max_n_samples: int | None
    max_header_bytes: int
    max_authorization_bytes: int


@dataclass(frozen=True)
class EngineSettings:
    """The threads and processes that compute, and how concurrent requests are merged (``Settings.engine``)."""

    torch_threads: int | None
    threads: int
    processes: int
    gil_switch_interval_ms: float
    max_coalesce: int
    batch_window_ms: float
    plot_threads: int


@dataclass(frozen=True)
class MonitoringSettings:
    """Prometheus metrics and drift monitoring (``Settings.monitoring``)."""

    metrics_enabled: bool
    metrics_require_key: bool
    metrics_dir: Path | None
    window_seconds: float
    min_records: int


@dataclass(frozen=True)
class CdsFhirSettings:
    """CDS Hooks and FHIR (``Settings.cds_fhir``); the JWT issuers and their CA file stay flat (``cds_jwt_*``,
    ``cds_jwks_ca_file``), read where the JWTs are checked."""

    fhir_servers: tuple[str, ...]
    fhir_timeout_seconds: float
    fhir_max_bytes: int
    base_url: str | None
    feedback_db: Path | None
    fhir_max_entries: int
    fhir_max_body_bytes: int
    fhir_max_pages: int


def _split_commas(value: Any) -> Any:
    if isinstance(value, str):
        return [part.strip() for part in value.split(",") if part.strip()]
    return value


class Settings(BaseSettings):
    """One service instance's settings, grouped by concern (:data:`SETTING_GROUPS`): server, limits, access, engine,
    monitoring, CDS Hooks and FHIR. The fields stay flat, so that every ``GSHAP_<FIELD>`` name is what it was; the
    properties :attr:`limits`, :attr:`engine`, :attr:`monitoring` and :attr:`cds_fhir` give a group as one
    object."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True, protected_namespaces=())

    # ---- Server: where it listens, the bundle it serves, its logs and its shutdown ----------------------------
    host: str = Field("127.0.0.1", description="Interface to listen on.")
    port: int = Field(8000, ge=0, le=65535, description="TCP port (0: any free port).")
    workers: int = Field(1, ge=1, le=64, description="uvicorn worker processes.")
    model_path: Path | None = Field(
        None, description="Bundle folder, or a store with a DEFAULT pointer; None: the committed default bundle."
    )
    log_level: LogLevel = Field("info", description="Level of the JSON-lines logs on stderr.")
    graceful_shutdown_seconds: float = Field(10.0, ge=0, description="How long in-flight requests may finish.")

    # ---- Limits: the most one request may send or ask for -----------------------------------------------------
    max_batch_records: int = Field(100, ge=1, description="Most records one batch request may carry (else 413).")
    max_body_bytes: int = Field(1_048_576, ge=256, description="Largest request body in bytes (else 413).")
    max_n_samples: int | None = Field(
        None, ge=1, description="Lowers the engine's MAX_N_SAMPLES for /explain; None: the engine's own bound."
    )
    max_header_bytes: int = Field(
        32 * 1024,
        ge=1024,
        description=(
            "Largest request line plus headers in bytes: refused with 431 by the HTTP protocol as soon as that many "
            "bytes came without the end of the headers."
        ),
    )
    max_authorization_bytes: int = Field(
        8 * 1024,
        ge=256,
        description="Largest Authorization header in bytes (431 before any key or token is read).",
    )

    # ---- Access: API keys, rate limit, CORS -------------------------------------------------------------------
    api_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description="Accepted API keys (several, so that keys can rotate); empty: no authentication.",
    )
    rate_limit_per_minute: int | None = Field(
        None, ge=1, description="Requests per minute per API key (per client address without keys); None: off."
    )
    rate_limit_burst: int | None = Field(None, ge=1, description="Token-bucket capacity; None: the per-minute rate.")
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Origins allowed by CORS; empty: CORS closed."
    )

    # ---- Engine: the threads and processes that compute, and how requests are merged --------------------------
    torch_threads: int | None = Field(
        None,
        ge=1,
        description=(
            "Intra-op threads of torch; None: 1. The engine threads already run in parallel, and intra-op "
            "threads spinning on a busy machine slow every engine call down (measured by scripts/bench.py)."
        ),
    )
    engine_threads: int = Field(
        1,
        ge=1,
        le=64,
        description=(
            "Threads running the engine in this process: the exact kernel's C threads, which never take the GIL, "
            "and the worker threads of the other methods, which share it with the event loop (more of those "
            "rarely helps; use GSHAP_ENGINE_PROCESSES for cores)."
        ),
    )
    engine_processes: int = Field(
        0,
        ge=0,
        le=64,
        description=(
            "Forked processes doing the engine's arithmetic, fed from the event loop; 0: none, the engine threads "
            "compute in this process. Processes use more than one core for explanations (no shared GIL) at the "
            "cost of memory (each child's RSS also counts the pages it shares with the server)."
        ),
    )
    gil_switch_interval_ms: float = Field(
        0.005,
        gt=0,
        le=100,
        description=(
            "Python's thread switch interval (sys.setswitchinterval), set at start. The exact kernel runs without "
            "the GIL, but an engine thread needs it to pick up and hand back each batch and waits up to this long "
            "while the event loop holds it: a short interval raises /explain throughput under concurrent load "
            "(scripts/bench.py measures it). Only a waiting thread makes the loop switch, so a short interval "
            "costs nothing while the engine computes or idles."
        ),
    )
    max_coalesce: int = Field(
        64, ge=1, description="Most records merged into one engine call from concurrent requests with equal settings."
    )
    batch_window_ms: float = Field(
        0.0,
        ge=0,
        le=100,
        description=(
            "How long a free engine thread waits for more requests to merge; 0: never (requests that arrive "
            "while the threads are busy are merged anyway)."
        ),
    )
    plot_threads: int = Field(
        2,
        ge=1,
        le=16,
        description=(
            "Threads that draw PNG plots at once (?format=png of the plot endpoints); more requests wait. "
            "SVG plots are written without matplotlib and need none."
        ),
    )

    # ---- Monitoring: Prometheus metrics and drift -------------------------------------------------------------
    metrics_enabled: bool = Field(
        True, description="Serve GET /metrics (Prometheus) and GET /monitoring (drift) and record their metrics."
    )
    metrics_require_key: bool = Field(
        False,
        description=(
            "Put /metrics and /monitoring behind GSHAP_API_KEYS (which must then be set); false: open to any "
            "scraper that reaches the port, like /healthz."
        ),
    )
    metrics_dir: Path | None = Field(
        None,
        description=(
            "Folder of the per-process metrics files (PROMETHEUS_MULTIPROC_DIR) when there are several workers or "
            "engine processes; None: gshap serve makes a temporary one and removes it at exit. Emptied at start."
        ),
    )
    monitoring_window_seconds: float = Field(
        3600.0, ge=60, le=7 * 86400, description="Length of the rolling drift window (60 time buckets)."
    )
    monitoring_min_records: int = Field(
        200, ge=1, description="Records the drift window needs before a drift index is judged."
    )

    # ---- CDS Hooks and FHIR -----------------------------------------------------------------------------------
    cds_fhir_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "FHIR base URLs the CDS service may call for prefetch data the client did not send (comma-separated); "
            "empty: never call out. A fhirServer outside this list gets 412."
        ),
    )
    cds_fhir_timeout_seconds: float = Field(
        2.0, gt=0, le=30, description="Timeout of one outgoing FHIR search (the whole fetch gets twice this)."
    )
    cds_fhir_max_bytes: int = Field(
        2_000_000, ge=1024, description="Most bytes read from one FHIR search answer (more: 412)."
    )
    cds_jwt_issuers: Annotated[dict[str, str], NoDecode] = Field(
        default_factory=dict,
        description=(
            "CDS clients trusted, as issuer=JWKS pairs (comma-separated; the JWKS is an https URL or a file path), "
            "or a JSON object; empty: the CDS endpoints take no JWT (logged at start)."
        ),
    )
    cds_jwt_max_lifetime_seconds: float = Field(
        300.0,
        gt=0,
        le=86400,
        description=(
            "Longest lifetime (exp - iat) of a CDS client JWT, plus 30 s leeway; longer-lived tokens get 401 (the "
            "CDS Hooks Sandbox signs exp = iat + 300)."
        ),
    )
    cds_jwks_ca_file: Path | None = Field(
        None,
        description=(
            "PEM file of CA certificates trusted for https JWKS URLs, besides the system's; None: the system's only."
        ),
    )
    cds_base_url: str | None = Field(
        None,
        description=(
            "Public base URL of this service as CDS clients call it (the JWT aud is <this>/cds-services/...; the "
            "card's links start here); None: taken from each request."
        ),
    )
    cds_feedback_db: Path | None = Field(
        None,
        description=(
            "The older name of GSHAP_STATE_DB (kept as an alias): the SQLite file of the CDS state (issued cards, "
            "feedback, jti replay cache) when GSHAP_DATABASE_URL is not set."
        ),
    )
    fhir_max_entries: int = Field(
        10_000,
        ge=1,
        description=(
            "Most entries of a FHIR Bundle (posted or fetched) or prefetch search (else 413); Synthea's R4 sample "
            "patients hold up to 1,244."
        ),
    )
    fhir_max_body_bytes: int = Field(
        8 * 1024 * 1024,
        ge=256,
        description=(
            "Largest request body of the FHIR and CDS Hooks routes (/fhir/..., /cds-services/...), which take a "
            "patient's Bundle as EHRs and Synthea write them (pretty-printed; Synthea's R4 samples: up to 3.9 MB), "
            "else 413. The other routes keep GSHAP_MAX_BODY_BYTES."
        ),
    )
    fhir_max_pages: int = Field(
        10, ge=1, le=1000, description="Most pages of one outgoing FHIR search followed by their `next` links."
    )

    # ---- Model repository: which models are served, who signed them, reloads ------------------------------
    model_store: Path | None = Field(
        None,
        description=(
            "Root of the model store (model folders, each with version folders and a DEFAULT file; the store's "
            "DEFAULT names the default model); None: the repository's model_store. GSHAP_MODEL_PATH wins."
        ),
    )
    models: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "What to serve from the store, comma-separated: NAME (every version of it) or NAME@VERSION; "
            "empty: every version of every model in the store."
        ),
    )
    trusted_keys: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description=(
            "Ed25519 public keys trusted to sign bundles (paths of PEM or OpenSSH files, or the keys inline, "
            "comma-separated); set: an unsigned bundle or one signed by another key is refused. Empty: no check."
        ),
    )
    admin_keys: Annotated[list[SecretStr], NoDecode] = Field(
        default_factory=list,
        description=(
            "Administrators' keys, comma-separated, separate from GSHAP_API_KEYS: POST /admin/reload (empty: there "
            "is no such route) and the CDS feedback summary take them."
        ),
    )
    reload_file: Path | None = Field(
        None,
        description=(
            "File whose change makes every worker reload the store (gshap serve sets it with several workers: "
            "SIGHUP to the server, or POST /admin/reload to any worker, touches it); None: one process."
        ),
    )

    # ---- CDS state: the database shared by replicas (issued cards, feedback, JWT replay cache) ---------------
    database_url: SecretStr | None = Field(
        None,
        description=(
            "postgresql://user:password@host:5432/db: the CDS state (issued cards, feedback, the JWT jti replay "
            "cache) in PostgreSQL, shared by every replica; None: an SQLite file on this machine (GSHAP_STATE_DB)."
        ),
    )
    state_db: Path | None = Field(
        None,
        description=(
            "SQLite file of the CDS state when GSHAP_DATABASE_URL is not set; None: GSHAP_CDS_FEEDBACK_DB (its "
            "older name, kept as an alias), else $XDG_STATE_HOME or ~/.local/state, gshap-service/cds-feedback.sqlite3."
        ),
    )
    database_pool_size: int = Field(4, ge=1, le=100, description="Most PostgreSQL connections of one process.")
    database_timeout_seconds: float = Field(
        3.0, gt=0, le=60, description="Longest wait for a database connection or statement (then 503)."
    )
    cds_card_retention_days: float = Field(
        30.0, gt=0, description="How long an issued card is kept (feedback for it is accepted that long)."
    )
    cds_max_cards: int = Field(
        1_000_000, ge=1, description="Most issued cards kept; past it cards are served but not recorded."
    )
    cds_feedback_retention_days: float = Field(730.0, gt=0, description="How long a feedback row is kept.")
    cds_feedback_max_entries: int = Field(20, ge=1, le=100, description="Most feedback entries in one request (413).")
    cds_feedback_max_per_card: int = Field(10, ge=1, description="Most feedback rows for one card (then 422).")
    cds_feedback_max_rows: int = Field(
        1_000_000, ge=1, description="Most feedback rows stored; past it feedback is refused with 503 and Retry-After."
    )

    @field_validator("cds_jwt_issuers", mode="before")
    @classmethod
    def _issuer_pairs(cls, value: Any) -> Any:
        if not isinstance(value, str):
            return value
        if value.strip().startswith("{"):
            return json.loads(value)
        pairs: dict[str, str] = {}
        for part in _split_commas(value):
            issuer, sep, jwks = part.partition("=")
            if not sep or not issuer.strip() or not jwks.strip():
                raise ValueError("GSHAP_CDS_JWT_ISSUERS: write issuer=jwks pairs, comma-separated, or a JSON object")
            pairs[issuer.strip()] = jwks.strip()
        return pairs

    @field_validator(
        "api_keys", "cors_origins", "cds_fhir_servers", "models", "trusted_keys", "admin_keys", mode="before"
    )
    @classmethod
    def _comma_list(cls, value: Any) -> Any:
        return _split_commas(value)

    @model_validator(mode="after")
    def _metrics_key_needs_keys(self) -> Settings:
        if self.metrics_require_key and not self.api_keys:
            raise ValueError(
                "GSHAP_METRICS_REQUIRE_KEY=true needs API keys (GSHAP_API_KEYS): there is nothing to require"
            )
        return self

    @field_validator(
        "model_path",
        "metrics_dir",
        "cds_feedback_db",
        "cds_base_url",
        "cds_jwks_ca_file",
        "state_db",
        "database_url",
        "model_store",
        "reload_file",
        mode="before",
    )
    @classmethod
    def _blank_path_is_none(cls, value: Any) -> Any:
        return None if value == "" else value

    @field_validator("log_level", mode="before")
    @classmethod
    def _lower(cls, value: Any) -> Any:
        return value.lower() if isinstance(value, str) else value

    @field_validator("max_n_samples", "rate_limit_per_minute", "rate_limit_burst", "torch_threads", mode="before")
    @classmethod
    def _empty_is_none(cls, value: Any) -> Any:
        # "GSHAP_RATE_LIMIT_PER_MINUTE=" or "=0" in a deployment file means "off", not a validation error
        return None if value in ("", 0, "0") else value

    @property
    def limits(self) -> LimitSettings:
        """The limits group."""
        return LimitSettings(
            max_batch_records=self.max_batch_records,
            max_body_bytes=self.max_body_bytes,
            max_n_samples=self.max_n_samples,
            max_header_bytes=self.max_header_bytes,
            max_authorization_bytes=self.max_authorization_bytes,
        )

    @property
    def engine(self) -> EngineSettings:
        """The engine group."""
        return EngineSettings(
            torch_threads=self.torch_threads,
            threads=self.engine_threads,
            processes=self.engine_processes,
            gil_switch_interval_ms=self.gil_switch_interval_ms,
            max_coalesce=self.max_coalesce,
            batch_window_ms=self.batch_window_ms,
            plot_threads=self.plot_threads,
        )

    @property
    def monitoring(self) -> MonitoringSettings:
        """The monitoring group."""
        return MonitoringSettings(
            metrics_enabled=self.metrics_enabled,
            metrics_require_key=self.metrics_require_key,
            metrics_dir=self.metrics_dir,
            window_seconds=self.monitoring_window_seconds,
            min_records=self.monitoring_min_records,
        )

    @property
    def cds_fhir(self) -> CdsFhirSettings:
        """The CDS Hooks and FHIR group."""
        return CdsFhirSettings(
            fhir_servers=tuple(self.cds_fhir_servers),
            fhir_timeout_seconds=self.cds_fhir_timeout_seconds,
            fhir_max_bytes=self.cds_fhir_max_bytes,
            base_url=self.cds_base_url,
            feedback_db=self.cds_feedback_db,
            fhir_max_entries=self.fhir_max_entries,
            fhir_max_body_bytes=self.fhir_max_body_bytes,
            fhir_max_pages=self.fhir_max_pages,
        )

    def feedback_db_path(self) -> Path:
        """The SQLite file of the CDS state: GSHAP_STATE_DB, GSHAP_CDS_FEEDBACK_DB, else the user's state directory."""
        if self.state_db is not None:
            return self.state_db
        if self.cds_feedback_db is not None:
            return self.cds_feedback_db
        state = os.environ.get("XDG_STATE_HOME") or str(Path.home() / ".local" / "state")
        return Path(state) / "gshap-service" / "cds-feedback.sqlite3"

    def admin_key_values(self) -> list[str]:
        """The admin keys in clear, for the one place that compares them."""
        return [k.get_secret_value() for k in self.admin_keys]

    def api_key_values(self) -> list[str]:
        """The accepted keys in clear, for the one place that compares them."""
        return [k.get_secret_value() for k in self.api_keys]

    def as_env(self) -> dict[str, str]:
        """The environment that rebuilds these settings in another process (``Settings()`` there)."""
        out: dict[str, str] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            key = f"{ENV_PREFIX}{name.upper()}"
            if value is None:
                out[key] = ""
            elif isinstance(value, SecretStr):
                out[key] = value.get_secret_value()
            elif isinstance(value, dict):
                out[key] = json.dumps(value)
            elif isinstance(value, list):
                out[key] = ",".join(v.get_secret_value() if isinstance(v, SecretStr) else str(v) for v in value)
            else:
                out[key] = str(value)
        return out

"""The benchmark's reference: a plain FastAPI app that validates the patient body with pydantic and echoes it.

    python scripts/echo_app.py [--host 127.0.0.1] [--port 8003] [--workers N]

``POST /echo`` takes the default bundle's patient record (the same pydantic model ``POST /predict`` validates,
built by :func:`service.schemas.patient_record_model` from the bundle's spec) as an ordinary FastAPI body
parameter and answers the validated record; ``GET /readyz`` answers ``{"status": "ready"}``. No middleware, no
error handlers, no lifespan work, no model: what FastAPI and uvicorn alone cost for this body. It runs under the
same uvicorn options as ``gshap serve`` (:func:`service.api.app.uvicorn_options`), so the issue's ratios
(``/explain`` ≥ 0.5 and ``/predict`` ≥ 0.8 of its requests per second; cold start ≤ 2.5× its own) compare
the service with the framework's own ceiling. It reads the bundle's spec from ``manifest.json`` and imports no
torch (a plain app would not), so its cold start is the framework's.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fastapi import FastAPI  # noqa: E402

from service.config import Settings  # noqa: E402
from service.model.features import FeatureSpec  # noqa: E402
from service.model.spec import spec_from_dict  # noqa: E402
from service.schemas import PatientRecord, patient_record_model  # noqa: E402

__all__ = ["ECHO_PATH", "create_echo_app", "default_feature_spec", "server_options"]

ECHO_PATH = "/echo"
STORE = ROOT / "model_store"


def _bundle_folder(store: Path) -> Path:
    """The store's default bundle folder: ``DEFAULT`` names ``name/version`` or a model whose own ``DEFAULT``
    names its version (both forms of the store are read)."""
    folder = store
    for _ in range(3):
        if (folder / "manifest.json").is_file():
            return folder
        folder = folder / (folder / "DEFAULT").read_text().strip()
    raise FileNotFoundError(f"no default bundle under {store}")


def default_feature_spec(store: Path = STORE) -> FeatureSpec:
    """The default bundle's features, read from its manifest (no weights, no torch)."""
    manifest = json.loads((_bundle_folder(store) / "manifest.json").read_text())
    return spec_from_dict(manifest["spec"]).features


def create_echo_app() -> FastAPI:
    """``POST /echo`` (the validated record back) and ``GET /readyz``, nothing else."""
    record_model: Any = patient_record_model(default_feature_spec())
    app = FastAPI(title="plain FastAPI echo (benchmark reference)")

    async def echo(record: PatientRecord) -> dict[str, Any]:
        return record.model_dump()

    echo.__annotations__["record"] = record_model  # the served model's fields, as FastAPI reads them
    app.post(ECHO_PATH)(echo)

    @app.get("/readyz")
    async def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app


def server_options(host: str, port: int, workers: int = 1) -> dict[str, Any]:
    """uvicorn's options of ``gshap serve`` at its default settings (:func:`service.api.app.uvicorn_options`,
    which imports the whole service: a test checks the two agree), header caps included."""
    from service.api.http_limits import http_protocol_options

    settings = Settings()
    return {
        "host": host,
        "port": port,
        "log_config": None,
        "access_log": False,
        "lifespan": "on",
        "timeout_graceful_shutdown": settings.graceful_shutdown_seconds,
        "server_header": False,
        **http_protocol_options(settings.max_header_bytes, workers),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8003)
    parser.add_argument("--workers", type=int, default=1)
    args = parser.parse_args(argv)
    import uvicorn

    options = server_options(args.host, args.port, args.workers)
    if args.workers == 1:
        uvicorn.run(create_echo_app(), **options)
    else:
        here = str(Path(__file__).resolve().parent)
        os.environ["PYTHONPATH"] = os.pathsep.join([here, str(ROOT), os.environ.get("PYTHONPATH", "")])
        uvicorn.run("echo_app:create_echo_app", factory=True, workers=args.workers, app_dir=here, **options)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

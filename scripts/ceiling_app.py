"""The ceiling of the benchmark: the real service's app with one extra route that does no model work.

    python scripts/ceiling_app.py [--host 127.0.0.1] [--port 8002] [--workers N]

``create_ceiling_app`` is :func:`service.api.app.create_app` (same settings, lifespan, middlewares, error
handlers and routers) plus ``POST /ceiling``: it validates the same patient body as ``POST /predict``
(``service.schemas.PatientRecord``, strict, behind the same ``require_json`` dependency) and answers a small
JSON document without touching the model; ``POST /ceiling/def`` is the same as a ``def`` route (run on
FastAPI's threadpool), for reference. ``/ceiling``'s throughput is what the app stack alone costs per request, the
upper bound of ``/predict`` and ``/explain``. It is served by uvicorn with the options ``gshap serve`` uses.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from fastapi import APIRouter, Depends, FastAPI  # noqa: E402

from service.api.app import create_app, uvicorn_options  # noqa: E402
from service.api.routes import body_as, require_json  # noqa: E402
from service.config import Settings  # noqa: E402
from service.model.store import Bundle  # noqa: E402
from service.schemas import PatientRecord  # noqa: E402

__all__ = ["CEILING_DEF_PATH", "CEILING_PATH", "create_ceiling_app"]

CEILING_PATH = "/ceiling"
CEILING_DEF_PATH = "/ceiling/def"


def ceiling_router(record_model: type[PatientRecord]) -> APIRouter:
    """The two ceiling routes, whose body is the served model's record (``record_model``, strict, as the app's)."""
    router = APIRouter(dependencies=[Depends(require_json)], include_in_schema=False)

    @router.post(CEILING_PATH)
    @body_as(record=record_model)
    async def ceiling(record: PatientRecord) -> dict[str, Any]:
        """The validated record's feature count: proof that the body was parsed and checked, and nothing else."""
        return {"ok": True, "features": len(record.model_dump())}

    @router.post(CEILING_DEF_PATH)
    @body_as(record=record_model)
    def ceiling_def(record: PatientRecord) -> dict[str, Any]:
        """The same as a ``def`` route, which FastAPI runs on its threadpool: what a naive app's stack costs."""
        return {"ok": True, "features": len(record.model_dump())}

    return router


def create_ceiling_app(settings: Settings | None = None, bundle: Bundle | None = None) -> FastAPI:
    """The service's app (``settings`` default to the environment; ``bundle`` skips loading) plus the ceiling."""
    app = create_app(settings, bundle)
    models = app.state.gshap.models
    app.include_router(ceiling_router(models.record))
    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8002)
    parser.add_argument("--workers", type=int, default=None)
    args = parser.parse_args(argv)
    overrides: dict[str, Any] = {"host": args.host, "port": args.port}
    if args.workers is not None:
        overrides["workers"] = args.workers
    settings = Settings(**overrides)
    import uvicorn

    options = uvicorn_options(settings)
    if settings.workers == 1:
        uvicorn.run(create_ceiling_app(settings), **options)
    else:
        # each worker process builds its app from the environment, as gshap serve's workers do
        os.environ.update(settings.as_env())
        here = str(Path(__file__).resolve().parent)
        os.environ["PYTHONPATH"] = os.pathsep.join([here, str(ROOT), os.environ.get("PYTHONPATH", "")])
        uvicorn.run("ceiling_app:create_ceiling_app", factory=True, workers=settings.workers, app_dir=here, **options)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

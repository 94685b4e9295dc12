"""The naive peer of the benchmark: the obvious way to serve GradientSHAP explanations with FastAPI.

    python scripts/naive_peer.py [--host 127.0.0.1] [--port 8001]

A synchronous ``def`` endpoint (FastAPI runs it on its threadpool) that calls Captum's ``GradientShap`` for
every request with 200 samples, against the default bundle's baselines, on the same request schema as the
service's ``POST /explain`` (``service.schemas.PatientRecord``). Nothing is tuned: default torch threads, one
uvicorn worker, Starlette's JSON. It is what ``scripts/bench.py`` compares the real service with; it is not
part of the service.

The model is put in eval mode (Captum never does, and with BatchNorm in train mode a record's attributions
would depend on the other rows of its batch): the peer is naive about speed, not wrong.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import torch  # noqa: E402
from captum.attr import GradientShap  # noqa: E402
from fastapi import FastAPI  # noqa: E402

from service.api.routes import body_as  # noqa: E402
from service.model.store import Bundle, load_bundle  # noqa: E402
from service.schemas import PatientRecord, patient_record_model  # noqa: E402

__all__ = ["N_SAMPLES", "create_peer_app"]

N_SAMPLES = 200


def create_peer_app(bundle: Bundle | None = None) -> FastAPI:
    """The naive app: ``POST /explain`` (one record → Captum GradientShap, 200 samples) and ``GET /readyz``."""
    bundle = bundle or load_bundle()
    model = bundle.model.eval()
    baselines = bundle.baselines.float()
    names = list(bundle.spec.names)
    explainer = GradientShap(model)
    app = FastAPI(title="naive GradientSHAP peer")

    @app.post("/explain")
    @body_as(record=patient_record_model(bundle.spec))
    def explain(record: PatientRecord) -> dict[str, Any]:
        x = bundle.to_model_space([record.model_dump()])
        attributions = explainer.attribute(x, baselines=baselines, n_samples=N_SAMPLES)
        with torch.no_grad():
            logit = float(model(x)[0, 0])
        return {
            "probability": float(torch.sigmoid(torch.tensor(logit))),
            "logit": logit,
            "attributions": dict(zip(names, attributions[0].tolist(), strict=True)),
        }

    @app.get("/readyz")
    def readyz() -> dict[str, str]:
        return {"status": "ready"}

    return app


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8001)
    args = parser.parse_args(argv)
    import uvicorn

    uvicorn.run(create_peer_app(), host=args.host, port=args.port, log_level="warning", access_log=False)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

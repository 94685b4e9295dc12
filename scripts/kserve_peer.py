"""The benchmark's KServe peer: KServe's ``ModelServer`` serving the default bundle, Captum in its explain handler.

    .venv-kserve/bin/python scripts/kserve_peer.py --http_port 8004

A ``kserve.Model`` whose ``predict`` answers the calibrated probability and whose ``explain`` calls Captum's
``GradientShap`` with 200 samples against the bundle's baselines (as ``scripts/naive_peer.py`` does), served by
``kserve.ModelServer`` (uvicorn, one worker, no gRPC) on the V1 protocol::

    POST /v1/models/pima-diabetes:predict   {"instances": [{"pregnancies": 2, "glucose": 120, ...}]}
    POST /v1/models/pima-diabetes:explain   {"instances": [{...}]}

Each instance is a patient record in raw units, as ``POST /explain`` takes it; it is read into model space by the
bundle's preprocessing (missing values imputed as the service does). The handlers are ordinary ``def`` methods,
as KServe's examples write them. This is how a team would put the model behind KServe; it is not part of the
service.

It runs from its own virtual environment, ``.venv-kserve/`` (``kserve`` pins older psutil and protobuf than the
project; ``tests/kserve-requirements.txt``): ``scripts/bench.py`` creates it on first use. torch, Captum and the
bundle's readers come from the project's environment, appended to ``sys.path`` after the kserve environment's own
packages (``KSERVE_PEER_FALLBACK_SITE``), so kserve keeps its pinned versions.
"""

from __future__ import annotations

import os
import site
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))
if fallback := os.environ.get("KSERVE_PEER_FALLBACK_SITE"):
    site.addsitedir(fallback)  # appended: the kserve environment's packages come first

N_SAMPLES = 200


def build_model(name: str | None = None) -> Any:
    """The loaded ``kserve.Model`` for the default bundle (named after it unless ``name`` is given)."""
    import torch
    from captum.attr import GradientShap
    from kserve import Model

    from service.model.store import load_bundle

    bundle = load_bundle()

    class GshapCaptumModel(Model):  # type: ignore[misc]
        """Predict and explain one bundle; explanations by Captum's GradientShap, 200 samples per record."""

        def __init__(self, model_name: str) -> None:
            super().__init__(model_name)
            self.load()

        def load(self) -> bool:
            self.model = bundle.model.eval()
            self.baselines = bundle.baselines.float()
            self.names = list(bundle.spec.names)
            self.explainer = GradientShap(self.model)
            self.ready = True
            return self.ready

        def predict(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
            x = bundle.to_model_space(payload["instances"])
            with torch.no_grad():
                probabilities = torch.sigmoid(self.model(x)[:, 0])
            return {"predictions": probabilities.tolist()}

        def explain(self, payload: dict[str, Any], headers: dict[str, str] | None = None) -> dict[str, Any]:
            x = bundle.to_model_space(payload["instances"])
            attributions = self.explainer.attribute(x, baselines=self.baselines, n_samples=N_SAMPLES)
            with torch.no_grad():
                logits = self.model(x)[:, 0]
            return {
                "explanations": [
                    {
                        "probability": float(torch.sigmoid(logit)),
                        "logit": float(logit),
                        "attributions": dict(zip(self.names, row.tolist(), strict=True)),
                    }
                    for logit, row in zip(logits, attributions, strict=True)
                ]
            }

    return GshapCaptumModel(name or bundle.name)


def main() -> int:
    from kserve import ModelServer

    torch_threads = os.environ.get("KSERVE_PEER_TORCH_THREADS")
    if torch_threads:
        import torch

        torch.set_num_threads(int(torch_threads))
    # ModelServer reads its options (--http_port, --workers, ...) from the command line, as KServe's images run it
    ModelServer(enable_grpc=False).start([build_model()])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

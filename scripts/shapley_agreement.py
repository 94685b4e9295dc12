"""Report how GradientSHAP (exact, default) agrees with exact interventional Shapley values on the evaluation set.

    python scripts/shapley_agreement.py

Both attribute f(x) − E_b f(b) over the bundle's baseline distribution; they are different attributions
(path gradients vs coalitions of features), so this reports their agreement rather than forcing equality.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from service.engine.gradient_shap import GradientShapEngine
from service.engine.shapley import agreement, interventional_shapley
from service.model.store import load_bundle


def main() -> int:
    bundle = load_bundle()
    x = bundle.eval_x
    gshap = GradientShapEngine(bundle.model, bundle.baselines, bundle.baseline_weights).explain(x)

    def logit(z: np.ndarray) -> np.ndarray:
        with torch.inference_mode():
            out: np.ndarray = bundle.model(torch.as_tensor(z, dtype=torch.float32)).squeeze(1).double().numpy()
        return out

    shap = interventional_shapley(logit, x.double().numpy(), bundle.baselines.numpy(), bundle.baseline_weights.numpy())
    print(f"GradientSHAP (exact) vs exact interventional Shapley (2^{x.shape[1]} coalitions), {len(x)} records:")
    for key, value in agreement(gshap.attributions, shap).items():
        print(f"  {key:<22} {value:.4g}" if isinstance(value, float) else f"  {key:<22} {value}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

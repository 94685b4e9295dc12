"""In-process: the engine's explanations per second against Captum's GradientShap at the same sample count."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from benchkit.rounds import interleaved

__all__ = ["engine_inprocess"]


def engine_inprocess(repeats: int, n_samples: int = 200) -> dict[str, Any]:
    """Explanations per second on the evaluation set: the engine vs Captum's GradientShap, same sample count,
    one torch thread (as the service runs)."""
    import torch
    from captum.attr import GradientShap

    from service.engine.gradient_shap import GradientShapEngine
    from service.model.store import load_bundle
    from service.training.captum_reference import captum_baselines

    torch.set_num_threads(1)  # as the service runs its engine (GSHAP_TORCH_THREADS default)
    bundle = load_bundle()
    x = bundle.eval_x
    model = bundle.model.eval()
    engine = GradientShapEngine(model, bundle.baselines, bundle.baseline_weights)
    base = captum_baselines(engine)
    gs = GradientShap(model)

    def captum_batch() -> None:
        torch.manual_seed(0)
        gs.attribute(x, baselines=base, n_samples=n_samples)

    def captum_per_record() -> None:
        torch.manual_seed(0)
        for row in x:
            gs.attribute(row[None, :], baselines=base, n_samples=n_samples)

    cases: dict[str, Callable[[], object]] = {
        "engine_exact": lambda: engine.explain(x),
        f"engine_sampled_{n_samples}": lambda: engine.explain(x, method="sampled", n_samples=n_samples),
        f"captum_{n_samples}_batch": captum_batch,
        f"captum_{n_samples}_per_record": captum_per_record,
    }
    out: dict[str, Any] = {"records": len(x), "n_samples": n_samples, "torch_threads": torch.get_num_threads()}
    for name, med in interleaved(cases, repeats).items():  # so that machine noise hits every case alike
        out[name] = {"seconds": med, "explanations_per_s": len(x) / med}
    eng = out[f"engine_sampled_{n_samples}"]["explanations_per_s"]
    out["speedup_sampled_vs_captum_batch"] = eng / out[f"captum_{n_samples}_batch"]["explanations_per_s"]
    out["speedup_sampled_vs_captum_per_record"] = eng / out[f"captum_{n_samples}_per_record"]["explanations_per_s"]
    out["speedup_exact_vs_captum_per_record"] = (
        out["engine_exact"]["explanations_per_s"] / out[f"captum_{n_samples}_per_record"]["explanations_per_s"]
    )
    return out

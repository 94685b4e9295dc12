"""Benchmark the GradientSHAP engine in-process and print the goals, measured side by side in one run.

    python scripts/bench_engine.py [--repeats 5] [--large 20000] [--json bench.json] [--quick]

What is measured (all times are wall-clock medians over ``--repeats`` interleaved repetitions):

1. latency: one record explained by the engine at default settings (``exact``, logit), median over records;
2. the whole evaluation set: ``exact`` vs Captum's ``GradientShap`` with ``n_samples = K`` (one draw per baseline);
   our ``sampled`` vs Captum at the same ``n_samples`` (200); Captum's time extrapolated to the number of samples
   its completeness gap would need to reach ours (gap ∝ 1/√n, time ∝ n, both fitted in this run);
3. completeness gap |f(x) − base − Σφ| percentiles for exact, sampled@200 and Captum@200;
4. the exact estimator's C kernel vs its previous implementation (dense prefix sums in torch, float64), and 1 vs
   2 torch threads;
5. memory for ``--large`` records: peak RSS above the pre-run level (VmHWM reset) and tracemalloc's peak;
6. the baseline summarisation error: attributions with k weighted k-means centres vs with all training rows.

Data: the default model bundle (``service.model.store.load_bundle``) when it loads, otherwise a seeded random
model with synthetic data (said so in the output).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
import tracemalloc
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))  # the earlier exact kernel, a reference

from reference_kernels import path_integrals_fast

from service.engine.baselines import summarize_baselines
from service.engine.gradient_shap import (
    GradientShapEngine,
    fold_piecewise_linear,
    path_integrals_by_pieces,
)
from service.training.captum_reference import captum_baselines


def load_data(seed: int) -> dict[str, Any]:
    """The default bundle's model, baselines, evaluation and training rows, or a synthetic stand-in."""
    try:
        from service.model.store import load_bundle

        bundle = load_bundle()
        train_x = getattr(bundle, "train_x", None)
        if train_x is None:
            from service.training.data import load_dataset

            rows = np.asarray(bundle.manifest["data"]["split_rows"]["train"])
            train_x = bundle.to_model_space(load_dataset(spec=bundle.spec).x[rows])
        return {
            "source": f"bundle {bundle.name} {bundle.version} ({bundle.path})",
            "model": bundle.model,
            "baselines": bundle.baselines,
            "weights": bundle.baseline_weights,
            "eval_x": bundle.eval_x,
            "train_x": torch.as_tensor(train_x, dtype=torch.float64),
            "baseline_seed": int(bundle.manifest.get("training", {}).get("seed", 0)),
        }
    except Exception as exc:  # any failure: fall back, and say why
        from service.model.nn import BinaryClassification

        print(f"!! default bundle unavailable ({type(exc).__name__}: {exc}); using a SYNTHETIC random model")
        torch.manual_seed(seed)
        model = BinaryClassification(8).eval()
        gen = torch.Generator().manual_seed(seed)
        train_x = torch.randn(460, 8, generator=gen, dtype=torch.float64)
        centres, weights = summarize_baselines(train_x.numpy(), 64, seed)
        return {
            "source": "SYNTHETIC: seeded random-weight BinaryClassification(8), Gaussian data",
            "model": model,
            "baselines": torch.as_tensor(centres),
            "weights": torch.as_tensor(weights),
            "eval_x": torch.randn(154, 8, generator=gen),
            "train_x": train_x,
            "baseline_seed": seed,
        }


def timed(fn: Callable[[], Any]) -> tuple[float, Any]:
    t0 = time.perf_counter()
    out = fn()
    return time.perf_counter() - t0, out


def interleaved(named: dict[str, Callable[[], Any]], repeats: int, desc: str) -> dict[str, float]:
    """Median seconds of each callable, run in turn ``repeats`` times after one warm-up each."""
    for fn in named.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in named}
    for _ in tqdm(range(repeats), desc=desc, leave=False):
        for k, fn in named.items():
            times[k].append(timed(fn)[0])
    return {k: statistics.median(v) for k, v in times.items()}


def captum_call(model: torch.nn.Module, x: torch.Tensor, base: torch.Tensor, n: int, seed: int = 0) -> np.ndarray:
    """Captum's GradientShap as a user calls it: the whole batch at once, global RNGs seeded."""
    from captum.attr import GradientShap

    torch.manual_seed(seed)
    np.random.seed(seed)
    out: np.ndarray = GradientShap(model).attribute(x, base, n_samples=n).detach().double().numpy()
    return out


def gap_stats(gap: np.ndarray) -> dict[str, float]:
    g = np.abs(gap)
    return {"p50": float(np.percentile(g, 50)), "p95": float(np.percentile(g, 95)), "max": float(g.max())}


def rss_kib(field: str) -> int:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    return -1


def memory_run(engine: GradientShapEngine, n: int, seed: int) -> dict[str, float]:
    """Peak resident memory above the level before explaining ``n`` synthetic records, and tracemalloc's peak."""
    x = torch.randn(n, engine.n_features, generator=torch.Generator().manual_seed(seed))
    try:  # reset the kernel's high-water mark so VmHWM measures this run only
        Path("/proc/self/clear_refs").write_text("5")
        reset = True
    except OSError:
        reset = False
    before = rss_kib("VmRSS")
    tracemalloc.start()
    seconds, ex = timed(lambda: engine.explain(x))
    _, py_peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    peak = rss_kib("VmHWM")
    return {
        "records": n,
        "seconds": seconds,
        "rss_peak_above_start_mib": (peak - before) / 1024 if reset else float("nan"),
        "tracemalloc_peak_mib": py_peak / 2**20,
        "result_arrays_mib": (ex.attributions.nbytes * 2 + ex.output_value.nbytes * 2) / 2**20,
    }


def k_sweep(data: dict[str, Any], ks: list[int], eval_x: torch.Tensor, repeats: int) -> list[dict[str, float]]:
    """For each k: exact attributions with k summary baselines vs with every training row (uniform), errors
    relative to mean |φ|, and the exact estimator's time per record with k baselines."""
    train = data["train_x"].numpy()
    full = GradientShapEngine(data["model"], train).explain(eval_x).attributions
    scale = float(np.abs(full).mean())
    out = []
    for k in tqdm(ks, desc="k sweep", leave=False):
        c, w = summarize_baselines(train, k=k, seed=data["baseline_seed"])
        eng = GradientShapEngine(data["model"], c, w)
        a = eng.explain(eval_x).attributions
        err = np.abs(a - full) / scale
        per_record = np.abs(a - full).sum(1) / np.abs(full).sum(1)
        sec = interleaved({"set": partial(eng.explain, eval_x)}, repeats, f"k={k}")["set"]
        out.append(
            {
                "k": len(w),
                "median_abs_err_rel": float(np.median(err)),
                "p95_abs_err_rel": float(np.percentile(err, 95)),
                "max_abs_err_rel": float(err.max()),
                "record_l1_rel_median": float(np.median(per_record)),
                "record_l1_rel_p95": float(np.percentile(per_record, 95)),
                "exact_ms_per_record": 1e3 * sec / len(eval_x),
            }
        )
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--repeats", type=int, default=5, help="interleaved repetitions per timing (median reported)")
    p.add_argument("--latency-records", type=int, default=100, help="single-record calls for the latency median")
    p.add_argument("--large", type=int, default=20000, help="records in the memory run (0 = skip)")
    p.add_argument("--ks", type=str, default="16,32,64,128", help="baseline counts k for the k sweep")
    p.add_argument("--threads", type=str, default="1,2", help="torch thread counts to time (comma-separated)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--quick", action="store_true", help="fewer repeats and records (smoke test)")
    p.add_argument("--json", type=Path, default=None, help="also write the results here")
    args = p.parse_args(argv)
    if args.quick:
        args.repeats, args.latency_records, args.large, args.ks = 2, 20, 2000, "16,64"

    data = load_data(args.seed)
    model, x = data["model"], data["eval_x"]
    engine = GradientShapEngine(model, data["baselines"], data["weights"])
    k = len(engine.baseline_weights)
    captum_base = captum_baselines(engine)
    n_mc = 200
    thread_counts = [int(v) for v in args.threads.split(",")]
    res: dict[str, Any] = {
        "data": data["source"],
        "records": int(x.shape[0]),
        "baselines": k,
        "cpu_count": os.cpu_count(),
        "torch": torch.__version__,
        "by_threads": {},
    }
    print(f"data: {res['data']}\nevaluation records: {res['records']}, baselines K = {k}")

    # completeness gaps (independent of timing)
    ex = engine.explain(x)
    sm = engine.explain(x, method="sampled", n_samples=n_mc)
    fx, base = ex.output_value, ex.base_value
    cap = {n: captum_call(model, x, captum_base, n) for n in (k, n_mc, 2000)}
    gaps = {
        "exact": gap_stats(ex.completeness_gap),
        f"sampled@{n_mc}": gap_stats(sm.completeness_gap),
        **{f"captum@{n}": gap_stats(fx - base - a.sum(1)) for n, a in cap.items()},
    }
    res["completeness_gap"] = gaps
    res["exact_vs_captum2000_mean_abs_diff"] = float(np.abs(cap[2000] - ex.attributions).mean())
    net = engine._require_net()
    pieces = [path_integrals_by_pieces(net, r, engine._b)[1].double().mean() for r in x[:20].double()]
    res["pieces_per_path_mean"] = float(torch.stack(pieces).mean())
    # Captum's gap ∝ n^-1/2: the samples it would need to bring its p95 gap down to max(ours, 0.01)
    target = max(gaps["exact"]["p95"], 0.01)
    n_need = n_mc * (gaps[f"captum@{n_mc}"]["p95"] / target) ** 2
    res["captum_samples_for_p95_gap_0.01"] = n_need

    initial_threads = torch.get_num_threads()
    rows = [x[i : i + 1] for i in range(min(args.latency_records, x.shape[0]))]
    for n_threads in thread_counts:
        torch.set_num_threads(n_threads)
        for r in rows[:5]:
            engine.explain(r)
        lat = [timed(partial(engine.explain, r))[0] for r in tqdm(rows, desc="latency", leave=False)]
        t = interleaved(
            {
                "exact": lambda: engine.explain(x),
                f"captum@{k}": lambda: captum_call(model, x, captum_base, k),
                f"sampled@{n_mc}": lambda: engine.explain(x, method="sampled", n_samples=n_mc),
                f"captum@{n_mc}": lambda: captum_call(model, x, captum_base, n_mc),
                "captum@2000": lambda: captum_call(model, x, captum_base, 2000),
            },
            args.repeats,
            f"evaluation set, {n_threads} thread(s)",
        )
        sec_per_sample = (t["captum@2000"] - t[f"captum@{n_mc}"]) / (2000 - n_mc)
        res["by_threads"][str(n_threads)] = {
            "latency_ms": {"median": 1e3 * statistics.median(lat), "p95": 1e3 * float(np.percentile(lat, 95))},
            "evaluation_set_seconds": t,
            "ratios": {
                f"captum@{k} / exact": t[f"captum@{k}"] / t["exact"],
                f"captum@{n_mc} / sampled@{n_mc}": t[f"captum@{n_mc}"] / t[f"sampled@{n_mc}"],
                "captum at p95 gap 0.01 / exact (extrapolated)": n_need * sec_per_sample / t["exact"],
            },
        }
    torch.set_num_threads(thread_counts[0])

    # the C kernel vs the previous exact kernel (torch prefix sums), same records, same run
    net = fold_piecewise_linear(model)
    b64 = torch.as_tensor(np.asarray(data["baselines"]), dtype=torch.float64)
    w64 = torch.as_tensor(np.asarray(data["weights"]), dtype=torch.float64)
    w64 = w64 / w64.sum()
    x64 = torch.as_tensor(np.asarray(x), dtype=torch.float64)

    def torch_prefix_sums() -> np.ndarray:
        integrals = path_integrals_fast(net, x64, b64)  # (N, K, F)
        return ((x64[:, None, :] - b64[None]) * integrals * w64[None, :, None]).sum(1).numpy()

    tk = interleaved({"c": lambda: engine.explain(x), "torch": torch_prefix_sums}, args.repeats, "exact kernels")
    res["kernels"] = {
        "threads": thread_counts[0],
        "records": len(x64),
        "c_seconds": tk["c"],
        "torch_prefix_sums_seconds": tk["torch"],
        "max_abs_diff": float(np.abs(torch_prefix_sums() - ex.attributions).max()),
    }
    if args.large:
        res["memory"] = memory_run(engine, args.large, args.seed)
    res["k_sweep"] = k_sweep(data, [int(v) for v in args.ks.split(",")], x, args.repeats)
    torch.set_num_threads(initial_threads)

    report(res, k, n_mc)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=float) + "\n")
        print(f"\nwritten: {args.json}")
    return 0


def report(res: dict[str, Any], k: int, n_mc: int) -> None:
    g = res["completeness_gap"]
    n = res["records"]
    print("\n== completeness gap |f(x) − base − Σφ| over the evaluation set ==")
    print(f"{'estimator':<14}{'p50':>11}{'p95':>11}{'max':>11}")
    for name, gs in g.items():
        print(f"{name:<14}" + "".join(f"{gs[q]:>11.2e}" for q in ("p50", "p95", "max")))
    ok = "met" if g["exact"]["p95"] <= 0.01 else "NOT met"
    print(f"goal p95 <= 0.01 for the default (exact): {ok}")
    print(f"Captum samples needed for p95 gap 0.01 (gap ~ 1/sqrt(n)): {res['captum_samples_for_p95_gap_0.01']:.3g}")
    print(f"mean |exact − captum@2000| per attribution: {res['exact_vs_captum2000_mean_abs_diff']:.3g}")
    print(f"linear pieces per path (mean over 20 records × K paths): {res['pieces_per_path_mean']:.1f}")
    for th, r in res["by_threads"].items():
        lat = r["latency_ms"]
        ok = "met" if lat["median"] <= 1 else "NOT met"
        print(f"\n== torch threads = {th} ==")
        print(
            f"one record, exact (default), K={k}: median {lat['median']:.3f} ms, "
            f"p95 {lat['p95']:.3f} ms (goal <= 1 ms: {ok})"
        )
        print(f"whole evaluation set ({n} records), medians of interleaved repeats:")
        for name, sec in r["evaluation_set_seconds"].items():
            print(f"  {name:<14}{sec:>10.4f} s")
        for name, val in r["ratios"].items():
            print(f"  {name:<46}{val:>9.2f}x")
    d = res["kernels"]
    print(
        f"\nexact kernels, {d['threads']} thread(s), {d['records']} records: C {d['c_seconds']:.4f} s "
        f"({1e6 * d['c_seconds'] / d['records']:.0f} us/record), torch prefix sums "
        f"{d['torch_prefix_sums_seconds']:.4f} s: x{d['torch_prefix_sums_seconds'] / d['c_seconds']:.2f}; "
        f"max |Δφ| {d['max_abs_diff']:.1e}"
    )
    if "memory" in res:
        m = res["memory"]
        print(
            f"\nmemory, {m['records']} records in one exact call ({m['seconds']:.1f} s): "
            f"peak RSS +{m['rss_peak_above_start_mib']:.1f} MiB above start, "
            f"tracemalloc peak {m['tracemalloc_peak_mib']:.1f} MiB, result arrays {m['result_arrays_mib']:.1f} MiB"
        )
    print("\nbaselines k: summarisation error vs all training rows (|Δφ| / mean|φ|; per-record L1) and exact time:")
    print(f"{'k':>5}{'median':>9}{'p95':>9}{'max':>9}{'rec L1 med':>12}{'rec L1 p95':>12}{'ms/record':>11}")
    for e in res["k_sweep"]:
        print(
            f"{e['k']:>5}{e['median_abs_err_rel']:>9.3f}{e['p95_abs_err_rel']:>9.3f}{e['max_abs_err_rel']:>9.3f}"
            f"{e['record_l1_rel_median']:>12.3f}{e['record_l1_rel_p95']:>12.3f}{e['exact_ms_per_record']:>11.3f}"
        )


if __name__ == "__main__":
    raise SystemExit(main())

"""Benchmark the GradientSHAP engine in-process and print the goals, measured side by side in one run.

    python scripts/bench_engine.py [--repeats 5] [--large 20000] [--json bench.json] [--quick]
    python scripts/bench_engine.py --exact-kernels --json docs/bench/exact_kernels.json   # the kernels only

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

``--exact-kernels`` measures the compiled exact kernel alone: the general kernel (any depth) against the earlier
two-hidden-layer kernel on the default bundle, in alternating rounds (ratios of thread CPU time and of wall time,
and a check that their answers are the same bits); records per second for 1 to 6 hidden layers of widths 16 to 256
(the seed MLP's pattern, random weights, F = 8, the bundle's K baselines); for each, the Gauss–Legendre nodes the
quadrature estimator needs to reach 1e-3 and 1e-6 relative error (fitted from 16 and 64 nodes) and its speed
there; the figure ``docs/figures/exact_kernel_depth.{png,svg}``.

Data: the default model bundle (``service.model.store.load_bundle``) when it loads, otherwise a seeded random
model with synthetic data (said so in the output).
"""

from __future__ import annotations

import argparse
import json
import math
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
sys.path.insert(0, str(Path(__file__).resolve().parent))  # benchkit

from benchkit.common import loadavg
from benchkit.procs import status_kib
from benchkit.rounds import interleaved as interleaved_medians
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
    """Median seconds of each callable, run in turn ``repeats`` times after one warm-up each (a progress bar)."""
    return interleaved_medians(named, repeats, progress=partial(tqdm, desc=desc, leave=False))


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
    """A memory field of this process's ``/proc/self/status`` (``VmRSS``, ``VmHWM``), KiB."""
    return status_kib(os.getpid(), field)


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
    p.add_argument(
        "--exact-kernels",
        action="store_true",
        help="only the exact kernels: the general kernel vs the two-layer one on the default bundle (alternating "
        "rounds), records/s by depth 1-6 and width 16-256, quadrature's cost at the same accuracy, and the figure",
    )
    p.add_argument("--rounds", type=int, default=41, help="alternating rounds of the kernel comparison")
    p.add_argument(
        "--figure",
        type=Path,
        default=Path(__file__).resolve().parent.parent / "docs" / "figures" / "exact_kernel_depth",
        help="where --exact-kernels writes its figure (.png and .svg)",
    )
    args = p.parse_args(argv)
    if args.exact_kernels:
        return exact_kernels_main(args)
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


# ---------------------------------------------------------------------------------------------------------------
# The exact kernels: the general C kernel (any depth) against the two-layer one, and its cost by depth and width
# ---------------------------------------------------------------------------------------------------------------

SWEEP_DEPTHS = (1, 2, 3, 4, 5, 6)
SWEEP_WIDTHS = (16, 32, 64, 128, 256)
QUAD_TARGETS = (1e-3, 1e-6)  # max |Δφ| / max |φ| per record


def sweep_network(depth: int, width: int, n_features: int, seed: int) -> torch.nn.Sequential:
    """The seed MLP's pattern at another depth and width: (Linear, ReLU, BatchNorm1d) per hidden layer, random
    weights (torch's default initialisation) and random batch-norm statistics, then Linear(width, 1)."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    mods: list[torch.nn.Module] = []
    w = n_features
    for _ in range(depth):
        bn = torch.nn.BatchNorm1d(width)
        assert bn.running_mean is not None
        assert bn.running_var is not None
        bn.running_mean.copy_(torch.randn(width, generator=gen) * 0.3)
        bn.running_var.copy_(torch.rand(width, generator=gen) + 0.5)
        mods += [torch.nn.Linear(w, width), torch.nn.ReLU(), bn]
        w = width
    mods.append(torch.nn.Linear(w, 1))
    return torch.nn.Sequential(*mods).eval()


def cpu_rate(fn: Callable[[np.ndarray], Any], x: np.ndarray, min_seconds: float) -> tuple[float, int]:
    """Records per second of thread CPU time (the kernel runs in the calling thread), on as many records of ``x``
    as take ``min_seconds`` (doubling from 1), after one warm-up record."""
    fn(x[:1])
    n = 1
    while True:
        t0 = time.thread_time()
        fn(x[:n])
        sec = time.thread_time() - t0
        if sec >= min_seconds or n >= len(x):
            return n / max(sec, 1e-9), n
        n = min(len(x), 2 * n)


def pima_kernels(data: dict[str, Any], rounds: int) -> dict[str, Any]:
    """The general kernel (``_exact.Net``) and the two-layer one (``_exact.Model``) on the bundle's evaluation set,
    in alternating rounds (the order flips every round): per-round ratios of thread CPU time and of wall time."""
    from reference_kernels import TwoLayerKernel

    engine = GradientShapEngine(data["model"], data["baselines"], data["weights"])
    kernel = engine.compiled
    assert kernel is not None
    net = fold_piecewise_linear(data["model"])
    if net.depth != 2:
        return {"skipped": f"the default bundle has {net.depth} hidden layers, the two-layer kernel needs 2"}
    old = TwoLayerKernel(
        tuple(t.numpy() for t in net.weights),
        tuple(t.numpy() for t in net.biases),
        engine.baselines,
        engine.baseline_weights,
    )
    x = np.ascontiguousarray(np.asarray(data["eval_x"], dtype=np.float64))
    same = all(np.array_equal(a, b) for a, b in zip(kernel.explain(x), old.explain(x), strict=True))
    runs = {"general": kernel.explain, "two-layer": old.explain}
    cpu: dict[str, list[float]] = {k: [] for k in runs}
    wall: dict[str, list[float]] = {k: [] for k in runs}
    for fn in runs.values():
        fn(x)
    for r in tqdm(range(rounds), desc="Pima: general vs two-layer kernel", leave=False):
        for name in list(runs) if r % 2 == 0 else list(runs)[::-1]:
            t0, w0 = time.thread_time(), time.perf_counter()
            runs[name](x)
            cpu[name].append(time.thread_time() - t0)
            wall[name].append(time.perf_counter() - w0)
    ratio_cpu = [g / t for g, t in zip(cpu["general"], cpu["two-layer"], strict=True)]
    ratio_wall = [g / t for g, t in zip(wall["general"], wall["two-layer"], strict=True)]
    q = statistics.quantiles
    return {
        "records": len(x),
        "baselines": len(engine.baseline_weights),
        "rounds": rounds,
        "bit_identical": same,
        "us_per_record_cpu": {k: 1e6 * statistics.median(v) / len(x) for k, v in cpu.items()},
        "ratio_cpu_median": statistics.median(ratio_cpu),
        "ratio_cpu_quartiles": [q(ratio_cpu, n=4)[0], q(ratio_cpu, n=4)[2]],
        "ratio_wall_median": statistics.median(ratio_wall),
        "ratio_wall_quartiles": [q(ratio_wall, n=4)[0], q(ratio_wall, n=4)[2]],
    }


def quadrature_need(engine: GradientShapEngine, x: np.ndarray, exact: np.ndarray) -> dict[str, Any]:
    """Gauss–Legendre quadrature against the exact attributions: the error at 16, 64 and 256 nodes (max |Δφ| /
    max |φ|, worst record), the order p fitted between 64 and 256 nodes (error ∝ n^-p, p clamped to [0.5, 4]: the
    integrand is piecewise constant, so p is near 1 to 2), the nodes each target accuracy needs (interpolated
    between measured points when one reaches it, extrapolated with p otherwise) and the quadrature's records per
    second there (its time is linear in the nodes: measured at 16)."""
    scale = np.abs(exact).max(1, keepdims=True)
    nodes = (16, 64, 256)
    err = {}
    for n in nodes:
        got = engine.explain(x, method="quadrature", n_samples=n).attributions
        err[n] = max(float((np.abs(got - exact) / scale).max()), 1e-300)
    p = math.log(err[64] / err[256]) / math.log(4)
    p = min(max(p if math.isfinite(p) else 1.0, 0.5), 4.0)
    rate16, _ = cpu_rate(lambda z: engine.explain(z, method="quadrature", n_samples=16), x, 0.2)
    need = {}
    for target in QUAD_TARGETS:
        reached = [n for n in nodes if err[n] <= target]
        if reached and reached[0] > nodes[0]:
            lo = nodes[nodes.index(reached[0]) - 1]
            hi = reached[0]
            q = math.log(err[lo] / err[hi]) / math.log(hi / lo)
            n_need = lo * (err[lo] / target) ** (1 / q)
        elif reached:
            n_need = float(nodes[0]) * (err[nodes[0]] / target) ** (1 / p)
        else:
            n_need = 256 * (err[256] / target) ** (1 / p)
        n_need = max(n_need, 1.0)
        need[f"{target:g}"] = {"nodes": n_need, "records_per_s": rate16 * 16 / n_need, "measured": bool(reached)}
    return {"errors": {str(n): e for n, e in err.items()}, "order": p, "records_per_s_16": rate16, "targets": need}


def depth_sweep(n_features: int, k: int, seed: int, min_seconds: float, quadrature: bool) -> list[dict[str, Any]]:
    """Records per second of the compiled exact kernel for each depth and width (thread CPU time), the linear
    pieces per path, and (with ``quadrature``) what quadrature needs for the same accuracy."""
    rng = np.random.default_rng(seed)
    baselines = rng.normal(size=(k, n_features))
    x = rng.normal(size=(64, n_features))
    out = []
    for depth in SWEEP_DEPTHS:
        for width in tqdm(SWEEP_WIDTHS, desc=f"depth {depth}", leave=False):
            model = sweep_network(depth, width, n_features, seed + 100 * depth + width)
            engine = GradientShapEngine(model, baselines)
            kernel = engine.compiled
            assert kernel is not None
            rate, n = cpu_rate(kernel.attributions, x, min_seconds)
            net = engine._require_net()
            pieces = path_integrals_by_pieces(net, torch.from_numpy(x[0]), torch.from_numpy(baselines))[1]
            row: dict[str, Any] = {
                "depth": depth,
                "width": width,
                "records_per_s": rate,
                "records_timed": n,
                "pieces_per_path": float(pieces.double().mean()),
            }
            if quadrature:
                xq = x[:2]
                row["quadrature"] = quadrature_need(engine, xq, kernel.attributions(xq))
            out.append(row)
    return out


def plot_sweep(sweep: list[dict[str, Any]], pima: dict[str, Any], path: Path) -> None:
    """Records per second by width, one line per depth (exact, solid), and quadrature at 1e-3 error (dashed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(8, 5.2), dpi=120)
    colours = plt.get_cmap("viridis")(np.linspace(0.0, 0.9, len(SWEEP_DEPTHS)))
    for depth, colour in zip(SWEEP_DEPTHS, colours, strict=True):
        rows = [r for r in sweep if r["depth"] == depth]
        widths = [r["width"] for r in rows]
        ax.plot(widths, [r["records_per_s"] for r in rows], "o-", color=colour, label=f"exact, {depth} hidden")
        quad = [r.get("quadrature", {}).get("targets", {}).get("0.001", {}).get("records_per_s") for r in rows]
        if all(v is not None and math.isfinite(v) for v in quad):
            ax.plot(widths, quad, "x--", color=colour, alpha=0.6, linewidth=1)
    if "us_per_record_cpu" in pima:
        ax.plot([64], [1e6 / pima["us_per_record_cpu"]["general"]], "r*", markersize=12, label="Pima bundle (8→64→64)")
    ax.set_xscale("log", base=2)
    ax.set_yscale("log")
    ax.set_xticks(list(SWEEP_WIDTHS), [str(w) for w in SWEEP_WIDTHS])
    ax.set_xlabel("hidden width (every hidden layer)")
    ax.set_ylabel("records per second, one thread (CPU time)")
    ax.set_title(
        "Exact GradientSHAP, compiled kernel: cost by depth and width\n(F = 8, K = 64 baselines; dashed: "
        "quadrature at the same depth with the nodes for 1e-3 relative error)",
        fontsize=10,
    )
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8, ncol=2)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path.with_suffix(".png"))
    fig.savefig(path.with_suffix(".svg"))
    plt.close(fig)


def exact_kernels_main(args: argparse.Namespace) -> int:
    """``--exact-kernels``: the Pima comparison, the depth-by-width sweep, the figure and the results file."""
    torch.set_num_threads(1)
    res: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "cpu_count": os.cpu_count(),
        "loadavg_start": loadavg(),
    }
    data = load_data(args.seed)
    res["data"] = data["source"]
    res["pima"] = pima_kernels(data, 6 if args.quick else args.rounds)
    k = len(np.asarray(data["weights"]))
    res["sweep"] = depth_sweep(8, k, args.seed, 0.05 if args.quick else 0.3, quadrature=True)
    res["loadavg_end"] = loadavg()
    plot_sweep(res["sweep"], res["pima"], args.figure)
    report_kernels(res)
    if args.json:
        args.json.write_text(json.dumps(res, indent=2, default=float) + "\n")
        print(f"\nwritten: {args.json}, {args.figure.with_suffix('.png')} and .svg")
    return 0


def report_kernels(res: dict[str, Any]) -> None:
    p = res["pima"]
    print(f"load average at start {res['loadavg_start']}, at end {res['loadavg_end']} ({res['cpu_count']} CPUs)")
    if "skipped" in p:
        print(f"Pima comparison skipped: {p['skipped']}")
    else:
        print(
            f"\n== {res['data']}: general kernel vs two-layer kernel, {p['records']} records, K = {p['baselines']}, "
            f"{p['rounds']} alternating rounds ==\n"
            f"bit-identical answers: {p['bit_identical']}\n"
            f"CPU time ratio general/two-layer: median {p['ratio_cpu_median']:.3f} "
            f"(quartiles {p['ratio_cpu_quartiles'][0]:.3f}-{p['ratio_cpu_quartiles'][1]:.3f}); wall-clock "
            f"{p['ratio_wall_median']:.3f} ({p['ratio_wall_quartiles'][0]:.3f}-{p['ratio_wall_quartiles'][1]:.3f})\n"
            f"µs per record (CPU): general {p['us_per_record_cpu']['general']:.0f}, "
            f"two-layer {p['us_per_record_cpu']['two-layer']:.0f}"
        )
    print("\n== records per second, one thread (CPU time), by hidden layers (rows) and width (columns) ==")
    print(f"{'depth':>6}" + "".join(f"{w:>11}" for w in SWEEP_WIDTHS) + "   pieces/path at each width")
    for depth in SWEEP_DEPTHS:
        rows = [r for r in res["sweep"] if r["depth"] == depth]
        print(
            f"{depth:>6}"
            + "".join(f"{r['records_per_s']:>11.3g}" for r in rows)
            + "   "
            + " ".join(f"{r['pieces_per_path']:.0f}" for r in rows)
        )
    for target in QUAD_TARGETS:
        key = f"{target:g}"
        print(f"\n== quadrature at {key} relative error: nodes needed, and its speed / exact's speed ==")
        print(f"{'depth':>6}" + "".join(f"{w:>19}" for w in SWEEP_WIDTHS))
        for depth in SWEEP_DEPTHS:
            rows = [r for r in res["sweep"] if r["depth"] == depth]
            cells = []
            for r in rows:
                t = r["quadrature"]["targets"][key]
                cells.append(f"{t['nodes']:>9.3g} {t['records_per_s'] / r['records_per_s']:>8.2g}x")
            print(f"{depth:>6}" + "".join(f"{c:>19}" for c in cells))


if __name__ == "__main__":
    raise SystemExit(main())

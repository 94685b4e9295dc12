"""Every instruction set gives the same bits: the exact kernel built for the x86-64 baseline, for AVX2 and for
AVX-512 (x86-64-v4) against the installed build, which picks the best clone this CPU has at load time (and the
baseline again with ``GSHAP_PORTABLE_FLAGS``: the byte-order-free reading of the sign-change flags).

The kernel's hot functions are compiled as target clones (``GSHAP_CLONES`` in ``service/engine/_exact.c``); the
build forbids fused multiply-adds and reordered sums, so a wider vector may only do the same element-wise
operations more at a time. Here the file is compiled again with ``-DGSHAP_NO_CLONES`` and one ``-march`` at a
time, loaded beside the installed module, and each build explains the same records with the same constants: the
attributions and logits must be equal bit for bit, on the two-hidden-layer path (``net_record2``, the shipped
model's) and the deeper one (``net_record``), with ReLUs and leaky ReLUs. An instruction set this CPU lacks is
skipped (its build could not run here).
"""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sysconfig
import tomllib
from pathlib import Path
from types import ModuleType

import numpy as np
import pytest

from service.engine import _exact
from service.engine.exact_kernel import net_constants
from service.engine.gradient_shap import GradientShapEngine
from service.model.store import load_bundle

SOURCE = Path(_exact.__file__).with_name("_exact.c")


def _install_flags() -> list[str]:
    """The compile flags the install builds the kernel with (pyproject.toml's ext-modules entry), so that every
    build here differs from the installed one only by its instruction set."""
    modules = tomllib.loads((SOURCE.parents[2] / "pyproject.toml").read_text())["tool"]["setuptools"]["ext-modules"]
    [kernel] = [m for m in modules if m["name"] == "service.engine._exact"]
    return list(kernel["extra-compile-args"])


FLAGS = ["-shared", "-fPIC", *_install_flags(), "-DGSHAP_NO_CLONES", "-pthread"]

# -march for each build, and the /proc/cpuinfo flags a CPU needs to run it
TARGETS = {
    "x86-64": (),
    "x86-64-v3": ("avx2", "fma", "bmi2"),
    "x86-64-v4": ("avx512f", "avx512bw", "avx512dq", "avx512vl", "avx512cd"),
}
# extra macros of a build: the baseline again with the portable reading of the sign-change flags
VARIANTS = {march: () for march in TARGETS} | {"x86-64 portable flags": ("-DGSHAP_PORTABLE_FLAGS",)}

pytestmark = pytest.mark.slow


def _cpu_flags() -> set[str]:
    try:
        text = Path("/proc/cpuinfo").read_text()
    except OSError:
        return set()
    return {flag for line in text.splitlines() if line.startswith("flags") for flag in line.split(":", 1)[1].split()}


@pytest.fixture(scope="module")
def builds(tmp_path_factory: pytest.TempPathFactory) -> dict[str, ModuleType]:
    """The kernel compiled once per instruction set this machine can run, and once more with the portable reading
    of the sign-change flags (``_exact`` modules beside the installed one), by name."""
    compiler = shutil.which("cc") or shutil.which("gcc")
    if compiler is None or sysconfig.get_platform() != "linux-x86_64":
        pytest.skip("needs a C compiler on x86-64 Linux (the installed kernel was built with one)")
    flags = _cpu_flags()
    include = sysconfig.get_paths()["include"]
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    runnable = {
        name: tmp_path_factory.mktemp(name.replace(" ", "-")) / f"_exact{suffix}"
        for name in VARIANTS
        if set(TARGETS[name.split()[0]]) <= flags
    }
    compiling = [  # side by side: a few seconds each
        subprocess.Popen(
            [compiler, *FLAGS, *VARIANTS[name], f"-march={name.split()[0]}", f"-I{include}", str(SOURCE), "-o", so],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for name, so in runnable.items()
    ]
    for process in compiling:
        _, err = process.communicate()
        assert process.returncode == 0, err.decode(errors="replace")
    out: dict[str, ModuleType] = {}
    for name, so in runnable.items():
        spec = importlib.util.spec_from_file_location("_exact", so)
        assert spec is not None
        assert spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        out[name] = module
    assert "x86-64" in out, "the baseline build must always run"
    return out


def _answers(module: ModuleType, constants: dict[str, object], xs: np.ndarray) -> tuple[bytes, bytes]:
    net = module.Net(**constants)
    attr = np.empty_like(xs)
    logit = np.empty(len(xs))
    net.explain(xs, attr, logit)
    return attr.tobytes(), logit.tobytes()


def _random_net(
    widths: list[int], f: int, k: int, slopes: list[float], seed: int
) -> tuple[dict[str, object], np.ndarray]:
    rng = np.random.default_rng(seed)
    sizes = [f, *widths, 1]
    weights = [rng.normal(size=(sizes[i + 1], sizes[i])) / np.sqrt(sizes[i]) for i in range(len(sizes) - 1)]
    biases = [rng.normal(size=sizes[i + 1]) * 0.3 for i in range(len(sizes) - 1)]
    weights_k = rng.uniform(0.1, 1.0, size=k)
    constants = net_constants(weights, biases, rng.normal(size=(k, f)), weights_k / weights_k.sum(), slopes)
    return constants, rng.normal(size=(40, f))


def _shipped() -> tuple[dict[str, object], np.ndarray]:
    bundle = load_bundle()
    engine = GradientShapEngine.from_bundle(bundle)
    folded = engine.folded
    assert folded is not None, "the shipped model is a ReLU network"
    constants = net_constants(*folded[:2], engine.baselines, engine.baseline_weights, folded[2])
    raw = np.asarray(bundle.eval_raw, dtype=np.float64)
    xs = np.ascontiguousarray(bundle.preprocessor.standardise(bundle.preprocessor.impute(raw)), dtype=np.float64)
    return constants, xs


CASES = {
    "two ReLU layers (net_record2)": lambda: _random_net([24, 16], 7, 20, [0.0, 0.0], seed=1),
    "two leaky layers (net_record2)": lambda: _random_net([16, 24], 5, 12, [0.2, -0.3], seed=2),
    "four layers (net_record)": lambda: _random_net([16, 12, 20, 8], 6, 10, [0.0, 0.01, 0.0, 0.5], seed=3),
}


@pytest.mark.parametrize("case", list(CASES))
def test_each_instruction_set_gives_the_installed_bits(case: str, builds: dict[str, ModuleType]) -> None:
    """The installed kernel (its best clone for this CPU) and the kernel built for each instruction set give the
    same attributions and logits, bit for bit."""
    constants, xs = CASES[case]()
    expected = _answers(_exact, constants, xs)
    for march, module in builds.items():
        assert _answers(module, constants, xs) == expected, f"the {march} build differs from the installed kernel"


def test_shipped_model_same_bits_on_every_instruction_set(builds: dict[str, ModuleType]) -> None:
    """The shipped model's explanations of its whole evaluation set are the same bits on every build."""
    constants, xs = _shipped()
    expected = _answers(_exact, constants, xs)
    for march, module in builds.items():
        assert _answers(module, constants, xs) == expected, f"the {march} build differs on the shipped model"

"""The base install (``pip install gshap-service``: httpx and pydantic, no extra) is a working typed client.

A fresh virtual environment in ``tmp_path`` gets only the base install, from a copy of the sources, with the
project's ``constraints.txt`` and ``CC=false``: no C compiler either, so the exact kernel (an optional extension)
is skipped, as on a clinical app's machine without build tools. That environment has no torch, numpy or web
framework, and its ``service.client`` talks to a real ``gshap serve`` running from the project's own environment.
The install takes about 10 s with a warm pip cache (venv ~4 s, pip ~6 s on this machine).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from helpers import default_spec
from live_server import ROOT, LiveServer, running_server

pytestmark = pytest.mark.slow

# What the server or the training extras bring (import names), none of which the base install may have.
NOT_IN_BASE = (
    "torch",
    "numpy",
    "scipy",
    "sklearn",
    "pandas",
    "matplotlib",
    "captum",
    "safetensors",
    "fastapi",
    "starlette",
    "uvicorn",
    "pydantic_settings",
    "orjson",
    "yaml",
    "tqdm",
)
PIP_TIMEOUT = 300


def _env(**extra: str) -> dict[str, str]:
    """This environment without a Python path, an active venv or GSHAP_* settings, plus ``extra``."""
    drop = {"PYTHONPATH", "VIRTUAL_ENV"}
    return {k: v for k, v in os.environ.items() if k not in drop and not k.startswith("GSHAP_")} | extra


@pytest.fixture(scope="module")
def base_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtual environment with the base install only (no extra, no compiler); its ``bin`` folder."""
    tmp = tmp_path_factory.mktemp("base-install")
    src = tmp / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    # A copy, so that the build neither reuses the worktree's compiled kernel nor writes build/ into it.
    shutil.copytree(ROOT / "service", src / "service", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    venv = tmp / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    pip = [str(venv / "bin" / "python"), "-m", "pip", "install", "--quiet", "-c", str(ROOT / "constraints.txt")]
    # CC=false: no working C compiler, which the base install must not need.
    done = subprocess.run(
        [*pip, str(src)], check=False, env=_env(CC="false"), capture_output=True, text=True, timeout=PIP_TIMEOUT
    )
    assert done.returncode == 0, f"base install failed:\n{done.stdout}\n{done.stderr}"
    return venv / "bin"


def _run(bin_dir: Path, script: str, *args: str) -> subprocess.CompletedProcess[str]:
    """Run a Python ``script`` in the base environment, outside the repository (so that ./service is not found)."""
    return subprocess.run(
        [str(bin_dir / "python"), "-c", script, *args],
        check=False, cwd=bin_dir, env=_env(), capture_output=True, text=True, timeout=120,
    )  # fmt: skip


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with running_server() as server:
        yield server


def test_base_install_has_no_numerics_and_no_server(base_venv: Path) -> None:
    """Neither torch, numpy nor any server or training package is installed; importing the client loads none."""
    script = f"""
import importlib.util, importlib.metadata, json, sys
import service.client, service.schemas, service.contract
print(json.dumps({{
    "installed": [m for m in {list(NOT_IN_BASE)!r} if importlib.util.find_spec(m) is not None],
    "loaded": sorted({{m.split(".")[0] for m in sys.modules}} & set({list(NOT_IN_BASE)!r})),
    "service_from": service.client.__file__,
    "kernel": importlib.util.find_spec("service.engine._exact") is not None,
    "distributions": sorted(d.metadata["Name"].lower() for d in importlib.metadata.distributions()),
}}))
"""
    done = _run(base_venv, script)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert found["installed"] == []
    assert found["loaded"] == []
    assert found["service_from"].startswith(str(base_venv.parent)), "the client was not imported from the venv"
    assert not found["kernel"], "CC=false, yet a compiled kernel was installed"
    assert {"gshap-service", "httpx", "pydantic"} <= set(found["distributions"])
    print(f"base install: {len(found['distributions'])} distributions: {', '.join(found['distributions'])}")


def test_base_client_gets_typed_answers_from_a_real_server(base_venv: Path, live: LiveServer) -> None:
    """The base install's GshapClient predicts and explains against a real server: typed, and the server's JSON.

    The record is the served model's example, which the base install reads from the server's model card (GET
    /model): the client needs no model-specific code."""
    script = """
import json, sys
from service.client import GshapClient, InvalidInput
from service.schemas import ExplanationPublic, PredictionPublic

with GshapClient(sys.argv[1]) as client:
    record = {f.name: int(f.example) if f.example.is_integer() else f.example for f in client.model().features}
    prediction = client.predict(record)
    explanation = client.explain(record)
    sampled = client.explain(record, method="sampled", n_samples=64, seed=3, output="probability")
    try:
        client.predict({**record, "glucos": 148})
        refused = []
    except InvalidInput as exc:
        refused = exc.fields
assert type(prediction) is PredictionPublic and type(explanation) is ExplanationPublic
print(json.dumps({
    "record": record,
    "predict": prediction.model_dump(mode="json"),
    "explain": explanation.model_dump(mode="json"),
    "sampled": sampled.model_dump(mode="json"),
    "refused": refused,
}))
"""
    done = _run(base_venv, script, live.url)
    assert done.returncode == 0, done.stderr
    got = json.loads(done.stdout)
    from service.schemas import example_record

    record = example_record(default_spec())
    assert got["record"] == record, "the model card's examples are not the specification's example record"
    with httpx.Client(base_url=live.url, timeout=30) as http:
        want_predict = http.post("/predict", json=record).json()
        want_explain = http.post("/explain", json=record).json()
        want_sampled = http.post(
            "/explain", json={**record, "method": "sampled", "n_samples": 64, "seed": 3, "output": "probability"}
        ).json()
    # The server computes each answer deterministically (exact kernel; sampled with a seed), so the client's typed
    # answers, dumped back to JSON, are the server's JSON exactly.
    assert got["predict"] == want_predict
    assert got["explain"] == want_explain
    assert got["sampled"] == want_sampled
    assert got["explain"]["method"] == "exact"
    assert len(got["explain"]["attributions"]) == len(default_spec())
    assert got["refused"] == ["glucos"]


@pytest.mark.parametrize(("command", "extra"), [("serve", "server"), ("openapi", "server"), ("train", "train")])
def test_commands_without_their_extra_fail_with_one_line(base_venv: Path, command: str, extra: str) -> None:
    """`gshap serve` (and every command needing an extra) exits 2 with one line naming the extra to install."""
    done = subprocess.run(
        [str(base_venv / "gshap"), command],
        check=False, cwd=base_venv, env=_env(), capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2
    assert done.stdout == ""
    lines = done.stderr.splitlines()
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"gshap {command}: needs the '{extra}' extra")
    assert lines[0].endswith(f"pip install 'gshap-service[{extra}]'")

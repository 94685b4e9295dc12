"""Supply chain: model files are never unpickled, bundles hold only safetensors and JSON, every dependency is
pinned in constraints.txt at the version installed, and the audit script stays offline-tolerant.

The vulnerability audit itself (``scripts/audit.sh``, pip-audit against the pins) needs the network and is
not run here; docs/SECURITY.md records its last result.
"""

from __future__ import annotations

import ast
import importlib.metadata as md
import json
import os
import subprocess
import tomllib
from pathlib import Path

import pytest
from live_server import ROOT
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

SOURCES = ("service",)
# modules that execute code while loading data, and the calls that do
UNPICKLING_MODULES = {"pickle", "_pickle", "dill", "cloudpickle", "joblib", "shelve", "marshal", "jsonpickle"}
UNPICKLING_CALLS = {"load", "loads", "read_pickle", "Unpickler"}
LOADERS_OF_MODULE = {"torch": {"load"}, "pd": {"read_pickle"}, "pandas": {"read_pickle"}}
BUNDLE_FILES = {".safetensors", ".json"}
BUNDLE_EXTRAS = {"SHA256SUMS", "DEFAULT", "SIGNATURE"}
# the installer itself is not pinned (pip-tools' convention); everything it installs is
NOT_PINNED = {"pip", "gshap-service"}  # the project itself, which the extras name


def _python_files() -> list[Path]:
    return sorted(p for src in SOURCES for p in (ROOT / src).rglob("*.py"))


def _unpickling(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found += [a.name for a in node.names if a.name.split(".")[0] in UNPICKLING_MODULES]
        elif isinstance(node, ast.ImportFrom) and node.module:
            if node.module.split(".")[0] in UNPICKLING_MODULES:
                found.append(node.module)
            if node.module == "torch" and any(a.name == "load" for a in node.names):
                found.append("from torch import load")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
            owner = node.func.value
            name = owner.id if isinstance(owner, ast.Name) else None
            if name in LOADERS_OF_MODULE and node.func.attr in LOADERS_OF_MODULE[name]:
                found.append(f"{name}.{node.func.attr}()")
            if node.func.attr in UNPICKLING_CALLS and name in UNPICKLING_MODULES:
                found.append(f"{name}.{node.func.attr}()")
            for kw in node.keywords:
                if kw.arg == "allow_pickle" and not (isinstance(kw.value, ast.Constant) and kw.value.value is False):
                    found.append(f"{ast.unparse(node.func)}(allow_pickle=...)")
                if kw.arg == "weights_only" and not (isinstance(kw.value, ast.Constant) and kw.value.value is True):
                    found.append(f"{ast.unparse(node.func)}(weights_only=...)")
    return found


def test_no_code_unpickles_anything() -> None:
    """No module of service/ imports pickle & co. or calls torch.load, read_pickle, allow_pickle."""
    files = _python_files()
    assert len(files) > 20
    assert any(p.name == "model_store.py" for p in files)
    offenders = {str(p.relative_to(ROOT)): hits for p in files if (hits := _unpickling(ast.parse(p.read_text())))}
    assert offenders == {}


def test_the_scan_would_see_unpickling() -> None:
    """The scan above is not blind: each forbidden form is found in a sample."""
    sample = (
        "import pickle\nfrom joblib import load\nimport torch\nfrom torch import load\n"
        "torch.load('w.pt')\nnp.load('a.npy', allow_pickle=True)\npd.read_pickle('x')\n"
        "torch.load('w.pt', weights_only=False)\n"
    )
    assert len(_unpickling(ast.parse(sample))) == 8


def _safetensors_header(path: Path) -> dict[str, object]:
    data = path.read_bytes()
    n = int.from_bytes(data[:8], "little")
    assert 0 < n < len(data), path
    header: dict[str, object] = json.loads(data[8 : 8 + n])
    return header


def test_bundles_hold_only_safetensors_and_json() -> None:
    """Every file of model_store is safetensors (a JSON header, no pickle), JSON, SHA256SUMS, SIGNATURE, DEFAULT, or
    a model spec (YAML under specs/)."""
    files = [p for p in (ROOT / "model_store").rglob("*") if p.is_file()]
    assert files
    for path in files:
        if path.name in BUNDLE_EXTRAS:
            continue
        if path.parent.name == "specs" and path.suffix == ".yaml":  # model specs (gshap train/bundle): YAML data
            import yaml

            assert isinstance(yaml.safe_load(path.read_text()), dict), path
            continue
        assert path.suffix in BUNDLE_FILES, path
        if path.suffix == ".safetensors":
            assert path.read_bytes()[:1] != b"\x80", path  # pickle's protocol marker
            assert not path.read_bytes().startswith(b"PK"), path  # torch.save's zip
            header = _safetensors_header(path)
            tensors = [v for k, v in header.items() if k != "__metadata__"]
            assert all(isinstance(v, dict) and {"dtype", "shape", "data_offsets"} <= set(v) for v in tensors)
        else:
            json.loads(path.read_text())


def _pins() -> dict[str, str]:
    pins: dict[str, str] = {}
    for raw in (ROOT / "constraints.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"not an exact pin: {raw!r}"
        assert version, f"not an exact pin: {raw!r}"
        assert ";" not in line, f"a pin with a marker: {raw!r}"
        pins[canonicalize_name(name)] = version
    return pins


def _closure(requirements: list[str]) -> dict[str, str]:
    """Installed name → version of ``requirements`` and everything they require, extras and markers applied."""
    seen: dict[str, str] = {}
    visited: set[tuple[str, frozenset[str]]] = set()
    todo = [(Requirement(r), "") for r in requirements]
    while todo:
        req, extra = todo.pop()
        if req.marker is not None and not req.marker.evaluate({"extra": extra}):
            continue
        key = canonicalize_name(req.name)
        if (key, frozenset(req.extras)) in visited:
            continue
        visited.add((key, frozenset(req.extras)))
        dist = md.distribution(req.name)
        seen[key] = dist.version
        for sub in dist.requires or []:
            todo += [(Requirement(sub), e) for e in ("", *req.extras)]
    return seen


def test_every_dependency_is_pinned_at_the_installed_version() -> None:
    """constraints.txt pins (==) each distribution the runtime and dev dependencies need, as installed here."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    needed = _closure(project["dependencies"]) | _closure(project["optional-dependencies"]["dev"])
    pins = _pins()
    unpinned = sorted(set(needed) - set(pins) - NOT_PINNED)
    assert unpinned == [], "add to constraints.txt"
    differing = {n: (v, pins[n]) for n, v in needed.items() if n in pins and pins[n] != v}
    assert differing == {}, "installed version vs pin"
    assert len(needed) > 50


def test_pyproject_pins_torch_exactly() -> None:
    """torch is pinned exactly in pyproject's server extra too (an open range pulls a CUDA build)."""
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    [torch] = [Requirement(r) for r in project["optional-dependencies"]["server"] if Requirement(r).name == "torch"]
    assert str(torch.specifier).startswith("==")


@pytest.mark.skipif(not (ROOT / ".venv" / "bin" / "pip-audit").exists(), reason="needs the project's venv")
def test_audit_script_is_offline_tolerant() -> None:
    """With the vulnerability service unreachable, scripts/audit.sh says so and exits 0 (no network used)."""
    env = {**os.environ, "AUDIT_SERVICE_URL": "http://127.0.0.1:9/unreachable", "AUDIT_TIMEOUT": "2"}
    script = str(ROOT / "scripts" / "audit.sh")
    r = subprocess.run(["bash", script], check=False, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert "SKIPPED" in r.stderr
    assert "unreachable" in r.stderr

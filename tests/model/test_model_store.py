"""The bundle: self-describing, verified on load, never unpickled."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from service.model.store import FORMAT_VERSION, BundleError, _write_checksums, load_bundle


@pytest.fixture
def copy(bundle, tmp_path: Path) -> Path:  # type: ignore[no-untyped-def]
    dst = tmp_path / "b"
    shutil.copytree(bundle.path, dst)
    return dst


def test_default_pointer_names_a_complete_bundle(bundle, root: Path) -> None:  # type: ignore[no-untyped-def]
    """model_store/DEFAULT names the served model and its DEFAULT the served version; the bundle holds no pickle."""
    assert (root / "model_store" / "DEFAULT").read_text().strip() == bundle.name
    assert (root / "model_store" / bundle.name / "DEFAULT").read_text().strip() == bundle.version
    names = {p.name for p in bundle.path.iterdir()}
    assert {"manifest.json", "weights.safetensors", "SHA256SUMS", "groups.json"} <= names
    assert not [n for n in names if n.endswith((".pt", ".pth", ".pkl", ".pickle", ".bin"))]


def test_manifest_is_self_describing(bundle) -> None:  # type: ignore[no-untyped-def]
    """The manifest carries format, features, preprocessing, threshold, metrics, config, data hash, versions."""
    m = bundle.manifest
    for key in (
        "format_version",
        "features",
        "preprocessing",
        "threshold",
        "metrics",
        "training",
        "data",
        "environment",
        "created_at",
        "baselines",
        "explanation_defaults",
    ):
        assert key in m, key
    assert m["format_version"] == FORMAT_VERSION
    assert m["data"]["sha256"] == "bf81d06e0c0512662862248241ab46d7c29258c6ceaad32f3cab56b52a17fdab"
    assert bundle.model.training is False


@pytest.mark.parametrize("name", ["weights.safetensors", "baselines.safetensors", "manifest.json", "groups.json"])
def test_tampered_file_is_named(copy: Path, name: str) -> None:
    """Changing one byte of any file fails loading with a message naming that file."""
    data = bytearray((copy / name).read_bytes())
    data[len(data) // 2] ^= 0x01
    (copy / name).write_bytes(bytes(data))
    with pytest.raises(BundleError, match=name):
        load_bundle(copy)


def test_truncated_weights_are_named(copy: Path) -> None:
    """A truncated weights file fails loading with a message naming it."""
    w = copy / "weights.safetensors"
    w.write_bytes(w.read_bytes()[:100])
    with pytest.raises(BundleError, match=r"weights\.safetensors"):
        load_bundle(copy)


def test_missing_file_is_named(copy: Path) -> None:
    """A deleted file listed in SHA256SUMS fails loading with its name."""
    (copy / "evaluation.safetensors").unlink()
    with pytest.raises(BundleError, match=r"evaluation\.safetensors is missing"):
        load_bundle(copy)


def test_unknown_format_version_is_refused(copy: Path) -> None:
    """A manifest of another format version is refused even when its checksums are consistent."""
    m = json.loads((copy / "manifest.json").read_text())
    m["format_version"] = 99
    (copy / "manifest.json").write_text(json.dumps(m))
    _write_checksums(copy)
    with pytest.raises(BundleError, match="format_version 99"):
        load_bundle(copy)


def test_missing_bundle_is_one_line(tmp_path: Path) -> None:
    """A bundle path that does not exist gives a one-line reason."""
    with pytest.raises(BundleError) as info:
        load_bundle(tmp_path / "nope")
    assert "does not exist" in str(info.value)
    assert "\n" not in str(info.value)


def test_records_to_array_marks_missing_and_names_the_first_required_feature() -> None:
    """None, and 0 where zero means "not measured", become NaN; a batch lacking two required features is refused
    naming the one first in the specification's order, whichever record lacks it."""
    bundle = load_bundle()
    record = {f.name: f.example or 1 for f in bundle.spec}  # every value measured
    zero_missing = next(f.name for f in bundle.spec if f.zero_means_missing)
    optional = next(f.name for f in bundle.spec if f.may_be_missing)
    required = [f.name for f in bundle.spec if not f.may_be_missing]
    rows = bundle.records_to_array([record, {**record, zero_missing: 0, optional: None}])
    assert rows.shape == (2, len(bundle.spec))
    assert not np.isnan(rows[0]).any()
    names = bundle.spec.names
    assert np.isnan(rows[1, names.index(zero_missing)])
    assert np.isnan(rows[1, names.index(optional)])
    assert np.isnan(rows[1]).sum() == len({zero_missing, optional})
    later = {**record, required[-1]: None}
    first = {**record, required[0]: None}
    with pytest.raises(ValueError, match=f"feature '{required[0]}' is required"):
        bundle.records_to_array([later, first])
    assert bundle.records_to_array([]).shape == (0, len(bundle.spec))

"""The model bundle: a versioned folder the service loads, verified file by file.

Layout of ``model_store/<name>/<version>/``::

    manifest.json          format version, feature specification, preprocessing, calibration (format 2),
                           threshold, metrics, training configuration, data sha256, library versions,
                           creation time
    weights.safetensors    the MLP's state dict (safetensors: tensors only, nothing that executes)
    baselines.safetensors  the GradientSHAP baseline distribution, model space: points (K, F), weights (K,)
    evaluation.safetensors the evaluation set: raw values (N, F) in original units with NaN = not measured,
                           labels (N,), CSV row numbers (N,)
    groups.json            outcome-group summaries of the evaluation set (written by ``gshap train``/``groups``)
    SHA256SUMS             sha256 of every file above, checked on load

``model_store/DEFAULT`` names the bundle served by default (``<name>/<version>``). No web framework here.

Format versions: 2 adds ``calibration`` (``{"method", "fitted_on", "a", "b"}``: the served logit is
``a·logit + b`` of the stored network, see :class:`service.model.nn.Calibration`); a format-1 bundle has none
and loads with the identity calibration (``"none"``), serving its raw network as before.

Loading a bundle reads its weights with numpy (``safetensors.numpy``) and imports no torch: the torch module
(:attr:`Bundle.model`) is built the first time it is asked for. A service whose networks are all piecewise linear
folds them with numpy (:meth:`service.engine.gradient_shap.GradientShapEngine.from_bundle`) and may never load
torch.
"""

from __future__ import annotations

import functools
import hashlib
import json
import math
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from safetensors.numpy import load_file as load_numpy
from safetensors.numpy import save_file as save_numpy

from service.contract import GROUPS, SERVED_METHODS
from service.model.card import CdsService, ModelCard
from service.model.features import FeatureSpec
from service.model.preprocess import Preprocessor
from service.model.spec import (
    IDENTITY,
    Calibration,
    Layer,
    ModelSpec,
    SpecError,
    build_network,
    exact_reason,
    layer_summary,
    spec_from_dict,
    spec_from_legacy_manifest,
    state_shapes,
)

if TYPE_CHECKING:  # torch is loaded when a bundle's torch module is first asked for (Bundle.model), not here
    import torch

    from service.model.nn import CalibratedClassification

__all__ = [
    "DEFAULT_STORE",
    "FORMAT_VERSION",
    "Bundle",
    "BundleError",
    "default_bundle_path",
    "load_bundle",
    "weights_problem",
    "write_bundle",
    "write_groups",
]

FORMAT_VERSION = 3
READABLE_FORMATS = (1, 2, 3)
DEFAULT_STORE = Path(__file__).resolve().parents[2] / "model_store"
CHECKSUMS = "SHA256SUMS"
REQUIRED = ("manifest.json", "weights.safetensors", "baselines.safetensors", "evaluation.safetensors")
MANIFEST_KEYS = ("name", "version", "features", "preprocessing", "threshold", "metrics")  # 2: + calibration, 3: + spec
# the seed MLP's module names in bundles of formats 1 and 2, and their index in its nn.Sequential (format 3)
LEGACY_KEYS = {"layer_1": "0", "batchnorm1": "2", "layer_2": "3", "batchnorm2": "5", "layer_out": "7"}


class BundleError(Exception):
    """A bundle that cannot be served: missing, tampered, truncated or of an unknown format. One-line message."""


@dataclass
class Bundle:
    """A loaded, verified bundle. ``model`` (built with torch on first access) is in eval mode and takes
    model-space ``(N, F)`` float32 inputs.

    ``model`` is the served, calibrated network (its ``forward`` is ``a·logit + b``; ``model.uncalibrated`` is the
    stored raw network); ``calibration`` is its :class:`Calibration` (identity for a format-1 bundle). ``state``
    is the network's state dict as numpy arrays (keys of the spec's ``nn.Sequential``: ``"0.weight"``, ...);
    ``baseline_points`` ``(K, F)`` and ``baseline_weight_values`` ``(K,)`` are the baselines in float64
    (``baselines`` and ``baseline_weights``: the same as torch tensors)."""

    path: Path
    name: str
    version: str
    manifest: dict[str, Any]
    state: dict[str, np.ndarray]
    spec: FeatureSpec
    preprocessor: Preprocessor
    baseline_points: np.ndarray
    baseline_weight_values: np.ndarray
    threshold: float
    metrics: dict[str, Any]
    eval_raw: np.ndarray
    eval_y: np.ndarray
    eval_rows: np.ndarray
    groups: dict[str, Any] | None = field(default=None)
    calibration: Calibration = field(default=IDENTITY)
    model_spec: ModelSpec = field(default=None)  # type: ignore[assignment]  # always set by load_bundle

    @property
    def card(self) -> ModelCard:
        """The model card: outcome, population and the card's texts (from the bundle's spec)."""
        return self.model_spec.card

    @property
    def cds(self) -> CdsService | None:
        """The CDS Hooks service the model offers, or None."""
        return self.model_spec.cds

    @functools.cached_property
    def methods(self) -> tuple[str, ...]:
        """The explanation methods this network offers: ``exact`` only where the exact kernel covers it (read on
        every explain request: worked out once)."""
        if self.model_spec.exact:
            return SERVED_METHODS
        return tuple(m for m in SERVED_METHODS if m != "exact")

    @property
    def exact_unavailable(self) -> str:
        """Why this network has no exact explanations (``""`` when it has them)."""
        return exact_reason(self.model_spec.network)

    @property
    def default_method(self) -> str:
        """``"exact"`` when offered, else ``"quadrature"``."""
        return "exact" if "exact" in self.methods else "quadrature"

    # the key that signed the bundle (service.model.signing: its id and base64 public key); None: unsigned
    signed_by: str | None = field(default=None)
    signing_key: str | None = field(default=None)
    _model: CalibratedClassification | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def model(self) -> CalibratedClassification:
        """The served network as a torch module (eval mode), built from ``state`` on first access."""
        if self._model is None:
            import torch

            from service.model.nn import CalibratedClassification

            with torch.inference_mode(False):  # a first access may come from inside inference mode
                model = CalibratedClassification.wrap(build_network(self.model_spec.network), self.calibration)
                model.load_state_dict({k: torch.as_tensor(np.array(v)) for k, v in self.state.items()})
            self._model = model.eval()
        return self._model

    @property
    def baselines(self) -> torch.Tensor:
        """``baseline_points`` as a float64 torch tensor."""
        import torch

        return torch.as_tensor(self.baseline_points)

    @property
    def baseline_weights(self) -> torch.Tensor:
        """``baseline_weight_values`` as a float64 torch tensor."""
        import torch

        return torch.as_tensor(self.baseline_weight_values)

    @property
    def eval_x(self) -> torch.Tensor:
        """The evaluation set in model space, ``(N, F)`` float32."""
        return self.to_model_space(self.eval_raw)

    def to_model_array(self, raw: np.ndarray | Sequence[Mapping[str, float | None]]) -> np.ndarray:
        """Raw records → ``(N, F)`` float32 model-space array.

        ``raw`` is either an ``(N, F)`` array in original units (NaN = not measured) or a list of records
        keyed by feature name, where ``None`` (or 0 for a feature whose zero means "not measured") is missing.
        """
        arr = raw if isinstance(raw, np.ndarray) else self.records_to_array(raw)
        return np.asarray(self.preprocessor.transform(arr), dtype=np.float32)

    def to_model_space(self, raw: np.ndarray | Sequence[Mapping[str, float | None]]) -> torch.Tensor:
        """:meth:`to_model_array` as a torch tensor."""
        import torch

        return torch.from_numpy(self.to_model_array(raw))

    def records_to_array(self, records: Sequence[Mapping[str, float | None]]) -> np.ndarray:
        """Records keyed by feature name → ``(N, F)`` float64 in original units with NaN for missing.

        Raises ``ValueError`` naming the first required feature (in the specification's order) that a record
        lacks."""
        plan = self._record_plan
        nan = math.nan
        flat: list[float] = []
        lacking: set[str] = set()
        for rec in records:
            get = rec.get
            for name, zero_missing, may_be_missing in plan:
                v = get(name)
                if v is None or (zero_missing and v == 0):
                    flat.append(nan)
                    if not may_be_missing:
                        lacking.add(name)
                else:
                    flat.append(float(v))
        if lacking:
            first = next(name for name, _, _ in plan if name in lacking)
            raise ValueError(f"feature {first!r} is required")
        # one array from one list: numpy's item-by-item assignment cost more than the loop above
        return np.array(flat, dtype=np.float64).reshape(len(records), len(plan))

    @functools.cached_property
    def _record_plan(self) -> tuple[tuple[str, bool, bool], ...]:
        """Per feature: its name, whether 0 means "not measured", whether it may be missing."""
        return tuple((f.name, f.zero_means_missing, f.may_be_missing) for f in self.spec)


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _json_bytes(obj: Any) -> bytes:
    return (json.dumps(obj, indent=2, sort_keys=False, ensure_ascii=False, allow_nan=False) + "\n").encode()


def _write_checksums(folder: Path) -> None:
    # SIGNATURE (service.model.signing) signs SHA256SUMS and is therefore not listed in it
    names = sorted(p.name for p in folder.iterdir() if p.is_file() and p.name not in (CHECKSUMS, "SIGNATURE"))
    lines = [f"{_sha256(folder / n)}  {n}\n" for n in names]
    (folder / CHECKSUMS).write_text("".join(lines))


def write_bundle(
    folder: Path,
    *,
    model: torch.nn.Module,
    manifest: dict[str, Any],
    baselines: np.ndarray,
    baseline_weights: np.ndarray,
    eval_raw: np.ndarray,
    eval_y: np.ndarray,
    eval_rows: np.ndarray,
    groups: dict[str, Any] | None = None,
    created_at: str | None = None,
) -> Path:
    """Write a bundle folder (created if needed) and its checksums; returns the folder. ``created_at`` (ISO 8601)
    keeps a rewritten bundle's training date; default: now."""
    from safetensors.torch import save_file as save_torch

    folder.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().contiguous() for k, v in model.state_dict().items()}
    save_torch(state, str(folder / "weights.safetensors"), metadata={"format": "pt"})
    save_numpy(
        {
            "points": np.ascontiguousarray(baselines, dtype=np.float64),
            "weights": np.ascontiguousarray(baseline_weights, dtype=np.float64),
        },
        str(folder / "baselines.safetensors"),
    )
    save_numpy(
        {
            "raw": np.ascontiguousarray(eval_raw, dtype=np.float64),
            "y": np.ascontiguousarray(eval_y, dtype=np.int64),
            "rows": np.ascontiguousarray(eval_rows, dtype=np.int64),
        },
        str(folder / "evaluation.safetensors"),
    )
    manifest = {
        "format_version": FORMAT_VERSION,
        **manifest,
        "created_at": created_at or datetime.now(UTC).replace(microsecond=0).isoformat(),
    }
    (folder / "manifest.json").write_bytes(_json_bytes(manifest))
    if groups is not None:
        (folder / "groups.json").write_bytes(_json_bytes(groups))
    _write_checksums(folder)
    return folder


def write_groups(folder: Path, groups: dict[str, Any]) -> None:
    """Replace a bundle's group summaries and refresh its checksums (the bundle must verify first)."""
    _verify(folder)
    (folder / "groups.json").write_bytes(_json_bytes(groups))
    _write_checksums(folder)


def default_bundle_path(store: Path = DEFAULT_STORE) -> Path:
    """The bundle folder named by ``<store>/DEFAULT``: ``<name>/<version>``, or ``<name>``, whose own ``DEFAULT``
    names the version (``<store>/<name>/DEFAULT``); ``store`` may also be a model folder."""
    pointer = store / "DEFAULT"
    if not pointer.is_file():
        raise BundleError(f"no default model: {pointer} does not exist")
    folder = store / pointer.read_text().strip()
    if (folder / "DEFAULT").is_file() and not (folder / CHECKSUMS).is_file():
        inner = folder / "DEFAULT"
        folder = folder / inner.read_text().strip()
    return folder


def _verify(folder: Path) -> None:
    if not folder.is_dir():
        raise BundleError(f"model bundle {folder} does not exist")
    sums = folder / CHECKSUMS
    if not sums.is_file():
        raise BundleError(f"model bundle {folder}: {CHECKSUMS} is missing")
    listed: dict[str, str] = {}
    for line in sums.read_text().splitlines():
        digest, _, name = line.partition("  ")
        if not name or len(digest) != 64:
            raise BundleError(f"model bundle {folder}: {CHECKSUMS} is malformed")
        listed[name] = digest
    for name in REQUIRED:
        if name not in listed:
            raise BundleError(f"model bundle {folder}: {name} is not listed in {CHECKSUMS}")
    for name, digest in listed.items():
        p = folder / name
        if not p.is_file():
            raise BundleError(f"model bundle {folder}: {name} is missing")
        if _sha256(p) != digest:
            raise BundleError(f"model bundle {folder}: checksum mismatch for {name} (tampered or truncated)")


def _one_line(exc: BaseException) -> str:
    """``Type: message`` on one line and at most 300 characters (torch's messages span several lines)."""
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= 300 else text[:299] + "…"


@contextmanager
def _reading(folder: Path, name: str, what: str = "cannot be read") -> Iterator[None]:
    """Turn any failure while decoding ``name`` into a one-line :class:`BundleError` naming the file."""
    try:
        yield
    except BundleError:
        raise
    except Exception as exc:  # any decoding problem is a bundle that cannot be served
        raise BundleError(f"model bundle {folder}: {name} {what} ({_one_line(exc)})") from exc


_GROUP_STATS = ("mean", "ci_low", "ci_high", "std", "mean_abs", "mean_value")
_GROUPS_EXTRAS: dict[str, type | tuple[type, ...]] = {
    "evaluation_set_size": int,
    "threshold": (int, float),
    "interval": str,
    "mean_feature_value": str,
    "explanation": dict,
}


def _is_number(value: Any) -> bool:
    return type(value) in (int, float) and math.isfinite(value)


def _groups_problem(groups: Any) -> str | None:
    """What is wrong with the layout of a groups.json (as :func:`service.model.groups.summarize_groups` writes it)."""
    if not isinstance(groups, dict):
        return "is not a JSON object"
    for g in GROUPS:
        if g not in groups:
            continue
        item = groups[g]
        if not isinstance(item, dict):
            return f"has a group {g} that is not an object"
        if type(item.get("count")) is not int or item["count"] < 0:
            return f"has no whole, non-negative {g}.count"
        features = item.get("features")
        if not isinstance(features, list):
            return f"has no list {g}.features"
        for i, row in enumerate(features):
            if not isinstance(row, dict) or not isinstance(row.get("feature"), str):
                return f"has no feature name in {g}.features[{i}]"
            for stat in _GROUP_STATS:
                if stat not in row or (row[stat] is not None and not _is_number(row[stat])):
                    return f"has no finite number or null as {g}.features[{i}].{stat}"
    for key, kind in _GROUPS_EXTRAS.items():
        value = groups.get(key)
        if value is not None and (not isinstance(value, kind) or isinstance(value, bool)):
            return f"has a {key} of the wrong type"
    return None


def load_bundle(path: str | Path | None = None) -> Bundle:
    """Load and verify a bundle: ``path`` is a bundle folder, a store with a DEFAULT pointer, or None (default).

    Raises :class:`BundleError` with a one-line reason naming the file at fault.
    """
    folder = Path(path) if path is not None else default_bundle_path()
    if (folder / "DEFAULT").is_file():
        folder = default_bundle_path(folder)
    _verify(folder)
    try:
        manifest = json.loads((folder / "manifest.json").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise BundleError(f"model bundle {folder}: manifest.json is not valid JSON ({_one_line(exc)})") from exc
    if not isinstance(manifest, dict):
        raise BundleError(f"model bundle {folder}: manifest.json is not a JSON object")
    fmt = manifest.get("format_version")
    if fmt not in READABLE_FORMATS:
        readable = ", ".join(str(v) for v in READABLE_FORMATS[:-1]) + f" and {READABLE_FORMATS[-1]}"
        raise BundleError(
            f"model bundle {folder}: manifest.json has format_version {fmt!r}; this service reads {readable}"
        )
    needed = (*MANIFEST_KEYS, *(("calibration",) if fmt >= 2 else ()), *(("spec",) if fmt >= 3 else ()))
    missing = [key for key in needed if key not in manifest]
    if missing:
        raise BundleError(f"model bundle {folder}: manifest.json has no {', '.join(missing)}")
    model_spec = _model_spec(folder, manifest)
    with _reading(folder, "manifest.json"):
        spec = model_spec.features
        pre = Preprocessor.from_dict(manifest["preprocessing"])
        threshold = float(manifest["threshold"])
        calibration = Calibration.from_dict(manifest["calibration"]) if fmt >= 2 else IDENTITY
    with _reading(folder, "weights.safetensors"):
        state = load_numpy(str(folder / "weights.safetensors"))
    if fmt < 3:
        state = {_legacy_key(k): v for k, v in state.items()}
    if problem := weights_problem(state, model_spec.network):
        raise BundleError(f"model bundle {folder}: weights.safetensors does not fit the network of its spec: {problem}")
    # a NaN weight passes every check above and the warm-up, and then fails every request with a 500
    if not all(bool(np.isfinite(t).all()) for t in state.values()):
        raise BundleError(f"model bundle {folder}: weights.safetensors holds NaN or infinite values")
    with _reading(folder, "baselines.safetensors"):
        base = load_numpy(str(folder / "baselines.safetensors"))
        points, weights = np.asarray(base["points"]), np.asarray(base["weights"])
    if not (bool(np.isfinite(points).all()) and bool(np.isfinite(weights).all())):
        raise BundleError(f"model bundle {folder}: baselines.safetensors holds NaN or infinite values")
    with _reading(folder, "evaluation.safetensors"):
        ev = load_numpy(str(folder / "evaluation.safetensors"))
        eval_raw, eval_y, eval_rows = ev["raw"], ev["y"], ev["rows"]
    groups = None
    if (folder / "groups.json").is_file():
        with _reading(folder, "groups.json"):
            groups = json.loads((folder / "groups.json").read_text())
        if problem := _groups_problem(groups):
            raise BundleError(f"model bundle {folder}: groups.json {problem}")
    return Bundle(
        path=folder,
        name=str(manifest["name"]),
        version=str(manifest["version"]),
        manifest=manifest,
        state=state,
        spec=spec,
        preprocessor=pre,
        baseline_points=points,
        baseline_weight_values=weights,
        threshold=threshold,
        metrics=manifest["metrics"],
        eval_raw=eval_raw,
        eval_y=eval_y,
        eval_rows=eval_rows,
        groups=groups,
        calibration=calibration,
        model_spec=model_spec,
    )


def _legacy_key(key: str) -> str:
    module, _, rest = key.partition(".")
    return f"{LEGACY_KEYS.get(module, module)}.{rest}"


def weights_problem(state: Mapping[str, Any], layers: Sequence[Layer]) -> str | None:
    """What keeps ``state`` (a safetensors state dict of numpy arrays or torch tensors) from loading into the
    network ``layers`` build: a missing or unexpected tensor, a shape that differs from the one the spec's layer
    needs, or a floating-point type other than float32 and float64; None if it fits."""
    expected = state_shapes(layers)

    def layer_of(key: str) -> str:
        index = key.partition(".")[0]
        if index.isdigit() and int(index) < len(layers):
            layer = layers[int(index)]
            return f"network[{index}] ({layer_summary([layer])})"
        return "no layer of the spec's network"

    for key, shape in expected.items():
        if key not in state:
            return f"it has no tensor {key!r}, which {layer_of(key)} needs"
        got = tuple(state[key].shape)
        if got != shape:
            return f"{key!r} has shape {list(got)}, {layer_of(key)} needs {list(shape)}"
    extra = [k for k in state if k not in expected]
    if extra:
        return f"it holds {extra[0]!r}, which belongs to {layer_of(extra[0])}"
    bad = [k for k, t in state.items() if _float_kind(t) not in (None, "float32", "float64")]
    if bad:
        return f"{bad[0]!r} is {state[bad[0]].dtype}; save float32 (or float64) tensors"
    return None


def _float_kind(tensor: Any) -> str | None:
    """``"float32"``, ``"float16"``, ... for a floating-point numpy array or torch tensor, None for the others."""
    name = str(tensor.dtype).removeprefix("torch.")
    return name if "float" in name else None


def _model_spec(folder: Path, manifest: dict[str, Any]) -> ModelSpec:
    """The bundle's validated spec (``manifest["spec"]``); for a bundle of format 1 or 2, written before bundles
    carried their spec, one built from its manifest: its features, outcome and card texts and the seed MLP (no
    FHIR mappings and no CDS service: ``gshap``'s :func:`service.training.pipeline.upgrade_bundle` adds them
    from a spec file)."""
    try:
        if "spec" in manifest:
            return spec_from_dict(manifest["spec"])
        return spec_from_dict(spec_from_legacy_manifest(manifest))
    except (SpecError, KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"model bundle {folder}: manifest.json has no valid model spec ({_one_line(exc)})") from exc

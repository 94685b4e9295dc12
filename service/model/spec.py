"""The model spec: a YAML file a person writes, validated against ``model_spec.schema.json``.

It says everything model-specific (docs/MODEL_SPEC.md documents every key): the name and version, the binary
outcome, the features in the network's input order (with units, valid ranges, the missing rule, and optionally
their FHIR codes, unit conversions and derivations), the optional preprocessing, the network as an ordered list
of layers (a ``torch.nn.Sequential`` whose state-dict keys are ``"0.weight"``, ...), and the optional
``population``, ``card``, ``cds`` and ``training`` sections. ``gshap train`` and ``gshap bundle`` read it; a
bundle's manifest carries the validated spec (``manifest["spec"]``), so a bundle describes itself.

A bad spec raises :class:`SpecError`, whose message names the key path and the rule, e.g.
``features[2].missing: must be one of forbidden, impute, zero_means_missing``.

torch, PyYAML and jsonschema are imported where they are needed, not at import time.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from service.model.card import CdsService, ModelCard, Outcome, outcome_from_spec
from service.model.features import (
    DERIVATIONS,
    LOINC,
    Feature,
    FeatureSpec,
    FhirCode,
    FhirMapping,
    FhirNearMiss,
    FhirUnit,
)

if TYPE_CHECKING:
    from torch import nn

__all__ = [
    "ACTIVATIONS",
    "EXACT_LAYERS",
    "EXACT_MAX_HIDDEN",
    "IDENTITY",
    "LAYER_KINDS",
    "SCHEMA_PATH",
    "SPECS",
    "Calibration",
    "Layer",
    "ModelSpec",
    "SpecError",
    "build_network",
    "exact_covered",
    "exact_reason",
    "layer_summary",
    "load_spec",
    "spec_from_dict",
    "spec_from_legacy_manifest",
    "state_shapes",
]

SCHEMA_PATH = Path(__file__).with_name("model_spec.schema.json")
SPECS = Path(__file__).resolve().parents[2] / "model_store" / "specs"
"""Where the shipped models' specs live (``pima-diabetes.yaml``, ``breast-cancer-wisconsin.yaml``)."""

ACTIVATIONS = ("relu", "leaky_relu", "tanh", "sigmoid", "gelu", "silu", "elu", "softplus")
LAYER_KINDS = ("linear", "batchnorm1d", "dropout", "identity", *ACTIVATIONS)
EXACT_LAYERS = frozenset({"linear", "relu", "leaky_relu", "batchnorm1d", "dropout", "identity"})
"""The layers of a network the exact kernel covers: the piecewise-linear ones, in any order, at any depth up to
:data:`EXACT_MAX_HIDDEN` activations (:mod:`service.engine.piecewise`, :mod:`service.engine.exact_kernel`)."""
EXACT_MAX_HIDDEN = 64  # service.engine.exact_kernel.MAX_HIDDEN_LAYERS (the model layer does not import the engine)
_DEFAULT_PARAMETER = {"leaky_relu": 0.01, "elu": 1.0, "softplus": 1.0}
BATCHNORM_EPS = 1e-5


@dataclass(frozen=True)
class Calibration:
    """An affine map of the logit, ``calibrated = a·logit + b`` (Platt scaling when fitted; identity otherwise).

    Affine in the logit so that the exact GradientSHAP estimator stays exact: the calibrated network is the raw
    network with its last affine layer scaled by ``a`` and shifted by ``b``, its attributions of the logit are
    ``a`` times the raw ones and its base value is ``a·base + b``.
    """

    method: str = "none"
    fitted_on: str = ""
    a: float = 1.0
    b: float = 0.0

    @property
    def name(self) -> str:
        """What the answers call the probability scale: ``"platt/validation"``, or ``"none"`` (raw model)."""
        return "none" if self.method == "none" else f"{self.method}/{self.fitted_on}"

    def to_dict(self) -> dict[str, Any]:
        return {"method": self.method, "fitted_on": self.fitted_on, "a": self.a, "b": self.b, "name": self.name}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> Calibration:
        a, b = float(d["a"]), float(d["b"])
        if not (math.isfinite(a) and math.isfinite(b) and a > 0):
            raise ValueError(f"calibration needs finite a > 0 and finite b, got a={a}, b={b}")
        return cls(method=str(d["method"]), fitted_on=str(d.get("fitted_on", "")), a=a, b=b)


IDENTITY = Calibration()


class SpecError(ValueError):
    """A model spec that cannot be used: the message names the key path and the rule it breaks."""


@dataclass(frozen=True)
class Layer:
    """One layer of the network: ``kind`` (one of :data:`LAYER_KINDS`) and its arguments (``linear``: in and out
    widths; ``batchnorm1d``: width; ``dropout``: p; ``leaky_relu``: negative slope; ``elu``: alpha;
    ``softplus``: beta; the others: none)."""

    kind: str
    args: tuple[float, ...] = ()

    def to_yaml(self) -> str | dict[str, Any]:
        """The spec's spelling: a bare name, or a one-key mapping."""
        if not self.args:
            return self.kind
        if self.kind == "linear":
            return {"linear": [int(self.args[0]), int(self.args[1])]}
        if self.kind == "batchnorm1d":
            return {"batchnorm1d": int(self.args[0])}
        return {self.kind: self.args[0]}


@dataclass(frozen=True)
class ModelSpec:
    """A validated model spec. ``data`` is the spec as written (after validation), what a manifest stores."""

    name: str
    version: str
    outcome: Outcome
    features: FeatureSpec
    preprocessing: Mapping[str, Any] | None
    network: tuple[Layer, ...]
    card: ModelCard
    cds: CdsService | None
    training: Mapping[str, Any]
    data: Mapping[str, Any] = field(repr=False, compare=False, default_factory=dict)

    @property
    def exact(self) -> bool:
        """Whether the exact kernel covers this network (see :func:`exact_covered`)."""
        return exact_covered(self.network)

    def with_identity(self, name: str, version: str) -> ModelSpec:
        """The same spec under another name and version (``gshap train --name/--version``)."""
        return spec_from_dict({**self.data, "name": name, "version": version})


def exact_covered(layers: Sequence[Layer]) -> bool:
    """Whether the compiled exact kernel covers a network: only Linear, ReLU, LeakyReLU (any slope), BatchNorm1d,
    Dropout and Identity layers, in any order, with at most :data:`EXACT_MAX_HIDDEN` activations. Every other
    network (a smooth activation anywhere) is served with the ``sampled`` and ``quadrature`` estimators only."""
    kinds = [layer.kind for layer in layers]
    hidden = sum(k in ("relu", "leaky_relu") for k in kinds)
    return "linear" in kinds and set(kinds) <= EXACT_LAYERS and hidden <= EXACT_MAX_HIDDEN


def exact_reason(layers: Sequence[Layer]) -> str:
    """Why the exact kernel does not cover a network (``""`` when it does), in one sentence."""
    if exact_covered(layers):
        return ""
    return (
        "exact explanations need a piecewise-linear network (Linear, ReLU, LeakyReLU, BatchNorm1d, Dropout and "
        f"Identity layers, at most {EXACT_MAX_HIDDEN} activations); this one is {layer_summary(layers)}"
    )


def layer_summary(layers: Sequence[Layer]) -> str:
    """``"Linear(8,64)-ReLU-BatchNorm1d(64)-…"``: the network in one line, for cards and manifests."""
    names = {"linear": "Linear", "batchnorm1d": "BatchNorm1d", "dropout": "Dropout", "identity": "Identity",
             "relu": "ReLU", "leaky_relu": "LeakyReLU", "tanh": "Tanh", "sigmoid": "Sigmoid", "gelu": "GELU",
             "silu": "SiLU", "elu": "ELU", "softplus": "Softplus"}  # fmt: skip
    parts = []
    for layer in layers:
        args = ",".join(f"{int(a)}" if layer.kind in ("linear", "batchnorm1d") else f"{a:g}" for a in layer.args)
        parts.append(f"{names[layer.kind]}({args})" if args else names[layer.kind])
    return "-".join(parts)


# ---- validation -------------------------------------------------------------------------------------------------


def _path(parts: Sequence[str | int]) -> str:
    out = ""
    for p in parts:
        out += f"[{p}]" if isinstance(p, int) else (f".{p}" if out else str(p))
    return out or "(top level)"


def _rule(error: Any) -> str:
    """The rule a jsonschema ``ValidationError`` breaks, in words."""
    v, arg, inst = error.validator, error.validator_value, error.instance
    if v == "enum":
        return "must be one of " + ", ".join(str(a) if a != "" else '""' for a in arg)
    if v == "required":
        missing = [k for k in arg if k not in inst]
        return f"missing required key {missing[0]!r}" if missing else error.message
    if v == "additionalProperties":
        extra = sorted(set(inst) - set(error.schema.get("properties", {})))
        return f"unknown key {extra[0]!r}" if extra else error.message
    if v == "type":
        kinds = arg if isinstance(arg, list) else [arg]
        text = " or ".join("a whole number" if k == "integer" else f"a {k}" for k in kinds)
        hint = " (quote it in YAML)" if "string" in kinds and isinstance(inst, int | float) else ""
        return f"must be {text}{hint}, got {inst!r}"
    if v == "pattern":
        return f"must match {arg}, got {inst!r}"
    if v in ("minimum", "exclusiveMinimum", "maximum", "exclusiveMaximum"):
        op = {"minimum": ">=", "exclusiveMinimum": ">", "maximum": "<=", "exclusiveMaximum": "<"}[v]
        return f"must be {op} {arg}, got {inst!r}"
    if v in ("minItems", "maxItems", "minLength", "minProperties", "maxProperties"):
        what = {"minItems": "at least {} items", "maxItems": "at most {} items", "minLength": "at least {} characters",
                "minProperties": "at least {} key", "maxProperties": "at most {} key"}[v]  # fmt: skip
        return "must have " + what.format(arg)
    if v == "oneOf":  # a layer: neither a bare name nor a one-key mapping
        return (
            "must be a layer: a bare name (relu, leaky_relu, identity, tanh, sigmoid, gelu, silu, elu, softplus) or "
            "a one-key mapping ({linear: [in, out]}, {batchnorm1d: width}, {dropout: p}, {leaky_relu: slope}, "
            "{elu: alpha}, {softplus: beta})"
        )
    return str(error.message)


def _schema_errors(data: Any) -> list[str]:
    import jsonschema

    schema = json.loads(SCHEMA_PATH.read_text())
    validator = jsonschema.Draft202012Validator(schema)
    errors = sorted(validator.iter_errors(data), key=lambda e: (len(e.absolute_path), list(map(str, e.path))))
    out = []
    for error in errors:
        e = error
        if e.validator == "oneOf" and isinstance(e.instance, dict) and len(e.instance) == 1:
            # a one-key mapping: report the inner problem (e.g. network[2].linear: must have at least 2 items)
            inner = [c for c in e.context or () if c.validator not in ("enum", "oneOf") and c.relative_path]
            if inner:
                e = inner[0]
        out.append(f"{_path(list(e.absolute_path))}: {_rule(e)}")
    return out


def _parse_layer(item: Any, where: str) -> Layer:
    if isinstance(item, str):
        return Layer(item, (_DEFAULT_PARAMETER[item],) if item in _DEFAULT_PARAMETER else ())
    ((kind, value),) = item.items()
    if kind == "linear":
        return Layer("linear", (int(value[0]), int(value[1])))
    if kind == "batchnorm1d":
        return Layer("batchnorm1d", (int(value),))
    if not (isinstance(value, int | float) and math.isfinite(value)):
        raise SpecError(f"{where}.{kind}: must be a finite number")
    return Layer(kind, (float(value),))


def _check_network(layers: Sequence[Layer], n_features: int) -> None:
    """Widths must chain from the number of features to one logit."""
    width = n_features
    seen_linear = False
    for i, layer in enumerate(layers):
        where = f"network[{i}].{layer.kind}"
        if layer.kind == "linear":
            n_in, n_out = int(layer.args[0]), int(layer.args[1])
            if n_in != width:
                source = f"{n_features} features" if not seen_linear else f"a layer of width {width}"
                raise SpecError(f"{where}: takes {n_in} inputs but follows {source}")
            width, seen_linear = n_out, True
        elif layer.kind == "batchnorm1d" and int(layer.args[0]) != width:
            raise SpecError(f"{where}: has width {int(layer.args[0])} but follows a layer of width {width}")
    if not seen_linear:
        raise SpecError("network: must contain a linear layer")
    if width != 1:
        raise SpecError(f"network: must end in one output (the logit), this one ends in width {width}")


def _unit(d: Mapping[str, Any]) -> FhirUnit:
    return FhirUnit(
        ucum=str(d["ucum"]),
        factor=float(d.get("factor", 1.0)),
        spellings=tuple(str(s) for s in d.get("spellings", ())),
        source=str(d.get("source", "")),
    )


def _code(d: Mapping[str, Any]) -> FhirCode:
    return FhirCode(
        system=str(d.get("system", LOINC)),
        code=str(d["code"]),
        display=str(d["display"]),
        units=tuple(_unit(u) for u in d["units"]),
        panels=tuple(str(p) for p in d.get("panels", ())),
        note=str(d.get("note", "")),
    )


def _mapping(d: Mapping[str, Any]) -> FhirMapping:
    derivation = DERIVATIONS.get(str(d.get("derivation", "")))
    return FhirMapping(
        ucum=str(d["ucum"]),
        own_units=tuple(_unit(u) for u in d.get("own_units", [{"ucum": d["ucum"]}])),
        codes=tuple(_code(c) for c in d.get("codes", ())),
        near_misses=tuple(
            FhirNearMiss(str(n.get("system", LOINC)), str(n["code"]), str(n["display"]), str(n["reason"]))
            for n in d.get("near_misses", ())
        ),
        patient_element=derivation.patient_element if derivation else "",
        derived_from=derivation.derived_from if derivation else (),
        integer_values=bool(d.get("integer_values", False)),
        dimensionless=bool(d.get("dimensionless", False)),
        note=str(d.get("note", "")),
        derivation=derivation.name if derivation else "",
    )


def _default_example(lo: float, hi: float) -> float:
    return 0.0 if lo <= 0.0 <= hi else lo


def spec_from_dict(data: Mapping[str, Any]) -> ModelSpec:
    """Validate a spec (as parsed from YAML or stored in a manifest) and build it; :class:`SpecError` if bad."""
    problems = _schema_errors(data)
    if problems:
        more = f" (and {len(problems) - 1} more)" if len(problems) > 1 else ""
        raise SpecError(problems[0] + more)
    outcome = outcome_from_spec(data["outcome"])
    names: list[str] = []
    feats: list[Feature] = []
    fhir: Mapping[str, Any] = data.get("fhir", {})
    for i, f in enumerate(data["features"]):
        if f["name"] in names:
            first = names.index(f["name"])
            raise SpecError(f"features[{i}].name: {f['name']!r} is already the name of features[{first}]")
        names.append(f["name"])
        lo, hi = float(f["valid_min"]), float(f["valid_max"])
        if not lo <= hi:
            raise SpecError(f"features[{i}].valid_max: must be >= valid_min ({lo:g}), got {hi:g}")
        example = float(f.get("example", _default_example(lo, hi)))
        if not lo <= example <= hi:
            raise SpecError(f"features[{i}].example: must lie in [valid_min, valid_max], got {example:g}")
        feats.append(
            Feature(
                name=f["name"],
                column=f["column"],
                label=f["label"],
                unit=f["unit"],
                description=f["description"],
                valid_min=f["valid_min"],
                valid_max=f["valid_max"],
                integer=bool(f.get("integer", False)),
                example=f.get("example", _default_example(lo, hi)),
                fhir=_mapping(fhir[f["name"]]) if f["name"] in fhir else None,
                missing=f["missing"],
            )
        )
    unknown = [k for k in fhir if k not in names]
    if unknown:
        raise SpecError(f"fhir.{unknown[0]}: names no feature (the features are {', '.join(names)})")
    if outcome.column in [f.column for f in feats]:
        raise SpecError(f"outcome.column: {outcome.column!r} is also a feature's column")
    pre = data.get("preprocessing")
    if pre is not None:
        for key in ("mean", "scale"):
            if len(pre[key]) != len(feats):
                n = len(pre[key])
                raise SpecError(f"preprocessing.{key}: must have one number per feature ({len(feats)}), got {n}")
    layers = tuple(_parse_layer(item, f"network[{i}]") for i, item in enumerate(data["network"]))
    _check_network(layers, len(feats))
    spec = FeatureSpec(
        features=tuple(feats),
        target_column=outcome.column,
        target_label=outcome.label,
        positive_label=outcome.positive_label,
        negative_label=outcome.negative_label,
        target_positive=outcome.positive,
    )
    cds = data.get("cds")
    return ModelSpec(
        name=str(data["name"]),
        version=str(data["version"]),
        outcome=outcome,
        features=spec,
        preprocessing=dict(pre) if pre is not None else None,
        network=layers,
        card=ModelCard.from_sections(outcome, data.get("population"), data.get("card")),
        cds=CdsService(str(cds["id"]), str(cds["title"]), str(cds["description"])) if cds else None,
        training=dict(data.get("training", {})),
        data=json.loads(json.dumps(data)),
    )


SEED_NETWORK: tuple[str | dict[str, Any], ...] = (
    {"linear": [0, 64]}, "relu", {"batchnorm1d": 64}, {"linear": [64, 64]}, "relu", {"batchnorm1d": 64},
    {"dropout": 0.5}, {"linear": [64, 1]},
)  # fmt: skip
"""The seed document's MLP (``F -> 64 -> 64 -> 1``), the network of every bundle written before bundles carried
their spec (``0`` is replaced by the number of features)."""


def spec_from_legacy_manifest(manifest: Mapping[str, Any]) -> dict[str, Any]:
    """The spec of a bundle written before bundles carried one (format 2 without ``spec``): its features,
    outcome and card texts from the manifest, and the seed MLP (the only network such bundles hold)."""
    feats: Mapping[str, Any] = manifest["features"]
    card: dict[str, Any] = dict(manifest.get("card", {}))
    population = card.pop("population", None)
    n = len(feats["features"])
    network = [{"linear": [n, 64]} if i == 0 else layer for i, layer in enumerate(SEED_NETWORK)]
    out: dict[str, Any] = {
        "name": manifest["name"],
        "version": str(manifest["version"]),
        "outcome": {
            "column": feats["target_column"],
            "positive": feats.get("target_positive", 1),
            "label": feats.get("target_label", "positive outcome"),
            "positive_label": feats.get("positive_label", "positive"),
            "negative_label": feats.get("negative_label", "negative"),
        },
        "features": [
            {
                "name": f["name"],
                "column": f["column"],
                "label": f["label"],
                "unit": f["unit"],
                "description": f["description"],
                "valid_min": f["valid_min"],
                "valid_max": f["valid_max"],
                "missing": f.get("missing") or ("zero_means_missing" if f.get("zero_means_missing") else "forbidden"),
                "integer": bool(f.get("integer", False)),
                "example": f.get("example", 0.0),
            }
            for f in feats["features"]
        ],
        "network": network,
    }
    if isinstance(population, Mapping) and population.get("description"):
        out["population"] = {k: v for k, v in population.items() if k not in ("sex", "min_age")}
    if card:
        out["card"] = card
    return out


def load_spec(path: str | Path) -> ModelSpec:
    """Read and validate a YAML (or JSON) model spec file; :class:`SpecError` names the file, key and rule."""
    import yaml

    p = Path(path)
    try:
        text = p.read_text(encoding="utf-8")
    except OSError as exc:
        raise SpecError(f"{p}: cannot be read ({exc.strerror or exc})") from exc
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise SpecError(f"{p}: is not valid YAML ({' '.join(str(exc).split())})") from exc
    if not isinstance(data, dict):
        raise SpecError(f"{p}: must be a mapping of keys (name, version, outcome, features, network, ...)")
    try:
        return spec_from_dict(data)
    except SpecError as exc:
        raise SpecError(f"{p}: {exc}") from exc


def state_shapes(layers: Sequence[Layer]) -> dict[str, tuple[int, ...]]:
    """The state dict of :func:`build_network`'s network without building it: each key's shape, in the order of
    ``nn.Sequential.state_dict()`` (a Linear's weight and bias; a BatchNorm1d's weight, bias, running mean and
    variance and ``num_batches_tracked``)."""
    out: dict[str, tuple[int, ...]] = {}
    for i, layer in enumerate(layers):
        if layer.kind == "linear":
            n_in, n_out = int(layer.args[0]), int(layer.args[1])
            out[f"{i}.weight"], out[f"{i}.bias"] = (n_out, n_in), (n_out,)
        elif layer.kind == "batchnorm1d":
            n = int(layer.args[0])
            for name in ("weight", "bias", "running_mean", "running_var"):
                out[f"{i}.{name}"] = (n,)
            out[f"{i}.num_batches_tracked"] = ()
    return out


def build_network(layers: Sequence[Layer]) -> nn.Sequential:
    """The ``torch.nn.Sequential`` of a layer list (state-dict keys ``"0.weight"``, ``"2.running_mean"``, ...)."""
    from torch import nn

    modules: list[nn.Module] = []
    for layer in layers:
        a = layer.args
        match layer.kind:
            case "linear":
                modules.append(nn.Linear(int(a[0]), int(a[1])))
            case "batchnorm1d":
                modules.append(nn.BatchNorm1d(int(a[0]), eps=BATCHNORM_EPS))
            case "dropout":
                modules.append(nn.Dropout(p=float(a[0])))
            case "identity":
                modules.append(nn.Identity())
            case "relu":
                modules.append(nn.ReLU())
            case "leaky_relu":
                modules.append(nn.LeakyReLU(negative_slope=float(a[0])))
            case "tanh":
                modules.append(nn.Tanh())
            case "sigmoid":
                modules.append(nn.Sigmoid())
            case "gelu":
                modules.append(nn.GELU())
            case "silu":
                modules.append(nn.SiLU())
            case "elu":
                modules.append(nn.ELU(alpha=float(a[0])))
            case "softplus":
                modules.append(nn.Softplus(beta=float(a[0])))
            case _:
                raise SpecError(f"unknown layer {layer.kind!r}")
    return nn.Sequential(*modules)

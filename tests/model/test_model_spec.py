"""The model spec: the YAML file a person writes, its JSON Schema, its errors, and what a bundle reads from it."""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.model.spec import SPECS, SpecError, build_network, exact_covered, load_spec, spec_from_dict

PIMA = SPECS / "pima-diabetes.yaml"


def _pima() -> dict[str, Any]:
    data: dict[str, Any] = yaml.safe_load(PIMA.read_text())
    return data


def test_pima_spec_describes_the_served_bundle(bundle) -> None:  # type: ignore[no-untyped-def]
    """The Pima spec file holds the served bundle's features (FHIR mappings included), outcome, card and CDS service."""
    spec = load_spec(PIMA)
    assert spec.name == bundle.name
    assert spec.version == bundle.version
    assert spec.features == bundle.spec
    assert [f.fhir for f in spec.features] == [f.fhir for f in bundle.spec]
    assert all(f.fhir is not None for f in bundle.spec)
    assert bundle.spec.by_name("bmi").fhir.derivation == "bmi_from_weight_and_height"
    assert bundle.spec.by_name("age").fhir.patient_element == "birthDate"
    assert bundle.card.population.sex == "female"
    assert bundle.card.population.min_age == 21
    assert bundle.card.outcome.column == "Outcome"
    assert bundle.card.outcome.positive == 1
    assert bundle.cds is not None
    assert bundle.cds.id == "diabetes-risk"
    assert bundle.methods == ("exact", "sampled", "quadrature")
    assert bundle.default_method == "exact"


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda d: d["features"][2].update(missing="sometimes"),
         "features[2].missing: must be one of forbidden, impute, zero_means_missing"),
        (lambda d: d.update(name="Pima Diabetes"), "name: must match ^[a-z0-9-]+$"),
        (lambda d: d.update(version=1.1), "version: must be a string (quote it in YAML)"),
        (lambda d: d["features"][0].pop("unit"), "features[0]: missing required key 'unit'"),
        (lambda d: d["outcome"].update(colour="red"), "outcome: unknown key 'colour'"),
        (lambda d: d["network"].insert(1, "swish"), "network[1]: must be a layer"),
        (lambda d: d["network"].__setitem__(0, {"linear": [7, 64]}),
         "network[0].linear: takes 7 inputs but follows 8 features"),
        (lambda d: d["network"].__setitem__(2, {"batchnorm1d": 32}),
         "network[2].batchnorm1d: has width 32 but follows a layer of width 64"),
        (lambda d: d["network"].__setitem__(7, {"linear": [64, 2]}), "network: must end in one output"),
        (lambda d: d["fhir"].update(height={"ucum": "cm"}), "fhir.height: names no feature"),
        (lambda d: d["fhir"]["bmi"].update(derivation="bmi_from_waist"),
         "fhir.bmi.derivation: must be one of bmi_from_weight_and_height, age_from_birthdate"),
        (lambda d: d.update(preprocessing={"mean": [0.0] * 8, "scale": [1.0] * 7}),
         "preprocessing.scale: must have one number per feature (8), got 7"),
        (lambda d: d["features"][1].update(valid_max=-1), "features[1].valid_max: must be >= valid_min"),
    ],
)  # fmt: skip
def test_a_bad_spec_names_the_key_and_the_rule(edit: Any, message: str) -> None:
    """Each broken spec raises SpecError whose message starts with the key path and states the rule."""
    data = copy.deepcopy(_pima())
    edit(data)
    with pytest.raises(SpecError) as info:
        spec_from_dict(data)
    assert str(info.value).startswith(message), str(info.value)


def test_a_spec_file_error_names_the_file(tmp_path: Path) -> None:
    """A spec file that is not YAML, or not a mapping, is refused with the file's name."""
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: [unclosed\n")
    with pytest.raises(SpecError, match=r"bad\.yaml: is not valid YAML"):
        load_spec(bad)
    bad.write_text("- just a list\n")
    with pytest.raises(SpecError, match=r"bad\.yaml: must be a mapping"):
        load_spec(bad)


def test_network_is_a_sequential_with_numbered_keys() -> None:
    """The layer list builds an nn.Sequential whose state-dict keys are the layer indices ("0.weight", ...)."""
    net = build_network(load_spec(PIMA).network)
    keys = list(net.state_dict())
    assert keys[:2] == ["0.weight", "0.bias"]
    assert "2.running_mean" in keys
    assert keys[-1] == "7.bias"


def test_every_piecewise_linear_network_is_exact() -> None:
    """The exact kernel covers any network of Linear/ReLU/LeakyReLU/BatchNorm/Dropout/Identity layers, at any depth
    (one hidden layer, three with a leaky ReLU); a smooth activation anywhere (tanh) is not covered."""
    base = _pima()
    assert exact_covered(spec_from_dict(base).network)
    tanh = copy.deepcopy(base)
    tanh["network"] = [{"linear": [8, 16]}, "tanh", {"linear": [16, 1]}]
    assert not exact_covered(spec_from_dict(tanh).network)
    one = copy.deepcopy(base)
    one["network"] = [{"linear": [8, 16]}, "relu", {"linear": [16, 1]}]
    assert exact_covered(spec_from_dict(one).network)
    leaky = copy.deepcopy(base)
    leaky["network"] = [
        {"linear": [8, 16]}, "leaky_relu", {"linear": [16, 8]}, {"batchnorm1d": 8}, {"leaky_relu": 0.2},
        {"linear": [8, 8]}, "relu", {"dropout": 0.1}, {"linear": [8, 1]},
    ]  # fmt: skip
    assert exact_covered(spec_from_dict(leaky).network)


def test_gshap_train_refuses_a_bad_spec_in_one_line(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """`gshap train --spec` with a broken spec exits 2 before training, naming the file, the key and the rule."""
    from service.cli import main as gshap

    data = _pima()
    data["features"][3]["missing"] = "often"
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(data))
    assert gshap(["train", "--spec", str(bad), "--out", str(tmp_path / "store")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (f"gshap train: {bad}: features[3].missing: must be one of forbidden, impute, zero_means_missing")
    assert not (tmp_path / "store").exists()


def test_an_outcome_column_that_does_not_fit_the_spec_is_named(tmp_path: Path) -> None:
    """The outcome column must hold the spec's positive value and one other; a third value, or no positive value,
    is an error naming the column; a forbidden feature left empty is an error naming the column and the row."""
    from service.training.data import load_dataset

    spec = load_spec(PIMA).features
    header = ",".join([*spec.columns, "Outcome"])
    row = "6,148,72,35,0,33.6,0.627,50"
    csv = tmp_path / "x.csv"
    csv.write_text(f"{header}\n{row},1\n{row},0\n{row},2\n")
    with pytest.raises(ValueError, match=r"outcome column 'Outcome' must hold two values, 1 \(positive\)"):
        load_dataset(csv, spec)
    csv.write_text(f"{header}\n{row},0\n{row},0\n")
    with pytest.raises(ValueError, match="never holds the positive value 1"):
        load_dataset(csv, spec)
    csv.write_text(f"{header}\n{row},1\n,148,72,35,0,33.6,0.627,50,0\n")
    with pytest.raises(ValueError, match=r"column 'Pregnancies' is empty in 1 rows \(first: data row 2\)"):
        load_dataset(csv, spec)

"""The request schema is derived from the served bundle's feature specification, strict, and documented with units.

The models checked here are the ones the app builds for the shipped default bundle (``request_models``).
"""

from __future__ import annotations

from typing import Any

import pytest
from helpers import default_spec
from pydantic import ValidationError

from service.contract import format_value
from service.model.features import Feature, FeatureSpec
from service.render.text import SummaryWriter, summary_sentence
from service.runtime.inference import FeatureAttribution
from service.schemas import example_record, patient_record_model, request_models

SCHEMA_SPEC = default_spec()
MODELS = request_models(SCHEMA_SPEC)
PatientRecord = MODELS.record
ExplainRequest = MODELS.explain
ExplainBatchRequest = MODELS.explain_batch


def _rules(exc: ValidationError) -> dict[str, str]:
    return {".".join(str(p) for p in e["loc"]): e["type"] for e in exc.errors()}


def test_record_fields_are_the_spec_in_order() -> None:
    """PatientRecord has one field a feature, in the specification's order, and nothing else."""
    assert list(PatientRecord.model_fields) == SCHEMA_SPEC.names


def test_required_fields_are_the_features_that_cannot_be_missing() -> None:
    """Exactly the features without a 'zero means missing' rule are required."""
    schema = PatientRecord.model_json_schema()
    assert set(schema["required"]) == {f.name for f in SCHEMA_SPEC if not f.zero_means_missing}


def test_descriptions_carry_unit_range_and_missing_rule() -> None:
    """Each field's description names its unit and range; optional ones explain 'not measured'."""
    props = PatientRecord.model_json_schema()["properties"]
    for f in SCHEMA_SPEC:
        text = props[f.name]["description"]
        assert f.unit in text
        assert f"from {format_value(f.valid_min)} to {format_value(f.valid_max)}" in text
        assert ("not measured" in text) == f.zero_means_missing
        assert props[f.name]["examples"] == [example_record(SCHEMA_SPEC)[f.name]]


def test_bounds_are_the_valid_range() -> None:
    """The JSON schema bounds are the spec's valid_min/valid_max; counts are integers."""
    props = PatientRecord.model_json_schema()["properties"]
    for f in SCHEMA_SPEC:
        p = props[f.name]
        options = p.get("anyOf", [p])
        number = next(o for o in options if o.get("type") != "null")
        assert number["minimum"] == f.valid_min
        assert number["maximum"] == f.valid_max
        assert number["type"] == ("integer" if f.integer else "number")


def test_example_record_is_valid() -> None:
    """The documented example validates as a record and as an explain request."""
    PatientRecord.model_validate(example_record(SCHEMA_SPEC))
    ExplainRequest.model_validate({**example_record(SCHEMA_SPEC), "method": "sampled", "n_samples": 10, "seed": 1})


@pytest.mark.parametrize(
    ("changes", "rule"),
    [
        ({"glucose": "148"}, "float_type"),
        ({"glucose": True}, "float_type"),
        ({"pregnancies": 6.5}, "int_type"),
        ({"pregnancies": False}, "int_type"),
        ({"glucose": float("nan")}, "finite_number"),
        ({"glucose": float("inf")}, "finite_number"),
        ({"glucose": -0.5}, "greater_than_equal"),
        ({"glucose": 600.5}, "less_than_equal"),
        ({"glucos": 148}, "extra_forbidden"),
    ],
)
def test_strict_types(changes: dict[str, Any], rule: str) -> None:
    """Strings, booleans, floats for counts, NaN/Infinity, out-of-range and unknown fields are refused."""
    with pytest.raises(ValidationError) as info:
        PatientRecord.model_validate({**example_record(SCHEMA_SPEC), **changes})
    assert set(_rules(info.value).values()) == {rule}


def test_integers_are_accepted_for_real_valued_fields() -> None:
    """A JSON integer is a valid number: bmi 33 is fine."""
    assert PatientRecord.model_validate({**example_record(SCHEMA_SPEC), "bmi": 33}).model_dump()["bmi"] == 33


def test_missing_may_be_null_or_omitted_but_required_may_not() -> None:
    """Optional features may be null or omitted (None); a required one may not."""
    rec = example_record(SCHEMA_SPEC)
    del rec["glucose"]
    assert PatientRecord.model_validate({**rec, "insulin": None}).model_dump()["glucose"] is None
    no_age = example_record(SCHEMA_SPEC)
    del no_age["age"]
    with pytest.raises(ValidationError) as info:
        PatientRecord.model_validate(no_age)
    assert _rules(info.value) == {"age": "missing"}


def test_explain_settings_are_at_the_top_level_and_strict() -> None:
    """The explain request takes record fields and settings side by side, with defaults and strict bounds."""
    req = ExplainRequest.model_validate(example_record(SCHEMA_SPEC))
    assert (req.method, req.output, req.seed, req.n_samples) == ("exact", "logit", 0, None)
    with pytest.raises(ValidationError):
        ExplainRequest.model_validate({**example_record(SCHEMA_SPEC), "seed": 1.5})
    # 6.0 and 6 are the same JSON number, and a JSON Schema integer: read as the integer
    assert ExplainRequest.model_validate({**example_record(SCHEMA_SPEC), "seed": 1.0, "pregnancies": 6.0}).seed == 1
    batch = ExplainBatchRequest.model_validate({"records": [1, "x"], "output": "probability"})
    assert batch.records == [1, "x"]  # records are validated one by one by the route, by index


def test_schema_follows_another_spec() -> None:
    """A different feature specification gives a different record model, with no code change."""
    spec = FeatureSpec(
        features=(
            Feature("height", "Height", "Height", "cm", "Body height.", 30, 250, example=170),
            Feature("lactate", "Lactate", "Lactate", "mmol/L", "Blood lactate.", 0, 30, True, example=1.2),
        ),
        target_column="y",
    )
    model = patient_record_model(spec, "OtherRecord")
    assert list(model.model_fields) == ["height", "lactate"]
    assert model.model_validate({"height": 170}).model_dump() == {"height": 170, "lactate": None}
    with pytest.raises(ValidationError):
        model.model_validate({"height": 10})


def _attr(feature: str, value: float, attribution: float, imputed: bool = False) -> FeatureAttribution:
    f = SCHEMA_SPEC.by_name(feature)
    return FeatureAttribution(feature, f.label, f.unit, value, imputed, attribution, 0.0)


def test_summary_sentence_names_drivers_up_and_down() -> None:
    """The summary names the two strongest drivers up with units and the strongest down, in one sentence."""
    attrs = [
        _attr("glucose", 148, 0.9),
        _attr("bmi", 33.6, 0.5),
        _attr("age", 50, -0.3),
        _attr("insulin", 125, 0.01, imputed=True),
    ]
    assert summary_sentence(SCHEMA_SPEC, attrs) == (
        "Glucose of 148 mg/dL and BMI of 33.6 kg/m² push the predicted risk up most; age of 50 years pushes it down."
    )


def test_summary_sentence_leads_with_the_stronger_direction_and_flags_imputation() -> None:
    """When the strongest driver pushes down it comes first; an imputed value says so."""
    attrs = [_attr("glucose", 117, -1.0, imputed=True), _attr("pregnancies", 6, 0.4), _attr("age", 22, -0.05)]
    assert summary_sentence(SCHEMA_SPEC, attrs) == (
        "Glucose (not measured; imputed as 117 mg/dL) pushes the predicted risk down most; "
        "the number of pregnancies (6) pushes it up."
    )


def test_summary_sentence_without_drivers() -> None:
    """All-zero attributions say that nothing moves the risk."""
    attrs = [_attr("glucose", 117, 0.0), _attr("age", 30, 0.0)]
    assert summary_sentence(SCHEMA_SPEC, attrs) == "No feature moves the predicted risk away from the baseline average."


def test_summary_sentence_ties_keep_the_given_order_and_small_drivers_stay_out() -> None:
    """Drivers of equal size are named in the order given (a stable ranking); one under a tenth of the strongest
    is not named, and a third driver in one direction is not named either."""
    attrs = [
        _attr("bmi", 40, 0.5),
        _attr("glucose", 150, 0.5),
        _attr("age", 60, 0.5),
        _attr("blood_pressure", 90, -0.04),
    ]
    assert summary_sentence(SCHEMA_SPEC, attrs) == (
        "BMI of 40 kg/m² and glucose of 150 mg/dL push the predicted risk up most."
    )
    writer = SummaryWriter(SCHEMA_SPEC, target="probability")
    assert writer(attrs[::-1][1:]) == (
        "Age of 60 years and glucose of 150 mg/dL push the predicted probability up most."
    )


def test_documented_examples_validate_against_their_models() -> None:
    """Every example shown in /docs is a valid instance of its model (request or answer)."""
    from pydantic import BaseModel

    from service import schemas

    checked = 0
    served = [MODELS.record, MODELS.explain, MODELS.predict_batch, MODELS.explain_batch]
    for model in [getattr(schemas, name) for name in schemas.__all__] + served:
        if not (isinstance(model, type) and issubclass(model, BaseModel)):
            continue
        extra = model.model_config.get("json_schema_extra")
        examples = extra.get("examples", []) if isinstance(extra, dict) else []
        assert isinstance(examples, list), model.__name__
        for example in examples:
            model.model_validate(example)
            checked += 1
    assert checked >= 8


def test_method_default_and_words_follow_the_models_methods() -> None:
    """A model without the exact method gets 'quadrature' as the request's default, and the schema says that
    'exact' does not apply to it; 'exact' is still a name the schema takes (the route refuses it with a 422)."""
    models = request_models(SCHEMA_SPEC, ("sampled", "quadrature"), "quadrature")
    request = models.explain.model_validate(example_record(SCHEMA_SPEC))
    assert request.method == "quadrature"
    text = models.explain.model_json_schema()["properties"]["method"]["description"]
    assert "does not offer 'exact'" in text
    assert models.explain.model_validate({**example_record(SCHEMA_SPEC), "method": "exact"}).method == "exact"
    assert MODELS.explain.model_validate(example_record(SCHEMA_SPEC)).method == "exact"

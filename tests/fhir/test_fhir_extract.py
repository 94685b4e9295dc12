"""FHIR R4 to a model record: codes, UCUM units and their conversions, the latest final value, provenance, and the
values that are refused or ignored (and reported), all read from the feature specification's mapping."""

from __future__ import annotations

import datetime as dt
from typing import Any

import pytest
from fhir_helpers import load, resources

from service.fhir.extract import Extraction, age_on, extract
from service.fhir.resources import FhirInputError, TooManyEntriesError, parse_bundle
from service.model.spec import SPECS, load_spec

PIMA = load_spec(SPECS / "pima-diabetes.yaml").features  # the default model's features

NOW = dt.datetime(2026, 11, 29, 12, 0, tzinfo=dt.UTC)
U = "http://unitsofmeasure.org"


def run(bundle: dict[str, Any], now: dt.datetime = NOW) -> Extraction:
    parsed = parse_bundle(bundle, max_entries=1000)
    path, patient = parsed.patients[0]
    return extract(patient, parsed.observations, spec=PIMA, now=now, patient_path=path)


def with_obs(*items: dict[str, Any]) -> dict[str, Any]:
    bundle = load("patient_bundle.json")
    bundle["entry"] = [bundle["entry"][0]] + [{"resource": r} for r in items]
    return bundle


def obs(
    code: str, qty: dict[str, Any] | None = None, *, system: str = "http://loinc.org", **extra: Any
) -> dict[str, Any]:
    out: dict[str, Any] = {
        "resourceType": "Observation",
        "id": extra.pop("id", "o-" + code.replace("_", "-")),
        "status": extra.pop("status", "final"),
        "code": {"coding": [{"system": system, "code": code}]},
        "subject": {"reference": extra.pop("subject", "Patient/p-1001")},
        "effectiveDateTime": extra.pop("date", "2025-01-01T08:00:00Z"),
    }
    if qty is not None:
        out["valueQuantity"] = qty
    out.update(extra)
    return out


def test_realistic_bundle_gives_the_latest_final_value_of_each_feature() -> None:
    """The fixture (several values per code over time, a BP panel, mixed units) yields the expected record."""
    ex = run(load("patient_bundle.json"))
    assert ex.required_missing == ()
    assert ex.not_found == ()
    assert ex.sources["glucose"].resource == "Observation/glu-2025"  # newer 14995-5 beats older 1518-0
    assert ex.record["glucose"] == pytest.approx(8.2 * 18.016)
    assert ex.sources["blood_pressure"].resource == "Observation/bp-panel-2025"  # component of 85354-9
    assert ex.sources["blood_pressure"].path.endswith("component[1]")
    assert ex.record["blood_pressure"] == 82
    assert ex.record["insulin"] == pytest.approx(540 / 6.00)
    assert ex.record["pregnancies"] == 3
    assert ex.record["diabetes_pedigree_function"] == pytest.approx(0.52)
    assert ex.record["skin_thickness"] == 29
    assert ex.record["bmi"] == pytest.approx(31.2)
    assert ex.record["age"] == 50  # born 1976-03-14, call on 2026-11-29
    codes = {i.code for i in ex.issues}
    assert {"not_ogtt", "status_ignored", "other_patient"} <= codes


def test_provenance_names_resource_date_code_and_original_unit() -> None:
    """Each value says which resource, date, code, original value/unit and converted value it came from."""
    src = run(load("patient_bundle.json")).sources["insulin"]
    assert (src.resource, src.code, src.original_value, src.original_unit) == (
        "Observation/ins-2025",
        "20448-7",
        540,
        "pmol/L",
    )
    assert src.date.startswith("2025-06-01")
    assert src.unit == "µU/mL"
    assert "6.00" in src.note


@pytest.mark.parametrize(
    ("code", "qty", "expected"),
    [
        ("1518-0", {"value": 140, "system": U, "code": "mg/dL"}, 140.0),
        ("1518-0", {"value": 7.8, "system": U, "code": "mmol/L"}, 7.8 * 18.016),
        ("14995-5", {"value": 7.8, "unit": "mmol/L"}, 7.8 * 18.016),
        ("14995-5", {"value": 7.8, "unit": "mmol/l"}, 7.8 * 18.016),
        ("1518-0", {"value": 140, "unit": "mg/dl"}, 140.0),
    ],
)
def test_glucose_units_are_converted(code: str, qty: dict[str, Any], expected: float) -> None:
    """Glucose 7.8 mmol/L is 140.5 mg/dL (× 18.016), never 7.8 mg/dL; mg/dL passes unchanged."""
    ex = run(with_obs(obs(code, qty)))
    assert ex.record["glucose"] == pytest.approx(expected)


@pytest.mark.parametrize(
    ("qty", "expected"),
    [
        ({"value": 600, "system": U, "code": "pmol/L"}, 100.0),
        ({"value": 15, "system": U, "code": "u[IU]/mL"}, 15.0),
        ({"value": 15, "system": U, "code": "m[IU]/L"}, 15.0),
        ({"value": 15, "unit": "µIU/mL"}, 15.0),
        ({"value": 15, "unit": "mU/L"}, 15.0),
    ],
)
def test_insulin_units_are_converted(qty: dict[str, Any], expected: float) -> None:
    """Insulin pmol/L ÷ 6.00 gives µIU/mL; µIU/mL, mIU/L and their listed spellings pass unchanged."""
    assert run(with_obs(obs("20448-7", qty))).record["insulin"] == pytest.approx(expected)


def test_blood_pressure_in_kpa_and_bmi_from_weight_and_height_in_other_units() -> None:
    """kPa × 7.50062 gives mmHg; BMI derived from the latest weight (g) and height (in), flagged as derived."""
    ex = run(load("weight_height_bundle.json"))
    assert ex.record["blood_pressure"] == pytest.approx(10.4 * 7.50062)
    assert ex.derived == ("bmi",)
    bmi = 72.5 / (64 * 2.54 / 100) ** 2
    assert ex.record["bmi"] == pytest.approx(round(bmi, 1))
    assert [s.resource for s in ex.sources["bmi"].derived_from] == ["Observation/w-2", "Observation/h-1"]


def test_unknown_unit_is_refused_reported_and_never_guessed() -> None:
    """A unit outside the table is refused for that value (reported); an older valid value is used instead."""
    ex = run(load("weight_height_bundle.json"))
    assert ex.sources["insulin"].resource == "Observation/ins-miu"  # ng/mL (newer) refused
    refused = [i for i in ex.issues if i.code == "unknown_unit"]
    assert [i.resource for i in refused] == ["Observation/ins-bad"]
    assert refused[0].refused


@pytest.mark.parametrize(
    "qty",
    [
        {"value": 140, "unit": "mg per dl"},
        {"value": 140, "system": "http://example.org/units", "code": "mg/dL"},
        {"value": 140, "system": U, "code": "g/L"},
        {"value": 140},
    ],
)
def test_glucose_without_an_accepted_unit_is_not_used(qty: dict[str, Any]) -> None:
    """Unlisted unit text, a non-UCUM system, an unaccepted UCUM code or no unit: glucose stays not measured."""
    ex = run(with_obs(obs("1518-0", qty)))
    assert ex.record["glucose"] is None
    assert [i.code for i in ex.issues] == ["unknown_unit"]


def test_future_dates_are_refused() -> None:
    """An Observation dated after the call (beyond a minute of skew) is refused and reported."""
    ex = run(with_obs(obs("1518-0", {"value": 140, "system": U, "code": "mg/dL"}, date="2027-01-01T00:00:00Z")))
    assert ex.record["glucose"] is None
    assert [i.code for i in ex.issues] == ["future_date"]


def test_other_patients_and_unusable_statuses_are_ignored() -> None:
    """Another patient's, an entered-in-error, a cancelled or a preliminary value is never used."""
    q = {"value": 140, "system": U, "code": "mg/dL"}
    ex = run(
        with_obs(
            obs("1518-0", q, id="a", subject="Patient/someone-else"),
            obs("1518-0", q, id="b", status="entered-in-error"),
            obs("1518-0", q, id="c", status="cancelled"),
            obs("1518-0", q, id="d", status="preliminary"),
        )
    )
    assert ex.record["glucose"] is None
    assert sorted(i.code for i in ex.issues) == ["other_patient", "status_ignored", "status_ignored", "status_ignored"]


def test_amended_and_corrected_values_are_used() -> None:
    """The latest of final, amended and corrected wins."""
    q = {"value": 150, "system": U, "code": "mg/dL"}
    ex = run(
        with_obs(
            obs("1518-0", q, id="a", status="amended", date="2025-01-01"),
            obs("1518-0", {**q, "value": 160}, id="b", status="corrected", date="2025-02-01"),
        )
    )
    assert ex.sources["glucose"].resource == "Observation/b"


def test_fasting_or_random_glucose_is_never_used_as_ogtt_glucose() -> None:
    """Fasting (1558-6), random (2345-7), whole blood (2339-0) glucose and HbA1c are reported, not used."""
    q = {"value": 99, "system": U, "code": "mg/dL"}
    ex = run(
        with_obs(
            obs("1558-6", q),
            obs("2345-7", q),
            obs("2339-0", q),
            obs("4548-4", {"value": 6.1, "system": U, "code": "%"}),
        )
    )
    assert ex.record["glucose"] is None
    assert [i.code for i in ex.issues] == ["not_ogtt"] * 4


def test_missing_required_inputs_are_named_and_optional_ones_left_to_imputation() -> None:
    """No pregnancies and no pedigree score: required_missing names them; glucose etc. are just not found."""
    ex = run(with_obs())
    assert set(ex.required_missing) == {"pregnancies", "diabetes_pedigree_function"}
    assert ex.record["glucose"] is None
    assert "glucose" in ex.not_found


def test_feature_code_system_carries_any_feature_in_its_own_unit() -> None:
    """urn:gshap-service:feature|<name> works for every feature, in the feature's unit only."""
    feat = "urn:gshap-service:feature"
    ex = run(
        with_obs(
            obs("skin_thickness", {"value": 31, "system": U, "code": "mm"}, system=feat),
            obs("glucose", {"value": 7.8, "system": U, "code": "mmol/L"}, system=feat, id="g"),
        )
    )
    assert ex.record["skin_thickness"] == 31
    assert ex.record["glucose"] is None  # the service's code means mg/dL: mmol/L is refused, not converted


def test_counts_must_be_whole_and_values_plausible() -> None:
    """2.5 pregnancies and a BMI of 900 are refused (reported), not rounded or clipped."""
    ex = run(
        with_obs(
            obs("11996-6", {"value": 2.5, "system": U, "code": "1"}),
            obs("39156-5", {"value": 900, "system": U, "code": "kg/m2"}),
        )
    )
    assert ex.record["pregnancies"] is None
    assert ex.record["bmi"] is None
    assert sorted(i.code for i in ex.issues) == ["implausible_value", "not_integer"]


def test_age_is_counted_at_the_time_of_the_call() -> None:
    """Age from birthDate to the call's day; partial dates count from their last day and say so."""
    assert age_on(dt.date(1976, 3, 14), dt.date(2026, 3, 13)) == (49, False)
    assert age_on(dt.date(1976, 3, 14), dt.date(2026, 3, 14)) == (50, False)
    assert age_on("1976", dt.date(2026, 12, 30)) == (49, True)
    assert age_on("1976-03", dt.date(2026, 3, 31)) == (50, True)
    ex = run(load("weight_height_bundle.json"))
    assert ex.record["age"] == 36  # born 1990-07 (counted from 1990-07-31), call 2026-11-29
    assert "partial_birth_date" in {i.code for i in ex.issues}


def test_malformed_and_wrong_resources_raise_problems_naming_the_field() -> None:
    """Not a Bundle, a non-object entry or a broken Observation: FhirInputError with the JSON path."""
    with pytest.raises(FhirInputError) as err:
        parse_bundle({"resourceType": "Patient"}, max_entries=10)
    assert err.value.problems[0].field == "resourceType"
    with pytest.raises(FhirInputError) as err:
        parse_bundle({"resourceType": "Bundle", "entry": ["x"]}, max_entries=10)
    assert err.value.problems[0].field == "entry[0]"
    bad = {
        "resourceType": "Bundle",
        "entry": [{"resource": {"resourceType": "Observation", "status": "final", "code": "x"}}],
    }
    with pytest.raises(FhirInputError) as err:
        parse_bundle(bad, max_entries=10)
    assert err.value.problems[0].field.startswith("entry[0].resource")
    with pytest.raises(TooManyEntriesError):
        parse_bundle({"resourceType": "Bundle", "entry": [{}] * 11}, max_entries=10)


def test_every_fixture_observation_is_of_the_fixture_patient_or_reported() -> None:
    """The fixture holds a foreign patient's glucose, and it is the only one reported as such."""
    bundle = load("patient_bundle.json")
    foreign = [r["id"] for r in resources(bundle) if r.get("subject", {}).get("reference") == "Patient/p-9999"]
    ex = run(bundle)
    assert [i.resource for i in ex.issues if i.code == "other_patient"] == [f"Observation/{r}" for r in foreign]

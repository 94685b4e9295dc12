"""The feature specification: written once, everything else is derived from it.

A :class:`FeatureSpec` lists a model's inputs in order. Each :class:`Feature` names the field clients post
(``name``), the data set's column, a human label, the unit, the range a value must lie in to be accepted
(``valid_min``/``valid_max``: outside it a request is rejected, the value is not a plausible measurement) and
whether a zero means "not measured" (``zero_means_missing``). The request schema, the preprocessing, the
model card and the figures' labels all read this one object; the bundle's manifest stores it as JSON so a
bundle trained on another data set carries its own.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

from service.model.card import Population

__all__ = [
    "BODY_HEIGHT",
    "BODY_WEIGHT",
    "DERIVATIONS",
    "FEATURE_CODE_SYSTEM",
    "LOINC",
    "MISSING_RULES",
    "UCUM",
    "Derivation",
    "Feature",
    "FeatureSpec",
    "FhirCode",
    "FhirMapping",
    "FhirNearMiss",
    "FhirUnit",
    "Population",
]

LOINC = "http://loinc.org"
"""The LOINC code system URI (FHIR R4 ``Coding.system``)."""
UCUM = "http://unitsofmeasure.org"
"""The UCUM code system URI (FHIR R4 ``Quantity.system``)."""
FEATURE_CODE_SYSTEM = "urn:gshap-service:feature"
"""This service's own code system: an Observation coded ``urn:gshap-service:feature|<feature name>`` carries that
feature's value in the feature's own unit (``FhirMapping.ucum``). Every feature accepts it, so that inputs without
a standard code (triceps skinfold, the diabetes pedigree function) can be sent at all."""
MISSING_RULES = ("forbidden", "impute", "zero_means_missing")
"""A feature's ``missing`` rule: ``forbidden`` (a value is required), ``impute`` (null or omitted means "not
measured" and is imputed; 0 is a value), ``zero_means_missing`` (null, omitted or 0 mean "not measured")."""


# ---- FHIR mapping: how each feature is found in FHIR R4 resources --------------------------------------------


@dataclass(frozen=True)
class FhirUnit:
    """A unit in which a code's value is accepted: its UCUM code, the factor to the feature's unit and the
    ``Quantity.unit`` spellings accepted when ``Quantity.system``/``code`` are absent (nothing else is guessed)."""

    ucum: str
    factor: float = 1.0
    spellings: tuple[str, ...] = ()
    source: str = ""


@dataclass(frozen=True)
class FhirCode:
    """A code whose Observation (or Observation component, inside one of ``panels``) carries the feature."""

    system: str
    code: str
    display: str
    units: tuple[FhirUnit, ...]
    panels: tuple[str, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class FhirNearMiss:
    """A code that looks like the feature but is a different measurement: never used, reported when found."""

    system: str
    code: str
    display: str
    reason: str


@dataclass(frozen=True)
class FhirMapping:
    """Where a feature comes from in FHIR: codes (LOINC) with their units, or a Patient element, or a derivation
    from other codes; plus near misses to report. ``ucum`` is the feature's own unit in UCUM, the unit of the
    ``urn:gshap-service:feature`` code; ``integer_values`` accepts ``valueInteger`` (counts)."""

    ucum: str
    own_units: tuple[FhirUnit, ...]
    codes: tuple[FhirCode, ...] = ()
    near_misses: tuple[FhirNearMiss, ...] = ()
    patient_element: str = ""
    derived_from: tuple[FhirCode, ...] = ()
    integer_values: bool = False
    dimensionless: bool = False
    note: str = ""
    derivation: str = ""

    def all_codes(self, feature: str) -> tuple[FhirCode, ...]:
        """The standard codes, then ``urn:gshap-service:feature|<feature>`` in the feature's own unit."""
        own = FhirCode(FEATURE_CODE_SYSTEM, feature, f"{feature} (gshap-service feature)", self.own_units)
        return (*self.codes, own)


@dataclass(frozen=True)
class Feature:
    """One model input, as clients, the data set and people see it."""

    name: str
    column: str
    label: str
    unit: str
    description: str
    valid_min: float
    valid_max: float
    zero_means_missing: bool = False
    integer: bool = False
    example: float = 0.0
    fhir: FhirMapping | None = field(default=None, compare=False, repr=False)
    missing: str = ""

    def __post_init__(self) -> None:
        # ``missing`` is the spec's rule; ``zero_means_missing`` its older spelling: one decides the other
        if not self.missing:
            object.__setattr__(self, "missing", "zero_means_missing" if self.zero_means_missing else "forbidden")
        if self.missing not in MISSING_RULES:
            raise ValueError(f"feature {self.name!r}: missing must be one of {', '.join(MISSING_RULES)}")
        object.__setattr__(self, "zero_means_missing", self.missing == "zero_means_missing")

    @property
    def may_be_missing(self) -> bool:
        """Whether a client may omit this value (or send null, or 0 where zero means "not measured")."""
        return self.missing != "forbidden"

    def label_with_unit(self) -> str:
        """``"Glucose (mg/dL)"``; the unit is left out where there is none."""
        return f"{self.label} ({self.unit})" if self.unit else self.label


@dataclass(frozen=True)
class FeatureSpec:
    """An ordered list of features plus the binary target column of the training data."""

    features: tuple[Feature, ...]
    target_column: str
    target_label: str = "positive outcome"
    positive_label: str = "positive"
    negative_label: str = "negative"
    extra: Mapping[str, Any] = field(default_factory=dict)
    target_positive: Any = 1

    def __post_init__(self) -> None:
        names = [f.name for f in self.features]
        if len(set(names)) != len(names):
            raise ValueError(f"duplicate feature names in {names}")
        for f in self.features:
            if not f.valid_min <= f.valid_max:
                raise ValueError(f"feature {f.name!r}: valid_min > valid_max")

    def __iter__(self) -> Iterator[Feature]:
        return iter(self.features)

    def __len__(self) -> int:
        return len(self.features)

    @property
    def names(self) -> list[str]:
        return [f.name for f in self.features]

    @property
    def columns(self) -> list[str]:
        return [f.column for f in self.features]

    def by_name(self, name: str) -> Feature:
        for f in self.features:
            if f.name == name:
                return f
        raise KeyError(name)

    def to_dict(self) -> dict[str, Any]:
        # the FHIR mapping is code, not data: it stays out of a bundle's manifest (which it would only bloat)
        return {
            "features": [{k: v for k, v in asdict(f).items() if k != "fhir"} for f in self.features],
            "target_column": self.target_column,
            "target_label": self.target_label,
            "positive_label": self.positive_label,
            "negative_label": self.negative_label,
            "extra": dict(self.extra),
            "target_positive": self.target_positive,
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        feats = tuple(Feature(**{k: v for k, v in f.items() if k != "fhir"}) for f in data["features"])
        return cls(
            features=feats,
            target_column=str(data["target_column"]),
            target_label=str(data.get("target_label", "positive outcome")),
            positive_label=str(data.get("positive_label", "positive")),
            negative_label=str(data.get("negative_label", "negative")),
            extra=dict(data.get("extra", {})),
            target_positive=data.get("target_positive", 1),
        )

    @classmethod
    def from_columns(cls, columns: Sequence[str], target_column: str, missing_zero: Sequence[str] = ()) -> FeatureSpec:
        """A bare specification for an arbitrary CSV: names from columns, no units, unbounded ranges."""
        feats = tuple(
            Feature(
                name=_snake(c),
                column=c,
                label=c,
                unit="",
                description=c,
                valid_min=-1e12,
                valid_max=1e12,
                zero_means_missing=c in missing_zero,
            )
            for c in columns
        )
        return cls(features=feats, target_column=target_column)


# ---- derivations: the fixed list of values a FHIR mapping may compute from other data -------------------------


@dataclass(frozen=True)
class Derivation:
    """A value computed when the feature itself is not recorded: from other Observations (``derived_from``) or
    from an element of the Patient resource (``patient_element``). The list is fixed (:data:`DERIVATIONS`):
    the extraction code implements each one."""

    name: str
    description: str
    derived_from: tuple[FhirCode, ...] = ()
    patient_element: str = ""


BODY_WEIGHT = FhirCode(
    LOINC,
    "29463-7",
    "Body weight",
    (
        FhirUnit("kg", 1.0, ("kg", "KG", "kgs")),
        FhirUnit("g", 0.001, ("g",), "1000 g per kg"),
        FhirUnit("[lb_av]", 0.45359237, ("lb", "lbs", "[lb_av]"), "0.45359237 kg per avoirdupois pound"),
    ),
)
BODY_HEIGHT = FhirCode(
    LOINC,
    "8302-2",
    "Body height",
    (
        FhirUnit("cm", 1.0, ("cm", "CM")),
        FhirUnit("m", 100.0, ("m",), "100 cm per m"),
        FhirUnit("[in_i]", 2.54, ("in", "[in_i]"), "2.54 cm per international inch"),
    ),
)
DERIVATIONS: dict[str, Derivation] = {
    d.name: d
    for d in (
        Derivation(
            "bmi_from_weight_and_height",
            "body mass index in kg/m2 = body weight 29463-7 (kg) / (body height 8302-2 (m))², from the latest of "
            "each, used when no BMI is recorded (flagged as derived)",
            derived_from=(BODY_WEIGHT, BODY_HEIGHT),
        ),
        Derivation(
            "age_from_birthdate",
            "age in whole years from Patient.birthDate to the day of the call (UTC)",
            patient_element="birthDate",
        ),
    )
}
"""The derivations a model spec may name (``fhir.<feature>.derivation``)."""


def _snake(name: str) -> str:
    out: list[str] = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and (name[i - 1].islower() or name[i - 1].isdigit()):
            out.append("_")
        out.append("_" if not ch.isalnum() else ch.lower())
    return "".join(out).strip("_")

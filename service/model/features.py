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

__all__ = ["PIMA_SPEC", "Feature", "FeatureSpec"]


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

    @property
    def may_be_missing(self) -> bool:
        """Whether a client may omit this value (or send null / 0 for "not measured")."""
        return self.zero_means_missing

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
        return {
            "features": [asdict(f) for f in self.features],
            "target_column": self.target_column,
            "target_label": self.target_label,
            "positive_label": self.positive_label,
            "negative_label": self.negative_label,
            "extra": dict(self.extra),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> FeatureSpec:
        feats = tuple(Feature(**f) for f in data["features"])
        return cls(
            features=feats,
            target_column=str(data["target_column"]),
            target_label=str(data.get("target_label", "positive outcome")),
            positive_label=str(data.get("positive_label", "positive")),
            negative_label=str(data.get("negative_label", "negative")),
            extra=dict(data.get("extra", {})),
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


def _snake(name: str) -> str:
    out: list[str] = []
    for i, ch in enumerate(name):
        if ch.isupper() and i and (name[i - 1].islower() or name[i - 1].isdigit()):
            out.append("_")
        out.append("_" if not ch.isalnum() else ch.lower())
    return "".join(out).strip("_")


PIMA_SPEC = FeatureSpec(
    features=(
        Feature(
            "pregnancies",
            "Pregnancies",
            "Pregnancies",
            "count",
            "Number of times pregnant.",
            0,
            30,
            integer=True,
            example=6,
        ),
        Feature(
            "glucose",
            "Glucose",
            "Glucose",
            "mg/dL",
            "Plasma glucose concentration 2 hours into an oral glucose tolerance test.",
            0,
            600,
            zero_means_missing=True,
            example=148,
        ),
        Feature(
            "blood_pressure",
            "BloodPressure",
            "Blood pressure",
            "mm Hg",
            "Diastolic blood pressure.",
            0,
            200,
            zero_means_missing=True,
            example=72,
        ),
        Feature(
            "skin_thickness",
            "SkinThickness",
            "Skin thickness",
            "mm",
            "Triceps skin fold thickness.",
            0,
            120,
            zero_means_missing=True,
            example=35,
        ),
        Feature(
            "insulin",
            "Insulin",
            "Insulin",
            "µU/mL",
            "2-hour serum insulin.",
            0,
            1500,
            zero_means_missing=True,
            example=0,
        ),
        Feature(
            "bmi",
            "BMI",
            "BMI",
            "kg/m²",
            "Body mass index (weight in kg / (height in m)²).",
            0,
            100,
            zero_means_missing=True,
            example=33.6,
        ),
        Feature(
            "diabetes_pedigree_function",
            "DiabetesPedigreeFunction",
            "Diabetes pedigree",
            "score",
            "Diabetes pedigree function: a family-history score (dimensionless).",
            0,
            5,
            example=0.627,
        ),
        Feature(
            "age",
            "Age",
            "Age",
            "years",
            "Age.",
            0,
            120,
            example=50,
        ),
    ),
    target_column="Outcome",
    target_label="tested positive for diabetes (WHO criteria)",
    positive_label="diabetes",
    negative_label="no diabetes",
)

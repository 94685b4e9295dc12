"""The model card: the one object that holds what a model is for, whom it was trained on and what it predicts.

A bundle's manifest carries it (in the model spec, ``manifest["spec"]``: the ``outcome``, ``population``, ``card``
and ``cds`` sections); ``GET /model``, the CDS card and discovery, the page and the README generator read it
from the loaded bundle (``bundle.card``, ``bundle.cds``), never from a module constant. Standard library only:
the request schema and the client may import it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

__all__ = ["NOT_RECORDED", "CdsService", "ModelCard", "Outcome", "Population"]

NOT_RECORDED = "not recorded for this model: describe it in the model spec before serving it to clinicians"
"""What a card says where its spec is silent (never an invented text)."""


@dataclass(frozen=True)
class Population:
    """Who the model was trained on: a sentence, and the two checks a CDS card makes (``sex``: the FHIR
    ``Patient.gender`` of everyone in the data, ``""`` when both sexes are in it; ``min_age``: the youngest age
    in years, 0 when not restricted)."""

    description: str
    sex: str = ""
    min_age: int = 0


@dataclass(frozen=True)
class Outcome:
    """The binary outcome: the data's ``column``, the value of it that is ``positive``, a short ``label`` (what
    the probability is the probability of), its ``description`` (the definition) and the two class names."""

    column: str
    positive: Any
    label: str
    description: str
    positive_label: str = "positive"
    negative_label: str = "negative"

    def to_dict(self) -> dict[str, Any]:
        return {
            "column": self.column,
            "positive": self.positive,
            "label": self.label,
            "description": self.description,
            "positive_label": self.positive_label,
            "negative_label": self.negative_label,
        }


@dataclass(frozen=True)
class CdsService:
    """The CDS Hooks service a model offers (``patient-view``): its id, title and description."""

    id: str
    title: str
    description: str

    def to_dict(self) -> dict[str, str]:
        return {"id": self.id, "title": self.title, "description": self.description}


_CARD_LISTS = {"intended_users": "intended_users", "out_of_scope": "out_of_scope_uses", "limitations": "limitations"}


@dataclass(frozen=True)
class ModelCard:
    """The words of the model card that the numbers cannot say.

    ``extra`` holds the spec's other card items (``update_schedule``, and ``population_details``: the
    population's other facts, such as age range, prevalence, provenance and quirks), served as they are.
    """

    outcome: Outcome
    population: Population
    intended_use: str
    intended_users: tuple[str, ...]
    out_of_scope: tuple[str, ...]
    limitations: tuple[str, ...]
    not_measured: str
    development: str
    extra: Mapping[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """The card as ``GET /model`` shows it (the manifest's historical key names)."""
        extra = dict(self.extra)
        details = extra.pop("population_details", {})
        population = {
            "description": self.population.description,
            "sex": self.population.sex,
            "min_age": self.population.min_age,
            **(details if isinstance(details, Mapping) else {}),
        }
        return {
            "outcome": self.outcome.to_dict(),
            "intended_use": self.intended_use,
            "intended_users": list(self.intended_users),
            "out_of_scope_uses": list(self.out_of_scope),
            "population": population,
            "not_measured": self.not_measured,
            "development_and_validation": self.development,
            "limitations": list(self.limitations),
            **extra,
        }

    @classmethod
    def from_sections(
        cls, outcome: Outcome, population: Mapping[str, Any] | None, card: Mapping[str, Any] | None
    ) -> ModelCard:
        """From a model spec's ``population`` and ``card`` sections (either may be absent: then it says so)."""
        pop = dict(population or {})
        text = dict(card or {})
        known = {"description", "sex", "min_age"}
        details = {k: v for k, v in pop.items() if k not in known}
        extra: dict[str, Any] = {
            k: v
            for k, v in text.items()
            if k
            not in {
                "intended_use",
                "intended_users",
                "out_of_scope_uses",
                "limitations",
                "not_measured",
                "development_and_validation",
            }
        }
        if details:
            extra["population_details"] = details
        return cls(
            outcome=outcome,
            population=Population(
                description=str(pop.get("description", NOT_RECORDED)),
                sex=str(pop.get("sex", "")),
                min_age=int(pop.get("min_age", 0)),
            ),
            intended_use=str(text.get("intended_use", NOT_RECORDED)),
            intended_users=tuple(str(v) for v in text.get("intended_users", [NOT_RECORDED])),
            out_of_scope=tuple(str(v) for v in text.get("out_of_scope_uses", [NOT_RECORDED])),
            limitations=tuple(str(v) for v in text.get("limitations", [NOT_RECORDED])),
            not_measured=str(text.get("not_measured", NOT_RECORDED)),
            development=str(text.get("development_and_validation", NOT_RECORDED)),
            extra=extra,
        )

    @classmethod
    def from_manifest(cls, manifest: Mapping[str, Any]) -> ModelCard:
        """The card of a bundle: from its spec (``manifest["spec"]``), or, for a bundle written before bundles
        carried their spec, from its ``features`` target fields and ``card`` texts."""
        spec = manifest.get("spec")
        if isinstance(spec, Mapping):
            return cls.from_sections(outcome_from_spec(spec["outcome"]), spec.get("population"), spec.get("card"))
        feats: Mapping[str, Any] = manifest.get("features", {})
        outcome = Outcome(
            column=str(feats.get("target_column", "")),
            positive=1,
            label=str(feats.get("target_label", "positive outcome")),
            description=str(feats.get("target_label", NOT_RECORDED)),
            positive_label=str(feats.get("positive_label", "positive")),
            negative_label=str(feats.get("negative_label", "negative")),
        )
        card: dict[str, Any] = dict(manifest.get("card", {}))
        population = card.pop("population", None)
        return cls.from_sections(outcome, population if isinstance(population, Mapping) else None, card)


def outcome_from_spec(section: Mapping[str, Any]) -> Outcome:
    """The :class:`Outcome` of a model spec's ``outcome`` section."""
    return Outcome(
        column=str(section["column"]),
        positive=section["positive"],
        label=str(section["label"]),
        description=str(section.get("description", section["label"])),
        positive_label=str(section.get("positive_label", "positive")),
        negative_label=str(section.get("negative_label", "negative")),
    )

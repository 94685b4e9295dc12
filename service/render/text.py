"""The words: the one-sentence summary of an explanation and the out-of-training-range caveat, for any model.

Everything here reads the feature specification the served bundle carries (labels, units, the integer rule), and
numbers are shown one way, by :func:`service.contract.format_value`. Used by the runtime's answers
(:mod:`service.runtime.inference`) and, through them, by the API, the page, the CDS card and the cohort job.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from service.contract import format_value
from service.model.features import Feature, FeatureSpec
from service.render.charts import Contribution

__all__ = ["SILENT_UNITS", "SummaryWriter", "format_value", "range_warning", "summary_sentence", "unit_text"]

SILENT_UNITS = frozenset({"", "count", "score"})
"""Units that read badly after a number in a sentence ("6 count", "0.627 score")."""

SUMMARY_SHARE = 0.1
"""A driver is named in the summary only if it moves the output by at least this share of the strongest one."""


def unit_text(feat: Feature) -> str:
    """`` mg/dL`` after a number, or nothing for a unit that reads badly there (:data:`SILENT_UNITS`)."""
    return "" if feat.unit in SILENT_UNITS else f" {feat.unit}"


def _lower_label(label: str) -> str:
    # "Blood pressure" → "blood pressure" inside a sentence, but "BMI" stays "BMI"
    return label if label[:2].isupper() else label[:1].lower() + label[1:]


class SummaryWriter:
    """:func:`summary_sentence` for one feature specification, with each feature's words (its label, lowered
    inside a sentence, its unit text, its integer rule) looked up once: the runtime writes a sentence for every
    explanation on the event loop."""

    def __init__(self, spec: FeatureSpec, target: str = "risk") -> None:
        # name -> (label, label inside a sentence, unit text, integer, counted)
        self._words = {
            f.name: (f.label, _lower_label(f.label), unit_text(f), f.integer, f.unit == "count") for f in spec
        }
        self._flat = f"No feature moves the predicted {target} away from the baseline average."
        self._most = {side: f"the predicted {target} {side} most" for side in ("up", "down")}

    def _phrase(self, a: Contribution, first: bool) -> str:
        label, lowered, unit, integer, counted = self._words[a.feature]
        shown = format_value(a.value, integer)
        if a.imputed:
            return f"{label if first else lowered} (not measured; imputed as {shown}{unit})"
        if counted:  # "the number of pregnancies (6)": singular, whatever the count
            return f"{'The' if first else 'the'} number of {lowered} ({shown})"
        return f"{label if first else lowered} of {shown}{unit}"

    def __call__(self, attributions: Sequence[Contribution]) -> str:
        """The sentence for ``attributions`` (see :func:`summary_sentence`)."""
        if not attributions:
            return "The model has no features to explain."
        sizes = [abs(a.attribution) for a in attributions]
        strongest = max(sizes)
        if not math.isfinite(strongest) or strongest <= 1e-12:
            return self._flat
        floor = SUMMARY_SHARE * strongest
        # strongest first; equal sizes keep their order (a stable sort)
        ranked = sorted((-size, i) for i, size in enumerate(sizes) if size >= floor)
        up = [a for a in (attributions[i] for _, i in ranked) if a.attribution > 0][:2]
        down = [a for a in (attributions[i] for _, i in ranked) if a.attribution < 0][:2]
        sides: list[tuple[list[Contribution], str]] = [(up, "up"), (down, "down")]
        if attributions[ranked[0][1]].attribution < 0:
            sides.reverse()
        clauses: list[str] = []
        for items, direction in sides:
            if not items:
                continue
            first_clause = not clauses
            names = " and ".join(self._phrase(a, first_clause and i == 0) for i, a in enumerate(items))
            verb = "pushes" if len(items) == 1 else "push"
            what = self._most[direction] if first_clause else f"it {direction}"
            clauses.append(f"{names} {verb} {what}")
        return "; ".join(clauses) + "."


def summary_sentence(spec: FeatureSpec, attributions: Sequence[Contribution], target: str = "risk") -> str:
    """One plain sentence naming the strongest drivers up and down.

    e.g. "Glucose of 148 mg/dL and BMI of 33.6 kg/m² push the predicted risk up most; age of 50 years pushes
    it down." At most two features a direction, each moving the output by at least a tenth of the strongest.
    A writer that serves many sentences keeps one :class:`SummaryWriter`.
    """
    return SummaryWriter(spec, target)(attributions)


def range_warning(feat: Feature, value: float, low: float, high: float) -> str:
    """The caveat for ``value`` outside the training range ``[low, high]``: "Insulin of 900 µU/mL is above the
    highest value seen in training (744 µU/mL); the model extrapolates here."."""
    side, bound, word = ("below", low, "lowest") if value < low else ("above", high, "highest")
    unit = unit_text(feat)
    return (
        f"{feat.label} of {format_value(value, feat.integer)}{unit} is {side} the {word} value seen in "
        f"training ({format_value(bound, feat.integer)}{unit}); the model extrapolates here."
    )

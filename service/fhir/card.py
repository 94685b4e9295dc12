"""The card a clinician sees: the risk, its reasons and its limits (CDS Hooks 2.0 Card, as a JSON-ready dict).

Indicator rule: ``warning`` when the predicted label is positive (the probability is at or above the model's
threshold, chosen on the validation split; see ``GET /model``), otherwise ``info``. Never ``critical``: the
card is not time-critical and must not push the clinician to act on the model alone.

The words come from the served bundle: its model card (``bundle.card``: the outcome's positive label, the
population) and its CDS service (``bundle.cds``: id and title). For the Pima bundle the summary is
``Diabetes risk 41% (pima-diabetes/1.1.0)``; when no risk can be computed, it says so and why. The detail
(GitHub-flavoured Markdown) lists: the top drivers with the patient's value, unit, date and direction; the inputs
not found or imputed, derived or refused (unit, date, status); out-of-range warnings; the population the model was
trained on and whether this patient is outside it; the explanation's completeness. Numbers are shown one way
(:func:`service.contract.format_value`).

Nothing from the request reaches the Markdown as markup: every such text (ids, units, codes, dates, genders, the
issues' messages that quote them) goes through :func:`md_text`, which writes ``&``, ``<``, ``>``, ``"`` and ``'``
as HTML character references (so neither a Markdown nor an HTML renderer sees a tag) and backslash-escapes the
characters that can open markup within a line (code, emphasis, links and images, table cells, strikethrough, and the
``:``, ``www.`` and ``@`` of autolinks), and turns line breaks and other control characters into spaces.

The card's own code systems are the project's URNs: ``urn:gshap-service:cds-topic`` (``source.topic``) and
``urn:gshap-service:override-reason`` (``overrideReasons``). Its extension is under ``urn:gshap-service:prediction``;
the former key ``dev.gshap.prediction`` is sent beside it, equal, for one release.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import Sequence
from typing import Any

from service.contract import format_value
from service.fhir.extract import Extraction, Issue, SourceValue, outside_population
from service.model.card import CdsService, ModelCard, Population
from service.model.features import FeatureSpec
from service.runtime.inference import RecordExplanation

__all__ = [
    "EXTENSION_KEY",
    "LEGACY_EXTENSION_KEY",
    "OVERRIDE_SYSTEM",
    "TOPIC_SYSTEM",
    "CardLinks",
    "cannot_compute_card",
    "md_text",
    "risk_card",
    "risk_summary",
    "risk_words",
]

TOP_DRIVERS = 4
TOPIC_SYSTEM = "urn:gshap-service:cds-topic"
OVERRIDE_SYSTEM = "urn:gshap-service:override-reason"
EXTENSION_KEY = "urn:gshap-service:prediction"
LEGACY_EXTENSION_KEY = "dev.gshap.prediction"  # sent beside EXTENSION_KEY until the next release, then dropped
OVERRIDE_REASONS = (
    ("not-relevant", "Not relevant for this patient"),
    ("data-wrong", "The input data shown are wrong or outdated"),
    ("already-known", "Already known / already being managed"),
)
_ISSUE_TITLES = {
    "unknown_unit": "unit not accepted",
    "future_date": "dated in the future",
    "no_date": "undated",
    "censored_value": "censored value (< or >)",
    "implausible_value": "implausible value",
    "not_integer": "not a whole number",
    "no_quantity": "not a quantity",
    "not_ogtt": "not a 2-hour OGTT glucose",
    "near_miss": "a different measurement",
    "other_patient": "another patient's resource",
    "status_ignored": "status not final/amended/corrected",
    "no_value": "no value",
    "zero_not_measured": "0 means not measured",
    "partial_birth_date": "partial birth date",
    "invalid_birth_date": "unreadable birth date",
    "not_available": "not available",
    "conflicting_values": "conflicting values (none used)",
}


class CardLinks:
    """Where the card's links point: the model card and the documentation (absolute URLs)."""

    def __init__(self, model_card: str, documentation: str) -> None:
        self.model_card = model_card
        self.documentation = documentation

    def links(self) -> list[dict[str, str]]:
        return [
            {"label": "Model card (data, metrics, limits)", "url": self.model_card, "type": "absolute"},
            {"label": "How this card is made (documentation)", "url": self.documentation, "type": "absolute"},
        ]


def risk_words(card: ModelCard) -> str:
    """``Diabetes risk``: the model's positive label, capitalised, and "risk"."""
    label = card.outcome.positive_label
    return f"{label[:1].upper()}{label[1:]} risk"


def risk_summary(probability: float, model_version: str, card: ModelCard) -> str:
    """``Diabetes risk 41% (pima-diabetes/1.1.0)`` (under 140 characters)."""
    percent = round(probability * 100)
    shown = "<1" if probability < 0.005 else (">99" if probability > 0.995 else str(percent))
    return f"{risk_words(card)} {shown}% ({model_version})"[:139]


_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f\u2028\u2029]")
_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;"}
# what can open markup in CommonMark/GFM within a line: code, emphasis, links and images ([ ]), tables (|),
# strikethrough (~), raw HTML and entities (the characters above), autolinks (scheme ":", "www.", e-mail "@")
_MARKUP = re.compile(r"[\\`*_\[\]|#~:@]|(?i:(?<=www)\.)")


def md_text(text: str) -> str:
    """``text`` as literal text in Markdown (CommonMark/GFM) and in HTML: no markup survives (see the module)."""
    flat = _CONTROL.sub(" ", text)
    escaped = _MARKUP.sub(lambda m: "\\" + m.group(0), flat)
    return "".join(_ENTITIES.get(ch, ch) for ch in escaped)


def _esc(text: str) -> str:
    return md_text(text)


def _value_text(source: SourceValue, integer: bool) -> str:
    shown = format_value(source.value, integer)
    unit = "" if source.unit in ("count", "score") else f" {source.unit}"
    text = f"{shown}{unit}"
    if source.code == "birthDate":
        text += f" (born {source.original_unit})"
    elif abs(source.original_value - source.value) > 1e-9 and not source.derived_from:
        text += f" (reported {format_value(source.original_value)} {source.original_unit})".replace(" )", ")")
    return text


def _source_text(source: SourceValue) -> str:
    if source.derived_from:
        return "computed from " + " and ".join(f"{s.resource} ({s.code})" for s in source.derived_from)
    return f"{source.resource} ({source.code})"


def _issues_md(issues: Sequence[Issue]) -> list[str]:
    lines = []
    for issue in issues[:20]:
        where = f" {issue.resource}" if issue.resource else ""
        where = f" {_esc(issue.resource)}" if issue.resource else ""
        lines.append(f"- {_ISSUE_TITLES.get(issue.code, issue.code)}:{where}: {_esc(issue.said())}")
    if len(issues) > 20:
        lines.append(f"- … and {len(issues) - 20} more")
    return lines


def _population_md(extraction: Extraction, population: Population, age: float | None) -> list[str]:
    lines = [f"**Population.** {population.description}"]
    outside = outside_population(extraction, population)
    if outside:
        said = _esc("; ".join(outside))
        lines.append(f"**Outside the training population:** {said}. Interpret with great caution.")
    return lines


def risk_card(
    explanation: RecordExplanation,
    extraction: Extraction,
    *,
    spec: FeatureSpec,
    card: ModelCard,
    service: CdsService,
    links: CardLinks,
) -> dict[str, Any]:
    """The card for a computed risk, in the words of the model's card and CDS service."""
    prediction = explanation.prediction
    version = prediction.model_version
    ranked = sorted(explanation.attributions, key=lambda a: -abs(a.attribution))
    lines = [
        f"**Estimated {risk_words(card).lower()}: {prediction.probability:.0%}** (predicted {prediction.label_name} "
        f"at the model's threshold of {prediction.threshold:.0%}; outcome: {card.outcome.label}). Model {version}; "
        "decision support only, not a diagnosis.",
        "",
        "**Top drivers** (GradientSHAP, relative to the training population):",
        "",
        "| Input | Patient value | Date | Direction | Attribution (log-odds) |",
        "|---|---|---|---|---|",
    ]
    for a in ranked[:TOP_DRIVERS]:
        feat = spec.by_name(a.feature)
        direction = "raises risk ↑" if a.attribution > 0 else ("lowers risk ↓" if a.attribution < 0 else "none")
        source = extraction.sources.get(a.feature)
        if a.imputed or source is None:
            value = f"not measured; imputed {format_value(round(a.value, 1), feat.integer)} {feat.unit}".rstrip()
            date = "—"
        else:
            value = _value_text(source, feat.integer)
            date = source.date[:10]
        lines.append(f"| {_esc(feat.label)} | {_esc(value)} | {_esc(date)} | {direction} | {a.attribution:+.3f} |")
    if prediction.imputed:
        names = ", ".join(spec.by_name(n).label.lower() for n in prediction.imputed)
        lines += ["", f"**Not measured, imputed with the training median:** {names}."]
    used = [
        f"{spec.by_name(name).label}: {_esc(_value_text(src, spec.by_name(name).integer))}, {_esc(src.date[:10])}, "
        f"{_esc(_source_text(src))}"
        for name, src in extraction.sources.items()
    ]
    if used:
        lines += ["", "**Inputs used** (latest final/amended/corrected value per input):", ""]
        lines += [f"- {u}" for u in used]
    notes = [src for src in extraction.sources.values() if src.note and src.feature != "age"]
    if extraction.derived:
        lines += ["", f"**Derived:** {', '.join(extraction.derived)} computed from other observations (see above)."]
    if notes:
        lines += ["", "**Notes on inputs:**", ""]
        lines += [f"- {spec.by_name(s.feature).label}: {_esc(s.note)}" for s in notes]
    if extraction.issues:
        lines += ["", "**Not used or used with a caveat:**", "", *_issues_md(extraction.issues)]
    if prediction.warnings:
        lines += ["", "**Outside the training range (the model extrapolates):**", ""]
        lines += [f"- {_esc(w.message)}" for w in prediction.warnings]
    lines += ["", *_population_md(extraction, card.population, extraction.record.get("age"))]
    lines += [
        "",
        f"**Explanation.** {explanation.method} GradientSHAP of the {explanation.output}, relative to "
        f"{explanation.n_baselines} baseline records of the training population (base value "
        f"{explanation.base_value:+.3f}). Completeness: the attributions add up to the model's output within "
        f"{abs(explanation.completeness_gap):.1e} {explanation.output} units.",
    ]
    age = extraction.sources.get("age")
    if age is not None and age.code == "birthDate":
        lines += ["", f"Age is counted from Patient.birthDate to the day of the call ({extraction.as_of[:10]})."]
    indicator = "warning" if prediction.label == 1 else "info"
    out: dict[str, Any] = {
        "uuid": str(uuid.uuid4()),
        "summary": risk_summary(prediction.probability, version, card),
        "detail": "\n".join(lines),
        "indicator": indicator,
        "source": {
            "label": f"gshap-service {service.id} ({version})",
            "url": links.model_card,
            "topic": {"system": TOPIC_SYSTEM, "code": service.id, "display": service.title},
        },
        "links": links.links(),
        "overrideReasons": [{"system": OVERRIDE_SYSTEM, "code": c, "display": d} for c, d in OVERRIDE_REASONS],
        "extension": {},
    }
    extension = {
        "probability": prediction.probability,
        "threshold": prediction.threshold,
        "label": prediction.label_name,
        "modelVersion": version,
        "completenessGap": explanation.completeness_gap,
    }
    out["extension"] = {EXTENSION_KEY: extension, LEGACY_EXTENSION_KEY: dict(extension)}
    return out


def cannot_compute_card(
    extraction: Extraction,
    *,
    spec: FeatureSpec,
    card: ModelCard,
    service: CdsService,
    links: CardLinks,
    model_version: str,
) -> dict[str, Any]:
    """The card when a required input is missing: no risk, and why."""
    missing = [spec.by_name(n) for n in extraction.required_missing]
    names = ", ".join(f.label.lower() for f in missing)
    summary = f"{risk_words(card)} cannot be computed: {names} not found ({model_version})"
    if len(summary) > 139:
        summary = f"{risk_words(card)} cannot be computed: required inputs missing ({model_version})"[:139]
    lines = [
        f"**No risk was computed.** The model ({model_version}) cannot do without: {names}. It never replaces a "
        "missing required input by a guess or a 0.",
        "",
        "How to provide them:",
        "",
    ]
    for feat in missing:
        assert feat.fhir is not None
        codes = [f"LOINC {c.code}" for c in feat.fhir.codes if c.system.endswith("loinc.org")]
        codes.append(f"urn:gshap-service:feature|{feat.name} ({feat.fhir.ucum})")
        if feat.fhir.patient_element:
            codes.insert(0, f"Patient.{feat.fhir.patient_element}")
        lines.append(f"- {feat.label}: {', '.join(codes)}")
    if extraction.issues:
        lines += ["", "**Not used or used with a caveat:**", "", *_issues_md(extraction.issues)]
    lines += ["", *_population_md(extraction, card.population, extraction.record.get("age"))]
    return {
        "uuid": str(uuid.uuid4()),
        "summary": summary,
        "detail": "\n".join(lines),
        "indicator": "info",
        "source": {"label": f"gshap-service {service.id} ({model_version})", "url": links.model_card},
        "links": links.links(),
    }

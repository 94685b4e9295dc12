"""From a Patient and Observations (FHIR R4) to one model record, with the provenance of every value.

The rules (docs/CDS_HOOKS.md states them for users):

- Codes and units come from the feature specification (the served bundle's ``spec``, ``Feature.fhir``): an
  Observation counts for a feature when one of its codings is one of the feature's codes (LOINC, or
  ``urn:gshap-service:feature|<name>``), and a component of ANY Observation counts when its code is one (the
  diastolic 8462-4 inside the 85354-9 or 55284-4 blood pressure panels, or any other panel that carries it).
- The Observation must be about the Patient: ``subject.reference`` is ``Patient/{id}`` (relative, or an absolute URL
  ending so, with or without ``/_history``), or the Patient entry's ``fullUrl`` (``urn:uuid:``/``urn:oid:`` inside a
  transaction, batch, collection, searchset or document Bundle, as Synthea writes them). When the Patient's
  ``fullUrl`` is an absolute URL, an absolute reference must equal it. This holds for every Observation, also one
  that carries none of the model's codes (which is otherwise left unread and unvalidated): another patient's is
  refused by ``/fhir/*`` and not used by a CDS call, whatever its code.
- The unit is read from ``valueQuantity.system`` = ``http://unitsofmeasure.org`` and ``valueQuantity.code``; only
  without both is ``valueQuantity.unit`` read, and only the spellings the specification lists. Any other unit is
  refused for that value and reported (``unknown_unit``); nothing is guessed. A dimensionless feature (a count,
  the pedigree score) also takes a quantity without unit and ``valueInteger`` (counts).
- Only ``final``, ``amended`` and ``corrected`` Observations of this patient are used; other statuses
  (``entered-in-error``, ``cancelled``, ``preliminary``, ...) and other patients' resources are ignored and
  reported. A value dated after the time of the call (beyond a minute of clock skew) is refused
  (``future_date``), as is an undated one, a censored one (``<``/``>``) and one outside the feature's valid range.
- Per feature the latest usable value wins: the latest ``effective[x]``, then the latest ``issued``. Values that tie
  on both and disagree are a conflict (``conflicting_values``): none is used (the feature is imputed, or for a
  required input no risk is computed), whatever the order of the input. Refused newer values are reported beside it.
- A glucose coded as anything but a 2-hour 75 g OGTT glucose (fasting, random, whole blood, HbA1c: the near misses
  of the specification) is never used as one; it is reported (``not_ogtt``).
- Age is whole years from ``Patient.birthDate`` to the day of the call (UTC); a partial birth date (year, or year
  and month) counts from its last possible day, the youngest possible age, and says so.
- BMI missing: computed from the latest body weight (29463-7) and height (8302-2), flagged ``derived``.
- A feature not found is left ``None`` ("not measured"): the runtime imputes it where the model allows, and
  :attr:`Extraction.required_missing` names those it does not allow (then no risk is computed).
"""

from __future__ import annotations

import calendar
import datetime as dt
import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import TYPE_CHECKING, Any

from service.contract import format_value
from service.fhir.resources import UnreadObservation
from service.model.card import Population
from service.model.features import UCUM, Feature, FeatureSpec, FhirCode, FhirUnit

if TYPE_CHECKING:  # annotations only: the models load where resources are parsed (service.fhir.resources)
    from fhir.resources.R4B.observation import Observation
    from fhir.resources.R4B.patient import Patient

__all__ = [
    "USABLE_STATUSES",
    "Extraction",
    "Issue",
    "SourceValue",
    "age_on",
    "extract",
    "outside_population",
    "refers_to_patient",
    "relevant_codes",
    "resource_ref",
]

USABLE_STATUSES = frozenset({"final", "amended", "corrected"})
CLOCK_SKEW = dt.timedelta(minutes=1)
_EPOCH = dt.datetime(1, 1, 1, tzinfo=dt.UTC)


def _range(feat: Feature) -> str:
    """``0-600``: a feature's valid range, its numbers written one way (:func:`service.contract.format_value`)."""
    return f"{format_value(feat.valid_min)}-{format_value(feat.valid_max)}"


@dataclass(frozen=True)
class SourceValue:
    """Where one model input came from: the resource, its date and code, the value as written and as used."""

    feature: str
    resource: str
    path: str
    date: str
    system: str
    code: str
    display: str
    original_value: float
    original_unit: str
    value: float
    unit: str
    derived_from: tuple[SourceValue, ...] = ()
    note: str = ""


@dataclass(frozen=True)
class Issue:
    """Something in the input that was not used, or used with a caveat; ``refused`` when a value was refused.

    The ``message`` of a refused value says what is wrong, not what happens: :meth:`said` adds that, which depends
    on the reading (strict ``/fhir/*``: the request is refused; lenient CDS: the value is not used)."""

    code: str
    message: str
    path: str = ""
    feature: str = ""
    resource: str = ""
    refused: bool = False

    def said(self, strict: bool = False) -> str:
        """The message with what happened: refused (strict reading) or not used (lenient)."""
        if not self.refused:
            return self.message
        return f"{self.message.rstrip('.')}; {'the request is refused' if strict else 'not used'}."


@dataclass(frozen=True)
class Extraction:
    """The record for the model (``None`` = not measured) and how each value was found."""

    patient_id: str
    gender: str
    record: dict[str, float | None]
    sources: dict[str, SourceValue]
    issues: tuple[Issue, ...]
    not_found: tuple[str, ...]
    required_missing: tuple[str, ...]
    derived: tuple[str, ...] = ()
    as_of: str = ""

    @property
    def complete(self) -> bool:
        return not self.required_missing


@dataclass
class _Candidate:
    when: dt.datetime
    value: SourceValue
    issued: dt.datetime | None = None

    def order(self) -> tuple[dt.datetime, dt.datetime]:
        return self.when, self.issued or _EPOCH


@dataclass
class _Work:
    spec: FeatureSpec
    now: dt.datetime
    patient_id: str
    patient_full_url: str = ""
    issues: list[Issue] = field(default_factory=list)
    found: dict[str, list[_Candidate]] = field(default_factory=dict)


def resource_ref(kind: str, resource: Any, path: str) -> str:
    """``Observation/<id>`` when the resource has an id, else the JSON path it came from."""
    rid = getattr(resource, "id", None)
    return f"{kind}/{rid}" if rid else path


def _instant(value: Any) -> dt.datetime | None:
    """The earliest instant of a FHIR date/dateTime/instant (partial dates start at their first day), in UTC."""
    if value is None:
        return None
    if isinstance(value, dt.datetime):
        return value.astimezone(dt.UTC) if value.tzinfo else value.replace(tzinfo=dt.UTC)
    if isinstance(value, dt.date):
        return dt.datetime(value.year, value.month, value.day, tzinfo=dt.UTC)
    text = str(value)
    try:
        if len(text) == 4:
            return dt.datetime(int(text), 1, 1, tzinfo=dt.UTC)
        if len(text) == 7:
            return dt.datetime(int(text[:4]), int(text[5:7]), 1, tzinfo=dt.UTC)
        parsed = dt.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed.astimezone(dt.UTC) if parsed.tzinfo else parsed.replace(tzinfo=dt.UTC)


def _date_text(value: Any) -> str:
    if isinstance(value, dt.datetime):
        return value.isoformat().replace("+00:00", "Z")
    if isinstance(value, dt.date):
        return value.isoformat()
    return str(value)


def _effective(obs: Observation) -> tuple[Any, str]:
    """The clinically relevant time of an Observation and which element gave it."""
    if obs.effectiveDateTime is not None:
        return obs.effectiveDateTime, "effectiveDateTime"
    if obs.effectiveInstant is not None:
        return obs.effectiveInstant, "effectiveInstant"
    if obs.effectivePeriod is not None:
        period = obs.effectivePeriod
        if period.end is not None:
            return period.end, "effectivePeriod.end"
        if period.start is not None:
            return period.start, "effectivePeriod.start"
    if obs.issued is not None:
        return obs.issued, "issued"
    return None, ""


def _without_history(ref: str) -> str:
    return ref.split("/_history/", maxsplit=1)[0]


def _is_absolute(ref: str) -> bool:
    return ref.startswith(("http://", "https://"))


def refers_to_patient(reference: str, patient_id: str, full_url: str = "") -> bool:
    """Whether ``reference`` (a Reference.reference) denotes the Patient ``patient_id`` whose Bundle entry has
    ``full_url`` (FHIR R4 3.1.3.4/2.36.4: relative ``Patient/{id}``, an absolute URL, or a ``urn:uuid:``/``urn:oid:``
    fullUrl of the Bundle)."""
    if not reference or not patient_id:
        return False
    if full_url and reference == full_url:
        return True
    if reference.startswith(("urn:uuid:", "urn:oid:", "#")):
        return False  # a fullUrl of another entry, or a contained resource
    ref = _without_history(reference)
    if _is_absolute(ref):
        if _is_absolute(full_url):
            return ref == _without_history(full_url)
        head, sep, tail = ref.rpartition("/Patient/")
        return bool(sep and head) and tail == patient_id
    return ref == f"Patient/{patient_id}"


def _subject_issue(obs: Observation | UnreadObservation, work: _Work) -> str:
    """Why the Observation is not this patient's ("" when it is)."""
    if isinstance(obs, UnreadObservation):
        reference = obs.subject_reference
    else:
        reference = str(obs.subject.reference or "") if obs.subject is not None else ""
    if not reference:
        return "The Observation has no subject reference"
    if refers_to_patient(reference, work.patient_id, work.patient_full_url):
        return ""
    where = "Patient/{id}" + (" or the Patient entry's fullUrl" if work.patient_full_url else "")
    return f"The Observation's subject is another patient or resource (not {where})"


def _num(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, Decimal | int | float):
        return math.nan
    try:
        return float(value)
    except (OverflowError, ValueError):
        return math.nan


def _unit_of(qty: Any, code: FhirCode, dimensionless: bool) -> tuple[FhirUnit | None, str, str]:
    """(unit rule, unit as written, refusal reason or "")."""
    system, ucum, text = qty.system, qty.code, qty.unit
    written = str(ucum or text or "")
    if system is not None or ucum is not None:
        if str(system or "") != UCUM:
            return None, written, f"unit system {str(system or 'none')[:60]!r} is not UCUM ({UCUM})"
        for unit in code.units:
            if unit.ucum == ucum:
                return unit, written, ""
        accepted = ", ".join(u.ucum for u in code.units)
        return None, written, f"UCUM unit {str(ucum)[:40]!r} is not accepted for {code.code} (accepted: {accepted})"
    if text is not None:
        for unit in code.units:
            if str(text).strip() in unit.spellings:
                return unit, written, ""
        return None, written, f"unit text {str(text)[:40]!r} is not a listed spelling (send UCUM system and code)"
    if dimensionless:
        return FhirUnit("1"), "", ""
    return None, "", "the quantity has no unit"


@functools.cache
def _code_table(feat: Feature) -> dict[tuple[str, str], FhirCode]:
    """The feature's codes by (system, code): looked up for every coding of every Observation."""
    assert feat.fhir is not None
    table: dict[tuple[str, str], FhirCode] = {}
    for code in feat.fhir.all_codes(feat.name):
        table.setdefault((code.system, code.code), code)
    return table


def _match(coding_system: str, coding_code: str, feat: Feature) -> FhirCode | None:
    return _code_table(feat).get((coding_system, coding_code))


def relevant_codes(spec: FeatureSpec) -> frozenset[tuple[str, str]]:
    """Every (system, code) the extraction reads or reports for ``spec``: the features' codes (and own codes),
    their near misses and the codes a derived value is computed from. An Observation without any of them, in its
    code or a component's, cannot change the record or its report, and is skipped unread (only its subject is
    checked: :class:`~service.fhir.resources.UnreadObservation`)."""
    return _relevant(tuple(spec))


@functools.cache
def _relevant(features: tuple[Feature, ...]) -> frozenset[tuple[str, str]]:
    out: set[tuple[str, str]] = set()
    for feat in features:
        if feat.fhir is None:
            continue
        out |= set(_code_table(feat))
        out |= {(m.system, m.code) for m in feat.fhir.near_misses}
        out |= {(c.system, c.code) for c in feat.fhir.derived_from}
    return frozenset(out)


def _codings(concept: Any) -> list[tuple[str, str, str]]:
    if concept is None or not concept.coding:
        return []
    return [(str(c.system or ""), str(c.code or ""), str(c.display or "")) for c in concept.coding]


def _add_value(
    work: _Work,
    feat: Feature,
    code: FhirCode,
    qty: Any,
    integer_value: int | None,
    *,
    obs: Observation,
    path: str,
    ref: str,
    when: dt.datetime,
    date: str,
    target: dict[str, list[_Candidate]],
) -> None:
    mapping = feat.fhir
    if integer_value is not None:
        if mapping is None or not mapping.integer_values:
            work.issues.append(
                Issue(
                    "no_quantity",
                    f"{feat.label}: valueInteger is not accepted (send valueQuantity)",
                    path,
                    feat.name,
                    ref,
                    True,
                )
            )
            return
        unit_rule, written, raw = FhirUnit("1"), "", float(integer_value)
    else:
        if qty.comparator is not None:
            work.issues.append(
                Issue(
                    "censored_value",
                    f"{feat.label}: a value with comparator {qty.comparator!s} is censored",
                    path,
                    feat.name,
                    ref,
                    True,
                )
            )
            return
        raw = _num(qty.value)
        if not math.isfinite(raw):
            work.issues.append(
                Issue("no_value", f"{feat.label}: the quantity has no numeric value", path, feat.name, ref, True)
            )
            return
        found, written, reason = _unit_of(qty, code, mapping is not None and mapping.dimensionless)
        if found is None:
            work.issues.append(Issue("unknown_unit", f"{feat.label}: {reason}", path, feat.name, ref, True))
            return
        unit_rule = found
    value = raw * unit_rule.factor
    if feat.integer:
        if abs(value - round(value)) > 1e-9:
            work.issues.append(Issue("not_integer", f"{feat.label} must be a whole number", path, feat.name, ref, True))
            return
        value = float(round(value))
    if not feat.valid_min <= value <= feat.valid_max:
        work.issues.append(
            Issue(
                "implausible_value",
                f"{feat.label} converted to {feat.unit} lies outside {_range(feat)}",
                path,
                feat.name,
                ref,
                True,
            )
        )
        return
    display = code.display  # the specification's display, never the request's text
    note = code.note
    if unit_rule.factor != 1.0:
        note = "; ".join(x for x in (note, f"converted from {written} ({unit_rule.source})") if x)
    target.setdefault(feat.name, []).append(
        _Candidate(
            when,
            SourceValue(
                feature=feat.name,
                resource=ref,
                path=path,
                date=date,
                system=code.system,
                code=code.code,
                display=display,
                original_value=raw,
                original_unit=written or unit_rule.ucum,
                value=value,
                unit=feat.unit,
                note=note,
            ),
            _instant(obs.issued),
        )
    )


def _observation(
    work: _Work,
    path: str,
    obs: Observation | UnreadObservation,
    aux: dict[str, list[_Candidate]],
    aux_codes: dict[tuple[str, str], tuple[str, FhirCode]],
) -> None:
    ref = resource_ref("Observation", obs, path)
    why = _subject_issue(obs, work)
    if why:
        work.issues.append(Issue("other_patient", why, path, "", ref, True))
        return
    if isinstance(obs, UnreadObservation):
        return  # none of the model's codes: this patient's, and nothing more to read
    status = str(obs.status or "")
    if status not in USABLE_STATUSES:
        work.issues.append(
            Issue(
                "status_ignored", f"Status {status[:30]!r} is not final, amended or corrected; ignored.", path, "", ref
            )
        )
        return
    raw_when, element = _effective(obs)
    when = _instant(raw_when)
    codings = _codings(obs.code)
    hits: list[tuple[Feature, FhirCode, Any, int | None, str]] = []
    for feat in work.spec:
        if feat.fhir is None:
            continue
        for system, code_value, _ in codings:
            code = _match(system, code_value, feat)
            if code is not None:
                hits.append((feat, code, obs.valueQuantity, obs.valueInteger, path))
                break
            for miss in feat.fhir.near_misses:
                if (miss.system, miss.code) == (system, code_value):
                    work.issues.append(
                        Issue(
                            "not_ogtt" if feat.name == "glucose" else "near_miss",
                            f"{miss.display} ({miss.code}) is {miss.reason}; not used as {feat.label.lower()}.",
                            path,
                            feat.name,
                            ref,
                        )
                    )
        # a component of any Observation (the diastolic 8462-4 of the 85354-9 or 55284-4 blood pressure panels)
        for i, comp in enumerate(obs.component or []):
            for system, code_value, _ in _codings(comp.code):
                code = _match(system, code_value, feat)
                if code is not None:
                    hits.append((feat, code, comp.valueQuantity, comp.valueInteger, f"{path}.component[{i}]"))
                    break
    for system, code_value, _ in codings:
        if (system, code_value) in aux_codes:
            name, code = aux_codes[(system, code_value)]
            hits.append((_AUX_FEATURES[name], code, obs.valueQuantity, obs.valueInteger, path))
    if not hits:
        return
    if when is None:
        work.issues.append(
            Issue(
                "no_date",
                "The Observation has no effective date or issued time",
                path,
                hits[0][0].name,
                ref,
                True,
            )
        )
        return
    if when > work.now + CLOCK_SKEW:
        work.issues.append(
            Issue(
                "future_date",
                f"{element} {_date_text(raw_when)[:40]} is after the time of the call",
                path,
                hits[0][0].name,
                ref,
                True,
            )
        )
        return
    for feat, code, qty, integer_value, where in hits:
        if qty is None and integer_value is None:
            work.issues.append(
                Issue(
                    "no_value",
                    f"{feat.label}: no value (dataAbsentReason or no value[x]); ignored.",
                    where,
                    feat.name,
                    ref,
                )
            )
            continue
        target = aux if feat.name in _AUX_FEATURES else work.found
        _add_value(
            work,
            feat,
            code,
            qty,
            integer_value,
            obs=obs,
            path=where,
            ref=ref,
            when=when,
            date=_date_text(raw_when),
            target=target,
        )


def age_on(birth: Any, today: dt.date) -> tuple[int, bool] | None:
    """Whole years from a FHIR birthDate to ``today``; partial dates count from their last possible day.

    Returns ``(age, partial)`` or None when the birth date cannot be read.
    """
    if isinstance(birth, dt.datetime):
        birth = birth.date()
    partial = False
    if not isinstance(birth, dt.date):
        text = str(birth)
        try:
            if len(text) == 4:
                birth, partial = dt.date(int(text), 12, 31), True
            elif len(text) == 7:
                year, month = int(text[:4]), int(text[5:7])
                birth, partial = dt.date(year, month, calendar.monthrange(year, month)[1]), True
            else:
                birth = dt.date.fromisoformat(text[:10])
        except ValueError:
            return None
    years = today.year - birth.year - ((today.month, today.day) < (birth.month, birth.day))
    return years, partial


# body weight and height: not model features, only the inputs of a derived BMI (codes from the BMI mapping)
def _aux_feature(name: str, label: str, unit: str) -> Feature:
    return Feature(name, name, label, unit, label, 0.0, 1000.0)


_AUX_FEATURES = {
    "body_weight": _aux_feature("body_weight", "Body weight", "kg"),
    "body_height": _aux_feature("body_height", "Body height", "cm"),
}


def _pick(work: _Work, label: str, feature: str, candidates: list[_Candidate]) -> SourceValue | None:
    """The latest value (effective[x], then issued); None, with a ``conflicting_values`` issue, when the latest
    ones tie on both and disagree. The same for every order of the input."""
    if not candidates:
        return None
    latest = max(c.order() for c in candidates)
    tied = sorted((c.value for c in candidates if c.order() == latest), key=lambda v: (v.resource, v.path))
    values = {round(v.value, 9) for v in tied}
    if len(values) > 1:
        refs = ", ".join(dict.fromkeys(v.resource for v in tied))
        shown = " vs ".join(format_value(v) for v in sorted(values))
        work.issues.append(
            Issue(
                "conflicting_values",
                f"{label}: {len(tied)} values dated {tied[0].date[:25]} (same issued time) disagree ({shown}; "
                f"{refs}); none is used: conflicts are not settled by the order of the input",
                tied[0].path,
                feature,
                tied[0].resource,
            )
        )
        return None
    return tied[0]


def extract(
    patient: Patient,
    observations: Sequence[tuple[str, Observation | UnreadObservation]],
    *,
    spec: FeatureSpec,
    now: dt.datetime,
    patient_path: str = "patient",
    patient_full_url: str | None = None,
) -> Extraction:
    """The model record of ``patient`` from ``observations`` (each with its JSON path), as of ``now`` (UTC);
    ``patient_full_url`` is the ``fullUrl`` of the Patient's Bundle entry, which references may use."""
    patient_id = str(patient.id or "")
    work = _Work(spec=spec, now=now.astimezone(dt.UTC), patient_id=patient_id, patient_full_url=patient_full_url or "")
    aux: dict[str, list[_Candidate]] = {}
    aux_codes: dict[tuple[str, str], tuple[str, FhirCode]] = {}
    for feat in spec:
        if feat.fhir is not None:
            for code, name in zip(feat.fhir.derived_from, _AUX_FEATURES, strict=False):
                aux_codes[(code.system, code.code)] = (name, code)
    for path, obs in observations:
        _observation(work, path, obs, aux, aux_codes)

    sources: dict[str, SourceValue] = {}
    for name, candidates in work.found.items():
        chosen = _pick(work, spec.by_name(name).label, name, candidates)
        if chosen is not None:
            sources[name] = chosen
    derived: list[str] = []
    today = work.now.date()
    for feat in spec:
        mapping = feat.fhir
        if mapping is None:
            continue
        if mapping.patient_element == "birthDate" and patient.birthDate is not None:
            aged = age_on(patient.birthDate, today)
            ref = resource_ref("Patient", patient, patient_path)
            if aged is None:
                work.issues.append(
                    Issue(
                        "invalid_birth_date",
                        "Patient.birthDate cannot be read",
                        f"{patient_path}.birthDate",
                        feat.name,
                        ref,
                        True,
                    )
                )
            elif not feat.valid_min <= aged[0] <= feat.valid_max:
                work.issues.append(
                    Issue(
                        "implausible_value",
                        f"Age from Patient.birthDate lies outside {_range(feat)}",
                        f"{patient_path}.birthDate",
                        feat.name,
                        ref,
                        True,
                    )
                )
            else:
                age, partial = aged
                note = f"whole years from Patient.birthDate to the day of the call ({today.isoformat()}, UTC)"
                if partial:
                    note += "; the birth date is partial: counted from its last possible day (youngest possible age)"
                    work.issues.append(
                        Issue(
                            "partial_birth_date",
                            "Patient.birthDate is partial; the age may be one year higher.",
                            f"{patient_path}.birthDate",
                            feat.name,
                            ref,
                        )
                    )
                sources[feat.name] = SourceValue(
                    feature=feat.name,
                    resource=ref,
                    path=f"{patient_path}.birthDate",
                    date=today.isoformat(),
                    system="http://hl7.org/fhir/StructureDefinition/Patient",
                    code="birthDate",
                    display="Patient.birthDate",
                    original_value=float(age),
                    original_unit=_date_text(patient.birthDate),
                    value=float(age),
                    unit=feat.unit,
                    note=note,
                )
        if feat.name not in sources and mapping.derived_from and len(mapping.derived_from) == 2:
            w_pick = _pick(work, "Body weight", feat.name, aux.get("body_weight", []))
            h_pick = _pick(work, "Body height", feat.name, aux.get("body_height", []))
            if w_pick is not None and h_pick is not None:
                w, h = w_pick, h_pick
                bmi = w.value / ((h.value / 100.0) ** 2) if h.value > 0 else math.inf
                if feat.valid_min < bmi <= feat.valid_max:
                    sources[feat.name] = SourceValue(
                        feature=feat.name,
                        resource=w.resource,
                        path=w.path,
                        date=min(w.date, h.date),
                        system="derived",
                        code="29463-7/8302-2^2",
                        display="BMI computed from body weight and height",
                        original_value=round(bmi, 4),
                        original_unit="kg/m2",
                        value=round(bmi, 1),
                        unit=feat.unit,
                        derived_from=(w, h),
                        note=(
                            f"computed: weight {format_value(w.value)} kg ({w.date}) / height "
                            f"{format_value(h.value)} cm ({h.date}) squared"
                        ),
                    )
                    derived.append(feat.name)
                else:
                    work.issues.append(
                        Issue(
                            "implausible_value",
                            "BMI computed from weight and height is implausible",
                            w.path,
                            feat.name,
                            w.resource,
                            True,
                        )
                    )
    record: dict[str, float | None] = {f.name: (sources[f.name].value if f.name in sources else None) for f in spec}
    for feat in spec:
        if feat.zero_means_missing and record.get(feat.name) == 0:
            work.issues.append(
                Issue(
                    "zero_not_measured",
                    f"{feat.label} of 0 means 'not measured' for this model; imputed.",
                    sources[feat.name].path,
                    feat.name,
                    sources[feat.name].resource,
                )
            )
    not_found = tuple(f.name for f in spec if record[f.name] is None)
    required_missing = tuple(f.name for f in spec if record[f.name] is None and not f.may_be_missing)
    return Extraction(
        patient_id=patient_id,
        gender=str(patient.gender or ""),
        record=record,
        sources=sources,
        issues=tuple(work.issues),
        not_found=not_found,
        required_missing=required_missing,
        derived=tuple(derived),
        as_of=work.now.isoformat().replace("+00:00", "Z"),
    )


def outside_population(extraction: Extraction, population: Population) -> list[str]:
    """Why the patient is outside the model's training population (recorded gender, age); empty when inside."""
    outside = []
    if population.sex and extraction.gender and extraction.gender != population.sex:
        outside.append(f"recorded gender is {extraction.gender[:20]}")
    age = extraction.record.get("age")
    if age is not None and population.min_age and age < population.min_age:
        outside.append(f"age {format_value(age)} is under {population.min_age}")
    return outside

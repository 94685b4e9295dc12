"""Parsing FHIR R4 JSON: the Bundle envelope by hand (cheap, with a cap on entries), each Patient and Observation
with the maintained ``fhir.resources`` R4B models (R4B reads R4 JSON for these two resources).

Every refusal is a :class:`FhirInputError` carrying one :class:`FhirProblem` per broken rule, each naming the
field by its JSON path (``entry[3].resource.valueQuantity.value``); the web layer renders them as problems.
Resources of other types are skipped (they are not errors: an EHR's Bundle may carry anything).

Strict JSON typing, as FHIR's JSON format defines it: a decimal or an integer is a JSON number, never a string
(``"value": "150"`` is refused, where the R4B models alone would read it as 150). The same resource (type and id)
given twice is read once when both copies are equal, and refused (``conflicting_copies``) when they differ: which
copy is right is not settled silently. Two Patients that disagree likewise. A string over 1 MiB anywhere in a
resource is refused (``string_too_long``: FHIR R4 "strings SHALL NOT exceed 1MB in size").
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import ValidationError

if TYPE_CHECKING:  # fhir.resources' models load with the first FHIR resource read (~0.1 s of start-up otherwise)
    from fhir.resources.R4B.observation import Observation
    from fhir.resources.R4B.patient import Patient

__all__ = [
    "FhirInputError",
    "FhirProblem",
    "ParsedResources",
    "TooManyEntriesError",
    "UnreadObservation",
    "parse_bundle",
    "parse_observation",
    "parse_patient",
    "parse_search_result",
]


MAX_STRING_BYTES = 1024 * 1024  # FHIR R4 datatypes, string: "Strings SHALL NOT exceed 1MB in size"


@dataclass(frozen=True)
class FhirProblem:
    """One broken rule of FHIR input: the JSON path, a machine-readable rule and the rule in words."""

    field: str
    rule: str
    message: str


class FhirInputError(ValueError):
    """FHIR input that cannot be used; ``problems`` name each field and rule (no patient value is echoed)."""

    def __init__(self, problems: Sequence[FhirProblem]) -> None:
        self.problems = tuple(problems)
        super().__init__("; ".join(f"{p.field}: {p.message}" for p in self.problems))


class TooManyEntriesError(FhirInputError):
    """A Bundle with more entries than the limit (the web layer answers 413)."""

    def __init__(self, path: str, count: int, limit: int) -> None:
        self.count = count
        self.limit = limit
        super().__init__(
            [FhirProblem(f"{path}entry", "too_many_entries", f"The Bundle has {count} entries; at most {limit}.")]
        )


@dataclass(frozen=True)
class UnreadObservation:
    """An Observation that carries none of the model's codes: not validated (it cannot change the record or its
    report), only its ``id`` and ``subject.reference`` taken from the JSON, so that one about another patient is
    still found (:func:`service.fhir.extract.extract` treats it as it treats a read one)."""

    id: str | None
    subject_reference: str


@dataclass(frozen=True)
class ParsedResources:
    """Patients and Observations found, each with the JSON path it came from; ``skipped`` counts other types and
    the Observations left unread (which are in ``observations`` as :class:`UnreadObservation`)."""

    patients: tuple[tuple[str, Patient], ...]
    observations: tuple[tuple[str, Observation | UnreadObservation], ...]
    skipped: int = 0
    outcome: bool = False  # the value was an OperationOutcome (a CDS client's way to say "I could not fetch it")
    full_urls: Mapping[str, str] = field(default_factory=dict)  # JSON path of a resource -> its entry's fullUrl


def _path(prefix: str, loc: Sequence[Any]) -> str:
    out = prefix.rstrip(".")
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out


def _validation_problems(prefix: str, exc: ValidationError) -> list[FhirProblem]:
    problems = []
    for err in exc.errors()[:20]:
        loc = [p for p in err.get("loc", ()) if p not in ("function-after[validate_extension(), Extension]",)]
        message = str(err.get("msg", "invalid value")).split("\n")[0].strip()
        problems.append(FhirProblem(_path(prefix, loc) or prefix, str(err.get("type", "invalid")), message))
    return problems


def _parse(model: Any, data: Mapping[str, Any], path: str) -> Any:
    try:
        return model.model_validate(data)
    except ValidationError as exc:
        raise FhirInputError(_validation_problems(path, exc)) from None
    except (TypeError, ValueError) as exc:  # fhir.resources raises plain errors for some malformed primitives
        problem = FhirProblem(path, "invalid", f"Not a valid FHIR R4 resource ({type(exc).__name__}).")
        raise FhirInputError([problem]) from None


def parse_patient(data: Mapping[str, Any], path: str) -> Patient:
    """A Patient resource (R4 JSON)."""
    from fhir.resources.R4B.patient import Patient

    result: Patient = _parse(Patient, data, path)
    return result


def _number_problems(data: Mapping[str, Any], path: str) -> list[FhirProblem]:
    """JSON strings (or booleans) where FHIR's JSON has a number: value[x] and the components' value[x]."""
    problems = []
    places: list[tuple[str, Any]] = [(path, data)]
    components = data.get("component")
    if isinstance(components, list):
        places += [(f"{path}.component[{i}]", c) for i, c in enumerate(components) if isinstance(c, Mapping)]
    for where, item in places:
        qty = item.get("valueQuantity")
        if isinstance(qty, Mapping) and "value" in qty:
            value = qty["value"]
            if isinstance(value, bool) or not isinstance(value, int | float):
                problems.append(
                    FhirProblem(f"{where}.valueQuantity.value", "number_type", "A FHIR decimal must be a JSON number.")
                )
        if "valueInteger" in item:
            value = item["valueInteger"]
            if isinstance(value, bool) or not isinstance(value, int):
                problems.append(
                    FhirProblem(f"{where}.valueInteger", "integer_type", "A FHIR integer must be a JSON integer.")
                )
    return problems


def parse_observation(data: Mapping[str, Any], path: str) -> Observation:
    """An Observation resource (R4 JSON); its values must be JSON numbers (FHIR's JSON typing)."""
    problems = _number_problems(data, path)
    if problems:
        raise FhirInputError(problems)
    from fhir.resources.R4B.observation import Observation

    result: Observation = _parse(Observation, data, path)
    return result


def _long_string(value: Any, path: str) -> None:
    """:class:`FhirInputError` naming the first string of ``value`` over :data:`MAX_STRING_BYTES` (UTF-8)."""
    stack: list[tuple[str, Any]] = [(path, value)]
    while stack:
        where, item = stack.pop()
        if isinstance(item, str):
            # a character is at most 4 bytes in UTF-8: only long strings need encoding to be measured
            if len(item) * 4 > MAX_STRING_BYTES and len(item.encode("utf-8", "surrogatepass")) > MAX_STRING_BYTES:
                raise FhirInputError(
                    [FhirProblem(where, "string_too_long", f"A FHIR string must not exceed {MAX_STRING_BYTES} bytes.")]
                )
        elif isinstance(item, Mapping):
            stack += [(f"{where}.{k}", v) for k, v in item.items() if not isinstance(v, int | float | bool)]
        elif isinstance(item, list):
            stack += [(f"{where}[{i}]", v) for i, v in enumerate(item) if not isinstance(v, int | float | bool)]


def _resource_type(value: Any, path: str) -> str:
    if not isinstance(value, Mapping):
        raise FhirInputError([FhirProblem(path, "object_type", "A FHIR resource must be a JSON object.")])
    kind = value.get("resourceType")
    if not isinstance(kind, str) or not kind:
        raise FhirInputError(
            [FhirProblem(f"{path}.resourceType", "missing", "Every FHIR resource needs resourceType.")]
        )
    return kind


def _entries(bundle: Mapping[str, Any], path: str, max_entries: int) -> list[tuple[str, Any, str]]:
    entries = bundle.get("entry", [])
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise FhirInputError([FhirProblem(f"{path}.entry", "list_type", "Bundle.entry must be an array.")])
    if len(entries) > max_entries:
        raise TooManyEntriesError(f"{path}." if path else "", len(entries), max_entries)
    out: list[tuple[str, Any, str]] = []
    for i, entry in enumerate(entries):
        where = _path(path, ["entry", i])
        if not isinstance(entry, Mapping):
            raise FhirInputError([FhirProblem(where, "object_type", "A Bundle entry must be a JSON object.")])
        resource = entry.get("resource")
        if resource is None:
            continue  # an entry without a resource (a search's outcome link, a deleted version): nothing to read
        full_url = entry.get("fullUrl")
        out.append((f"{where}.resource", resource, full_url if isinstance(full_url, str) else ""))
    return out


def _same_copy(kind: str, rid: str, where: str, resource: Any, copies: dict[str, tuple[str, Any]]) -> bool:
    """True when ``resource`` repeats one already read (skip it); :class:`FhirInputError` when it differs."""
    key = f"{kind}/{rid}"
    if key not in copies:
        copies[key] = (where, resource)
        return False
    first, earlier = copies[key]
    if earlier == resource:
        return True
    rule = "patients_disagree" if kind == "Patient" else "conflicting_copies"
    raise FhirInputError(
        [
            FhirProblem(
                where,
                rule,
                f"{kind}/{rid[:64]} is given twice with different content (also at {first}); which copy is right is "
                "not settled silently: send one.",
            )
        ]
    )


def _codings(concept: Any) -> Iterator[tuple[str, str]]:
    if isinstance(concept, Mapping) and isinstance(concept.get("coding"), list):
        for c in concept["coding"]:
            if isinstance(c, Mapping):
                yield str(c.get("system") or ""), str(c.get("code") or "")


def _is_relevant(resource: Mapping[str, Any], codes: frozenset[tuple[str, str]] | None) -> bool:
    """Whether an Observation carries one of ``codes`` (None: every Observation counts), in its code or a
    component's code. Read from the raw JSON, so that an irrelevant Observation costs no model validation; one
    whose code cannot be read is relevant (its validation then says why)."""
    if codes is None:
        return True
    code = resource.get("code")
    if not isinstance(code, Mapping) or not isinstance(code.get("coding", []), list):
        return True  # unreadable: parsed, so that the model's validation names what is wrong
    if any(c in codes for c in _codings(code)):
        return True
    components = resource.get("component")
    return isinstance(components, list) and any(
        c in codes for comp in components if isinstance(comp, Mapping) for c in _codings(comp.get("code"))
    )


def _unread(resource: Mapping[str, Any]) -> UnreadObservation | None:
    """An irrelevant Observation's id and subject reference from its JSON; None when the subject is not shaped as a
    Reference (not an object, or a reference that is not a string), which the model's validation then names."""
    subject = resource.get("subject")
    if subject is None:
        reference: Any = ""
    elif isinstance(subject, Mapping):
        reference = subject.get("reference") or ""  # identifier or display only: no subject reference
    else:
        return None
    if not isinstance(reference, str):
        return None
    rid = resource.get("id")
    return UnreadObservation(rid if isinstance(rid, str) and rid else None, reference)


def _collect(
    items: Sequence[tuple[str, Any, str]],
    path: str,
    max_entries: int,
    depth: int = 0,
    seen: dict[str, tuple[str, Any]] | None = None,
    codes: frozenset[tuple[str, str]] | None = None,
) -> ParsedResources:
    patients: list[tuple[str, Patient]] = []
    observations: list[tuple[str, Observation | UnreadObservation]] = []
    full_urls: dict[str, str] = {}
    skipped = 0
    outcome = False
    copies: dict[str, tuple[str, Any]] = {} if seen is None else seen
    for where, resource, full_url in items:
        kind = _resource_type(resource, where)
        if kind != "Bundle":
            _long_string(resource, where)
        rid = resource.get("id")
        repeated = kind in ("Patient", "Observation") and isinstance(rid, str) and rid
        if repeated and _same_copy(kind, str(rid), where, resource, copies):
            continue  # the same resource twice (e.g. answering two searches): read once
        if full_url:
            full_urls[where] = full_url
        if kind == "Patient":
            patients.append((where, parse_patient(resource, where)))
        elif kind == "Observation":
            unread = None if _is_relevant(resource, codes) else _unread(resource)
            if unread is None:
                observations.append((where, parse_observation(resource, where)))
            else:  # unvalidated, but whose patient it is about is still checked
                observations.append((where, unread))
                skipped += 1
        elif kind == "Bundle" and depth == 0:
            inner = _collect(_entries(resource, where, max_entries), where, max_entries, depth + 1, copies, codes)
            patients += inner.patients
            observations += inner.observations
            full_urls.update(inner.full_urls)
            skipped += inner.skipped
        elif kind == "OperationOutcome":
            from fhir.resources.R4B.operationoutcome import OperationOutcome

            _parse(OperationOutcome, resource, where)
            outcome = True
        else:
            skipped += 1
    return ParsedResources(tuple(patients), tuple(observations), skipped, outcome, full_urls)


def parse_bundle(
    data: Any, *, max_entries: int, path: str = "", codes: frozenset[tuple[str, str]] | None = None
) -> ParsedResources:
    """A Bundle posted to ``/fhir/*``: its Patients and Observations (other resource types skipped, and with
    ``codes`` the Observations that carry none of them: see :func:`service.fhir.extract.relevant_codes`).

    Raises :class:`FhirInputError` for anything that is not a Bundle of resources, or whose Patient or Observation
    breaks the R4 model; :class:`TooManyEntriesError` over ``max_entries`` entries.
    """
    kind = _resource_type(data, path or "body")
    if kind != "Bundle":
        raise FhirInputError(
            [FhirProblem(_path(path, ["resourceType"]), "resource_type", f"Expected a Bundle, got {kind[:40]!r}.")]
        )
    return _collect(_entries(data, path, max_entries), path, max_entries, depth=1, codes=codes)


def parse_search_result(
    data: Any,
    *,
    max_entries: int,
    path: str,
    seen: dict[str, tuple[str, Any]] | None = None,
    codes: frozenset[tuple[str, str]] | None = None,
) -> ParsedResources:
    """A prefetch value or a FHIR search answer: a Bundle (searchset), a single resource or an OperationOutcome.

    ``seen`` (``Type/id`` -> where and what was read) skips resources already read from another search when equal,
    refuses them when they differ, and is updated.
    """
    kind = _resource_type(data, path)
    if kind == "Bundle":
        return _collect(_entries(data, path, max_entries), path, max_entries, depth=1, seen=seen, codes=codes)
    return _collect([(path, data, "")], path, max_entries, depth=1, seen=seen, codes=codes)

"""Parsing FHIR R4 JSON: the Bundle envelope by hand (cheap, with a cap on entries), each Patient and Observation
with the maintained ``fhir.resources`` R4B models (R4B reads R4 JSON for these two resources).

Every refusal is a :class:`FhirInputError` carrying one :class:`FhirProblem` per broken rule, each naming the
field by its JSON path (``entry[3].resource.valueQuantity.value``); the web layer renders them as problems.
Resources of other types are skipped (they are not errors: an EHR's Bundle may carry anything).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from fhir.resources.R4B.observation import Observation
from fhir.resources.R4B.operationoutcome import OperationOutcome
from fhir.resources.R4B.patient import Patient
from pydantic import ValidationError

__all__ = [
    "FhirInputError",
    "FhirProblem",
    "ParsedResources",
    "TooManyEntriesError",
    "parse_bundle",
    "parse_observation",
    "parse_patient",
    "parse_search_result",
]


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
class ParsedResources:
    """Patients and Observations found, each with the JSON path it came from; ``skipped`` counts other types."""

    patients: tuple[tuple[str, Patient], ...]
    observations: tuple[tuple[str, Observation], ...]
    skipped: int = 0
    outcome: bool = False  # the value was an OperationOutcome (a CDS client's way to say "I could not fetch it")


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
    result: Patient = _parse(Patient, data, path)
    return result


def parse_observation(data: Mapping[str, Any], path: str) -> Observation:
    """An Observation resource (R4 JSON)."""
    result: Observation = _parse(Observation, data, path)
    return result


def _resource_type(value: Any, path: str) -> str:
    if not isinstance(value, Mapping):
        raise FhirInputError([FhirProblem(path, "object_type", "A FHIR resource must be a JSON object.")])
    kind = value.get("resourceType")
    if not isinstance(kind, str) or not kind:
        raise FhirInputError(
            [FhirProblem(f"{path}.resourceType", "missing", "Every FHIR resource needs resourceType.")]
        )
    return kind


def _entries(bundle: Mapping[str, Any], path: str, max_entries: int) -> list[tuple[str, Mapping[str, Any]]]:
    entries = bundle.get("entry", [])
    if entries is None:
        entries = []
    if not isinstance(entries, list):
        raise FhirInputError([FhirProblem(f"{path}.entry", "list_type", "Bundle.entry must be an array.")])
    if len(entries) > max_entries:
        raise TooManyEntriesError(f"{path}." if path else "", len(entries), max_entries)
    out: list[tuple[str, Mapping[str, Any]]] = []
    for i, entry in enumerate(entries):
        where = _path(path, ["entry", i])
        if not isinstance(entry, Mapping):
            raise FhirInputError([FhirProblem(where, "object_type", "A Bundle entry must be a JSON object.")])
        resource = entry.get("resource")
        if resource is None:
            continue  # an entry without a resource (a search's outcome link, a deleted version): nothing to read
        out.append((f"{where}.resource", resource))
    return out


def _collect(
    items: Sequence[tuple[str, Any]], path: str, max_entries: int, depth: int = 0, seen: set[str] | None = None
) -> ParsedResources:
    patients: list[tuple[str, Patient]] = []
    observations: list[tuple[str, Observation]] = []
    skipped = 0
    outcome = False
    for where, resource in items:
        kind = _resource_type(resource, where)
        rid = resource.get("id")
        if seen is not None and isinstance(rid, str) and rid:
            if f"{kind}/{rid}" in seen:
                continue  # the same resource answered another search: parsed once
            seen.add(f"{kind}/{rid}")
        if kind == "Patient":
            patients.append((where, parse_patient(resource, where)))
        elif kind == "Observation":
            observations.append((where, parse_observation(resource, where)))
        elif kind == "Bundle" and depth == 0:
            inner = _collect(_entries(resource, where, max_entries), where, max_entries, depth + 1)
            patients += inner.patients
            observations += inner.observations
            skipped += inner.skipped
        elif kind == "OperationOutcome":
            _parse(OperationOutcome, resource, where)
            outcome = True
        else:
            skipped += 1
    return ParsedResources(tuple(patients), tuple(observations), skipped, outcome)


def parse_bundle(data: Any, *, max_entries: int, path: str = "") -> ParsedResources:
    """A Bundle posted to ``/fhir/*``: its Patients and Observations (other resource types skipped).

    Raises :class:`FhirInputError` for anything that is not a Bundle of resources, or whose Patient or Observation
    breaks the R4 model; :class:`TooManyEntriesError` over ``max_entries`` entries.
    """
    kind = _resource_type(data, path or "body")
    if kind != "Bundle":
        raise FhirInputError(
            [FhirProblem(_path(path, ["resourceType"]), "resource_type", f"Expected a Bundle, got {kind[:40]!r}.")]
        )
    return _collect(_entries(data, path, max_entries), path, max_entries, depth=1)


def parse_search_result(data: Any, *, max_entries: int, path: str, seen: set[str] | None = None) -> ParsedResources:
    """A prefetch value or a FHIR search answer: a Bundle (searchset), a single resource or an OperationOutcome.

    ``seen`` (``Type/id`` strings) skips resources already read from another search, and is updated.
    """
    kind = _resource_type(data, path)
    if kind == "Bundle":
        return _collect(_entries(data, path, max_entries), path, max_entries, depth=1, seen=seen)
    return _collect([(path, data)], path, max_entries, depth=1, seen=seen)

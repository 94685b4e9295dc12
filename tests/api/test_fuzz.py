"""Schemathesis against the committed ``openapi.yaml`` and the real ``gshap serve`` process: every operation.

Each operation gets the spec's examples, schemathesis' coverage cases (boundaries, missing and extra fields,
wrong types, unsupported methods and content types) and ``MAX_EXAMPLES`` generated cases, positive and
negative, derandomized so that a run is repeatable. Every answer is checked by schemathesis' default checks:
no 5xx, a documented status code, the documented content type and response schema and headers, valid data
accepted, invalid data refused.

One refinement: a batch answers each record on its own (``/predict/batch``, ``/explain/batch``), so a batch
whose only schema violation is inside a record is *not* refused as a whole: it is answered 200 with that
record refused. For those two operations, a negative case answered 200 must therefore report at least one
refused record; any other answer goes through schemathesis' own negative-data check.

The figures (examples per operation, positive and negative) are printed by the last test (``pytest -s``). That
test reads the counters the fuzzing test filled in this session; run on its own (or when the fuzzing ran for only
some operations), it runs the whole fuzzing test in a pytest subprocess, which hands its counters back in a file.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from live_server import ROOT, LiveServer, running_server
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

MAX_EXAMPLES = 40
BATCH_PATHS = frozenset({"/predict/batch", "/explain/batch"})
# FHIR content rules (codes, units, dates, one Patient per Bundle, a required input present) and CDS Hooks' 412
# ("the data can be had neither from the prefetch nor from the FHIR server") go beyond what JSON Schema can say:
# a schema-valid request to these paths may rightly be refused with 412, 413 or 422. So may CDS feedback, whose
# calendar validity of outcomeTimestamp and accepted-needs-suggestions rule (cds-fb invariants) are not in the schema.
FHIR_PATHS = frozenset(
    {"/fhir/predict", "/fhir/explain", "/cds-services/diabetes-risk", "/cds-services/diabetes-risk/feedback"}
)
FHIR_REFUSALS = frozenset({412, 413, 422})
# The Open Inference Protocol's tensor rules (a tensor's data fits its shape, the inputs are the model's features,
# each record passes the feature rules, at most GSHAP_MAX_BATCH_RECORDS records) go beyond JSON Schema too: a
# schema-valid inference request may rightly be refused with 400 or 413, V2's {"error": ...} naming the rule.
V2_INFER_PATHS = frozenset({"/v2/models/{name}/infer", "/v2/models/{name}/versions/{version}/infer"})
V2_REFUSALS = frozenset({400, 413})
# A served model's routes (/models/{name}[/versions/{version}]/...) are the root routes' handlers with that model's
# own request models. The default model's copies (under its name and every version of it) have the root's models,
# so they are not fuzzed again; every other model is fuzzed under its name (its versions share its models when
# their features are the same, as the shipped ones' are). 32 root operations and the breast-cancer model's 12.
DEFAULT_MODEL = (ROOT / "model_store" / "DEFAULT").read_text().strip().split("/")[0]
COPIES = rf"^/models/{re.escape(DEFAULT_MODEL)}/|^/models/[^/]+/versions/"
OPERATIONS = 44

schema = schemathesis.openapi.from_path(
    ROOT / "openapi.yaml", config=schemathesis.Config.from_dict({"generation": {"mode": "all"}})
).exclude(path_regex=COPIES)


def _root(path: str) -> str:
    """The root route a served model's route copies (``/models/x/predict/batch`` -> ``/predict/batch``)."""
    return re.sub(r"^/models/[^/]+(/versions/[^/]+)?(?=/)", "", path)


def _fhir_like(path: str) -> bool:
    """A FHIR route or a CDS service's call or feedback path (every served version's CDS service has its own)."""
    root = _root(path)
    return root in FHIR_PATHS or (root.startswith("/cds-services/") and not root.endswith("/summary"))


EXAMPLES: Counter[str] = Counter()
NEGATIVE: Counter[str] = Counter()
REFUSED_IN_BATCH: Counter[str] = Counter()
COUNTS_OUT = "FUZZ_COUNTS_OUT"  # set by test_fuzzing_reached_every_operation for its subprocess


@pytest.fixture(scope="module", autouse=True)
def _hand_counts_back() -> Iterator[None]:
    """In the subprocess started by the last test, write the counters to the file it names when the module ends."""
    yield
    out = os.environ.get(COUNTS_OUT)
    if out:
        counts = {"examples": EXAMPLES, "negative": NEGATIVE, "refused_in_batch": REFUSED_IN_BATCH}
        Path(out).write_text(json.dumps(counts))


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with running_server() as server:
        yield server


@schemathesis.check
def negative_data_rejection_per_record(ctx: Any, response: Any, case: Any) -> bool | None:
    """Negative data is refused: as a whole (4xx), or, in a batch, as the record that carries it."""
    if _fhir_like(case.path) and response.status_code in FHIR_REFUSALS:
        return True  # refused (412: no data to compute from, whatever else is wrong)
    if _root(case.path) in BATCH_PATHS and response.status_code == 200:
        failed = response.json()["failed"]
        if not _is_negative(case):
            assert failed == 0, "a batch of schema-valid records had a record refused"
        elif failed >= 1:
            return True
    result: bool | None = negative_data_rejection(ctx, response, case)
    return result


@schemathesis.check
def positive_data_acceptance_fhir_aware(ctx: Any, response: Any, case: Any) -> bool | None:
    """Valid data is accepted; on the FHIR and CDS paths it may be refused by a FHIR content rule (412/413/422)."""
    if _fhir_like(case.path) and response.status_code in FHIR_REFUSALS:
        body = response.json()
        assert body.get("errors") or body.get("limit"), "a FHIR refusal must name the field and the rule"
        return True
    if _root(case.path) in V2_INFER_PATHS and response.status_code in V2_REFUSALS:
        assert set(response.json()) == {"error"}, "a V2 refusal is {'error': ...}"
        return True
    result: bool | None = positive_data_acceptance(ctx, response, case)
    return result


def _is_negative(case: Any) -> bool:
    meta = case.meta
    return meta is not None and meta.generation.mode.is_negative


@schema.parametrize()
@settings(
    max_examples=MAX_EXAMPLES,
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much, HealthCheck.data_too_large],
)
def test_every_operation_conforms_to_the_spec(case: Any, live: LiveServer) -> None:
    """No 5xx; every answer has a documented status, content type and schema; bad input is refused."""
    response = case.call(base_url=live.url, timeout=60)
    EXAMPLES[f"{case.method} {case.path}"] += 1
    if _is_negative(case):
        NEGATIVE[f"{case.method} {case.path}"] += 1
    case.validate_response(
        response,
        excluded_checks=[negative_data_rejection, positive_data_acceptance],
        additional_checks=[negative_data_rejection_per_record, positive_data_acceptance_fhir_aware],
    )
    if _root(case.path) in BATCH_PATHS and response.status_code == 200 and response.json()["failed"]:
        REFUSED_IN_BATCH[case.path] += 1


def _fuzz_in_a_subprocess(tmp: Path) -> tuple[Counter[str], Counter[str], Counter[str]]:
    """Run the fuzzing test alone in a pytest subprocess; its counters (examples, negative, refused in a batch)."""
    out = tmp / "counts.json"
    done = subprocess.run(
        [sys.executable, "-m", "pytest", f"{__file__}::test_every_operation_conforms_to_the_spec", "-q", "-p",
         "no:cacheprovider"],
        check=False, cwd=ROOT, env={**os.environ, COUNTS_OUT: str(out)}, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, f"the fuzzing failed:\n{done.stdout[-4000:]}\n{done.stderr[-2000:]}"
    counts = json.loads(out.read_text())
    return Counter(counts["examples"]), Counter(counts["negative"]), Counter(counts["refused_in_batch"])


def test_fuzzing_reached_every_operation(tmp_path: Path) -> None:
    """Every documented operation was fuzzed with at least MAX_EXAMPLES cases (figures printed)."""
    documented = {
        f"{method.upper()} {path}"
        for path, item in schema.raw_schema["paths"].items()
        for method in item
        if not re.match(COPIES, path)
    }
    assert len(documented) == OPERATIONS
    examples, negative, refused = EXAMPLES, NEGATIVE, REFUSED_IN_BATCH
    if not all(examples[op] for op in documented):  # this session did not fuzz every operation: fuzz them all now
        examples, negative, refused = _fuzz_in_a_subprocess(tmp_path)
    for operation in sorted(documented):
        print(f"fuzz: {operation:<24} {examples[operation]:>4} cases, {negative[operation]:>4} negative")
    others = sum(n for op, n in examples.items() if op not in documented)
    print(
        f"fuzz: {sum(examples.values())} cases in all ({sum(negative.values())} negative; {others} with "
        f"undocumented methods); {sum(refused.values())} negative batches answered record by record"
    )
    assert all(examples[op] >= MAX_EXAMPLES for op in documented if "{" in op or op.startswith("POST"))
    assert all(examples[op] >= 1 for op in documented)

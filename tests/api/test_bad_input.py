"""A catalogue of bad input against the real ``gshap serve`` over TCP: exact status, problem and fields, and after
every one the service still gives the same good answer.

Decisions the catalogue pins (each a case below):

- Types are strict. Numbers sent as strings (``"148"``, ``""``) are refused, not parsed: a string in a
  numeric field is a client bug, and parsing it would hide locale and unit mistakes (``"148,5"``,
  ``"148 mg/dL"``). Booleans are refused for numbers and counts (Python would read ``true`` as 1). Arrays and
  objects where a number belongs are refused.
- ``6.0`` for a count is accepted as ``6`` (JSON has one number type, and JSON Schema calls it an integer);
  ``2.5`` is refused: nothing is rounded.
- ``NaN``, ``Infinity``, ``-Infinity`` and literals that overflow to infinity (``1e999``) are refused as
  ``finite_number``; finite but absurd values (``1e308``, ``-1e308``, age 1000) are refused by the field's
  plausible range, naming the bound (``limit``).
- A body that is not JSON is a 400 ``malformed-body`` problem, whatever the reason: syntax, bytes that are not
  UTF-8, nesting deeper than the parser allows, or an integer literal of thousands of digits.
- A JSON body that is not an object (array, string, number, ``null``) is a 422 on ``body``; an empty body is
  a 422 ``missing`` body; a body not declared ``application/json`` (or ``+json``) is a 415.
- A UTF-8 byte-order mark is ignored (RFC 8259 allows a parser to), so such a body is answered.
- An unknown field is refused, naming it (cut at 64 characters), so a misspelling is never a silent "not
  measured"; values are never echoed.
- A body over ``GSHAP_MAX_BODY_BYTES`` (1 MiB) is a 413 whether its size is declared or streamed (chunked); a
  batch over ``GSHAP_MAX_BATCH_RECORDS`` (100) is a 413 naming that limit; an empty batch is a 422.
- Unsupported methods are a 405 with ``Allow``; CORS is closed, so a preflight ``OPTIONS`` is a 405 too.
- Duplicate keys (``{"glucose": 90, "glucose": 300}``): the last one wins today (Python's parser); the
  service should refuse them rather than pick one. That case is an expected failure until it does.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from helpers import record
from live_server import LiveServer, running_server

PROBLEM_BASE = "/problems/"
TITLES = {
    "malformed-body": "Malformed body",
    "not-found": "Not found",
    "method-not-allowed": "Method not allowed",
    "payload-too-large": "Payload too large",
    "unsupported-media-type": "Unsupported media type",
    "validation": "Invalid input",
}
JSON = {"content-type": "application/json"}
MAX_BODY = 1_048_576
MAX_RECORDS = 100
GOOD_EXPLAIN = {**record(), "method": "sampled", "n_samples": 16, "seed": 7}
LONG = "9" * 100_000


def _body(obj: Any) -> bytes:
    return json.dumps(obj).encode()


def _rec(**changes: Any) -> bytes:
    return _body(record(**changes))


def _literal(name: str, literal: str) -> bytes:
    """The example record with ``name`` set to a raw JSON literal (NaN, 1e999, a 5000-digit number)."""
    return json.dumps(record(**{name: "@@"})).replace('"@@"', literal).encode()


@dataclass(frozen=True)
class Bad:
    """One bad request and exactly what the service must answer."""

    id: str
    body: bytes | None
    status: int
    kind: str
    fields: dict[str, str] = field(default_factory=dict)
    path: str = "/predict"
    method: str = "POST"
    headers: dict[str, str] = field(default_factory=lambda: dict(JSON))
    limit: int | None = None
    allow: str | None = None
    never_echoed: tuple[str, ...] = ()


def _v(id: str, body: bytes | None, fields: dict[str, str], path: str = "/predict", **kw: Any) -> Bad:
    return Bad(id, body, 422, "validation", fields, path=path, **kw)


OVER = _body({"records": [record()] * (MAX_RECORDS + 1)})
SEVERAL = {"age": "less_than_equal", "pregnancies": "greater_than_equal"}
EXPLAIN_2: dict[str, Any] = {"path": "/explain", "limit": 2}
BATCH: dict[str, Any] = {"path": "/explain/batch"}

CATALOGUE = [
    # -- not JSON ------------------------------------------------------------------------------------------
    Bad("malformed-json", b'{"glucose": 148,', 400, "malformed-body", {"body": "json_invalid"}),
    Bad("trailing-garbage", _rec() + b" x", 400, "malformed-body", {"body": "json_invalid"}),
    Bad("single-quotes", b"{'glucose': 148}", 400, "malformed-body", {"body": "json_invalid"}),
    Bad("whitespace-only", b"   ", 400, "malformed-body", {"body": "json_invalid"}),
    Bad("not-utf8", _rec().replace(b'"glucose"', b'"gluc\xff"'), 400, "malformed-body", {"body": "json_invalid"}),
    Bad("nested-100000-deep", _literal("glucose", "[" * 100_000 + "]" * 100_000), 400, "malformed-body"),
    Bad("integer-of-5000-digits", _literal("pregnancies", "1" + "0" * 5000), 400, "malformed-body"),
    # -- not declared JSON ---------------------------------------------------------------------------------
    Bad("content-type-text", _rec(), 415, "unsupported-media-type", headers={"content-type": "text/plain"}),
    Bad("content-type-missing", _rec(), 415, "unsupported-media-type", headers={}),
    Bad("content-type-xml", _rec(), 415, "unsupported-media-type", headers={"content-type": "application/xml"}),
    Bad(
        "content-type-form",
        b"glucose=148",
        415,
        "unsupported-media-type",
        headers={"content-type": "application/x-www-form-urlencoded"},
    ),
    Bad(
        "content-type-multipart",
        b"--x\r\n\r\n148\r\n--x--\r\n",
        415,
        "unsupported-media-type",
        headers={"content-type": "multipart/form-data; boundary=x"},
    ),
    # -- JSON, but not an object ---------------------------------------------------------------------------
    _v("empty-body", b"", {"body": "missing"}),
    _v("no-body-no-content-type", None, {"body": "missing"}, headers={}),
    _v("array", b"[]", {"body": "model_attributes_type"}),
    _v("array-of-the-record", b"[" + _rec() + b"]", {"body": "model_attributes_type"}),
    _v("string", b'"glucose"', {"body": "model_attributes_type"}),
    _v("number", b"148", {"body": "model_attributes_type"}),
    _v("null", b"null", {"body": "model_attributes_type"}),
    # -- values: not finite, wrong types -------------------------------------------------------------------
    _v("nan", _literal("bmi", "NaN"), {"bmi": "finite_number"}),
    _v("infinity", _literal("bmi", "Infinity"), {"bmi": "finite_number"}),
    _v("minus-infinity", _literal("glucose", "-Infinity"), {"glucose": "finite_number"}),
    _v("overflow-1e999", _literal("bmi", "1e999"), {"bmi": "finite_number"}),
    _v("number-as-string", _rec(glucose="148"), {"glucose": "float_type"}),
    _v("count-as-string", _rec(pregnancies="6"), {"pregnancies": "int_type"}),
    _v("empty-string", _rec(glucose=""), {"glucose": "float_type"}),
    _v("boolean-for-number", _rec(glucose=True), {"glucose": "float_type"}),
    _v("boolean-for-count", _rec(pregnancies=False), {"pregnancies": "int_type"}),
    _v("array-for-number", _rec(glucose=[148]), {"glucose": "float_type"}),
    _v("object-for-number", _rec(glucose={"value": 148}), {"glucose": "float_type"}),
    _v("fraction-for-count", _rec(pregnancies=2.5), {"pregnancies": "int_type"}),
    _v("nested-50-deep", _literal("glucose", "[" * 50 + "]" * 50), {"glucose": "float_type"}),
    _v("long-string", _rec(glucose=LONG), {"glucose": "float_type"}, never_echoed=(LONG[:50],)),
    _v("null-for-required", _rec(age=None), {"age": "float_type"}),
    _v("missing-required", _body({k: v for k, v in record().items() if k != "age"}), {"age": "missing"}),
    _v("several-at-once", _rec(glucose="x", age=500, pregnancies=-1), {"glucose": "float_type", **SEVERAL}),
    # -- values: out of range, absurd ----------------------------------------------------------------------
    _v("negative", _rec(glucose=-1), {"glucose": "greater_than_equal"}, limit=0),
    _v("negative-age", _rec(age=-30.25), {"age": "greater_than_equal"}, never_echoed=("30.25",)),
    _v("absurd-age", _rec(age=1000), {"age": "less_than_equal"}, limit=120),
    _v("huge-1e308", _rec(glucose=1e308), {"glucose": "less_than_equal"}, limit=600),
    _v("huge-negative-1e308", _rec(glucose=-1e308), {"glucose": "greater_than_equal"}, limit=0),
    _v("huge-count-1e308", _rec(pregnancies=1e308), {"pregnancies": "less_than_equal"}, limit=30),
    _v("count-of-400-digits", _literal("pregnancies", "1" + "0" * 400), {"pregnancies": "less_than_equal"}),
    # -- fields --------------------------------------------------------------------------------------------
    _v("unknown-field", _rec(glucos=148), {"glucos": "extra_forbidden"}),
    _v("unknown-field-long-name", _rec(**{"k" * 10_000: 1}), {"k" * 63 + "…": "extra_forbidden"}),
    _v("settings-on-predict", _rec(seed=1), {"seed": "extra_forbidden"}),
    # -- size limits ---------------------------------------------------------------------------------------
    Bad("body-over-limit", _rec(pad="x" * MAX_BODY), 413, "payload-too-large", limit=MAX_BODY),
    Bad("batch-over-limit", OVER, 413, "payload-too-large", path="/predict/batch", limit=MAX_RECORDS),
    Bad("explain-batch-over-limit", OVER, 413, "payload-too-large", path="/explain/batch", limit=MAX_RECORDS),
    _v("batch-empty", _body({"records": []}), {"records": "too_short"}, path="/predict/batch"),
    _v("batch-not-a-list", _body({"records": record()}), {"records": "list_type"}, path="/predict/batch"),
    _v("batch-missing", _body({}), {"records": "missing"}, path="/explain/batch"),
    _v("batch-unknown-field", _body({"records": [record()], "x": 1}), {"x": "extra_forbidden"}, path="/predict/batch"),
    # -- explanation settings ------------------------------------------------------------------------------
    _v("n-samples-zero", _rec(n_samples=0), {"n_samples": "greater_than_equal"}, path="/explain", limit=1),
    _v("n-samples-over-max", _rec(n_samples=2001), {"n_samples": "less_than_equal"}, path="/explain", limit=2000),
    _v("n-samples-1-sampled", _rec(method="sampled", n_samples=1), {"n_samples": "greater_than_equal"}, **EXPLAIN_2),
    _v("n-samples-string", _rec(n_samples="64"), {"n_samples": "int_type"}, path="/explain"),
    _v("n-samples-boolean", _rec(n_samples=True), {"n_samples": "int_type"}, path="/explain"),
    _v("n-samples-batch", _body({"records": [record()], "n_samples": 5000}), {"n_samples": "less_than_equal"}, **BATCH),
    _v("seed-negative", _rec(seed=-1), {"seed": "greater_than_equal"}, path="/explain", limit=0),
    _v("seed-over-2^31", _rec(seed=2**31), {"seed": "less_than_equal"}, path="/explain", limit=2**31 - 1),
    _v("seed-fraction", _rec(seed=1.5), {"seed": "int_type"}, path="/explain"),
    _v("seed-string", _rec(seed="7"), {"seed": "int_type"}, path="/explain"),
    _v("method-unknown", _rec(method="magic"), {"method": "literal_error"}, path="/explain"),
    _v("output-unknown", _rec(output="odds"), {"output": "literal_error"}, path="/explain"),
    # -- routes and methods --------------------------------------------------------------------------------
    Bad("unknown-group", None, 404, "not-found", path="/groups/XX", method="GET", headers={}),
    Bad("unknown-path", None, 404, "not-found", path="/nowhere", method="GET", headers={}),
    Bad("get-on-predict", None, 405, "method-not-allowed", method="GET", headers={}, allow="POST"),
    Bad("put-on-explain", _rec(), 405, "method-not-allowed", path="/explain", method="PUT", allow="POST"),
    Bad("patch-on-batch", _rec(), 405, "method-not-allowed", path="/predict/batch", method="PATCH", allow="POST"),
    Bad("delete-on-groups", None, 405, "method-not-allowed", path="/groups", method="DELETE", headers={}, allow="GET"),
    Bad("post-on-model", _rec(), 405, "method-not-allowed", path="/model", method="POST", allow="GET"),
    Bad("post-on-healthz", None, 405, "method-not-allowed", path="/healthz", method="POST", headers={}, allow="GET"),
    Bad(
        "cors-preflight-closed",
        None,
        405,
        "method-not-allowed",
        method="OPTIONS",
        headers={"Origin": "https://clinic.example", "Access-Control-Request-Method": "POST"},
        allow="POST",
    ),
]


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with running_server() as server:
        yield server


@pytest.fixture(scope="module")
def http(live: LiveServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=live.url, timeout=30.0) as client:
        yield client


@pytest.fixture(scope="module")
def reference(http: httpx.Client) -> dict[str, Any]:
    r = http.post("/explain", json=GOOD_EXPLAIN)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def _still_answers(http: httpx.Client, reference: dict[str, Any]) -> None:
    r = http.post("/explain", json=GOOD_EXPLAIN)
    assert r.status_code == 200, r.text
    assert r.json() == reference


def _send(http: httpx.Client, case: Bad) -> httpx.Response:
    return http.request(case.method, case.path, content=case.body, headers=case.headers)


@pytest.mark.parametrize("case", CATALOGUE, ids=[c.id for c in CATALOGUE])
def test_bad_input_gets_the_exact_problem(http: httpx.Client, reference: dict[str, Any], case: Bad) -> None:
    """Each bad request gets its exact status and problem, naming the fields, never echoing values."""
    r = _send(http, case)
    assert r.status_code == case.status, r.text[:500]
    assert r.headers["content-type"] == "application/problem+json"
    problem = r.json()
    assert problem["type"] == PROBLEM_BASE + case.kind
    assert problem["title"] == TITLES[case.kind]
    assert problem["status"] == case.status
    assert problem["instance"] == case.path
    assert problem["request_id"] == r.headers["x-request-id"]
    assert problem["detail"]
    if case.fields:
        assert {e["field"]: e["rule"] for e in problem["errors"]} == case.fields
        assert all(e["message"] for e in problem["errors"])
    if case.limit is not None:
        limits = [problem.get("limit")] + [e.get("limit") for e in problem.get("errors", [])]
        assert case.limit in limits
    if case.allow is not None:
        assert r.headers["allow"] == case.allow
    assert "access-control-allow-origin" not in r.headers
    assert "Traceback" not in r.text
    for value in case.never_echoed:
        assert value not in r.text
    assert len(r.content) < 4096  # nothing is reflected at length
    _still_answers(http, reference)


def test_catalogue_size() -> None:
    """The catalogue keeps its breadth (figure for the closing note)."""
    print(f"bad input: {len(CATALOGUE)} refused cases, {len(ACCEPTED)} accepted decisions, 1 expected failure")
    assert len(CATALOGUE) >= 70


def _chunks(data: bytes, size: int = 65_536) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i : i + size]


def test_streamed_body_over_limit_is_413(http: httpx.Client, reference: dict[str, Any]) -> None:
    """A chunked body (no Content-Length) over the limit is a 413 naming the limit, over real HTTP."""
    big = _rec(pad="x" * MAX_BODY)
    r = http.post("/predict", content=_chunks(big), headers=JSON)
    assert "content-length" not in r.request.headers
    assert r.status_code == 413
    problem = r.json()
    assert problem["type"] == PROBLEM_BASE + "payload-too-large"
    assert (problem["limit"], problem["limit_name"]) == (MAX_BODY, "max_body_bytes")
    _still_answers(http, reference)


def _sized(size: int) -> bytes:
    prefix, suffix = _rec()[:-1] + b', "pad": "', b'"}'
    return prefix + b"x" * (size - len(prefix) - len(suffix)) + suffix


def test_body_limit_boundary(http: httpx.Client) -> None:
    """A body of exactly GSHAP_MAX_BODY_BYTES is read (refused for its content); one byte more is a 413."""
    at, over = _sized(MAX_BODY), _sized(MAX_BODY + 1)
    assert (len(at), len(over)) == (MAX_BODY, MAX_BODY + 1)
    r = http.post("/predict", content=at, headers=JSON)
    assert r.status_code == 422
    assert {e["field"]: e["rule"] for e in r.json()["errors"]} == {"pad": "extra_forbidden"}
    assert http.post("/predict", content=over, headers=JSON).status_code == 413
    assert http.post("/predict", content=_chunks(over), headers=JSON).status_code == 413


ACCEPTED = [
    ("whole-float-for-count", _rec(pregnancies=6.0), _rec(pregnancies=6)),
    ("byte-order-mark", b"\xef\xbb\xbf" + _rec(), _rec()),
    ("exponent-notation", _rec(glucose=1.48e2), _rec(glucose=148)),
    ("charset-parameter", _rec(), _rec()),
]


@pytest.mark.parametrize(("id", "body", "same_as"), ACCEPTED, ids=[a[0] for a in ACCEPTED])
def test_accepted_decisions(http: httpx.Client, id: str, body: bytes, same_as: bytes) -> None:
    """6.0 for a count, a byte-order mark, 1.48e2, a charset parameter: answered exactly like the plain form."""
    headers = {"content-type": "application/json; charset=utf-8"} if id == "charset-parameter" else JSON
    r = http.post("/predict", content=body, headers=headers)
    plain = http.post("/predict", content=same_as, headers=JSON)
    assert r.status_code == plain.status_code == 200, r.text
    assert r.json() == plain.json()


def test_duplicate_keys_are_refused(http: httpx.Client) -> None:
    """A body naming a field twice is refused rather than silently taking one of the two values."""
    body = _rec().replace(b'"glucose": 148', b'"glucose": 90, "glucose": 300')
    r = http.post("/predict", content=body, headers=JSON)
    assert r.status_code == 422

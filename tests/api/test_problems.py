"""Problem types: every kind is documented (docs/PROBLEMS.md, generated) and its `type` resolves on the service."""

from __future__ import annotations

import html
import re
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from live_server import LiveServer, running_server

from service.api.errors import PROBLEM_BASE, OtherHTTPError, ServiceError, problem_kinds, problems_markdown
from service.schemas import Problem

ROOT = Path(__file__).resolve().parents[2]
KEY = "problem-pages-test-key"


def test_problems_doc_is_generated_from_the_error_tree() -> None:
    """docs/PROBLEMS.md is what `gshap problems` writes now, and names every kind's type, status and title."""
    text = (ROOT / "docs" / "PROBLEMS.md").read_text()
    assert text == problems_markdown(), "docs/PROBLEMS.md is stale: run gshap problems"
    for kind in problem_kinds():
        row = next(line for line in text.splitlines() if line.startswith(f"| `{PROBLEM_BASE}{kind.slug}` |"))
        assert f"| {kind.title} |" in row


def test_every_kind_says_when_it_happens() -> None:
    """Each class of the error tree is a kind with its own slug and its own `when`, and the schema lists them all."""
    kinds = problem_kinds()
    subclasses: set[type[ServiceError]] = set()
    todo: list[type[ServiceError]] = [ServiceError]
    while todo:
        cls = todo.pop()
        subclasses.add(cls)
        todo.extend(cls.__subclasses__())
    assert set(kinds) == subclasses
    assert len({k.slug for k in kinds}) == len(kinds)
    for kind in kinds:
        assert "when" in vars(kind), kind.__name__
        assert len(kind.when) > 40, kind.__name__
    described = Problem.model_fields["type"].description or ""
    listed = re.search(r"one of (.*?)\. ", described)
    assert listed is not None
    named = {s.strip() for s in listed.group(1).split(",")}
    assert named == {k.slug for k in kinds if k is not OtherHTTPError}


@pytest.fixture(scope="module")
def live() -> Iterator[LiveServer]:
    with running_server({"GSHAP_API_KEYS": KEY}) as server:
        yield server


def test_problem_types_resolve_on_the_service_without_a_key(live: LiveServer) -> None:
    """A refusal's `type`, resolved against the request URL, is a page of the same service (no key needed) that
    names the kind; /problems lists every kind; an unknown kind is itself a not-found problem."""
    with httpx.Client(base_url=live.url, timeout=30.0) as http:
        refusals = [
            http.post("/predict", json={}),  # no key: unauthorized
            http.post("/predict", json={"glucose": "high"}, headers={"X-API-Key": KEY}),  # validation
            http.get("/nowhere", headers={"X-API-Key": KEY}),  # not-found
            http.post("/predict", content=b"{", headers={"X-API-Key": KEY, "Content-Type": "application/json"}),
        ]
        assert [r.status_code for r in refusals] == [401, 422, 404, 400]
        for r in refusals:
            problem = r.json()
            assert problem["type"].startswith(PROBLEM_BASE)
            page = http.get(str(r.request.url.join(problem["type"])))  # resolved as RFC 3986 says
            assert page.status_code == 200, problem["type"]
            assert page.headers["content-type"].startswith("text/html")
            assert f"<h1>{problem['title']}</h1>" in page.text
            assert f"HTTP status {problem['status']}." in page.text
        index = http.get(PROBLEM_BASE.rstrip("/"))
        assert index.status_code == 200
        for kind in problem_kinds():
            assert f"<code>{html.escape(PROBLEM_BASE + kind.slug)}</code>" in index.text
        assert "Request Timeout" in http.get(PROBLEM_BASE + "http-408").text
        unknown = http.get(PROBLEM_BASE + "no-such-kind")
        assert unknown.status_code == 404
        assert unknown.json()["type"] == PROBLEM_BASE + "not-found"
        assert http.get(PROBLEM_BASE + "http-200").status_code == 404  # not an error status

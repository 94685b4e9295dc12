"""``GET /problems`` and ``GET /problems/{kind}``: the pages that problem ``type`` URIs resolve to.

Every problem's ``type`` is ``/problems/<kind>`` (:data:`service.api.errors.PROBLEM_BASE`), a reference that
resolves on this service; these routes answer it with a short HTML page generated from the error tree (the same
text as docs/PROBLEMS.md). They are documentation, not API operations: open without an API key and left out of
the OpenAPI document.
"""

from __future__ import annotations

from fastapi import APIRouter
from fastapi.responses import HTMLResponse

from service.api.errors import PROBLEM_BASE, NotFound, problem_page, problems_index_page

__all__ = ["router"]

router = APIRouter(include_in_schema=False)


@router.get(PROBLEM_BASE.rstrip("/"))
async def problems_index() -> HTMLResponse:
    """Every problem type, linked to its page."""
    return HTMLResponse(problems_index_page())


@router.get(PROBLEM_BASE + "{kind}")
async def problem_type(kind: str) -> HTMLResponse:
    """What one problem type means; a not-found problem for a kind the service does not have."""
    page = problem_page(kind)
    if page is None:
        raise NotFound(f"No problem type of that name; the service's problem types are listed at {PROBLEM_BASE[:-1]}.")
    return HTMLResponse(page)

"""The example answers the OpenAPI docs show (``service.schemas.EXAMPLE_*``) are real answers of the shipped model.

Each example is compared with what the app answers for the same request, in process, with the committed default
bundle. Strings, counts, flags, names and settings must be equal. The numbers in the examples are rounded for
reading: a number shown with ``d`` decimals must be within half a unit of its last digit of the real one (plus
1e-9, because the logit and the probability come out of torch's BLAS-backed forward pass, whose last bits may
differ between machines). The completeness gap is floating-point rounding (about 1e-16): the example's and the
real one must both be below 1e-12 in magnitude.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from helpers import AppClient, app_client, default_spec

from service.schemas import EXAMPLE_EXPLANATION, EXAMPLE_PREDICTION, EXAMPLE_WARNING, example_record

BLAS_SLACK = 1e-9
GAP_BOUND = 1e-12


@pytest.fixture(scope="module")
def client(bundle: Any) -> Iterator[AppClient]:
    from service.api.app import create_app
    from service.config import Settings

    with app_client(create_app(Settings(), bundle)) as c:
        yield c


def _shown_to(shown: float, real: float, where: str) -> None:
    """``shown`` is ``real`` rounded to as many decimals as ``shown`` is written with."""
    decimals = max(0, -int(Decimal(repr(shown)).as_tuple().exponent))
    tolerance = 0.5 * 10.0**-decimals + BLAS_SLACK
    assert abs(shown - real) <= tolerance, f"{where}: the example shows {shown}, the shipped model answers {real}"


def _same(example: Any, real: Any, where: str, *, skip: frozenset[str] = frozenset()) -> None:
    """``example`` equals ``real`` field by field, floats as rounded readings of the real ones."""
    if isinstance(example, dict):
        assert isinstance(real, dict), where
        assert set(example) == set(real), f"{where}: fields {sorted(example)} vs {sorted(real)}"
        for key in example:
            if key not in skip:
                _same(example[key], real[key], f"{where}.{key}", skip=skip)
    elif isinstance(example, list):
        assert isinstance(real, list), where
        assert len(example) == len(real), f"{where}: {len(example)} items vs {len(real)}"
        for i, (e, r) in enumerate(zip(example, real, strict=True)):
            _same(e, r, f"{where}[{i}]", skip=skip)
    elif isinstance(example, float) and not isinstance(real, bool):
        assert isinstance(real, int | float), where
        _shown_to(example, float(real), where)
    else:
        assert example == real, f"{where}: the example shows {example!r}, the shipped model answers {real!r}"


def test_example_prediction_is_the_shipped_models_answer(client: AppClient) -> None:
    """EXAMPLE_PREDICTION is /predict's answer to the example record, its numbers rounded."""
    real = client.post("/predict", json=example_record(default_spec())).json()
    _same(EXAMPLE_PREDICTION, real, "prediction")


def test_example_warning_is_the_shipped_models_warning(client: AppClient) -> None:
    """EXAMPLE_WARNING is the warning /predict gives for the example record with insulin 900 µU/mL."""
    real = client.post("/predict", json={**example_record(default_spec()), "insulin": 900}).json()
    assert [w["feature"] for w in real["warnings"]] == ["insulin"]
    _same(EXAMPLE_WARNING, real["warnings"][0], "warning")


def test_example_explanation_is_the_shipped_models_answer(client: AppClient) -> None:
    """EXAMPLE_EXPLANATION is /explain's answer (defaults: exact, logit) to the example record, numbers rounded."""
    real = client.post("/explain", json=example_record(default_spec())).json()
    _same(EXAMPLE_EXPLANATION, real, "explanation", skip=frozenset({"completeness_gap"}))
    assert abs(EXAMPLE_EXPLANATION["completeness_gap"]) < GAP_BOUND
    assert abs(real["completeness_gap"]) < GAP_BOUND, json.dumps(real)

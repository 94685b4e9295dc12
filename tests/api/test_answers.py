"""The routes' fast answers (orjson straight from the runtime's dataclasses) are exactly what FastAPI would send
after validating them into the published pydantic schemas: same keys, same order, same values."""

from __future__ import annotations

from typing import Any

import numpy as np
import orjson
import pytest
from pydantic import BaseModel

from service.api.routes import batch_answer, json_answer
from service.engine.exact_kernel import ExactKernel
from service.engine.gradient_shap import GradientShapEngine, fold_piecewise_linear
from service.runtime.inference import ExplainOptions, InferenceRuntime, NonFiniteOutputError
from service.schemas import (
    BatchItemError,
    ExplanationBatchPublic,
    ExplanationPublic,
    PredictionBatchPublic,
    PredictionPublic,
    Problem,
)


@pytest.fixture(scope="module")
def runtime(bundle: Any) -> InferenceRuntime:
    return InferenceRuntime(bundle)


def _records(runtime: InferenceRuntime) -> list[dict[str, Any]]:
    base = runtime.example_record()
    return [
        base,
        {**base, "glucose": None, "bmi": None},  # imputed features
        {**base, "insulin": 900.0, "age": 81},  # outside the training range: warnings
    ]


def _body(response: Any) -> Any:
    return orjson.loads(response.body)


def dump_public(model: type[BaseModel], obj: Any) -> Any:
    """``obj`` validated into ``model`` and dumped as JSON data: what FastAPI's own serialisation would send."""
    return model.model_validate(obj).model_dump(mode="json")


def _batch_dump(model: type[BaseModel], answered: list[tuple[int, Any]], refused: list[BatchItemError]) -> Any:
    """What FastAPI would send for a batch route: ``model`` validated from the items in index order, dumped with
    None fields left out (`response_model_exclude_none`)."""
    items = [{"index": i, "ok": True, **vars(a)} for i, a in answered] + [r.model_dump() for r in refused]
    body = {
        "results": sorted(items, key=lambda d: d["index"]),
        "succeeded": len(answered),
        "failed": len(refused),
    }
    return model.model_validate(body).model_dump(mode="json", exclude_none=True)


def _ordered(obj: Any) -> Any:
    """Key order matters to people reading the answers: compare it too."""
    if isinstance(obj, dict):
        return [(k, _ordered(v)) for k, v in obj.items()]
    if isinstance(obj, list):
        return [_ordered(v) for v in obj]
    return obj


@pytest.mark.parametrize("method", ["exact", "sampled"])
def test_explanation_answer_equals_the_schema_dump(runtime: InferenceRuntime, method: str) -> None:
    """/explain's answer is the ExplanationPublic dump of the same explanation, key order included."""
    options = ExplainOptions(method=method, n_samples=None if method == "exact" else 16)  # type: ignore[arg-type]
    explanations = runtime.explain(_records(runtime), options)
    assert any(e.prediction.warnings for e in explanations)
    assert any(e.prediction.imputed for e in explanations)
    for e in explanations:
        assert _ordered(_body(json_answer(e))) == _ordered(dump_public(ExplanationPublic, e))


def test_prediction_answer_equals_the_schema_dump(runtime: InferenceRuntime) -> None:
    """/predict's answer is the PredictionPublic dump of the same prediction."""
    for p in runtime.predict(_records(runtime)):
        assert _ordered(_body(json_answer(p))) == _ordered(dump_public(PredictionPublic, p))


def test_batch_answers_equal_the_schema_dumps(runtime: InferenceRuntime) -> None:
    """Batch answers (answered and refused records, in index order) equal the pydantic batch models' dumps with
    None fields left out, as `response_model_exclude_none` would send them."""
    records = _records(runtime)
    problem = Problem.model_validate(
        {"type": "about:blank", "title": "Invalid input", "status": 422, "detail": "bad", "errors": []}
    )
    refused = [BatchItemError(index=1, ok=False, error=problem)]
    answered_ex = list(zip([0, 2, 3], runtime.explain(records, ExplainOptions()), strict=True))
    expected = _batch_dump(ExplanationBatchPublic, answered_ex, refused)
    assert _ordered(_body(batch_answer(answered_ex, refused))) == _ordered(expected)
    answered_p = list(zip([0, 2, 3], runtime.predict(records), strict=True))
    expected = _batch_dump(PredictionBatchPublic, answered_p, refused)
    assert _ordered(_body(batch_answer(answered_p, refused))) == _ordered(expected)


def test_runtime_refuses_non_finite_outputs(runtime: InferenceRuntime) -> None:
    """NaN never becomes an answer (orjson would write null): the runtime raises instead, naming counts only."""
    batch = runtime._prepare(_records(runtime))
    logits = np.array([0.5, np.nan, 1.0])
    with pytest.raises(NonFiniteOutputError, match="1 of 3 records") as info:
        runtime._predictions(batch, logits)
    assert "nan" not in str(info.value).lower()


def test_compiled_kernel_matches_the_engine_and_refuses_non_finite_weights(bundle: Any) -> None:
    """compiled.explain gives explain()'s exact logit answers bitwise; a kernel is never built on NaN weights."""
    engine = GradientShapEngine(bundle.model, bundle.baselines, bundle.baseline_weights)
    assert engine.compiled is not None
    x = np.asarray(bundle.eval_x[:12], dtype=np.float64)
    attributions, logits = engine.compiled.explain(x)
    ex = engine.explain(x)
    assert np.array_equal(attributions, ex.attributions)
    assert np.array_equal(logits, ex.output_value)
    fast = engine.exact_explanation(attributions, logits)
    assert np.array_equal(fast.completeness_gap, ex.completeness_gap)
    assert fast.base_value == ex.base_value
    net = fold_piecewise_linear(bundle.model)
    weights = [w.numpy().copy() for w in net.weights]
    weights[1][0, 0] = np.nan
    with pytest.raises(ValueError, match="finite"):
        ExactKernel(tuple(weights), tuple(b.numpy() for b in net.biases), x, np.full(len(x), 1 / len(x)))

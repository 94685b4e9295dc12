"""The runtime fills its frozen answer objects field by field (no generated ``__init__`` on the event loop): they
must be the very objects the classes' own constructors build."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import orjson
import pytest

from service.model.store import load_bundle
from service.runtime.inference import (
    ExplainOptions,
    FeatureAttribution,
    InferenceRuntime,
    Prediction,
    RecordExplanation,
    _check_fillable,
)


def rebuilt(obj: Any) -> Any:
    """``obj`` built again by its class's own ``__init__`` (nested answer objects too)."""
    if isinstance(obj, tuple):
        return tuple(rebuilt(x) for x in obj)
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return type(obj)(**{f.name: rebuilt(getattr(obj, f.name)) for f in dataclasses.fields(obj)})
    return obj


def test_filled_answers_are_the_constructed_ones() -> None:
    """Property: for every evaluation record (some with values not measured, some outside the training range),
    each prediction and explanation equals, reprs and serialises to JSON exactly as the same object built by its
    class's __init__; and it stays frozen."""
    runtime = InferenceRuntime(load_bundle())
    names = runtime.spec.names
    records: list[dict[str, Any]] = [
        {n: (None if math.isnan(v) else v) for n, v in zip(names, row, strict=True)}
        for row in runtime.bundle.eval_raw.tolist()
    ]
    records.append({**records[0], names[1]: 1e4})  # far outside the training range: a warning
    explanations = runtime.explain(records, ExplainOptions(method="exact"))
    predictions = runtime.predict(records)
    assert any(e.prediction.imputed for e in explanations)
    assert any(e.prediction.warnings for e in explanations)
    answers: list[Any] = [*explanations, *predictions]
    for obj in answers:
        again = rebuilt(obj)
        assert type(obj) is type(again)
        assert obj == again
        assert repr(obj) == repr(again)
        assert orjson.dumps(obj) == orjson.dumps(again)
        assert list(vars(obj)) == [f.name for f in dataclasses.fields(obj)]  # the fields' order, as __init__ sets
        with pytest.raises(dataclasses.FrozenInstanceError):
            obj.summary = "changed"
    runtime.close()


def test_only_plain_frozen_dataclasses_are_filled() -> None:
    """Property: the shortcut is refused for a class it would build wrongly: not frozen, with slots, with a
    __post_init__ or with a default; the answer classes pass."""
    _check_fillable(Prediction, FeatureAttribution, RecordExplanation)

    @dataclasses.dataclass
    class Mutable:
        a: int

    @dataclasses.dataclass(frozen=True, slots=True)
    class Slotted:
        a: int

    @dataclasses.dataclass(frozen=True)
    class Checked:
        a: int

        def __post_init__(self) -> None:
            pass

    @dataclasses.dataclass(frozen=True)
    class Defaulted:
        a: int = 1

    for cls in (Mutable, Slotted, Checked, Defaulted):
        with pytest.raises(TypeError, match=cls.__name__):
            _check_fillable(cls)

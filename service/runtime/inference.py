"""From validated records to predictions and explanations: everything numeric the web layer needs, no web.

`InferenceRuntime` wraps one loaded bundle and its :class:`~service.engine.gradient_shap.GradientShapEngine`.
It turns records (mappings keyed by feature name, in the data set's units, ``None`` = not measured) into the model's
input, predicts, explains and flags imputed and out-of-training-range values; the words of its answers (the
one-sentence summary, the caveats) come from :mod:`service.render.text`.
Its answers are plain frozen dataclasses; the routes only translate them to JSON.

Concurrency: the engine's arithmetic is CPU-bound and must not block the event loop, so
`InferenceRuntime.aexplain` goes through a :class:`~service.runtime.batching.Coalescer`: concurrent requests with
the same settings are merged into one batch (a record's answer never depends on its batch neighbours, so the results
are exactly those of one call per request). Only the arithmetic of a batch runs on one of ``engine_threads`` worker
threads (or in an engine process); preparing the records and building the answers, which is Python and holds the
GIL, stays on the loop. The default estimator (exact, logit) is then one call of the C kernel, which releases the
GIL: an engine thread takes the GIL only to pick up and hand back a batch, and the loop serves HTTP on the other
core meanwhile. One batch more than there are threads is in flight, so the loop prepares the next batch while a
thread computes. Predictions are so cheap (microseconds) that a thread hop would cost more than the work: they are
merged with the predictions of the same event-loop turn and computed on the loop's thread.
"""

from __future__ import annotations

import functools
import math
import sys
from collections.abc import Mapping, Sequence
from dataclasses import MISSING, dataclass
from typing import Any, TypeVar, cast

import numpy as np

from service import __version__
from service.contract import DEFAULT_N_SAMPLES, MAX_N_SAMPLES, MIN_N_SAMPLES, Output, label_of, sigmoid
from service.contract import ServedMethod as Method
from service.engine.gradient_shap import Explanation, GradientShapEngine, set_torch_threads
from service.model.features import FeatureSpec
from service.model.store import FORMAT_VERSION, Bundle, BundleError
from service.observe.metrics import ModelTelemetry, Telemetry
from service.render.text import SummaryWriter, range_warning
from service.runtime.batching import Coalescer
from service.runtime.engine_pool import EngineProcessPool
from service.runtime.kernel_threads import KernelThreads

__all__ = [
    "DEFAULT_N_SAMPLES",
    "MAX_N_SAMPLES",
    "MIN_N_SAMPLES",
    "ExplainOptions",
    "FeatureAttribution",
    "FeatureWarning",
    "InferenceRuntime",
    "NonFiniteOutputError",
    "Prediction",
    "RecordExplanation",
    "configure_torch",
    "ensure_compatible",
]

Record = Mapping[str, float | int | None]

# the engine's lower bounds of n_samples: a Monte-Carlo standard error needs two draws, quadrature one node
_PREDICT_KEY = ("predict",)


class NonFiniteOutputError(RuntimeError):
    """The model gave a NaN or infinite number for a record: an internal error, never an answer.

    The answers are serialised without re-validation (:func:`service.api.routes.json_answer`), where NaN would become
    ``null``; the runtime refuses them itself. The message names counts only, never a record's values.
    """


def _require_finite(what: str, values: np.ndarray) -> None:
    if not np.isfinite(values).all():
        bad = int((~np.isfinite(values)).reshape(len(values), -1).any(axis=1).sum())
        raise NonFiniteOutputError(f"the model gave a non-finite {what} for {bad} of {len(values)} records")


def _all_finite(rows: list[list[float]]) -> bool:
    """Whether every number of ``rows`` (a ``tolist()``) is finite: for the few numbers of a request, a loop in C
    over the Python floats the answer is built from costs less than numpy's small-array calls."""
    return all(all(map(math.isfinite, row)) for row in rows)


@dataclass(frozen=True)
class ExplainOptions:
    """How to explain: GradientSHAP estimator, its sample count and seed, and the output explained."""

    method: Method = "exact"
    n_samples: int | None = None
    seed: int = 0
    output: Output = "logit"


@dataclass(frozen=True)
class FeatureWarning:
    """A caveat about one input value, e.g. outside the range seen in training (the model extrapolates)."""

    feature: str
    code: str
    message: str
    value: float
    train_min: float
    train_max: float


@dataclass(frozen=True)
class Prediction:
    """One record's prediction; ``label`` is 1 when ``probability >= threshold``.

    ``probability``, ``logit`` and ``threshold`` are on the scale named by ``calibration`` (the bundle's
    :attr:`~service.model.nn.Calibration.name`, e.g. ``"platt/validation"``; ``"none"``: the raw network)."""

    probability: float
    logit: float
    label: int
    label_name: str
    threshold: float
    model_version: str
    calibration: str
    imputed: tuple[str, ...]
    warnings: tuple[FeatureWarning, ...]


@dataclass(frozen=True)
class FeatureAttribution:
    """One feature's share of ``output_value - base_value``, with the value it was computed at."""

    feature: str
    label: str
    unit: str
    value: float
    imputed: bool
    attribution: float
    standard_error: float


@dataclass(frozen=True)
class RecordExplanation:
    """One record's prediction and GradientSHAP explanation; attributions in the feature specification's order."""

    prediction: Prediction
    output: str
    base_value: float
    output_value: float
    attributions: tuple[FeatureAttribution, ...]
    completeness_gap: float
    method: str
    n_samples: int
    n_baselines: int
    seed: int
    summary: str


T = TypeVar("T")
_new = object.__new__


def _check_fillable(*classes: type) -> None:
    """The answers' dataclasses are frozen, and a frozen dataclass's ``__init__`` sets each field through
    ``object.__setattr__``: about a microsecond an instance, ten instances a record on the event loop. The runtime
    fills their ``__dict__`` directly instead (the same instance: equal, same repr, same JSON; tested), which is
    only right for a plain frozen dataclass: no ``__slots__``, no ``__post_init__``, no default to fill in."""
    for cls in classes:
        params = getattr(cls, "__dataclass_params__", None)
        fields = getattr(cls, "__dataclass_fields__", {})
        if (
            params is None
            or not params.frozen
            or hasattr(cls, "__slots__")
            or hasattr(cls, "__post_init__")
            or any(f.default is not MISSING or f.default_factory is not MISSING for f in fields.values())
        ):
            raise TypeError(f"{cls.__name__} is not a plain frozen dataclass: build it with its __init__")


_check_fillable(Prediction, FeatureAttribution, RecordExplanation)


def _filled(cls: type[T], **fields: Any) -> T:
    """``cls(**fields)`` without the generated ``__init__``, for the classes :func:`_check_fillable` accepts; the
    fields are given in their declared order (the order of ``vars()``, hence of the JSON)."""
    obj: T = _new(cls)
    obj.__dict__.update(fields)
    return obj


def _engine_kwargs(options: ExplainOptions) -> dict[str, Any]:
    return {"method": options.method, "n_samples": options.n_samples, "seed": options.seed, "output": options.output}


@dataclass(frozen=True)
class _Batch:
    raw: np.ndarray  # (N, F) original units, NaN = not measured
    values: np.ndarray  # (N, F) original units, imputed
    missing: np.ndarray  # (N, F) bool
    x: np.ndarray  # (N, F) float32 model space


def ensure_compatible(bundle: Bundle, spec: FeatureSpec) -> None:
    """Raise :class:`BundleError` unless ``bundle`` takes the records the request schema (``spec``) describes."""

    def shape(s: FeatureSpec) -> list[tuple[str, bool, bool]]:
        return [(f.name, f.integer, f.zero_means_missing) for f in s]

    if shape(bundle.spec) != shape(spec):
        raise BundleError(
            f"model bundle {bundle.path}: its features {bundle.spec.names} do not match the service's request "
            f"schema {spec.names} (incompatible bundle)"
        )
    n = len(spec)
    pre = bundle.preprocessor
    if any(np.shape(a) != (n,) for a in (pre.fill, pre.mean, pre.scale, pre.train_min, pre.train_max)):
        raise BundleError(f"model bundle {bundle.path}: preprocessing does not have {n} features (incompatible)")
    points = bundle.baseline_points
    if points.ndim != 2 or points.shape[1] != n or len(bundle.baseline_weight_values) != len(points):
        raise BundleError(f"model bundle {bundle.path}: baselines are not (K, {n}) with K weights (incompatible)")


def configure_torch(threads: int | None) -> int:
    """Set torch's intra-op threads (default 1: parallelism comes from the engine threads); returns the number.

    One intra-op thread per engine thread: on this service's small tensors intra-op threads gain little, and
    their spin-waiting competes with the event loop and the other engine threads (and any other process on a
    shared machine), which made explanations several times slower under load. The answers do not depend on it.
    Torch is not imported for this: the threads are set when it is loaded (a service of piecewise-linear models
    loads it only for a sampled or quadrature explanation).
    """
    n = threads or 1
    set_torch_threads(n)
    return n


class InferenceRuntime:
    """One bundle, its engine and the worker thread they run on; ``ready`` once warmed up."""

    def __init__(
        self,
        bundle: Bundle,
        *,
        max_n_samples: int | None = None,
        engine_threads: int = 1,
        engine_processes: int = 0,
        max_coalesce: int = 64,
        batch_window_ms: float = 0.0,
        telemetry: Telemetry | ModelTelemetry | None = None,
    ) -> None:
        self.bundle = bundle
        # metrics and drift monitoring (None: off); recorded only once ready, so the warm-up is not counted
        self.telemetry = telemetry
        self.spec = bundle.spec
        self.model_version = f"{bundle.name}/{bundle.version}"
        self.max_n_samples = min(max_n_samples or MAX_N_SAMPLES, MAX_N_SAMPLES)
        self.engine = GradientShapEngine.from_bundle(bundle)
        self.ready = False
        # with engine processes, the coalescer's slots are the processes, driven from the event loop
        self.pool = EngineProcessPool(self.engine, engine_processes) if engine_processes > 0 else None
        self.coalescer = Coalescer(
            threads=engine_processes or engine_threads,
            # threads: one batch more in flight than threads, prepared on the loop while the threads compute
            slots=engine_processes or engine_threads + 1,
            max_records=max_coalesce,
            window_s=batch_window_ms / 1000,
            thread_name_prefix="gshap-engine",
            on_batch=self._on_batch if telemetry is not None else None,
        )
        # the default explanation (exact, logit) on C threads that never take the GIL, awaited on the event loop
        kernel = self.engine.compiled
        self.kernel_threads = (
            KernelThreads(kernel, engine_threads, functools.partial(self.coalescer.call, kernel.explain))
            if kernel is not None and self.pool is None
            else None
        )
        pre = bundle.preprocessor
        self._lo: list[float] = [float(v) for v in pre.train_min]
        self._hi: list[float] = [float(v) for v in pre.train_max]
        self._feature_texts = [(f.name, f.label, f.unit) for f in self.spec]
        self._summary = SummaryWriter(self.spec)

    # ---- lifecycle ----------------------------------------------------------------------------------------

    def example_record(self) -> dict[str, float | None]:
        """The specification's example patient (used for the warm-up and in the docs)."""
        return {f.name: f.example for f in self.spec}

    def warm_up(self) -> None:
        """Run one prediction and one explanation per method, so the first client does not pay for it; a method
        that would import torch when this process has not loaded it (sampled and quadrature on a piecewise-linear
        network, whose exact answers need no torch) is warmed up by the first request that asks for it."""
        record = [self.example_record()]
        try:
            numbers = [self.predict(record)[0].logit]
            methods = cast("tuple[Method, ...]", self.bundle.methods)  # the methods this network offers
            for method in methods:
                if self.engine.needs_torch(method) and "torch" not in sys.modules:
                    continue
                n = None if method == "exact" else min(8, self.max_n_samples)
                ex = self.explain(record, ExplainOptions(method=method, n_samples=n))[0]
                numbers += [ex.base_value, ex.output_value, *(a.attribution for a in ex.attributions)]
            finite = all(math.isfinite(v) for v in numbers)
        except NonFiniteOutputError:  # the runtime's own refusal of a NaN logit or attribution
            finite = False
        if not finite:
            # weights that pass the load-time checks can still overflow: never report ready with such a model
            raise BundleError(
                f"model bundle {self.bundle.path}: the warm-up gave a non-finite prediction or attribution"
            )

    async def start(self) -> None:
        """Run the warm-up on every engine thread (each thread's first torch call sets up its own state, and a
        non-finite answer refuses the model before any request) or fork and warm up the engine processes (before
        any thread of this process runs torch), then turn ready."""
        if self.pool is not None:
            self.warm_up()
            self.pool.start(warm_up=self._prepare([self.example_record()]).x)
        else:
            await self.coalescer.on_every_thread(self.warm_up)
        if self.telemetry is not None:
            self._start_telemetry(self.telemetry)
        self.ready = True
        if self.telemetry is not None:
            self.telemetry.set_ready(True)

    def attach_telemetry(self, telemetry: Telemetry | ModelTelemetry) -> None:
        """Record metrics and drift into ``telemetry`` from :meth:`start` on (the app makes the telemetry; a runtime
        built and warmed up before the app, as ``gshap serve`` does, gets it here)."""
        self.telemetry = telemetry
        self.coalescer.on_batch = self._on_batch

    def _start_telemetry(self, telemetry: Telemetry | ModelTelemetry) -> None:
        """Publish the model's info and start the drift window against the evaluation set, whose reference
        probabilities are the ones this runtime serves (computed here, before anything is counted)."""
        bundle = self.bundle
        telemetry.set_model(
            service_version=__version__,
            model_name=bundle.name,
            model_version=bundle.version,
            bundle_format=bundle.manifest.get("format_version", FORMAT_VERSION),
        )
        telemetry.start_monitoring(
            features=self.spec.names,
            may_be_missing=[f.may_be_missing for f in self.spec],
            eval_raw=bundle.eval_raw,
            eval_probability=self.reference_probabilities(),
            train_min=self._lo,
            train_max=self._hi,
            identity=self.model_version,
            threshold=float(bundle.threshold),
            label_names=(self.spec.negative_label, self.spec.positive_label),
        )

    def reference_probabilities(self) -> np.ndarray:
        """The probability this runtime serves for each record of the evaluation set (the drift reference)."""
        names = self.spec.names
        records = [
            {name: (None if math.isnan(v) else v) for name, v in zip(names, row, strict=True)}
            for row in np.asarray(self.bundle.eval_raw, dtype=np.float64).tolist()
        ]
        try:
            return np.array([p.probability for p in self.predict(records)], dtype=np.float64)
        except NonFiniteOutputError as exc:
            raise BundleError(f"model bundle {self.bundle.path}: the evaluation set gave {exc}") from None

    def _on_batch(self, key: object, size: int, waits: list[float]) -> None:
        if self.ready and self.telemetry is not None:
            # the coalescer's keys: _PREDICT_KEY or ("explain", options)
            self.telemetry.record_batch(key[0] if type(key) is tuple else "other", size, waits)

    def close(self) -> None:
        """Stop accepting work; in-flight work finishes on the worker threads; engine processes are stopped."""
        self.ready = False
        if self.telemetry is not None:
            self.telemetry.set_ready(False)
        self.coalescer.close()
        if self.kernel_threads is not None:
            self.kernel_threads.close()
        if self.pool is not None:
            self.pool.close()

    async def apredict(self, records: Sequence[Record]) -> list[Prediction]:
        """:meth:`predict`, merged with the other predictions of this event-loop turn, on the loop's thread."""
        return await self.coalescer.run(_PREDICT_KEY, self.predict, records, inline=True)

    async def aexplain(self, records: Sequence[Record], options: ExplainOptions) -> list[RecordExplanation]:
        """:meth:`explain`, merged with concurrent requests that have the same options: the engine's arithmetic
        on an engine thread (or in an engine process), the rest on the event loop."""
        fn = functools.partial(self._explain_split, options=options)
        return await self.coalescer.run(("explain", options), fn, records)

    # ---- the work -----------------------------------------------------------------------------------------

    def _prepare(self, records: Sequence[Record]) -> _Batch:
        raw = self.bundle.records_to_array(records)
        missing = np.isnan(raw)
        values = self.bundle.preprocessor.impute(raw, missing)
        x = np.asarray(self.bundle.preprocessor.standardise(values), dtype=np.float32)
        return _Batch(raw=raw, values=values, missing=missing, x=x)

    def _warnings(self, raw_row: Sequence[float]) -> tuple[FeatureWarning, ...]:
        out: list[FeatureWarning] = []
        for feat, v, lo, hi in zip(self.spec, raw_row, self._lo, self._hi, strict=True):
            if math.isnan(v) or lo <= v <= hi:
                continue
            out.append(
                FeatureWarning(
                    feature=feat.name,
                    code="outside_training_range",
                    message=range_warning(feat, v, lo, hi),
                    value=v,
                    train_min=lo,
                    train_max=hi,
                )
            )
        return tuple(out)

    def _predictions(self, batch: _Batch, logits: np.ndarray) -> list[Prediction]:
        # Python lists, not numpy scalars, in the per-record loop: this runs on the event loop for every request
        names = self.spec.names
        threshold = float(self.bundle.threshold)
        calibration = self.bundle.calibration.name
        logits = np.asarray(logits, dtype=np.float64)
        logit_list = logits.tolist()
        if not all(map(math.isfinite, logit_list)):
            _require_finite("logit", logits)
        out: list[Prediction] = []
        rows = batch.raw.tolist()
        positive, negative, version = self.spec.positive_label, self.spec.negative_label, self.model_version
        for logit, missing, raw in zip(logit_list, batch.missing.tolist(), rows, strict=True):
            probability = sigmoid(logit)
            label = label_of(probability, threshold)
            prediction = _filled(
                Prediction,
                probability=probability,
                logit=logit,
                label=label,
                label_name=positive if label else negative,
                threshold=threshold,
                model_version=version,
                calibration=calibration,
                imputed=tuple(n for n, m in zip(names, missing, strict=True) if m),
                warnings=self._warnings(raw),
            )
            out.append(prediction)
        if self.telemetry is not None and self.ready:
            self.telemetry.record_predictions(batch.raw, out, rows)
        return out

    def predict(self, records: Sequence[Record]) -> list[Prediction]:
        """Predict ``N`` records (blocking)."""
        if not records:
            return []
        batch = self._prepare(records)
        return self._predictions(batch, self.engine.predict_logit(batch.x))

    def explain(self, records: Sequence[Record], options: ExplainOptions) -> list[RecordExplanation]:
        """Predict and explain ``N`` records with the same settings (blocking)."""
        if not records:
            return []
        batch = self._prepare(records)
        predictions = self._predictions(batch, self.engine.predict_logit(batch.x))
        ex = self.engine.explain(batch.x, **_engine_kwargs(options))
        return self._explanations(batch, predictions, ex)

    async def _explain_split(self, records: list[Record], options: ExplainOptions) -> list[RecordExplanation]:
        """:meth:`explain` with only the engine's arithmetic off the event loop: the exact kernel on its own C
        threads (:class:`KernelThreads`), the other methods on an engine thread or in an engine process. Preparing
        the records and building the answers (pure Python, which holds the GIL) stay on the loop, so that the
        loop's work of one batch overlaps the engine's work of another."""
        batch = self._prepare(records)
        threads = self.kernel_threads
        if threads is not None and options.method == "exact" and options.output == "logit":
            # the default: one compiled call for the attributions and the logits, on the kernel's own threads
            attributions, logits = await threads.explain(batch.x.astype(np.float64))
            predictions = self._predictions(batch, logits)
            ex = self.engine.exact_explanation(attributions, logits, seed=options.seed)
            return self._explanations(batch, predictions, ex)
        predictions = self._predictions(batch, self.engine.predict_logit(batch.x))
        kwargs = _engine_kwargs(options)
        if self.pool is not None:
            ex = await self.pool.aexplain(batch.x, **kwargs)
        else:
            ex = await self.coalescer.call(functools.partial(self.engine.explain, batch.x, **kwargs))
        return self._explanations(batch, predictions, ex)

    def _explanations(self, batch: _Batch, predictions: list[Prediction], ex: Explanation) -> list[RecordExplanation]:
        attributions = np.asarray(ex.attributions, dtype=np.float64)
        standard_errors = np.asarray(ex.attribution_se, dtype=np.float64)
        output_values = np.asarray(ex.output_value, dtype=np.float64)
        gaps = np.asarray(ex.completeness_gap, dtype=np.float64)
        attribution_rows, value_list = attributions.tolist(), output_values.tolist()
        if not _all_finite(attribution_rows):
            _require_finite("attribution", attributions)
        if not all(map(math.isfinite, value_list)):
            _require_finite("output value", output_values)
        out: list[RecordExplanation] = []
        output, method = str(ex.output), str(ex.method)
        base_value, n_samples, seed = float(ex.base_value), int(ex.n_samples), int(ex.seed)
        n_baselines = len(self.bundle.baseline_points)
        texts = self._feature_texts
        summary = self._summary
        rows = zip(
            predictions,
            batch.values.tolist(),
            batch.missing.tolist(),
            attribution_rows,
            standard_errors.tolist(),
            value_list,
            gaps.tolist(),
            strict=True,
        )
        for prediction, values, missing, attrs, ses, output_value, gap in rows:
            items = tuple(
                _filled(
                    FeatureAttribution,
                    feature=name,
                    label=label,
                    unit=unit,
                    value=value,
                    imputed=imputed,
                    attribution=attribution,
                    standard_error=se,
                )
                for (name, label, unit), value, imputed, attribution, se in zip(
                    texts, values, missing, attrs, ses, strict=True
                )
            )
            explanation = _filled(
                RecordExplanation,
                prediction=prediction,
                output=output,
                base_value=base_value,
                output_value=output_value,
                attributions=items,
                completeness_gap=gap,
                method=method,
                n_samples=n_samples,
                n_baselines=n_baselines,
                seed=seed,
                summary=summary(items),
            )
            out.append(explanation)
        if self.telemetry is not None and self.ready:
            self.telemetry.record_explanations(method, output, gaps.tolist())
        return out

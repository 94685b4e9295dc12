"""The service's Prometheus metrics: one :class:`Telemetry` per app, recorded by the runtime and the web layer.

No web framework here: the runtime records through :class:`Telemetry`'s methods, the web layer's middleware adds
the HTTP metrics to :attr:`Telemetry.registry`, and ``GET /metrics`` serves :meth:`Telemetry.render`.

What a metric may carry is decided here. Labels are drawn from fixed vocabularies only: route templates,
methods, status codes, feature names, estimator methods, outputs, label names, variable names. Samples are
counts, durations, batch sizes, probabilities and completeness gaps in histograms, and drift indices. No
patient value is ever a label or a sample: an input value is only compared with the training range and binned
for the drift window (:mod:`service.observe.drift`), and then forgotten.

Several processes (``gshap serve --workers N``, ``GSHAP_ENGINE_PROCESSES``) share one folder
(``PROMETHEUS_MULTIPROC_DIR``, prometheus-client's multiprocess mode; ``gshap serve`` sets it up): each process
writes its own memory-mapped files and a scrape of any worker adds up every process's.
"""

from __future__ import annotations

import contextlib
import itertools
import math
import os
import platform
from bisect import bisect_left
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any, Protocol

import numpy as np
from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    disable_created_metrics,
    generate_latest,
    values,
)
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, HistogramMetricFamily
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from service.observe.drift import DriftReference, DriftReport, DriftWindow, Totals


class ServedPrediction(Protocol):
    """What the metrics read of a served prediction (the runtime's ``Prediction``)."""

    @property
    def probability(self) -> float: ...


__all__ = [
    "CONTENT_TYPE",
    "LATENCY_BUCKETS",
    "MULTIPROC_ENV",
    "FastCounter",
    "FastHistogram",
    "ModelTelemetry",
    "Telemetry",
    "enable_multiprocess",
    "prepare_multiprocess_dir",
]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"

# no ``*_created`` sample beside every counter and histogram: they double the series and Prometheus does not use them
disable_created_metrics()  # type: ignore[no-untyped-call]
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"

# seconds: from a cached prediction (sub-millisecond) to a slow batch explanation
LATENCY_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
QUEUE_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
# |output_value - base_value - sum(attributions)| in output units: ~1e-7 exact, up to ~1e-1 sampled with few draws
GAP_BUCKETS = (1e-9, 1e-8, 1e-7, 1e-6, 1e-5, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)
PROBABILITY_BUCKETS = tuple(round(0.05 * i, 2) for i in range(1, 21))


class FastHistogram:
    """One labelled histogram's ``observe`` without prometheus-client's per-call checks and bucket scan, written to
    the same value objects, so export and multiprocess mode are unchanged (buckets found by bisection).

    In single-process mode the values are incremented without their lock: every recording happens on the event
    loop's thread (the HTTP middleware, the coalescer's callbacks, the runtime once ready: its only calls off the
    loop are the warm-up and the drift reference, before it is ready), and so does every scrape. Measured on the
    development machine, a lock costs ~0.4 µs under load and a request took ~14 of them. In multiprocess mode each
    increment goes through the memory-mapped value's own ``inc``."""

    __slots__ = ("_bounds", "_buckets", "_sum")

    def __new__(cls, child: Histogram) -> FastHistogram:
        # the mode is chosen once here, not tested on every observation
        shared = getattr(child._sum, "_multiprocess", False)
        return object.__new__(_SharedHistogram if shared and cls is FastHistogram else cls)

    def __init__(self, child: Histogram) -> None:
        # prometheus-client 0.26 (pinned): per-bucket (not cumulative) values, +Inf last, and a _sum value
        self._bounds: list[float] = list(child._upper_bounds)
        self._buckets: list[Any] = child._buckets
        self._sum: Any = child._sum

    def observe(self, amount: float) -> None:
        self._sum._value += amount
        self._buckets[bisect_left(self._bounds, amount)]._value += 1


class _SharedHistogram(FastHistogram):
    """:class:`FastHistogram` in multiprocess mode: each increment through the memory-mapped value's ``inc``."""

    __slots__ = ()

    def observe(self, amount: float) -> None:
        self._sum.inc(amount)
        self._buckets[bisect_left(self._bounds, amount)].inc(1)


class FastCounter:
    """One labelled counter's (or gauge's) ``inc`` straight on its value object (see :class:`FastHistogram`)."""

    __slots__ = ("_value",)

    def __new__(cls, child: Counter | Gauge) -> FastCounter:
        shared = getattr(child._value, "_multiprocess", False)
        return object.__new__(_SharedCounter if shared and cls is FastCounter else cls)

    def __init__(self, child: Counter | Gauge) -> None:
        self._value: Any = child._value

    def inc(self, amount: float) -> None:
        self._value._value += amount


class _SharedCounter(FastCounter):
    """:class:`FastCounter` in multiprocess mode."""

    __slots__ = ()

    def inc(self, amount: float) -> None:
        self._value.inc(amount)


def _le(bound: float) -> str:
    """A bucket's ``le`` label, written as prometheus-client writes it for its own histograms."""
    text: str = floatToGoString(bound)  # type: ignore[no-untyped-call]
    return text


def prepare_multiprocess_dir(folder: Path) -> None:
    """Create ``folder`` and remove what an earlier run left in it (counters must start at zero)."""
    folder.mkdir(parents=True, exist_ok=True)
    for child in folder.iterdir():
        if child.is_file() and (child.suffix == ".db" or child.name.startswith("monitoring_")):
            child.unlink()


def enable_multiprocess(folder: Path) -> None:
    """Turn prometheus-client's multiprocess mode on for metrics created from now on in this process (and in
    the processes it starts: the variable is inherited)."""
    os.environ[MULTIPROC_ENV] = str(folder)
    if not getattr(values.ValueClass, "_multiprocess", False):
        values.ValueClass = values.MultiProcessValue()  # type: ignore[no-untyped-call]


class _DriftCollector(Collector):
    """The drift gauges, and the metrics of the inputs and the predictions, computed from the window at each
    scrape."""

    def __init__(self, telemetry: Telemetry) -> None:
        self.telemetry = telemetry

    def collect(self) -> Iterator[GaugeMetricFamily | CounterMetricFamily | HistogramMetricFamily]:
        served = [m for m in self.telemetry.served_models() if m.window is not None]
        if not served:  # before monitoring starts
            return
        ml = ["model", "version"]
        psi = GaugeMetricFamily(
            "gshap_drift_psi",
            "Population stability index of recent inputs (per feature) and served probabilities against the "
            "evaluation set, over the monitoring window.",
            labels=[*ml, "variable"],
        )
        records = GaugeMetricFamily(
            "gshap_drift_window_records", "Records counted in the monitoring window.", labels=ml
        )
        least = GaugeMetricFamily(
            "gshap_drift_min_records",
            "Records the window needs before a drift index is judged (GSHAP_MONITORING_MIN_RECORDS).",
            labels=ml,
        )
        seconds = GaugeMetricFamily("gshap_drift_window_seconds", "Length of the monitoring window.", labels=ml)
        missing = GaugeMetricFamily(
            "gshap_drift_missing_ratio",
            "Share of recent records in the window in which the feature was not measured.",
            labels=[*ml, "feature"],
        )
        outside = GaugeMetricFamily(
            "gshap_drift_out_of_range_ratio",
            "Share of recent records in the window in which the feature was outside the training range.",
            labels=[*ml, "feature"],
        )
        families: list[list[CounterMetricFamily | HistogramMetricFamily]] = []
        for model in served:
            window = model.window
            assert window is not None
            key = [model.name, model.version]
            memories = window.memories()  # with workers, every process's file read once for gauges and counters
            report = window.report(self.telemetry.monitoring_min_records, memories)
            for v in report.variables:
                psi.add_metric([*key, v.name], v.psi)
                if v.recent_missing_rate is not None:
                    missing.add_metric([*key, v.name], v.recent_missing_rate)
                if v.recent_out_of_range_rate is not None:
                    outside.add_metric([*key, v.name], v.recent_out_of_range_rate)
            records.add_metric(key, report.records)
            least.add_metric(key, report.min_records)
            seconds.add_metric(key, report.window_seconds)
            families.append(list(self._since_start(model, window.totals(memories), window.reference.features)))
        yield from (psi, records, least, seconds, missing, outside)
        # one family of each name, with every model's samples
        for parts in zip(*families, strict=True):
            first = parts[0]
            for other in parts[1:]:
                first.samples.extend(other.samples)
            yield first

    def _since_start(
        self, model: ModelTelemetry, totals: Totals, features: Sequence[str]
    ) -> Iterator[CounterMetricFamily | HistogramMetricFamily]:
        """The counters of imputed and out-of-range values, of predictions by label and the histogram of the
        predicted probability, from the window's running totals since start-up (every feature and label, zeros
        included, so that a dashboard's rate has a series from the first scrape)."""
        key = [model.name, model.version]
        imputed = CounterMetricFamily(
            "gshap_input_imputed_values",
            "Values not measured (null, 0 where 0 means missing, or omitted) and imputed, by feature.",
            labels=["model", "version", "feature"],
        )
        outside = CounterMetricFamily(
            "gshap_input_out_of_range_values",
            "Values outside the range seen in training (the model extrapolates), by feature and side.",
            labels=["model", "version", "feature", "side"],
        )
        for j, name in enumerate(features):
            imputed.add_metric([*key, name], totals.missing[j])
            outside.add_metric([*key, name, "below"], totals.below[j])
            outside.add_metric([*key, name, "above"], totals.above[j])
        yield imputed
        yield outside
        buckets = [0] * (len(PROBABILITY_BUCKETS) + 1)
        labels = [0, 0]
        for count, (bucket, label) in zip(totals.probability_bins, model.probability_bins, strict=True):
            buckets[bucket] += count
            labels[label] += count
        predictions = CounterMetricFamily(
            "gshap_predictions",
            "Records predicted (by /predict and /explain), by label.",
            labels=["model", "version", "label"],
        )
        for name, count in zip(model.label_names, labels, strict=True):
            predictions.add_metric([*key, name], count)
        yield predictions
        cumulative = list(itertools.accumulate(buckets))
        histogram = HistogramMetricFamily(
            "gshap_prediction_probability", "Served predicted probability of each record.", labels=["model", "version"]
        )
        histogram.add_metric(
            key,
            buckets=[
                *((_le(b), c) for b, c in zip(PROBABILITY_BUCKETS, cumulative, strict=False)),
                ("+Inf", cumulative[-1]),
            ],
            sum_value=totals.probability_sum,
        )
        yield histogram


class Telemetry:
    """The metrics of one app: a registry, the runtime's instruments and the drift windows.

    Several models and versions may be served at once: each runtime records through its own
    :class:`ModelTelemetry` (:meth:`for_model`), whose series carry ``model`` and ``version`` labels. Those label
    values come only from the served set (the registry opens one per loaded bundle, and closing it removes its
    series), never from a request: a request for an unknown model is refused before anything is recorded.
    :class:`Telemetry`'s own recording methods record for one implicit model (the one :meth:`set_model` names).

    Args:
        multiprocess_dir: the shared folder in multiprocess mode (see :func:`enable_multiprocess`), else None.
        monitoring_window_seconds: length of the drift window.
        monitoring_min_records: records the window needs before a drift index is judged.
    """

    def __init__(
        self,
        *,
        multiprocess_dir: Path | None = None,
        monitoring_window_seconds: float = 3600.0,
        monitoring_min_records: int = 200,
    ) -> None:
        self.multiprocess_dir = multiprocess_dir
        self.monitoring_window_seconds = monitoring_window_seconds
        self.monitoring_min_records = monitoring_min_records
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.build_info = Gauge(
            "gshap_build_info",
            "Always 1 per served model version; the labels name the service version, the model and its bundle format.",
            ["service_version", "model_name", "model_version", "bundle_format", "python_version"],
            registry=r,
            multiprocess_mode="max",
        )
        self.ready = Gauge(
            "gshap_ready",
            "1 while the model is loaded, warmed up and served (what /readyz says), else 0; with several "
            "workers, the least ready of them.",
            registry=r,
            multiprocess_mode="livemin",
        )
        self.model_ready = Gauge(
            "gshap_model_ready",
            "1 while this model version is loaded, warmed up and served, else 0.",
            ["model", "version"],
            registry=r,
            multiprocess_mode="livemin",
        )
        self.batch_size = Histogram(
            "gshap_engine_batch_size",
            "Records per engine call after coalescing concurrent requests (kind: predict or explain).",
            ["model", "version", "kind"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        self.queue_wait = Histogram(
            "gshap_engine_queue_wait_seconds",
            "Time a request's records waited in the coalescer's queue before their engine call started.",
            ["model", "version", "kind"],
            buckets=QUEUE_BUCKETS,
            registry=r,
        )
        self.explanations = Counter(
            "gshap_explanations",
            "Records explained, by estimator method and explained output.",
            ["model", "version", "method", "output"],
            registry=r,
        )
        self.completeness_gap = Histogram(
            "gshap_explanation_completeness_gap",
            "Absolute completeness gap |output - base - sum(attributions)| of each explanation, in output units.",
            ["model", "version", "method", "output"],
            buckets=GAP_BUCKETS,
            registry=r,
        )
        self.reloads = Counter(
            "gshap_model_reloads",
            "Store reloads (SIGHUP, POST /admin/reload), by outcome: ok (every bundle served) or partial (some "
            "bundle refused, the ones before it kept).",
            ["outcome"],
            registry=r,
        )
        self.refusals = Counter(
            "gshap_model_bundle_refusals",
            "Bundles of the store refused at a reload (broken, tampered, unsigned or untrusted): the model folder "
            "and version folder names of the store, which the operator controls; the bundle served before stays.",
            ["model", "version"],
            registry=r,
        )
        self._models: dict[tuple[str, str], ModelTelemetry] = {}
        self._implicit: ModelTelemetry | None = None
        self._drift = _DriftCollector(self)
        if multiprocess_dir is None:
            r.register(self._drift)

    # ---- the served models ----------------------------------------------------------------------------------

    def for_model(self, name: str, version: str) -> ModelTelemetry:
        """The recorder of one served model version (made once; closed when the version is unloaded)."""
        found = self._models.get((name, version))
        if found is None:
            found = self._models[(name, version)] = ModelTelemetry(self, name, version)
        return found

    def served_models(self) -> list[ModelTelemetry]:
        """The model recorders open now, by name and version."""
        models = list(self._models.values())
        if self._implicit is not None and self._implicit not in models:
            models.append(self._implicit)
        return sorted(models, key=lambda m: (m.name, m.version))

    def _model(self) -> ModelTelemetry:
        if self._implicit is None:
            self._implicit = ModelTelemetry(self, "", "")
        return self._implicit

    @property
    def window(self) -> DriftWindow | None:
        """The drift window of the implicit model (see :meth:`set_model`)."""
        return self._implicit.window if self._implicit is not None else None

    @property
    def label_names(self) -> tuple[str, str]:
        return self._model().label_names

    # ---- set-up ---------------------------------------------------------------------------------------------

    def set_model(self, *, service_version: str, model_name: str, model_version: str, bundle_format: int | str) -> None:
        """Publish the build and model info (``gshap_build_info``); the implicit model's recordings carry these
        ``model`` and ``version`` labels from now on."""
        self.build_info.labels(
            service_version, model_name, model_version, str(bundle_format), platform.python_version()
        ).set(1)
        if self._implicit is None:
            self._implicit = self.for_model(model_name, model_version)

    def start_monitoring(self, **kwargs: Any) -> None:
        """:meth:`ModelTelemetry.start_monitoring` for the implicit model."""
        self._model().start_monitoring(**kwargs)

    def set_ready(self, ready: bool) -> None:
        """What ``/readyz`` says, as ``gshap_ready``."""
        self.ready.set(1 if ready else 0)

    def close(self) -> None:
        """Forget this process's live gauges (in multiprocess mode, the in-flight gauge of a stopped worker)."""
        if self.multiprocess_dir is not None:
            mark_process_dead(os.getpid(), str(self.multiprocess_dir))  # type: ignore[no-untyped-call]

    # ---- recording for the implicit model (tests; the runtime records through its ModelTelemetry) -------------

    def record_batch(self, kind: Hashable, size: int, waits: Sequence[float]) -> None:
        self._model().record_batch(kind, size, waits)

    def record_predictions(
        self,
        raw: np.ndarray,
        predictions: Sequence[ServedPrediction],
        rows: Sequence[Sequence[float]] | None = None,
    ) -> None:
        self._model().record_predictions(raw, predictions, rows)

    def record_explanations(self, method: str, output: str, gaps: Sequence[float]) -> None:
        self._model().record_explanations(method, output, gaps)

    def record_reload(self, outcome: str, refused: Sequence[tuple[str, str]]) -> None:
        """One reload of the store and the bundles it refused (``(model folder, version folder)``)."""
        self.reloads.labels(outcome).inc()
        for model, version in refused:
            self.refusals.labels(model, version).inc()

    # ---- reading (the web layer) ----------------------------------------------------------------------------

    def drift_report(self) -> DriftReport | None:
        """The drift of the implicit model over the window; None before monitoring starts."""
        return self._model().drift_report()

    def render(self) -> bytes:
        """Every metric in the Prometheus text format (0.0.4): this process's, or every process's."""
        if self.multiprocess_dir is None:
            return generate_latest(self.registry)
        merged = CollectorRegistry(auto_describe=True)
        MultiProcessCollector(merged, path=str(self.multiprocess_dir))  # type: ignore[no-untyped-call]
        merged.register(self._drift)
        return generate_latest(merged)


class ModelTelemetry:
    """The metrics of one served model version: its instruments' children (``model``, ``version`` labels) and its
    drift window. The runtime records through it as it would through a :class:`Telemetry`."""

    def __init__(self, parent: Telemetry, name: str, version: str) -> None:
        self.parent = parent
        self.name = name
        self.version = version
        self._batch_children: dict[Hashable, tuple[Any, Any]] = {}
        self._explain_children: dict[tuple[str, str], tuple[Any, Any]] = {}
        self.probability_bins: list[tuple[int, int]] = []  # per fine bin of the probability: histogram bucket, label
        self.label_names: tuple[str, str] = ("0", "1")
        self.window: DriftWindow | None = None
        self._info: tuple[str, ...] | None = None

    @property
    def monitoring_window_seconds(self) -> float:
        return self.parent.monitoring_window_seconds

    def set_model(self, *, service_version: str, model_name: str, model_version: str, bundle_format: int | str) -> None:
        """Publish this version's build and model info (``gshap_build_info``)."""
        self._info = (service_version, model_name, model_version, str(bundle_format), platform.python_version())
        self.parent.build_info.labels(*self._info).set(1)

    def start_monitoring(
        self,
        *,
        features: Sequence[str],
        may_be_missing: Sequence[bool],
        eval_raw: np.ndarray,
        eval_probability: np.ndarray,
        train_min: Sequence[float] | np.ndarray,
        train_max: Sequence[float] | np.ndarray,
        identity: str,
        threshold: float,
        label_names: tuple[str, str],
    ) -> None:
        """Start the drift window against the evaluation set (values in original units, NaN = missing).
        ``threshold`` and ``label_names`` (negative, positive): the decision rule of the served labels
        (:func:`service.contract.label_of`: positive when ``probability >= threshold``)."""
        self.label_names = label_names
        # the probability's fine bins are also cut at the histogram's bounds (a value equal to a bound is in its
        # bucket: the cut is just above it) and at the threshold (a value equal to it is positive)
        cuts = [threshold, *(math.nextafter(b, math.inf) for b in PROBABILITY_BUCKETS)]
        reference = DriftReference(
            features, may_be_missing, eval_raw, eval_probability, train_min, train_max, identity, cuts
        )
        edges = reference.fine_edges[-1]
        bins: list[tuple[int, int]] = []
        for i in range(len(edges) + 1):
            # fine bin i is [edges[i - 1], edges[i]) (the first: below edges[0]; the last: NaN, never served)
            low = edges[i - 1] if i > 0 else -math.inf
            bins.append((bisect_left(PROBABILITY_BUCKETS, low), int(i > 0 and low >= threshold)))
        self.probability_bins = bins
        self.window = DriftWindow(
            reference, window_seconds=self.parent.monitoring_window_seconds, folder=self.parent.multiprocess_dir
        )

    def set_ready(self, ready: bool) -> None:
        """``gshap_model_ready`` of this version."""
        self.parent.model_ready.labels(self.name, self.version).set(1 if ready else 0)

    def close(self) -> None:
        """The version is unloaded: its series leave the scrape (in one process; in multiprocess mode, the files
        of the live processes keep them until restart) and the parent forgets it."""
        parent = self.parent
        if parent._models.get((self.name, self.version)) is self:
            del parent._models[(self.name, self.version)]
        if parent._implicit is self:
            parent._implicit = None
        if parent.multiprocess_dir is not None:
            parent.model_ready.labels(self.name, self.version).set(0)
            return
        with contextlib.suppress(KeyError):
            parent.model_ready.remove(self.name, self.version)
        if self._info is not None:
            with contextlib.suppress(KeyError):
                parent.build_info.remove(*self._info)
        for kind in self._batch_children:
            for metric in (parent.batch_size, parent.queue_wait):
                with contextlib.suppress(KeyError):
                    metric.remove(self.name, self.version, str(kind))
        for method, output in self._explain_children:
            for metric in (parent.explanations, parent.completeness_gap):  # type: ignore[assignment]
                with contextlib.suppress(KeyError):
                    metric.remove(self.name, self.version, method, output)

    def record_batch(self, kind: Hashable, size: int, waits: Sequence[float]) -> None:
        """One engine call of ``size`` records, and the queue wait of each request it carried (``kind``: the
        ``kind`` label, ``predict`` or ``explain``)."""
        children = self._batch_children.get(kind)
        if children is None:
            label = str(kind)
            p = self.parent
            children = (
                FastHistogram(p.batch_size.labels(self.name, self.version, label)),
                FastHistogram(p.queue_wait.labels(self.name, self.version, label)),
            )
            self._batch_children[kind] = children
        size_hist, wait_hist = children
        size_hist.observe(size)
        for wait in waits:
            wait_hist.observe(wait)

    def record_predictions(
        self,
        raw: np.ndarray,
        predictions: Sequence[ServedPrediction],
        rows: Sequence[Sequence[float]] | None = None,
    ) -> None:
        """Predictions of a batch: ``raw`` ``(N, F)`` in original units (NaN = not measured), the same as Python
        lists in ``rows`` if the caller has them, and what was served for each record. The values are binned into
        the drift window and forgotten. Every counter of the inputs and the predictions is read from the window's
        running totals at each scrape: one ``bisect`` a variable says whether a value was missing, below or above
        the training range, and in which histogram bucket and on which side of the threshold a probability was, so
        they cost nothing more here."""
        window = self.window
        if window is None:
            return
        window.add(raw, [p.probability for p in predictions], rows)

    def record_explanations(self, method: str, output: str, gaps: Sequence[float]) -> None:
        """Explanations of a batch, with each one's completeness gap."""
        children = self._explain_children.get((method, output))
        if children is None:
            p = self.parent
            children = (
                FastCounter(p.explanations.labels(self.name, self.version, method, output)),
                FastHistogram(p.completeness_gap.labels(self.name, self.version, method, output)),
            )
            self._explain_children[(method, output)] = children
        counter, gap_hist = children
        counter.inc(len(gaps))
        for gap in gaps:
            gap_hist.observe(abs(gap))

    def drift_report(self) -> DriftReport | None:
        """This version's drift over the window (every process's, in multiprocess mode); None before monitoring
        starts."""
        if self.window is None:
            return None
        return self.window.report(self.parent.monitoring_min_records)

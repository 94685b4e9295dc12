"""GET /metrics and GET /monitoring: what is counted, under which labels, in which format; multiprocess mode with
several real workers and with engine processes; no patient value in any label or sample."""

from __future__ import annotations

import math
import re
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import numpy as np
import pytest
from helpers import AppClient, app_client, record
from live_server import running_server
from prometheus_client import CollectorRegistry, Histogram, generate_latest
from prometheus_client.parser import text_string_to_metric_families

from service.api.app import create_app
from service.config import Settings
from service.contract import label_of
from service.model.repository import plan_store
from service.model.store import Bundle
from service.observe.metrics import PROBABILITY_BUCKETS, Telemetry
from service.schemas import MonitoringPublic

# distinctive values that must never appear in a scrape, in any spelling a formatter might produce
SERVED = plan_store().bundles()  # what `gshap serve` serves from the shipped store by default
CANARY = {"glucose": 187.654321, "bmi": 43.219876, "diabetes_pedigree_function": 1.987654, "blood_pressure": 93.456123}
CANARY_TEXT = (
    "187.654321",
    "187.6543",
    "187.654",
    "43.219876",
    "43.2198",
    "1.987654",
    "1.98765",
    "93.456123",
    "93.4561",
)
TEMPLATES = {
    "/predict",
    "/predict/batch",
    "/explain",
    "/explain/batch",
    "/groups",
    "/groups/{group}",
    "/model",
    "/healthz",
    "/readyz",
    "/metrics",
    "/monitoring",
    "/openapi.json",
    "/docs",
    "/redoc",
    "/docs/oauth2-redirect",
    "<unmatched>",
}


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a Prometheus text exposition, by (name, sorted labels) (parsed by prometheus-client)."""
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def value(text: str, name: str, **labels: str) -> float:
    """The sum of the samples called ``name`` whose labels include ``labels`` (0 if none)."""
    want = set(labels.items())
    return sum(v for (n, lab), v in samples(text).items() if n == name and want <= set(lab))


def eval_records(bundle: Bundle) -> list[dict[str, Any]]:
    """The evaluation set as a client sends it (integers for count features, null for not measured)."""
    out = []
    for row in bundle.eval_raw.tolist():
        rec: dict[str, Any] = {}
        for feat, v in zip(bundle.spec, row, strict=True):
            rec[feat.name] = None if math.isnan(v) else (int(v) if feat.integer else v)
        out.append(rec)
    return out


@pytest.fixture(scope="module")
def client(bundle: Bundle) -> Iterator[AppClient]:
    with app_client(create_app(Settings(log_level="warning", monitoring_min_records=100), bundle)) as c:
        yield c


def test_http_metrics_label_route_templates_never_raw_paths(client: AppClient) -> None:
    """Requests are counted by route template, method and status; unknown paths share one '<unmatched>' label."""
    before = client.get("/metrics").text
    for group in ("TP", "TN", "nope-1", "nope-2"):
        client.get(f"/groups/{group}")
    for i in range(5):
        client.get(f"/no/such/path/{i}?glucose=187.654321")
    client.post("/predict", json=record(), headers={"content-type": "application/json"})
    text = client.get("/metrics").text
    got = samples(text)
    routes = {dict(lab)["route"] for (name, lab) in got if name == "gshap_http_requests_total"}
    assert routes <= TEMPLATES, routes - TEMPLATES
    delta = value(text, "gshap_http_requests_total", route="/groups/{group}") - value(
        before, "gshap_http_requests_total", route="/groups/{group}"
    )
    assert delta == 4
    unmatched = value(text, "gshap_http_requests_total", route="<unmatched>", method="GET", status="404")
    assert unmatched - value(before, "gshap_http_requests_total", route="<unmatched>", status="404") == 5
    assert value(text, "gshap_http_request_duration_seconds_count", route="/predict", status="200") >= 1
    assert value(text, "gshap_http_request_duration_seconds_bucket", route="/predict", le="+Inf") >= 1
    assert value(text, "gshap_http_requests_in_flight") == 1  # the scrape itself
    assert "187.654321" not in text


def test_the_runtime_counts_what_it_served(client: AppClient, bundle: Bundle) -> None:
    """Imputed and out-of-range values by feature, predictions by label, the probability histogram, explanations by
    method and output with their completeness gaps, and the engine's batch sizes and queue waits."""
    before = client.get("/metrics").text
    records = [record(insulin=None, glucose=0), record(insulin=900), record(skin_thickness=None)]
    assert client.post("/predict/batch", json={"records": records}).status_code == 200
    assert client.post("/explain", json={**record(), "method": "sampled", "n_samples": 16}).status_code == 200
    assert client.post("/explain", json={**record(), "output": "probability"}).status_code == 200
    text = client.get("/metrics").text

    def delta(name: str, **labels: str) -> float:
        return value(text, name, **labels) - value(before, name, **labels)

    # the example record's insulin is 0 (not measured): imputed in 4 of the 5 records (not in the one with 900)
    assert delta("gshap_input_imputed_values_total", feature="insulin") == 4
    assert delta("gshap_input_imputed_values_total", feature="glucose") == 1
    assert delta("gshap_input_imputed_values_total", feature="skin_thickness") == 1
    assert delta("gshap_input_out_of_range_values_total", feature="insulin", side="above") == 1
    assert delta("gshap_input_out_of_range_values_total", feature="bmi") == 0
    assert delta("gshap_predictions_total") == 5  # 3 predictions + 2 explanations
    assert delta("gshap_prediction_probability_count") == 5
    assert delta("gshap_prediction_probability_bucket", le="1.0") == 5
    assert delta("gshap_explanations_total", method="sampled", output="logit") == 1
    assert delta("gshap_explanations_total", method="exact", output="probability") == 1
    assert delta("gshap_explanation_completeness_gap_count", method="sampled") == 1
    assert delta("gshap_engine_batch_size_sum", kind="predict") == 3
    assert delta("gshap_engine_batch_size_count", kind="explain") == 2
    assert delta("gshap_engine_queue_wait_seconds_count", kind="explain") == 2
    labels = {dict(lab)["label"] for (name, lab) in samples(text) if name == "gshap_predictions_total"}
    assert labels <= {"diabetes", "no diabetes"}
    [(_, info)] = [(n, dict(lab)) for (n, lab) in samples(text) if n == "gshap_build_info"]
    assert info["model_name"] == bundle.name
    assert info["model_version"] == bundle.version
    assert info["bundle_format"] == str(bundle.manifest["format_version"])
    assert value(text, "gshap_ready") == 1


def test_names_follow_prometheus_conventions(client: AppClient) -> None:
    """Every metric is gshap_-prefixed; counters end in _total; durations are histograms in seconds."""
    client.post("/predict", json=record())
    families = list(text_string_to_metric_families(client.get("/metrics").text))
    assert len(families) >= 15
    for family in families:
        assert re.fullmatch(r"gshap_[a-z0-9_]+", family.name), family.name
        if family.type == "counter":
            assert all(s.name.endswith("_total") for s in family.samples), family.name
        assert not re.search(r"_(ms|milliseconds|percent)$", family.name)
        if "duration" in family.name or "wait" in family.name:
            assert family.name.endswith("_seconds")
            assert family.type == "histogram"


def test_monitoring_judges_the_evaluation_set_stable_and_a_shift_act(bundle: Bundle) -> None:
    """Replaying the evaluation set: every variable 'stable'; then glucose +50 mg/dL: glucose (and the predicted
    probability) 'act', in the JSON and in the gauges. The answer validates against the published schema."""
    rows = eval_records(bundle)
    with app_client(create_app(Settings(log_level="warning", monitoring_min_records=150), bundle)) as c:
        early = MonitoringPublic.model_validate(c.get("/monitoring").json())
        assert early.status == "insufficient_data"
        assert early.records == 0
        for i in range(0, len(rows), 100):
            assert c.post("/predict/batch", json={"records": rows[i : i + 100]}).status_code == 200
        report = MonitoringPublic.model_validate(c.get("/monitoring").json())
        assert report.records == len(rows)
        assert report.reference_records == len(rows)
        assert [v.name for v in report.variables] == [*bundle.spec.names, "probability"]
        assert report.status == "stable", [(v.name, v.psi) for v in report.variables]
        assert max(v.psi for v in report.variables) < 0.01  # the same records: equal shares up to the smoothing
    shifted = [{**r, "glucose": r["glucose"] + 50 if r["glucose"] is not None else None} for r in rows]
    with app_client(create_app(Settings(log_level="warning", monitoring_min_records=150), bundle)) as c:
        for i in range(0, len(shifted), 100):
            assert c.post("/predict/batch", json={"records": shifted[i : i + 100]}).status_code == 200
        report = MonitoringPublic.model_validate(c.get("/monitoring").json())
        by_name = {v.name: v for v in report.variables}
        assert report.status == "act"
        assert by_name["glucose"].status == "act"
        assert by_name["probability"].status in ("watch", "act")
        assert by_name["age"].status == "stable"
        text = c.get("/metrics").text
        assert value(text, "gshap_drift_psi", variable="glucose") == pytest.approx(by_name["glucose"].psi)
        assert value(text, "gshap_drift_window_records") == len(rows)


def test_metrics_can_be_turned_off(bundle: Bundle) -> None:
    """GSHAP_METRICS_ENABLED=false: no /metrics, no /monitoring (404), predictions unchanged."""
    with app_client(create_app(Settings(metrics_enabled=False, log_level="warning"), bundle)) as c:
        assert c.get("/metrics").status_code == 404
        assert c.get("/monitoring").status_code == 404
        assert c.post("/predict", json=record()).status_code == 200


def _load(url: str, n: int, body: dict[str, Any], path: str = "/predict") -> None:
    """``n`` requests from 4 threads, each on new connections (so that every worker gets some)."""

    def work(k: int) -> None:
        for _ in range(k):
            with httpx.Client(base_url=url, timeout=60.0) as c:
                assert c.post(path, json=body).status_code == 200

    threads = [threading.Thread(target=work, args=(n // 4,)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def test_several_workers_share_their_metrics(tmp_path: Path) -> None:
    """`gshap serve --workers 2`: every worker writes into GSHAP_METRICS_DIR and any scrape adds up all of them, so
    every scrape (whichever worker answers) counts all 40 requests; the drift window too. No canary in any scrape."""
    folder = tmp_path / "metrics"
    folder.mkdir()
    (folder / "counter_999999.db").write_bytes(b"stale")  # left by an earlier run: removed at start
    env = {"GSHAP_WORKERS": "2", "GSHAP_METRICS_DIR": str(folder)}
    with running_server(env) as server:
        # /readyz answered by one worker; the other may still be starting: wait (bounded) for its build info
        deadline = time.monotonic() + 60
        pids: set[int] = set()
        while len(pids) < 2 and time.monotonic() < deadline:
            pids = {int(p.stem.rsplit("_", 1)[1]) for p in folder.glob("gauge_max_*.db")}
            time.sleep(0.2)
        assert len(pids) == 2, sorted(p.name for p in folder.iterdir())  # both workers write into the folder
        _load(server.url, 40, record(**CANARY))
        assert server.pid not in pids
        scrapes = []
        for _ in range(6):
            with httpx.Client(base_url=server.url, timeout=30.0) as c:
                scrapes.append((c.get("/metrics").text, c.get("/monitoring").text))
        for text, monitoring in scrapes:
            assert MonitoringPublic.model_validate_json(monitoring).records == 40
            assert value(text, "gshap_http_requests_total", route="/predict", status="200") == 40
            assert value(text, "gshap_predictions_total") == 40
            assert value(text, "gshap_drift_window_records") == 40
            # one series per served model version (every version of the shipped store), not one per worker
            assert value(text, "gshap_build_info", model_name="pima-diabetes", model_version="1.1.0") == 1
            assert value(text, "gshap_build_info") == len(SERVED)
            assert value(text, "gshap_ready") == 1
            for canary in CANARY_TEXT:
                assert canary not in text
                assert canary not in monitoring
        assert not (folder / "counter_999999.db").exists()


def test_engine_processes_use_multiprocess_mode() -> None:
    """GSHAP_ENGINE_PROCESSES=1 (no folder given): gshap serve makes a temporary metrics folder, explanations are
    counted, and the folder is removed when the server stops."""
    with running_server({"GSHAP_ENGINE_PROCESSES": "1", "GSHAP_LOG_LEVEL": "info"}) as server:
        _load(server.url, 8, {**record(**CANARY), "method": "sampled", "n_samples": 8}, path="/explain")
        with httpx.Client(base_url=server.url, timeout=30.0) as c:
            text = c.get("/metrics").text
        log = server.log.read_text()
        folder = Path(re.findall(r'"event":"metrics_multiprocess","folder":"([^"]+)"', log)[0])
        assert folder.is_dir()
        assert any(folder.glob("counter_*.db"))
    assert value(text, "gshap_explanations_total", method="sampled", output="logit") == 8
    for canary in CANARY_TEXT:
        assert canary not in text
    assert not folder.exists()


def test_no_canary_in_monitoring_after_one_record(bundle: Bundle) -> None:
    """One record with distinctive values: neither /metrics nor /monitoring contains any of them in any spelling."""
    with app_client(create_app(Settings(log_level="warning"), bundle)) as c:
        assert c.post("/explain", json=record(**CANARY)).status_code == 200
        assert c.post("/predict", json=record(**CANARY)).status_code == 200
        text = c.get("/metrics").text + c.get("/monitoring").text
    assert "gshap_drift_psi" in text
    for canary in CANARY_TEXT:
        assert canary not in text
    numbers = {float(x) for x in re.findall(r"-?\d+\.\d+(?:e-?\d+)?", text)}
    assert not any(np.isclose(n, v, rtol=1e-6) for n in numbers for v in CANARY.values())


class _Served:
    """A served prediction as the metrics read it."""

    def __init__(self, probability: float) -> None:
        self.probability = probability


def test_counters_read_from_the_window_match_prometheus_clients_own(bundle: Bundle) -> None:
    """The probability histogram and the predictions by label, read from the window's fine bins at the scrape,
    are what prometheus-client's own Histogram and the decision rule (label_of) give for the same probabilities:
    values exactly on a bucket bound and exactly on the threshold included; the imputed and out-of-range counters
    are the NaN and out-of-range values of the records."""
    threshold = 0.4321
    telemetry = Telemetry()
    pre = bundle.preprocessor
    rng = np.random.default_rng(7)
    telemetry.start_monitoring(
        features=bundle.spec.names,
        may_be_missing=[f.may_be_missing for f in bundle.spec],
        eval_raw=bundle.eval_raw,
        eval_probability=rng.uniform(0, 1, len(bundle.eval_raw)),
        train_min=pre.train_min,
        train_max=pre.train_max,
        identity="test",
        threshold=threshold,
        label_names=("no", "yes"),
    )
    probabilities = [*rng.uniform(0, 1, 300).tolist(), *PROBABILITY_BUCKETS, threshold, 0.0, 1.0]
    probabilities += [math.nextafter(b, 0.0) for b in PROBABILITY_BUCKETS] + [math.nextafter(threshold, 0.0)]
    raw = np.resize(bundle.eval_raw, (len(probabilities), bundle.eval_raw.shape[1]))
    raw[0, 4] = 5000.0  # insulin above the training range
    for start in range(0, len(probabilities), 7):  # a few records at a time (the plain Python path)...
        telemetry.record_predictions(raw[start : start + 7], [_Served(p) for p in probabilities[start : start + 7]])
    telemetry.record_predictions(raw, [_Served(p) for p in probabilities])  # ...and one batch (numpy)
    text = telemetry.render().decode()

    reference = CollectorRegistry()
    own = Histogram("own", "reference", buckets=PROBABILITY_BUCKETS, registry=reference)
    for p in probabilities * 2:
        own.observe(p)
    want = samples(generate_latest(reference).decode())
    got = samples(text)
    for (name, lab), v in want.items():
        if name.startswith("own_"):
            # the implicit model of a Telemetry used alone records with empty model and version labels
            key = tuple(sorted({*lab, ("model", ""), ("version", "")}))
            mine = got[("gshap_prediction_probability_" + name.removeprefix("own_"), key)]
            expected = pytest.approx(v, rel=1e-12) if name == "own_sum" else v  # a sum's last digits: order
            assert mine == expected, (name, lab)
    positives = 2 * sum(label_of(p, threshold) for p in probabilities)
    assert value(text, "gshap_predictions_total", label="yes") == positives
    assert value(text, "gshap_predictions_total", label="no") == 2 * len(probabilities) - positives
    for j, name in enumerate(bundle.spec.names):
        assert value(text, "gshap_input_imputed_values_total", feature=name) == 2 * np.isnan(raw[:, j]).sum()
    below = (raw < pre.train_min).sum(axis=0)
    above = (raw > pre.train_max).sum(axis=0)
    assert above[4] >= 1
    for j, name in enumerate(bundle.spec.names):
        assert value(text, "gshap_input_out_of_range_values_total", feature=name, side="below") == 2 * below[j]
        assert value(text, "gshap_input_out_of_range_values_total", feature=name, side="above") == 2 * above[j]

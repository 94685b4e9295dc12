"""A second model, served from its bundle with no code change: the Wisconsin breast-cancer network (30 features).

Everything model-specific the web layer derives comes from the loaded bundle (``bundle.spec``, ``.card``, ``.cds``,
``.methods``): here a real ``gshap serve`` of ``model_store/breast-cancer-wisconsin/1.0.0`` is checked end to end:
the page's 30-field form filled and submitted in a real browser (Debian's Chromium), the OpenAPI document, the
outcome groups and the plots, the Prometheus labels, CDS Hooks discovery (a service only if the bundle declares
one) and the cohort job.
"""

from __future__ import annotations

import csv
import math
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pyarrow.parquet as pq
import pytest
from browser import chromium, console_errors, network_urls
from live_server import ROOT, LiveServer, running_server
from selenium.webdriver.common.by import By
from selenium.webdriver.support.ui import WebDriverWait

from service.model.store import Bundle, load_bundle
from service.schemas import example_record

BUNDLE = ROOT / "model_store" / "breast-cancer-wisconsin" / "1.0.0"
WAIT = 30.0


@pytest.fixture(scope="module")
def second() -> Bundle:
    return load_bundle(BUNDLE)


@pytest.fixture(scope="module")
def server() -> Iterator[LiveServer]:
    with running_server({"GSHAP_MODEL_PATH": str(BUNDLE)}) as s:
        yield s


def _percent(p: float) -> str:
    """The risk as the page writes it (page.js ``percent``): "<1%" and ">99%" at the ends."""
    v = p * 100
    if 0 < v < 1:
        return "<1%"
    if 99 < v < 100:
        return ">99%"
    return f"{math.floor(v + 0.5)}%"  # JavaScript's Math.round


def test_the_bundle_is_a_second_model(second: Bundle) -> None:
    """The bundle is the breast-cancer model: 30 features, positive = malignant, not the default model."""
    assert (second.name, second.version) == ("breast-cancer-wisconsin", "1.0.0")
    assert len(second.spec) == 30
    assert second.name != load_bundle().name


def test_page_fills_and_submits_the_30_field_form(server: LiveServer, second: Bundle) -> None:
    """The page builds one input per feature of the served bundle (30, in its order), and submitting the spec's
    example patient shows the risk /explain gives and one bar per feature; nothing leaves the machine."""
    example = example_record(second.spec)
    with chromium() as driver:
        network_urls(driver)
        driver.get(server.url + "/")
        WebDriverWait(driver, WAIT).until(lambda d: len(d.find_elements(By.CSS_SELECTOR, "#fields input")) == 30)
        inputs = driver.find_elements(By.CSS_SELECTOR, "#fields input")
        assert [i.get_attribute("name") for i in inputs] == second.spec.names
        first = second.spec.features[0]
        assert first.label in driver.find_element(By.CSS_SELECTOR, f"label[for='f-{first.name}']").text
        assert second.card.outcome.positive_label.lower() in driver.title.lower()
        console_errors(driver)
        for name, value in example.items():
            field = driver.find_element(By.NAME, name)
            field.clear()
            field.send_keys(str(value))
        driver.find_element(By.ID, "submit").click()
        WebDriverWait(driver, WAIT).until(lambda d: d.find_element(By.ID, "risk").text)
        expected = httpx.post(server.url + "/explain", json=example, timeout=30).json()
        shown = driver.find_element(By.ID, "risk").text
        assert shown == _percent(expected["prediction"]["probability"])
        bars = driver.find_elements(By.CSS_SELECTOR, "svg#attributions [data-feature]")
        assert sorted(b.get_attribute("data-feature") for b in bars) == sorted(second.spec.names)
        assert driver.find_element(By.ID, "summary").text == expected["summary"]
        assert console_errors(driver) == []
        hosts = {re.sub(r":\d+$", "", u.split("/")[2]) for u in network_urls(driver) if u.startswith("http")}
        assert hosts <= {"127.0.0.1"}


def test_openapi_and_model_card_follow_the_bundle(server: LiveServer, second: Bundle) -> None:
    """The served OpenAPI document's PatientRecord has the bundle's 30 fields (none of the default model's), the
    default model's answer examples are left out, and /model is the bundle's card and methods."""
    doc = httpx.get(server.url + "/openapi.json", timeout=30).json()
    record = doc["components"]["schemas"]["PatientRecord"]
    assert list(record["properties"]) == second.spec.names
    assert set(record["required"]) == {f.name for f in second.spec if not f.may_be_missing}
    assert "examples" not in doc["components"]["schemas"]["PredictionPublic"]
    assert second.name in doc["info"]["summary"]
    card = httpx.get(server.url + "/model", timeout=30).json()
    assert card["model_version"] == "breast-cancer-wisconsin/1.0.0"
    assert card["outcome"] == second.card.to_dict()["outcome"]
    assert card["methods"] == list(second.methods)
    assert card["intended_use"] == second.card.intended_use


def test_predict_explain_groups_and_plots(server: LiveServer, second: Bundle) -> None:
    """/predict, /explain (exact: completeness gap at most 1e-12), the batches, /groups and the plots answer for
    the second model, each with its 30 features and its labels."""
    example = example_record(second.spec)
    with httpx.Client(base_url=server.url, timeout=30) as http:
        prediction = http.post("/predict", json=example).json()
        assert prediction["label_name"] in (second.spec.positive_label, second.spec.negative_label)
        explanation = http.post("/explain", json=example).json()
        assert explanation["method"] == second.default_method
        assert [a["feature"] for a in explanation["attributions"]] == second.spec.names
        if explanation["method"] == "exact":
            assert abs(explanation["completeness_gap"]) <= 1e-12
        batch = http.post("/explain/batch", json={"records": [example, {**example, "nope": 1}]}).json()
        assert (batch["succeeded"], batch["failed"]) == (1, 1)
        groups = http.get("/groups").json()
        assert {"TP", "TN", "FP", "FN", "ALL"} <= set(groups["groups"])
        assert [f["feature"] for f in groups["groups"]["ALL"]["features"]] == second.spec.names
        group_plot = http.get("/groups/TP/plot")
        assert group_plot.headers["content-type"].startswith("image/svg+xml")
        assert group_plot.text.count("data-feature=") == 30
        assert second.spec.positive_label in group_plot.text
        waterfall = http.post("/explain/plot", json=example)
        assert waterfall.text.count("data-feature=") == 30
        assert "diabetes" not in waterfall.text.lower()
        assert "diabetes" not in group_plot.text.lower()


def test_metrics_labels_are_the_bundles(server: LiveServer, second: Bundle) -> None:
    """/metrics names the second model's features and its two labels (from its spec), and its model version."""
    with httpx.Client(base_url=server.url, timeout=30) as http:
        http.post("/predict", json=example_record(second.spec))
        text = http.get("/metrics").text
    features = set(re.findall(r'gshap_input_imputed_values_total\{[^}]*\bfeature="([^"]+)"', text))
    assert features == set(second.spec.names)
    labels = set(re.findall(r'gshap_predictions_total\{[^}]*\blabel="([^"]+)"', text))
    assert labels == {second.spec.positive_label, second.spec.negative_label}
    assert 'model_name="breast-cancer-wisconsin"' in text
    assert 'model_version="1.0.0"' in text


def test_cds_discovery_only_if_the_bundle_declares_a_service(server: LiveServer, second: Bundle) -> None:
    """CDS Hooks discovery lists the service the bundle declares, under its id; without one there is no CDS path."""
    answer = httpx.get(server.url + "/cds-services", timeout=30)
    if second.cds is None:
        assert answer.status_code == 404
        assert answer.headers["content-type"] == "application/problem+json"
    else:
        [service] = answer.json()["services"]
        assert (service["id"], service["title"]) == (second.cds.id, second.cds.title)
        assert service["id"] != "diabetes-risk"


def test_explain_cohort_uses_the_bundles_columns(tmp_path: Path, second: Bundle) -> None:
    """`gshap explain-cohort --model` of the second bundle reads its 30 feature columns and writes one attribution
    column a feature; a row with a value out of range is refused in its `error` column, the others explained."""
    from service.cli import main

    example = example_record(second.spec)
    first = second.spec.features[0]
    rows: list[dict[str, Any]] = [example, {**example, first.name: first.valid_max * 10 + 1}, example]
    src = tmp_path / "cohort.csv"
    with src.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=second.spec.names)
        writer.writeheader()
        writer.writerows(rows)
    out = tmp_path / "out.parquet"
    code = main(["explain-cohort", str(src), str(out), "--model", str(BUNDLE), "--no-progress"])
    assert code == 1  # one row refused
    table = pq.read_table(out).to_pylist()
    assert [r["error"] is None for r in table] == [True, False, True]
    assert {f"attribution_{n}" for n in second.spec.names} <= set(table[0])
    assert table[0]["probability"] == table[2]["probability"]

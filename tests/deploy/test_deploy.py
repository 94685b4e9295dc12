"""deploy/: the Prometheus alert rules and the Grafana dashboard name only metrics that a real scrape of the running
service has; the rules are well-formed (and pass promtool's own check and unit tests where promtool is installed)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from helpers import record
from live_server import ROOT, running_server
from prometheus_client.parser import text_string_to_metric_families

DEPLOY = ROOT / "deploy"
ALERTS = DEPLOY / "prometheus" / "alerts.yml"
DASHBOARD = DEPLOY / "grafana" / "gshap-service.json"
# series that Prometheus makes itself for every target
SYNTHETIC = {"up"}
PROMQL_WORDS = {
    "sum", "min", "max", "avg", "count", "by", "without", "on", "ignoring", "group_left", "group_right", "and", "or",
    "unless", "rate", "irate", "increase", "histogram_quantile", "scalar", "vector", "abs", "bool", "offset", "topk",
    "label_values", "e", "inf", "nan",
}  # fmt: skip


def metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression (or a Grafana label_values query) reads."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # strings (label values, regexes)
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # ranges
    text = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text)  # label lists
    text = re.sub(r"\$\w+", " ", text)  # Grafana variables
    names = set()
    for m in re.finditer(r"[A-Za-z_:][A-Za-z0-9_:]*", text):
        word = m.group(0)
        if word.lower() in PROMQL_WORDS or text[m.end() :].lstrip().startswith("("):
            continue
        if re.fullmatch(r"\d.*|e\d+", word):
            continue
        names.add(word)
    # label_values(metric, label): the label is no metric
    for m in re.finditer(r"label_values\(\s*([A-Za-z_:][A-Za-z0-9_:]*)\s*(?:\{[^}]*\})?\s*,\s*(\w+)\s*\)", expr):
        names.add(m.group(1))
        names.discard(m.group(2))
    return names


def _alert_rules() -> list[dict[str, Any]]:
    doc = yaml.safe_load(ALERTS.read_text())
    return [rule for group in doc["groups"] for rule in group["rules"]]


def _dashboard_exprs() -> list[str]:
    doc = json.loads(DASHBOARD.read_text())
    out = [t["expr"] for p in doc["panels"] for t in p.get("targets", [])]
    out += [v["query"] for v in doc["templating"]["list"] if v.get("type") == "query"]
    return out


@pytest.fixture(scope="module")
def scraped_names() -> set[str]:
    """Every sample name of a real scrape, after traffic through every kind of answer."""
    with running_server() as server, httpx.Client(base_url=server.url, timeout=60.0) as c:
        assert c.post("/predict", json=record(insulin=900)).status_code == 200
        assert c.post("/explain", json=record()).status_code == 200
        assert c.post("/predict", json={"glucose": "high"}).status_code == 422
        text = c.get("/metrics").text
    return {s.name for family in text_string_to_metric_families(text) for s in family.samples}


def test_the_promql_parser_finds_metric_names() -> None:
    """The name extraction used below finds metrics and skips functions, labels, strings and variables."""
    expr = (
        'histogram_quantile(0.99, sum by (instance, le) (rate(a_seconds_bucket{route=~"/x|y"}[5m]))) > 0.5 '
        "and on (instance, job) (b_total >= on (instance) c) "
        '/ scalar(sum(rate(d_total{job=~"$job"}[$__rate_interval])))'
    )
    assert metric_names(expr) == {"a_seconds_bucket", "b_total", "c", "d_total"}
    assert metric_names('label_values(gshap_build_info{job=~"$job"}, instance)') == {"gshap_build_info"}


def test_alert_rules_are_well_formed() -> None:
    """Every rule has a name, an expression, a duration, a severity and a summary; the four areas are covered."""
    rules = _alert_rules()
    for rule in rules:
        assert rule["alert"].startswith("Gshap")
        assert rule["expr"].strip()
        assert re.fullmatch(r"\d+[smh]", rule["for"])
        assert rule["labels"]["severity"] in {"page", "warning", "info"}
        assert rule["annotations"]["summary"]
    exprs = " ".join(r["expr"] for r in rules)
    for needle in ('status=~"5.."', "histogram_quantile(0.99", "gshap_ready", "gshap_drift_psi"):
        assert needle in exprs, needle


def test_every_metric_the_alerts_and_dashboard_name_exists(scraped_names: set[str]) -> None:
    """Each metric named by an alert rule or a dashboard panel is in a real scrape of the service."""
    named: dict[str, set[str]] = {}
    for rule in _alert_rules():
        named[f"alert {rule['alert']}"] = metric_names(rule["expr"])
    for i, expr in enumerate(_dashboard_exprs()):
        named[f"dashboard expr {i}"] = metric_names(expr)
    assert sum(len(v) for v in named.values()) > 30
    for where, names in named.items():
        assert names, where
        missing = names - scraped_names - SYNTHETIC
        assert not missing, f"{where} names {sorted(missing)}, which the service does not export"


def test_the_dashboard_is_importable_json() -> None:
    """The dashboard has a uid, a Prometheus datasource input and panels with unique ids and targets."""
    doc = json.loads(DASHBOARD.read_text())
    assert doc["uid"] == "gshap-service"
    assert doc["__inputs"][0]["pluginId"] == "prometheus"
    ids = [p["id"] for p in doc["panels"]]
    assert len(ids) == len(set(ids))
    assert sum(1 for p in doc["panels"] if p["type"] != "row" and p["targets"]) >= 15


@pytest.mark.skipif(
    shutil.which("promtool") is None, reason="promtool not installed (Debian: apt-get install prometheus)"
)
def test_promtool_checks_and_unit_tests_the_rules() -> None:
    """promtool accepts the rules and the scrape configuration, and the rules' unit tests pass."""
    prom = DEPLOY / "prometheus"
    for args in (
        ["check", "rules", "alerts.yml"],
        ["check", "config", "--syntax-only", "prometheus.yml"],
        ["test", "rules", "alerts_test.yml"],
    ):
        done = subprocess.run(["promtool", *args], cwd=prom, capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr


def test_deploy_files_are_where_the_docs_say(root: Path) -> None:
    """The operations guide links the dashboard and the rules."""
    guide = (root / "docs" / "OPERATIONS.md").read_text()
    for path in ("deploy/grafana/gshap-service.json", "deploy/prometheus/alerts.yml"):
        assert path in guide
        assert (root / path).is_file()

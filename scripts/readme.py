"""Regenerate the generated blocks of the README and the docs from the code, the bundle, the benchmark's last run
and the running service.

    python scripts/readme.py            # rewrite the blocks (also: make readme)
    python scripts/readme.py --check    # exit 1 if a file differs from what would be written

Blocks are delimited by ``<!-- BEGIN generated:NAME -->`` / ``<!-- END generated:NAME -->``:

- README.md ``endpoints``: one curl command per endpoint family, run with the real ``curl`` against a real
  ``gshap serve`` started here, and its real answer (compacted, long parts shortened where the title says so);
- docs/MODEL_CARD.md ``card``: the default model's card, from its bundle's one model card (``bundle.card``, the
  object ``GET /model`` and the CDS card read too); ``metrics``, ``calibration``, ``subgroups``: its tables, from
  the default bundle's manifest;
- docs/SETTINGS.md ``settings``: the settings table, from ``service.config.Settings``' fields;
- docs/PERFORMANCE.md ``performance``: the summary of the benchmark's last run, from ``docs/bench/latest.json``;
- docs/API_EXAMPLES.md ``examples``: the full set of curl examples (headers, errors, estimators) and their real
  answers, pretty-printed; the random request id is shown as ``<request-id>``.

One server serves both live blocks. ``tests/test_readme.py`` fails when a block drifts, so no file can quote a
stale answer. (docs/CDS_HOOKS.md is written by ``scripts/cds_docs.py``, docs/PROBLEMS.md by ``gshap problems``.)
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
API_EXAMPLES = ROOT / "docs" / "API_EXAMPLES.md"
MODEL_CARD = ROOT / "docs" / "MODEL_CARD.md"
SETTINGS = ROOT / "docs" / "SETTINGS.md"
PERFORMANCE = ROOT / "docs" / "PERFORMANCE.md"
BENCH = ROOT / "docs" / "bench" / "latest.json"
sys.path.insert(0, str(ROOT / "tests"))

# the records of the examples: the default bundle's (the Pima model's); RECORD is its spec's example patient
RECORD = {
    "pregnancies": 6,
    "glucose": 148,
    "blood_pressure": 72,
    "skin_thickness": 35,
    "insulin": 0,
    "bmi": 33.6,
    "diabetes_pedigree_function": 0.627,
    "age": 50,
}
SHOWN_PORT = 8000


def _j(obj: Any) -> str:
    return json.dumps(obj, ensure_ascii=False)


def _post(path: str, body: Any, flags: str = "-s") -> list[str]:
    """curl arguments that POST ``body`` (an object, or a raw string sent as is) as JSON to ``path``."""
    data = body if isinstance(body, str) else _j(body)
    return [flags, "-X", "POST", f"{{url}}{path}", "-H", "Content-Type: application/json", "-d", data]


BAD_RECORD = {"pregnancies": 2, "glucos": 120, "bmi": 30.1, "diabetes_pedigree_function": 0.4, "age": 40}
SPARSE_RECORD = {"pregnancies": 0, "glucose": None, "bmi": 24.0, "diabetes_pedigree_function": 0.2, "age": 25}
SAMPLED = {
    "pregnancies": 1, "glucose": 85, "blood_pressure": 66, "skin_thickness": 29, "bmi": 26.6,
    "diabetes_pedigree_function": 0.351, "age": 31, "method": "sampled", "n_samples": 500, "seed": 7,
    "output": "probability",
}  # fmt: skip
MISSPELLED = {**{k: v for k, v in RECORD.items() if k != "glucose"}, "glucos": 148}

# (title, curl arguments; "{url}" stands for the server); "-i" examples show the headers too
EXAMPLES: list[tuple[str, list[str]]] = [
    ("Liveness, with the headers every answer carries", ["-si", "{url}/healthz"]),
    ("Readiness (503 until the bundle is loaded and warmed up)", ["-s", "{url}/readyz"]),
    ("Predict one record (insulin 0 = not measured: imputed)", _post("/predict", RECORD)),
    ("Predict with a value outside the training range: a warning, not a guess",
     _post("/predict", {**RECORD, "insulin": 900})),
    ("Explain one record (default: exact GradientSHAP on the logit)", _post("/explain", RECORD)),
    ("Explain on the probability scale with the sampled (Captum) estimator, seeded", _post("/explain", SAMPLED)),
    ("Batch: one bad record is reported by index, the others are answered",
     _post("/predict/batch", {"records": [RECORD, BAD_RECORD]})),
    ("Explain a batch", _post("/explain/batch", {"records": [RECORD, SPARSE_RECORD]})),
    ("One outcome group of the evaluation set", ["-s", "{url}/groups/FN"]),
    ("All outcome groups (features lists shortened here to the first two)", ["-s", "{url}/groups"]),
    ("An unknown group", ["-s", "{url}/groups/XX"]),
    ("The model card (shortened here: first feature, MLP metrics only, no calibration or subgroup tables)",
     ["-s", "{url}/model"]),
    ("A misspelled field is an error, never a silent 'missing'", _post("/predict", MISSPELLED, "-si")),
    ("Malformed JSON", _post("/predict", '{"glucose": 148,')),
]  # fmt: skip


def _shorten(title: str, body: Any) -> Any:
    if "All outcome groups" in title:
        for g in body["groups"].values():
            g["features"] = [*g["features"][:2], "…"]
    if "model card" in title:
        body["features"] = [body["features"][0], "…"]
        body["metrics"] = {"mlp": body["metrics"]["mlp"], "…": "…"}
        for k in ("training", "baselines", "preprocessing", "subgroups"):
            if k in body:
                body[k] = "…"
        if "calibration" in body:
            body["calibration"] = {"served": body["calibration"]["served"], "…": "…"}
    return body


def _scrub(text: str) -> str:
    text = re.sub(r'("request_id": ?")[0-9a-f]{8,}(")', r"\1<request-id>\2", text)
    return re.sub(r"(?im)^(x-request-id: )\S+", r"\1<request-id>", text)


def _render_answer(title: str, raw: str) -> str:
    raw = raw.replace("\r\n", "\n")
    head, _, body = raw.partition("\n\n") if raw.startswith("HTTP/") else ("", "", raw)
    try:
        shown = json.dumps(_shorten(title, json.loads(body)), indent=2, ensure_ascii=False)
    except json.JSONDecodeError:
        shown = body.strip()
    if head:
        keep = [ln for ln in head.split("\n") if not ln.lower().startswith(("date:", "server:"))]
        shown = "\n".join(keep) + "\n\n" + shown
    return _scrub(shown)


class Live:
    """The real server the live blocks curl, started on first use and stopped when the rendering ends."""

    def __init__(self, stack: ExitStack) -> None:
        self._stack = stack
        self._url: str | None = None

    @property
    def url(self) -> str:
        if self._url is None:
            from live_server import running_server

            self._url = self._stack.enter_context(running_server()).url
        return self._url

    def curl(self, args: list[str]) -> tuple[str, str]:
        """Run ``curl args`` against the server: (the command as shown, with port 8000; its raw output)."""
        real = [a.replace("{url}", self.url) for a in args]
        shown = [a.replace("{url}", f"http://127.0.0.1:{SHOWN_PORT}") for a in args]
        out = subprocess.run(["curl", *real], capture_output=True, text=True, timeout=60, check=True).stdout
        return f"curl {shlex.join(shown)}", out


def examples_block(live: Live) -> str:
    parts = []
    for title, args in EXAMPLES:
        shown, out = live.curl(args)
        parts.append(f"**{title}**\n\n```sh\n{shown}\n```\n\n```\n{_render_answer(title, out)}\n```\n")
    return "\n".join(parts)


def _first(n: int, items: list[Any]) -> list[Any]:
    return [*items[:n], "…"] if len(items) > n else items


def _only(d: dict[str, Any], *keys: str) -> dict[str, Any]:
    """``d`` with only ``keys``, and "…" standing for the rest."""
    return {k: d[k] for k in keys if k in d} | ({"…": "…"} if set(d) - set(keys) else {})


def _short_explanation(e: dict[str, Any]) -> None:
    e["prediction"] = _only(e["prediction"], "probability", "label_name", "calibration", "imputed")
    e["attributions"] = [_only(a, "feature", "value", "attribution") for a in e["attributions"][:2]]
    e["attributions"].append("…")
    shortened = _only(e, "prediction", "output", "base_value", "output_value", "attributions", "completeness_gap",
                      "method", "summary")  # fmt: skip
    e.clear()
    e.update(shortened)


def _short_group(g: dict[str, Any]) -> None:
    g["features"] = [_only(f, "feature", "mean", "mean_value") for f in g["features"][:2]]
    g["features"].append("…")


def _short_batch(body: dict[str, Any]) -> None:
    for i, item in enumerate(body["results"]):
        if item.get("ok"):
            item["prediction"] = _only(item["prediction"], "probability", "label")
            body["results"][i] = _only(item, "index", "ok", "prediction", "completeness_gap", "method")
        else:
            item["error"] = _only(item["error"], "type", "status", "errors")


def _short_model(body: dict[str, Any]) -> None:
    keep = ("model_version", "outcome", "features", "threshold", "methods", "default_method", "intended_use")
    body["features"] = [_only(f, "name", "unit", "valid_min", "valid_max") for f in body["features"][:2]]
    body["features"].append("…")
    body["outcome"] = _only(body["outcome"], "column", "positive", "label")
    body["intended_use"] = body["intended_use"].split(". ")[0] + ". …"
    shortened = _only(body, *keep)
    body.clear()
    body.update(shortened)


def _short_monitoring(body: dict[str, Any]) -> None:
    body["variables"] = [_only(v, "name", "psi", "status") for v in body["variables"][:1]]
    body["variables"].append("…")
    shortened = _only(body, "status", "model_version", "records", "variables")
    body.clear()
    body.update(shortened)


def _short_discovery(body: dict[str, Any]) -> None:
    for service in body["services"]:
        service["prefetch"] = _only(service["prefetch"], "patient")
        service["description"] = service["description"].split(", with ")[0] + " …"
        service["usageRequirements"] = service["usageRequirements"].split(": ", 1)[0] + ": …"


def _short_v2_metadata(body: dict[str, Any]) -> None:
    body["inputs"] = [_only(t, "name", "datatype", "shape") for t in body["inputs"][:1]] + ["…"]
    shortened = _only(body, "name", "versions", "platform", "inputs")
    body.clear()
    body.update(shortened)


def _short_problem(body: dict[str, Any]) -> None:
    body.pop("request_id", None)


# One example per endpoint family, for the README: (title, curl arguments, how the answer is shortened or None)
ENDPOINTS: list[tuple[str, list[str], Callable[[Any], None] | None]] = [
    ("`GET /readyz`: health (503 until the bundle is verified, loaded and warmed up; `/healthz`: liveness)",
     ["-s", "{url}/readyz"], None),
    ("`POST /predict`: one record (insulin 0 means not measured: imputed)", _post("/predict", RECORD), None),
    ("`POST /explain`: the model's default method on the logit (shortened here: two attributions, a few fields)",
     _post("/explain", RECORD), _short_explanation),
    ("`POST /explain/batch` (and `/predict/batch`): each record answered or refused on its own (shortened here)",
     _post("/explain/batch", {"records": [RECORD, BAD_RECORD]}), _short_batch),
    ("`GET /groups/{group}` (and `/groups`): one outcome group of the evaluation set (shortened here)",
     ["-s", "{url}/groups/FN"], _short_group),
    ("`GET /model`: the model card (a few of its fields here; [docs/MODEL_CARD.md](docs/MODEL_CARD.md) has it all)",
     ["-s", "{url}/model"], _short_model),
    ("`GET /monitoring` (and `/metrics`): drift of recent inputs against the evaluation set (shortened here)",
     ["-s", "{url}/monitoring"], _short_monitoring),
    ("`GET /cds-services`: CDS Hooks discovery of the service the bundle declares (shortened here)",
     ["-s", "{url}/cds-services"], _short_discovery),
    ("`GET /v2/models/{name}`: the Open Inference Protocol's model metadata (shortened here; docs/V2.md)",
     ["-s", "{url}/v2/models/pima-diabetes"], _short_v2_metadata),
    ("A refusal: `application/problem+json` naming the field and the rule (request id left out here)",
     _post("/predict", MISSPELLED), _short_problem),
]  # fmt: skip

WIDTH = 116


def compact_json(value: Any, indent: int = 0) -> str:
    """JSON as a reader scans it: a value that fits on its line stays on one line, a longer one is unfolded."""
    flat = json.dumps(value, ensure_ascii=False)
    if indent + len(flat) <= WIDTH or not isinstance(value, dict | list) or not value:
        return flat
    pad = " " * (indent + 2)
    if isinstance(value, dict):
        inner = [f"{pad}{json.dumps(k, ensure_ascii=False)}: {compact_json(v, indent + 2)}" for k, v in value.items()]
        return "{\n" + ",\n".join(inner) + "\n" + " " * indent + "}"
    inner = [pad + compact_json(v, indent + 2) for v in value]
    return "[\n" + ",\n".join(inner) + "\n" + " " * indent + "]"


def endpoints_block(live: Live) -> str:
    parts = []
    for title, args, shorten in ENDPOINTS:
        shown, out = live.curl(args)
        body = json.loads(out)
        if shorten is not None:
            shorten(body)
        parts.append(f"**{title}**\n\n```\n$ {shown}\n{_scrub(compact_json(body))}\n```\n")
    return "\n".join(parts)


def performance_block() -> str:
    """The benchmark's last run (docs/bench/latest.json): the table at the goals' concurrency and the goals."""
    run = json.loads(BENCH.read_text())
    meta, ev = run["meta"], run["evaluation"]
    c = ev["goal_concurrency"]
    rows = [
        f"Run {meta['date']} on {meta['machine']['summary']}; commit {meta['git']}; {meta['seconds_per_cell']} s per "
        f"cell; concurrency {c} (full tables: [`docs/bench/latest.md`](docs/bench/latest.md)).",
        "",
        "| target | req/s | records/s | p99 ms | errors |",
        "|---|---:|---:|---:|---:|",
    ]
    for cell in run["cells"]:
        if cell["concurrency"] == c:
            rows.append(
                f"| {cell['label']} | {cell['rps']:,.0f} | {cell['records_per_s']:,.0f} | {cell['p99_ms']:.2f} | "
                f"{cell['errors']} |"
            )
    rows += ["", "| goal | measured | |", "|---|---:|---|"]
    for g in ev["goals"]:
        met = "–" if g["met"] is None else ("met" if g["met"] else "**not met**")
        value = "–" if g["value"] is None else f"{g['value']:,.2f}"
        rows.append(f"| {g['text']} | {value} | {met} |")
    n_met = sum(bool(g["met"]) for g in ev["goals"])
    rows += ["", f"{n_met} of the {len(ev['goals'])} goals are met in this run."]
    return "\n".join(rows) + "\n"


def settings_block() -> str:
    """The settings by concern (``service.config.SETTING_GROUPS``): one table a group."""
    from service.config import ENV_PREFIX, SETTING_GROUPS, Settings

    fields = Settings.model_fields
    rows: list[str] = []
    for title, names in SETTING_GROUPS.values():
        rows += [f"### {title}", "", "| variable | default | meaning |", "|---|---|---|"]
        for name in names:
            field = fields[name]
            default = field.get_default(call_default_factory=True)
            shown = "none" if default is None or default == [] else f"`{default}`"
            rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {shown} | {field.description} |")
        rows.append("")
    return "\n".join(rows)


def metrics_block() -> str:
    from service.model.store import load_bundle

    m = load_bundle().metrics
    names = ["accuracy", "roc_auc", "sensitivity", "specificity", "precision", "f1", "brier"]
    rows = [
        f"Evaluation set: {m['evaluation_set']}; threshold rule: {m['threshold_rule']}; "
        f"intervals: {m['mlp']['interval']}.",
        "",
        "| metric | MLP (served) | logistic regression (baseline) |",
        "|---|---|---|",
    ]
    for k in names:
        a, b = m["mlp"][k], m["logistic_regression"][k]
        rows.append(
            f"| {k} | {a['value']:.3f} [{a['ci_low']:.3f}, {a['ci_high']:.3f}] | "
            f"{b['value']:.3f} [{b['ci_low']:.3f}, {b['ci_high']:.3f}] |"
        )
    cv = m["cross_validation"]
    rows.append(
        f"| ROC AUC, {cv['folds']}-fold CV on the {cv['rows']} development rows | "
        f"{cv['mlp_roc_auc']['mean']:.3f} ± {cv['mlp_roc_auc']['std']:.3f} | "
        f"{cv['logistic_roc_auc']['mean']:.3f} ± {cv['logistic_roc_auc']['std']:.3f} |"
    )
    rows.append(
        f"| threshold (probability) | {m['mlp']['threshold']:.3f} | {m['logistic_regression']['threshold']:.3f} |"
    )
    c, d = m["mlp"]["confusion_matrix"], m["logistic_regression"]["confusion_matrix"]
    rows.append(
        f"| confusion (TN/FP/FN/TP) | {c['tn']}/{c['fp']}/{c['fn']}/{c['tp']} | "
        f"{d['tn']}/{d['fp']}/{d['fn']}/{d['tp']} |"
    )
    return "\n".join(rows) + "\n"


def _ci(d: dict[str, Any] | None, digits: int = 3) -> str:
    """``value [low, high]``, or ``n/a`` where the sample cannot define the number (e.g. AUC with one class)."""
    if not d or d.get("value") is None:
        return "n/a"
    lo, hi = d.get("ci_low"), d.get("ci_high")
    interval = f" [{lo:.{digits}f}, {hi:.{digits}f}]" if lo is not None and hi is not None else ""
    return f"{d['value']:.{digits}f}{interval}"


def calibration_block() -> str:
    from service.model.store import load_bundle

    bundle = load_bundle()
    c = bundle.metrics["calibration"]
    cal = bundle.calibration
    names = {"mlp": "MLP (served)", "logistic_regression": "logistic regression (reference)"}
    rows = [
        f"Served scale: `{cal.name}`, calibrated logit = {cal.a} × logit {'+' if cal.b >= 0 else '−'} {abs(cal.b)}. "
        f"Test split, {c['mlp']['after']['n']} records; {c['binning']} for ECE; slope and intercept: "
        f"{c['slope_intercept']}; intervals: {c['mlp']['after']['interval']}.",
        "",
        "| model | calibration | ECE | ECE of a perfectly calibrated model on these records | slope | intercept "
        "| Brier | mean predicted risk | observed prevalence |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for key, title in names.items():
        for state in ("before", "after"):
            r = c[key][state]
            null = r["ece_if_perfectly_calibrated"]
            rows.append(
                f"| {title} | {state} | {_ci(r['ece'])} | {null['median']:.3f} [{null['ci_low']:.3f}, "
                f"{null['ci_high']:.3f}] | {_ci(r['slope'])} | {_ci(r['intercept'])} | {_ci(r['brier'])} | "
                f"{_ci(r['mean_predicted'])} | {_ci(r['observed_prevalence'])} |"
            )
    rows += [
        "",
        "| model | Platt a, b | threshold before → after | test decisions changed | goal: ECE ≤ 0.05 | "
        "goal: mean risk inside the prevalence interval |",
        "|---|---|---|---|---|---|",
    ]
    for key, title in names.items():
        m = c[key]
        goal = m["goal_met"]
        rows.append(
            f"| {title} | {m['a']}, {m['b']} | {m['threshold_before']:.4f} → {m['threshold_after']:.4f} | "
            f"{m['test_decisions_changed']} of {m['after']['n']} | {'met' if goal['ece_at_most_0.05'] else 'not met'} "
            f"| {'met' if goal['mean_predicted_within_prevalence_interval'] else 'not met'} |"
        )
    return "\n".join(rows) + "\n"


def subgroups_block() -> str:
    from service.model.store import load_bundle

    s = load_bundle().metrics["subgroups"]
    rows = [
        f"{s['model']}; {s['evaluation_set']}; intervals: {s['interval']}. Caution: {s['caution']}.",
        "",
        "| band | n | positives | ROC AUC | sensitivity | specificity | mean predicted risk | observed rate "
        "| predicted − observed | ECE |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for key, title in (("age", "age"), ("bmi", "BMI")):
        if key not in s:
            continue
        unit = s[key]["unit"]
        for b in s[key]["bands"]:
            band = b["band"] if b["band"] == "not measured" else f"{b['band']} {unit}"
            rows.append(
                f"| {title} {band} | {b['n']} | {b['positives']} | {_ci(b.get('roc_auc'))} | "
                f"{_ci(b.get('sensitivity'))} | {_ci(b.get('specificity'))} | {_ci(b.get('mean_predicted'))} | "
                f"{_ci(b.get('observed_rate'))} | {_ci(b.get('mean_predicted_minus_observed'))} | "
                f"{_ci(b.get('ece'))} |"
            )
    return "\n".join(rows) + "\n"


def card_block() -> str:
    """The default model's card, in words: from its bundle's one model card (``bundle.card``)."""
    from service.model.store import load_bundle

    bundle = load_bundle()
    card = bundle.card
    pop = card.to_dict()["population"]
    details = [f"{k.replace('_', ' ')}: {v}" for k, v in pop.items() if k not in ("description", "sex", "min_age")]
    rows = [
        f"**{bundle.name}/{bundle.version}**: {bundle.manifest.get('task', '')}.",
        "",
        f"**Outcome.** {card.outcome.label}: `{card.outcome.column}` = {card.outcome.positive} "
        f"({card.outcome.positive_label}; otherwise {card.outcome.negative_label}). {card.outcome.description}",
        "",
        f"**Intended use.** {card.intended_use}",
        "",
        "**Intended users.**",
        "",
        *[f"- {u}" for u in card.intended_users],
        "",
        "**Out of scope.**",
        "",
        *[f"- {u}" for u in card.out_of_scope],
        "",
        f"**Population.** {card.population.description}",
        "",
        *[f"- {d}" for d in details if not d.startswith("quirks")],
        *[f"- quirk: {q}" for q in pop.get("quirks", [])],
        "",
        f"**Not measured.** {card.not_measured}",
        "",
        f"**Development and validation.** {card.development}",
        "",
        "**Limitations.**",
        "",
        *[f"- {u}" for u in card.limitations],
        "",
        f"**Explanation methods offered.** {', '.join(bundle.methods)} (default: {bundle.default_method}).",
        "",
    ]
    if bundle.cds is not None:
        rows += [f"**CDS service.** `{bundle.cds.id}`: {bundle.cds.title}.", ""]
    return "\n".join(rows)


Block = Callable[[Live], str]

# file -> block name -> how the block is made
BLOCKS: dict[Path, dict[str, Block]] = {
    README: {"endpoints": endpoints_block},
    MODEL_CARD: {
        "card": lambda live: card_block(),
        "metrics": lambda live: metrics_block(),
        "calibration": lambda live: calibration_block(),
        "subgroups": lambda live: subgroups_block(),
    },
    SETTINGS: {"settings": lambda live: settings_block()},
    PERFORMANCE: {"performance": lambda live: performance_block()},
    API_EXAMPLES: {"examples": examples_block},
}
NAMES = [name for blocks in BLOCKS.values() for name in blocks]


def render(text: str, blocks: dict[str, Block], live: Live, names: list[str] | None = None) -> str:
    """``text`` with its generated blocks (those in ``names``, or all) made anew."""
    for name, make in blocks.items():
        if names is not None and name not in names:
            continue
        pattern = re.compile(rf"(<!-- BEGIN generated:{name} -->\n).*?(<!-- END generated:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"no generated:{name} block")
        body = make(live)
        text = pattern.sub(lambda mt: mt.group(1) + body + mt.group(2), text)  # noqa: B023 (called right here)
    return text


@contextmanager
def live_server() -> Iterator[Live]:
    """A :class:`Live` whose server (if one was started) stops when the block ends."""
    with ExitStack() as stack:
        yield Live(stack)


def render_all(names: list[str] | None = None) -> dict[Path, tuple[str, str]]:
    """Every generated file: (its text now, its text with the blocks made anew)."""
    with live_server() as live:
        return {
            path: (path.read_text(), render(path.read_text(), blocks, live, names)) for path, blocks in BLOCKS.items()
        }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--only", nargs="*", choices=NAMES, default=None)
    args = parser.parse_args()
    stale = []
    for path, (old, new) in render_all(args.only).items():
        name = path.relative_to(ROOT)
        if new == old:
            print(f"{name}: generated blocks are current")
        elif args.check:
            stale.append(name)
        else:
            path.write_text(new)
            print(f"{name}: rewritten")
    if stale:
        print(f"stale: {', '.join(map(str, stale))}: run python scripts/readme.py", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

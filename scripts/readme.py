"""Regenerate the README's generated blocks from the code, the bundle and the running service.

    python scripts/readme.py            # rewrite the blocks in README.md
    python scripts/readme.py --check    # exit 1 if README.md differs from what would be written

Blocks are delimited by ``<!-- BEGIN generated:NAME -->`` / ``<!-- END generated:NAME -->``:

- ``settings``: the settings table, from ``service.config.Settings``' fields;
- ``metrics``: the model's metrics table, from the default bundle's manifest;
- ``examples``: curl commands run with the real ``curl`` against a real ``gshap serve`` started here, and
  their real answers (pretty-printed; the random request id is shown as ``<request-id>``);
- ``cds``: the CDS Hooks / FHIR section: the LOINC/UCUM table from the feature specification and a real CDS call
  and its card from a ``gshap serve`` started here (``scripts/cds_docs.py``, which also writes docs/CDS_HOOKS.md).

``tests/test_readme.py`` fails when a block drifts, so the README cannot quote a stale answer.
"""

from __future__ import annotations

import argparse
import json
import re
import shlex
import subprocess
import sys
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
sys.path.insert(0, str(ROOT / "tests"))

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
    ("The model card (shortened here: first feature, MLP metrics only)", ["-s", "{url}/model"]),
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
        for k in ("training", "baselines", "preprocessing"):
            if k in body:
                body[k] = "…"
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


def examples_block() -> str:
    from live_server import running_server

    parts = []
    with running_server() as server:
        for title, args in EXAMPLES:
            real = [a.replace("{url}", server.url) for a in args]
            shown = [a.replace("{url}", f"http://127.0.0.1:{SHOWN_PORT}") for a in args]
            out = subprocess.run(["curl", *real], capture_output=True, text=True, timeout=60, check=True).stdout
            parts.append(
                f"**{title}**\n\n```sh\ncurl {shlex.join(shown)}\n```\n\n```\n{_render_answer(title, out)}\n```\n"
            )
    return "\n".join(parts)


def settings_block() -> str:
    from service.config import ENV_PREFIX, Settings

    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        shown = "none" if default is None or default == [] else f"`{default}`"
        rows.append(f"| `{ENV_PREFIX}{name.upper()}` | {shown} | {field.description} |")
    return "\n".join(rows) + "\n"


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


def cds_block() -> str:
    sys.path.insert(0, str(ROOT / "scripts"))
    import cds_docs

    return cds_docs.readme_block()


BLOCKS = {"settings": settings_block, "metrics": metrics_block, "examples": examples_block, "cds": cds_block}


def render(text: str, names: list[str] | None = None) -> str:
    for name in names or list(BLOCKS):
        pattern = re.compile(rf"(<!-- BEGIN generated:{name} -->\n).*?(<!-- END generated:{name} -->)", re.S)
        if not pattern.search(text):
            raise SystemExit(f"README.md has no generated:{name} block")
        body = BLOCKS[name]()
        text = pattern.sub(lambda mt, body=body: mt.group(1) + body + mt.group(2), text)
    return text


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true")
    parser.add_argument("--only", nargs="*", choices=list(BLOCKS), default=None)
    args = parser.parse_args()
    old = README.read_text()
    new = render(old, args.only)
    if args.check:
        if new != old:
            print("README.md is stale: run python scripts/readme.py", file=sys.stderr)
            return 1
        print("README.md generated blocks are current")
        return 0
    README.write_text(new)
    print("README.md rewritten" if new != old else "README.md already current")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Issue 26, item 5: ``gshap serve`` on the shipped store (every network piecewise linear) starts and answers
/predict, /explain (exact, logit and probability), V2 inference, /fhir and CDS Hooks without importing torch; a
sampled explanation then imports it and answers what the in-process runtime answers for the same seed.

The server runs the real command line (``service.cli.main(["serve", ...])``) under a small wrapper that puts an
import watcher first on ``sys.meta_path``: the first time anything asks for ``torch`` it writes the stack to a file
(and steps aside). The serving code knows nothing of it.
"""

from __future__ import annotations

import math
import sys
from pathlib import Path
from typing import Any

import httpx
import pytest
from fhir_helpers import cds_request, load, prefetch_for
from live_server import running_server

from service.model.store import DEFAULT_STORE, load_bundle
from service.runtime.inference import ExplainOptions, InferenceRuntime

WATCHED = """
import sys, traceback
marker = sys.argv[1]
class _Watch:
    def find_spec(self, name, path=None, target=None):
        if name == "torch":
            with open(marker, "a") as f:
                f.write("".join(traceback.format_stack()))
            sys.meta_path.remove(self)
        return None
sys.meta_path.insert(0, _Watch())
from service.cli import main
raise SystemExit(main(sys.argv[2:]))
"""

BUNDLES = sorted(p.parent for p in DEFAULT_STORE.glob("*/*/manifest.json"))


def _runtime(folder: Path) -> InferenceRuntime:
    return InferenceRuntime(load_bundle(folder))


def _attributions(body: dict[str, Any]) -> list[float]:
    return [a["attribution"] for a in body["attributions"]]


def _torch_stack(marker: Path) -> str:
    return marker.read_text() if marker.exists() else ""


@pytest.mark.slow
def test_serve_answers_without_torch_until_a_sampled_explanation(tmp_path: Path) -> None:
    marker = tmp_path / "torch-imported.txt"
    program = (sys.executable, "-c", WATCHED, str(marker))
    with running_server(program=program) as server, httpx.Client(base_url=server.url, timeout=60.0) as http:
        assert _torch_stack(marker) == "", "torch was imported at start-up:\n" + _torch_stack(marker)
        assert len(BUNDLES) == 4
        for folder in BUNDLES:
            runtime = _runtime(folder)
            name, version = folder.parent.name, folder.name
            base = f"/models/{name}/versions/{version}"
            record = runtime.example_record()
            [expected] = runtime.predict([record])
            r = http.post(f"{base}/predict", json=record)
            assert r.status_code == 200, r.text
            assert r.json()["logit"] == expected.logit  # the same numpy fold and kernel, in and out of process
            for output in ("logit", "probability"):
                [ex] = runtime.explain([record], ExplainOptions(method="exact", output=output))
                r = http.post(f"{base}/explain", json={**record, "method": "exact", "output": output})
                assert r.status_code == 200, r.text
                body = r.json()
                assert body["method"] == "exact"
                assert _attributions(body) == [a.attribution for a in ex.attributions]
                assert body["output_value"] == ex.output_value
            inputs = [
                {"name": f, "datatype": "FP64", "shape": [1], "data": [math.nan if v is None else v]}
                for f, v in record.items()
            ]
            r = http.post(f"/v2/models/{name}/versions/{version}/infer", json={"inputs": inputs})
            assert r.status_code == 200, r.text
        bundle = load("patient_bundle.json")
        bundle["entry"] = [e for e in bundle["entry"] if e["resource"].get("id") != "glu-other"]
        for route in ("/fhir/predict", "/fhir/explain?output=probability"):
            r = http.post(route, json=bundle)
            assert r.status_code == 200, r.text
        r = http.post("/cds-services/diabetes-risk", json=cds_request(prefetch_for(load("patient_bundle.json"))))
        assert r.status_code == 200, r.text
        assert r.json()["cards"]
        assert _torch_stack(marker) == "", "a request imported torch:\n" + _torch_stack(marker)

        # a sampled explanation loads torch in the server, and answers the in-process runtime's numbers
        runtime = _runtime(DEFAULT_STORE / "pima-diabetes" / "1.1.0")
        record = runtime.example_record()
        options = ExplainOptions(method="sampled", n_samples=64, seed=11, output="probability")
        [ex] = runtime.explain([record], options)
        settings = {"method": "sampled", "n_samples": 64, "seed": 11, "output": "probability"}
        r = http.post("/models/pima-diabetes/versions/1.1.0/explain", json={**record, **settings})
        assert r.status_code == 200, r.text
        assert _attributions(r.json()) == [a.attribution for a in ex.attributions]
        assert [a["standard_error"] for a in r.json()["attributions"]] == [a.standard_error for a in ex.attributions]
        assert "service/engine/gradient_shap.py" in _torch_stack(marker)  # the watcher saw it: it works

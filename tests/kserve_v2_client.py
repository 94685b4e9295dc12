"""KServe's own REST client against a running server, over the Open Inference Protocol (V2); run in its own venv.

``python kserve_v2_client.py BASE_URL MODEL VERSION CASE.json`` reads records (``{"records": [...], "features":
[...], "explain": {...}}``), asks the server through ``kserve.InferenceRESTClient(RESTConfig(protocol="v2"))``
and prints one JSON document with what the client decoded. Run by ``tests/api/test_v2.py`` in ``.venv-kserve/``
(the ``kserve`` package pins older psutil and protobuf than this project); the test compares every number with
``/predict/batch`` and ``/explain/batch``. JSON floats are printed with Python's shortest round-trip repr, so the
comparison is bit for bit.
"""

from __future__ import annotations

import asyncio
import json
import sys
from typing import Any

import numpy as np
from kserve import InferenceRESTClient, InferInput, InferRequest, RESTConfig


def _inputs(records: list[dict[str, Any]], features: list[str], binary: bool) -> list[Any]:
    """One FP64 tensor [N] per feature; a feature a record leaves out is NaN (not measured)."""
    inputs = []
    for name in features:
        column = np.array([r.get(name, np.nan) for r in records], dtype=np.float64)
        tensor = InferInput(name=name, shape=[len(records)], datatype="FP64")
        tensor.set_data_from_numpy(column, binary_data=binary)
        inputs.append(tensor)
    return inputs


def _outputs(response: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for tensor in response.outputs:
        array = tensor.as_numpy()
        out[tensor.name] = [v.decode() if isinstance(v, bytes) else v for v in array.ravel().tolist()]
        out[tensor.name + ".shape"] = list(array.shape)
    return out


async def main(base_url: str, model: str, version: str, case: dict[str, Any]) -> dict[str, Any]:
    records, features = case["records"], case["features"]
    found: dict[str, Any] = {}
    async with InferenceRESTClient(RESTConfig(protocol="v2", timeout=120)) as client:
        found["server_live"] = await client.is_server_live(base_url)
        found["server_ready"] = await client.is_server_ready(base_url)
        found["model_ready"] = await client.is_model_ready(base_url, model)
        for binary in (False, True):
            request = InferRequest(model_name=model, infer_inputs=_inputs(records, features, binary))
            response = await client.infer(base_url, request, model_name=model)
            found[f"predict.binary={binary}"] = _outputs(response)
        # the version's own path: KServe's client builds /v2/models/{model_name}/infer from the name it is given
        versioned = f"{model}/versions/{version}"
        request = InferRequest(model_name=model, infer_inputs=_inputs(records, features, True))
        found["predict.versioned"] = _outputs(await client.infer(base_url, request, model_name=versioned))
        explainer = f"{model}-explainer"
        request = InferRequest(
            model_name=explainer,
            infer_inputs=_inputs(records, features, True),
            parameters={"binary_data_output": True, **case["explain"]},
        )
        response = await client.infer(base_url, request, model_name=explainer)
        found["explain"] = _outputs(response)
        found["explain.parameters"] = dict(response.parameters or {})
        versioned_explainer = f"{explainer}/versions/{version}"
        response = await client.infer(base_url, request, model_name=versioned_explainer)
        found["explain.versioned"] = _outputs(response)
        try:
            await client.infer(base_url, request, model_name="no-such-model")
        except Exception as exc:  # httpx.HTTPStatusError, carrying the server's V2 error text
            found["unknown_model_error"] = str(exc)
    return found


if __name__ == "__main__":
    url, name, ver, path = sys.argv[1:5]
    with open(path, encoding="utf-8") as f:
        answer = asyncio.run(main(url, name, ver, json.load(f)))
    print(json.dumps(answer))

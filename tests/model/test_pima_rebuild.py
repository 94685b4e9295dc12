"""The shipped Pima bundle, rebuilt from its spec file (format 3, an nn.Sequential), holds the same numbers as the
format-2 bundle it replaced (commit 5161df8): the same weight values tensor for tensor, the same baselines,
evaluation set and group summaries byte for byte, and the same answers bit for bit.

The old bundle's values are recorded here by sha256 (computed from the old files, and the old answers with the
old code, ``BinaryClassification``, before the rebuild): the test needs no git history.
"""

from __future__ import annotations

import hashlib
import math
from typing import Any

import numpy as np
import pytest

from service.engine.gradient_shap import GradientShapEngine
from service.model.spec import SPECS, load_spec
from service.runtime.inference import ExplainOptions, InferenceRuntime

# sha256 of each tensor's raw bytes in the old weights.safetensors, under the Sequential's key of its layer
# (old names: layer_1 -> 0, batchnorm1 -> 2, layer_2 -> 3, batchnorm2 -> 5, layer_out -> 7)
OLD_TENSORS = {
    "0.bias": "torch.float32 bd666b7f86563fb7c7248da49ce919adcbb87adf862b2089ff53c89efda0d61b",
    "0.weight": "torch.float32 37d44ed94d69bc776c42cdfd9a00cf22adebf0b4de0c3b947e57a87b6f7e1667",
    "2.bias": "torch.float32 4a4ad929b76d37e902ab658a2c7a7977a300d75a69988d7820d795e42e4e9402",
    "2.num_batches_tracked": "torch.int64 ee5d1a3591fb90a9074af648cd8683a4c94173dd843ac9afa3f282c2612304c5",
    "2.running_mean": "torch.float32 d892667664a2f4dc4a860640c55fd38990c955171b6f1ee9cce7a6845e7f64f1",
    "2.running_var": "torch.float32 cfffcd9e8db12ae40675851a14882f9bcb9f50c86d01abfca96d414610040954",
    "2.weight": "torch.float32 f1a2e2fe913ee926978a45096d0477af7b55602d1eba816b9377f3c91cdbce1e",
    "3.bias": "torch.float32 8788be1bfc1d8e4033ab60e16c196ec34ef8e1cf47b6278f352788694d3ee85c",
    "3.weight": "torch.float32 31bead2a07a844d8972066c56e7322d09044f68002cbbfee0d1b0794d8819376",
    "5.bias": "torch.float32 78dc11787be6509f2b8ebbb5a671d21f3ef685c5c578c4c916a5f6e9d7a5bb36",
    "5.num_batches_tracked": "torch.int64 ee5d1a3591fb90a9074af648cd8683a4c94173dd843ac9afa3f282c2612304c5",
    "5.running_mean": "torch.float32 07bd3bbce6b739d243e6715f3dd1cf05da3c3b155936f6e1a3c1111e03f8c339",
    "5.running_var": "torch.float32 5ad86b0ba9cb8ddf15c71a7411931fe4c2f6c97b4abed5ea17dad4666d7fa62d",
    "5.weight": "torch.float32 d88e52e262948a33901b32d269950121fd0649957f683564ed5fa46dde825536",
    "7.bias": "torch.float32 194b368ea586b78d9699e1a1b2ae12576dd8497469099e7e47c0712bd122e036",
    "7.weight": "torch.float32 c84724814a86c8b4189fb8119078ec40544d58905656abd7c540b33510564c55",
}
# the old bundle's files that the rebuild leaves as they were (sha256 from its SHA256SUMS)
OLD_FILES = {
    "baselines.safetensors": "9b1ef74293a330ab301b0ee3b9676ca358077faa027a28038d60532679b1fb47",
    "evaluation.safetensors": "536ceab92a773b0cd880eae4d08cc7dcfe961e31ea684a3a5c8df32e4484422a",
    "groups.json": "c9bc0c9adc1749563c2b75f54ee23fa528d496c9f6f859fa38e56fbf4c6fb90a",
}
# sha256 of the old code's answers on the old bundle (_engine_answers and _runtime_answers below, run at 5161df8)
OLD_ENGINE_ANSWERS = "a17f814a3021ee6805cede74d9f592fb4a6402b23b5f417991ec173bdb0acae3"
OLD_RUNTIME_ANSWERS = "f76dea94703d12f739434db525437c71f37c9ef0d95bb5181bb09e5ba81f4c5b"


def _engine_answers(bundle: Any) -> str:
    """Exact (logit and probability), quadrature and sampled explanations and the logits of the evaluation set."""
    engine = GradientShapEngine(bundle.model, bundle.baselines, bundle.baseline_weights)
    x = bundle.eval_x
    h = hashlib.sha256()
    settings: tuple[dict[str, Any], ...] = (
        {"method": "exact"},
        {"method": "exact", "output": "probability"},
        {"method": "quadrature", "n_samples": 8},
        {"method": "sampled", "n_samples": 16, "seed": 3},
    )
    for kw in settings:
        ex = engine.explain(x if kw["method"] == "exact" else x[:40], **kw)
        for a in (ex.output_value, ex.attributions, ex.attribution_se, ex.completeness_gap, np.array([ex.base_value])):
            h.update(np.ascontiguousarray(a, dtype=np.float64).tobytes())
    h.update(engine.predict_logit(x).tobytes())
    return h.hexdigest()


def _runtime_answers(bundle: Any) -> str:
    """The service's predictions and default explanations (logit and probability) of every evaluation record."""
    runtime = InferenceRuntime(bundle)
    names = [f.name for f in bundle.spec]
    records = [
        {n: (None if math.isnan(v) else float(v)) for n, v in zip(names, row, strict=True)} for row in bundle.eval_raw
    ]
    h = hashlib.sha256()
    try:
        for p in runtime.predict(records):
            h.update(np.array([p.probability, p.logit, p.threshold, p.label], dtype=np.float64).tobytes())
        for options in (ExplainOptions(), ExplainOptions(output="probability")):
            for e in runtime.explain(records, options):
                numbers = [e.base_value, e.output_value, e.completeness_gap, *(a.attribution for a in e.attributions)]
                h.update(np.array(numbers, dtype=np.float64).tobytes())
    finally:
        runtime.close()
    return h.hexdigest()


def test_the_rebuilt_bundle_is_format_3_from_the_spec_file(bundle: Any) -> None:
    """The served bundle carries the Pima spec file's content, validated, and is built as its nn.Sequential."""
    spec = load_spec(SPECS / "pima-diabetes.yaml")
    assert bundle.manifest["format_version"] == 3
    assert bundle.manifest["spec"] == dict(spec.data)
    assert bundle.model_spec.network == spec.network
    assert sorted(bundle.model.state_dict()) == sorted(OLD_TENSORS)


def test_same_weight_values_tensor_for_tensor(bundle: Any) -> None:
    """Every tensor has the dtype and the bytes of the old bundle's tensor of the same layer."""
    from safetensors.torch import load_file

    stored = load_file(str(bundle.path / "weights.safetensors"))
    assert sorted(stored) == sorted(OLD_TENSORS)
    for key, tensor in stored.items():
        digest = hashlib.sha256(tensor.contiguous().numpy().tobytes()).hexdigest()
        assert f"{tensor.dtype} {digest}" == OLD_TENSORS[key], key


@pytest.mark.parametrize("name", sorted(OLD_FILES))
def test_same_baselines_evaluation_set_and_groups(bundle: Any, name: str) -> None:
    """The baselines, the evaluation set and the group summaries are the old files, byte for byte."""
    assert hashlib.sha256((bundle.path / name).read_bytes()).hexdigest() == OLD_FILES[name]


def test_same_engine_answers_bit_for_bit(bundle: Any) -> None:
    """Exact, quadrature and sampled explanations and the logits equal the old code's on the old bundle, bitwise."""
    assert _engine_answers(bundle) == OLD_ENGINE_ANSWERS


def test_same_service_answers_bit_for_bit(bundle: Any) -> None:
    """The runtime's predictions and explanations of the evaluation set equal the old ones, bitwise."""
    assert _runtime_answers(bundle) == OLD_RUNTIME_ANSWERS

"""Type stubs of the C extension ``service.engine._exact`` (``service/engine/_exact.c``, driven by
``service.engine.exact_kernel``)."""

from typing import Any

class Model:
    """The constants of one folded two-hidden-layer ReLU net and its weighted baselines, checked and copied once."""

    def __init__(
        self,
        *,
        w1: Any,
        b1: Any,
        w2: Any,
        b2: Any,
        w3: Any,
        b3: float,
        db: Any,
        ab: Any,
        m0: Any,
        w2t: Any,
        vt: Any,
        h0: Any,
        u0: Any,
        p: Any,
        c: Any,
        bw: Any,
        b: Any,
    ) -> None: ...
    @property
    def dims(self) -> dict[str, int]: ...
    def logits(self, xs: Any, out: Any, /) -> None: ...
    def explain(self, xs: Any, attr: Any, logit: Any, /) -> None: ...

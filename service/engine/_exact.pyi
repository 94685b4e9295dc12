"""Type stubs of the C extension ``service.engine._exact`` (``service/engine/_exact.c``, driven by
``service.engine.exact_kernel``)."""

from typing import Any

def logits(xs: Any, w1: Any, b1: Any, w2: Any, b2: Any, w3: Any, b3: float, out: Any, /) -> None: ...
def explain(
    xs: Any,
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
    attr: Any,
    logit: Any,
    /,
) -> None: ...

"""Type stubs of the C extension ``service.engine._exact`` (``service/engine/_exact.c``, driven by
``service.engine.exact_kernel``; ``Model`` is the earlier two-hidden-layer kernel, the benchmark's reference)."""

from collections.abc import Sequence
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

class Net:
    """The constants of one folded network of affine maps and (leaky) ReLUs, any depth and widths, and its weighted
    baselines, checked and copied once (see service.engine.exact_kernel)."""

    def __init__(
        self,
        *,
        weights: Sequence[Any],
        biases: Sequence[Any],
        slopes: Sequence[float],
        db: Any,
        ab: Any,
        m0: Any,
        p: Any,
        c: Any,
        h0: Sequence[Any],
        gamma: Sequence[Any],
        u0: Any,
        vt: Any,
        bw: Any,
        b: Any,
    ) -> None: ...
    @property
    def dims(self) -> dict[str, Any]: ...
    @property
    def slopes(self) -> list[float]: ...
    def logits(self, xs: Any, out: Any, /) -> None: ...
    def explain(self, xs: Any, attr: Any, logit: Any, /) -> None: ...

class Runner:
    """``Net.explain`` on threads of its own that never take the GIL: calls are submitted, and collected when the
    pipe of :meth:`fileno` turns readable."""

    def __init__(self, net: Net, threads: int) -> None: ...
    @property
    def pending(self) -> int: ...
    @property
    def threads(self) -> int: ...
    def submit(self, token: object, xs: Any, attr: Any, logit: Any, /) -> None: ...
    def collect(self) -> list[Any]: ...
    def fileno(self) -> int: ...
    def close(self) -> None: ...

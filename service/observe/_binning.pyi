from collections.abc import Sequence

class Binner:
    """The drift window's fine bins of every variable, counted in C (see _binning.c)."""

    def __init__(self, edges: Sequence[Sequence[float]], columns: Sequence[int], width: int) -> None: ...
    def add(self, row: memoryview, rows: Sequence[Sequence[float]], probabilities: Sequence[float]) -> float: ...

"""Figures: every picture is written as PNG and SVG, from the bundle's own numbers."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.image as mpimg
import pytest

from service.training.figures import write_figures


def test_all_figures_written(tmp_path: Path) -> None:
    """Confusion matrix, four groups, the panel, global influence, a waterfall and the reliability diagram, each
    as PNG and SVG."""
    paths = write_figures(None, tmp_path, record=3)
    stems = {p.stem for p in paths}
    assert stems == {
        "confusion_matrix",
        "group_TP",
        "group_TN",
        "group_FP",
        "group_FN",
        "groups_panel",
        "global_influence",
        "waterfall_record_3",
        "reliability",
    }
    assert len(paths) == 2 * len(stems)
    for p in paths:
        assert p.stat().st_size > (5_000 if p.suffix == ".png" else 3_000), p
    img = mpimg.imread(tmp_path / "groups_panel.png")
    assert img.shape[0] > 500
    assert img.shape[1] > 800
    assert (img[..., :3].std(axis=(0, 1)) > 0.05).all()  # not a blank canvas


def test_svg_is_reproducible(tmp_path: Path) -> None:
    """Two runs give byte-identical SVGs (no timestamps), so committed figures only change with the model."""
    a = write_figures(None, tmp_path / "a")
    b = write_figures(None, tmp_path / "b")
    for pa, pb in zip(a, b, strict=True):
        if pa.suffix == ".svg":
            assert pa.read_bytes() == pb.read_bytes(), pa.name


def test_record_out_of_range_is_refused(tmp_path: Path) -> None:
    """A waterfall record index outside the evaluation set is a clear error."""
    with pytest.raises(ValueError, match="--record"):
        write_figures(None, tmp_path, record=10_000)


def test_chart_svgs_name_every_feature(tmp_path: Path) -> None:
    """The waterfall and group SVGs (service.render, as the API serves them) hold one group per feature."""
    from service.model.spec import SPECS, load_spec

    PIMA = load_spec(SPECS / "pima-diabetes.yaml").features

    write_figures(None, tmp_path, record=5)
    for stem in ("waterfall_record_5", "group_TP"):
        text = (tmp_path / f"{stem}.svg").read_text()
        assert sorted(re.findall(r'data-feature="([a-z_]+)"', text)) == sorted(PIMA.names), stem
        assert "style=" not in text  # presentation attributes only: inlinable under a strict CSP

"""Data integrity: the shipped CSV is the full, unaltered Pima data set, and the split is stratified."""

from __future__ import annotations

import numpy as np

from service.training.data import DEFAULT_DATA, default_spec, file_sha256, load_dataset, stratified_split

PROVENANCE_SHA = "bf81d06e0c0512662862248241ab46d7c29258c6ceaad32f3cab56b52a17fdab"


def test_all_records_and_classes() -> None:
    """All 768 records are read (the seed lost the first), 500 negatives and 268 positives."""
    ds = load_dataset()
    assert ds.x.shape == (768, 8)
    assert int((ds.y == 0).sum()) == 500
    assert int((ds.y == 1).sum()) == 268


def test_first_record_is_kept() -> None:
    """The first data row 6,148,72,35,0,33.6,0.627,50,1 is record 0 (insulin 0 read as not measured)."""
    ds = load_dataset()
    np.testing.assert_array_equal(ds.x[0], [6, 148, 72, 35, np.nan, 33.6, 0.627, 50])
    assert ds.y[0] == 1


def test_checksum_matches_provenance(root) -> None:  # type: ignore[no-untyped-def]
    """The project's copy has the sha256 its PROVENANCE.md states."""
    assert file_sha256(DEFAULT_DATA) == PROVENANCE_SHA
    assert PROVENANCE_SHA in (root / "data" / "PROVENANCE.md").read_text()


def test_zeros_become_missing_only_where_the_spec_says() -> None:
    """Zeros turn into NaN exactly for glucose, blood pressure, skin thickness, insulin and BMI."""
    ds = load_dataset()
    nan_counts = dict(zip(default_spec().features.names, np.isnan(ds.x).sum(axis=0).tolist(), strict=True))
    assert nan_counts == {
        "pregnancies": 0,
        "glucose": 5,
        "blood_pressure": 35,
        "skin_thickness": 227,
        "insulin": 374,
        "bmi": 11,
        "diabetes_pedigree_function": 0,
        "age": 0,
    }


def test_split_is_stratified_disjoint_and_seeded() -> None:
    """60/20/20 split: disjoint, covers every row, class ratio kept, same seed → same rows."""
    ds = load_dataset()
    s1, s2 = stratified_split(ds.y, 42), stratified_split(ds.y, 42)
    parts = [s1.train, s1.validation, s1.test]
    assert [len(p) for p in parts] == [460, 154, 154]
    assert len(np.unique(np.concatenate(parts))) == 768
    for p in parts:
        assert abs(ds.y[p].mean() - 268 / 768) < 0.01
    np.testing.assert_array_equal(s1.test, s2.test)
    assert not np.array_equal(stratified_split(ds.y, 7).test, s1.test)

"""Write data/breast-cancer-wisconsin.csv from scikit-learn's bundled copy of the Wisconsin Diagnostic Breast
Cancer data (``sklearn.datasets.load_breast_cancer``: 569 records, 30 features, no download).

Columns: the 30 features under snake-case names (``mean radius`` -> ``mean_radius``), then ``target`` exactly as
scikit-learn gives it (0 = malignant, 1 = benign; the model spec says positive = 0). Values are written with
``repr`` of the float64 value, so reading the CSV gives scikit-learn's numbers bit for bit.
Run: ``python scripts/make_breast_cancer_csv.py`` (data/PROVENANCE.md records the sha256 of the result).
"""

from __future__ import annotations

from pathlib import Path

from sklearn.datasets import load_breast_cancer

OUT = Path(__file__).resolve().parents[1] / "data" / "breast-cancer-wisconsin.csv"


def main() -> None:
    data = load_breast_cancer()
    names = [str(n).replace(" ", "_") for n in data.feature_names]
    lines = [",".join([*names, "target"])]
    for row, target in zip(data.data, data.target, strict=True):
        lines.append(",".join([*(repr(float(v)) for v in row), str(int(target))]))
    OUT.write_text("\n".join(lines) + "\n")
    print(f"wrote {OUT}: {len(data.target)} records")


if __name__ == "__main__":
    main()

"""Rebuild ``model_store/pima-diabetes/1.0.0`` (the uncalibrated model) with ``gshap bundle``, from its weights in the
repository's history, so that it carries its spec and card like every bundle of the store.

1.0.0 was the network before the Platt calibration of 1.1.0 (f9d0ee4); its files are at ``f9d0ee4~1``. This script
reads them from git, renames the state dict's keys to the spec's ``nn.Sequential`` (``layer_1`` -> ``0``, ...),
writes the three CSVs of the split the manifest records (the training split is the reference: imputation medians,
baselines; the validation split tunes the threshold, with ``--calibrate none``; the test split is the evaluation
set) and packages them with the Pima spec at version 1.0.0. tests/model/test_repository.py checks that the rebuilt
bundle answers as the old files did with the code of their time (``tests/data/pima_1_0_0_answers.json``)::

    python scripts/rebuild_pima_1_0_0.py [--out model_store]
"""

from __future__ import annotations

import argparse
import csv
import io
import json
import subprocess
import sys
import tempfile
from pathlib import Path

import yaml
from safetensors.torch import load as load_safetensors
from safetensors.torch import save_file

ROOT = Path(__file__).resolve().parent.parent
OLD = "f9d0ee4~1"
OLD_FOLDER = "model_store/pima-diabetes/1.0.0"
KEYS = {"layer_1": "0", "batchnorm1": "2", "layer_2": "3", "batchnorm2": "5", "layer_out": "7"}


def git_show(path: str) -> bytes:
    return subprocess.run(["git", "show", f"{OLD}:{path}"], cwd=ROOT, capture_output=True, check=True).stdout


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", default=str(ROOT / "model_store"), help="store folder (the bundle goes to OUT/NAME/1.0.0)")
    args = p.parse_args(argv)
    manifest = json.loads(git_show(f"{OLD_FOLDER}/manifest.json"))
    state = load_safetensors(git_show(f"{OLD_FOLDER}/weights.safetensors"))
    renamed = {}
    for key, tensor in state.items():
        layer, _, rest = key.partition(".")
        renamed[f"{KEYS[layer]}.{rest}"] = tensor.contiguous()
    data = list(csv.reader(io.StringIO((ROOT / "data" / manifest["data"]["file"]).read_text())))
    header, rows = data[0], data[1:]
    split = manifest["data"]["split_rows"]
    spec = yaml.safe_load((ROOT / "model_store" / "specs" / "pima-diabetes.yaml").read_text())
    spec["version"] = "1.0.0"
    # 1.0.0 is the same network before its calibration: its card says so
    card = spec["card"]
    card["intended_use"] = card["intended_use"].replace("the calibrated risk", "the risk")
    card["development_and_validation"] = card["development_and_validation"].replace(
        "Its logit is then recalibrated by Platt scaling (a*logit + b) fitted on the validation split, and the "
        "decision threshold is Youden's J on the validation split's calibrated probabilities.",
        "Its probabilities are the network's own, not recalibrated (version 1.1.0 is the same network with a Platt "
        "calibration), and the decision threshold is Youden's J on the validation split's probabilities.",
    )
    card["limitations"] = [
        "not calibrated: the probabilities are the class-weighted network's own and overstate the risk; use 1.1.0 "
        "for calibrated probabilities"
        if "calibrated on 154" in item
        else item
        for item in card["limitations"]
    ]
    # the network saw (x - mean) / scale with the training split's statistics: the spec says so
    spec["preprocessing"] = {k: manifest["preprocessing"][k] for k in ("mean", "scale")}
    with tempfile.TemporaryDirectory(prefix="pima-1.0.0-") as tmp:
        folder = Path(tmp)
        save_file(renamed, str(folder / "weights.safetensors"))
        (folder / "spec.yaml").write_text(yaml.safe_dump(spec, sort_keys=False, allow_unicode=True))
        files = {}
        for part, name in (("train", "reference"), ("validation", "validation"), ("test", "evaluation")):
            files[name] = folder / f"{name}.csv"
            with files[name].open("w", newline="") as f:
                writer = csv.writer(f)
                writer.writerow(header)
                writer.writerows(rows[i] for i in split[part])
        command = [sys.executable, "-m", "service.cli", "bundle", "--spec", str(folder / "spec.yaml")]
        command += ["--weights", str(folder / "weights.safetensors"), "--reference", str(files["reference"])]
        command += ["--validation", str(files["validation"]), "--evaluation", str(files["evaluation"])]
        command += ["--calibrate", "none", "--out", args.out]
        return subprocess.run(command, cwd=ROOT, check=False).returncode


if __name__ == "__main__":
    raise SystemExit(main())

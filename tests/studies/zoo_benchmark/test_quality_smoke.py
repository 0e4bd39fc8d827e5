"""Smoke run of the zoo benchmark's scoring and report (``python -m tguide.studies.zoo_benchmark quality --quick``)."""

from __future__ import annotations

import csv
import json
from pathlib import Path


def _load():
    from tguide.studies.zoo_benchmark import quality

    return quality


def test_quick_scores_resume_and_report(tmp_path: Path, data_root: Path) -> None:
    zq = _load()
    out = tmp_path / "zq"
    args = ["--quick", "--out", str(out), "--cache", "none", "--data-root", str(data_root), "--pools", "20"]
    assert zq.main(args) == 0
    rows = list(csv.DictReader((out / "zoo_scores.csv").open()))
    cands = {r["candidate"] for r in rows}
    assert cands == {"simplecnn_cifar10", "resnet20_cifar10", "random_resnet20", "lenet5_mnist"}
    assert {r["setup"] for r in rows} == {"full", "half_a", "half_b"}
    assert {"hscore", "logme", "leep", "sfda", "ncti.separability", "knn", "linear_probe"} <= {r["metric"] for r in rows}
    # a second run scores nothing again
    before = (out / "zoo_scores.csv").read_text()
    assert zq.main(args) == 0
    assert (out / "zoo_scores.csv").read_text() == before
    # a ground truth in which the real CIFAR ResNet is best and the random net worst
    with (out / "zoo_groundtruth.csv").open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["target", "candidate", "linear_probe_acc", "finetune_acc_mean"])
        for c, acc in [("simplecnn_cifar10", 0.5), ("resnet20_cifar10", 0.8), ("lenet5_mnist", 0.3),
                       ("random_resnet20", 0.2)]:
            w.writerow(["cifar10", c, acc, acc])
    assert zq.main(args + ["--report-only"]) == 0
    res = json.loads((out / "zoo_quality.json").read_text())
    summary = res["gt"]["finetune"]["summary"]
    assert {"source_acc", "params", "knn", "linear_probe", "random", "hscore", "ncti", "etran"} <= set(summary)
    # kNN on real features must put the trained CIFAR ResNet above the random net: τ_w > 0
    assert summary["knn"]["per_target"]["cifar10"]["weighted_tau"] > 0
    assert "| **source_acc** |" in (out / "zoo_quality.md").read_text()

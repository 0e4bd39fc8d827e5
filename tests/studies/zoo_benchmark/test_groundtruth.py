"""Ground-truth protocol: the linear probe and the --quick smoke run (the fixed target splits: tests/data/test_targets.py)."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from tguide.stats import mean_ci
from tguide.studies.zoo_benchmark.groundtruth import linear_probe

REPO = Path(__file__).resolve().parents[3]


def test_linear_probe_separable_features_reach_100_percent():
    g = torch.Generator().manual_seed(0)
    k, d = 5, 16
    centres = torch.randn(k, d, generator=g) * 10

    def draw(n):
        y = torch.arange(k).repeat_interleave(n)
        return centres[y] + 0.1 * torch.randn(len(y), d, generator=g), y

    res = linear_probe(draw(20), draw(10), draw(30), k)
    assert res.test_acc == 1.0 and res.val_acc == 1.0
    assert set(res.val_by_l2) == {1e-4, 1e-3, 1e-2, 1e-1}


def test_seed_interval_is_the_student_t_95_percent_half_width():
    # the ground truth's interval over seeds: t_{0.975, 2} = 4.302652729911275 (statistical tables)
    mean, ci = mean_ci([0.5, 0.6, 0.7])
    assert mean == pytest.approx(0.6)
    assert ci == pytest.approx(4.302652729911275 * 0.1 / 3 ** 0.5)
    assert math.isnan(mean_ci([0.5])[1])


def test_quick_smoke_writes_csv(tmp_path, data_root):
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TGUIDE_DATA": str(data_root),
           "TGUIDE_MODELS": os.environ.get("TGUIDE_MODELS", str(REPO.parent / "shared" / "models"))}
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-m", "tguide.studies.zoo_benchmark", "groundtruth", "--quick", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert time.perf_counter() - t0 < 60
    with open(tmp_path / "zoo_groundtruth.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    cols = ["target", "candidate", "linear_probe_acc", "finetune_acc_mean", "finetune_acc_ci95", "finetune_lr",
            "seeds", "n_train", "n_test", "input_size", "epochs"]
    assert list(rows[0])[:len(cols)] == cols
    assert {r["candidate"] for r in rows} == {"simplecnn_cifar10", "random_resnet20"}
    for r in rows:
        assert r["target"] == "cifar10" and r["seeds"] == "0;1"
        assert 0.0 <= float(r["linear_probe_acc"]) <= 1.0 and 0.0 <= float(r["finetune_acc_mean"]) <= 1.0
    assert (tmp_path / "zoo_groundtruth.md").is_file()
    runs = (tmp_path / "zoo_groundtruth_runs.jsonl").read_text().splitlines()
    assert len(runs) == 2 + 4 + 2  # probes, seed-0 lr grid, seed 1 at the chosen lr
    # resumable: a second call finds every run done and only rewrites the report
    proc = subprocess.run([sys.executable, "-m", "tguide.studies.zoo_benchmark", "groundtruth", "--quick", "--out", str(tmp_path)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0
    assert len((tmp_path / "zoo_groundtruth_runs.jsonl").read_text().splitlines()) == len(runs)

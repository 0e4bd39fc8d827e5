"""Ground-truth protocol: fixed target splits, the linear probe, and the --quick smoke run."""

from __future__ import annotations

import csv
import math
import os
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest
import torch

from tguide.stats import mean_ci
from tguide.studies.zoo_benchmark.groundtruth import linear_probe
from tguide.select.targets import PER_CLASS, TARGETS, load_target, stratified_split

REPO = Path(__file__).resolve().parents[3]


def _keys(split, part):
    # paths identify file items; USPS items are PIL images: identify them by their pixels
    return [it if isinstance(it, str) else (it.tobytes(), part if part == "test" else "trainfile")
            for it, _ in split.split(part)]


@pytest.mark.parametrize("name", TARGETS)
def test_target_split_disjoint_stratified_deterministic(data_root, name):
    a = load_target(name, data_root)
    b = load_target(name, data_root)
    for part in ("train", "val", "test"):
        ka, kb = _keys(a, part), _keys(b, part)
        assert ka == kb, f"{name} {part} is not deterministic"
        assert [y for _, y in a.split(part)] == [y for _, y in b.split(part)]
    if name != "usps":  # file paths: the three parts share no file
        sets = [set(_keys(a, p)) for p in ("train", "val", "test")]
        assert all(len(s) == n for s, n in zip(sets, a.sizes.values())), "duplicate item inside a part"
        assert not (sets[0] & sets[1]) and not (sets[0] & sets[2]) and not (sets[1] & sets[2])
    # stratified: every class in every part, with the documented per-class counts
    for part in ("train", "val", "test"):
        counts = Counter(y for _, y in a.split(part))
        assert sorted(counts) == list(range(a.num_classes)), f"{name} {part} misses a class"
        if name in PER_CLASS:
            want = PER_CLASS[name][("train", "val", "test").index(part)]
            assert set(counts.values()) == {want}
    if name.startswith("office31"):
        total = Counter(y for p in ("train", "val", "test") for _, y in a.split(p))
        tr = Counter(y for _, y in a.train)
        assert all(abs(tr[c] - 0.5 * total[c]) <= 0.5 for c in total)
        assert abs(len(a.train) / sum(total.values()) - 0.5) < 0.02


def test_usps_train_val_disjoint_indices():
    labels = [i % 10 for i in range(500)]
    tr, va, te = stratified_split(labels, (20, 10, 0), seed=0)
    assert not set(tr) & set(va) and te == []
    assert stratified_split(labels, (20, 10, 0), seed=0) == (tr, va, te)
    assert stratified_split(labels, (20, 10, 0), seed=1) != (tr, va, te)


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

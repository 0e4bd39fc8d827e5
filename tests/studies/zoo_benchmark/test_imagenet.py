"""The ImageNet-only pool, the pre-registered estimators and the decision rule of the zoo benchmark."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from tguide.errors import TGuideError
from tguide.select.zoo import ZOO
from tguide.studies.zoo_benchmark.imagenet import CONTROL, imagenet_names, imagenet_pool, param_count, source_prior
from tguide.studies.zoo_benchmark.imagenet_run import choose_budget
from tguide.studies.zoo_benchmark.preregistered import decide, gbc_pca_rows, pca_project
from tguide.studies.zoo_benchmark.protocol import geometry_key


def test_pool_is_the_nine_imagenet_checkpoints_and_an_imagenet_random_control() -> None:
    members = imagenet_pool()
    names = [m.name for m in members]
    assert names[-1] == CONTROL and members[-1].spec == "zoo:mcunet_in3:random"
    assert set(names[:-1]) == {
        "efficientnet_lite0",
        "efficientnet_lite1",
        "efficientnet_lite2",
        "shufflenetv2_trunk",
        "mobilenetv1_x025",
        "mcunet_in2",
        "mcunet_in3",
        "proxyless_w025",
        "proxyless_w03",
    }
    assert len(imagenet_names()) == 9
    # one pixel geometry for all: 96 px, shorter side to 96 then a centre crop; own normalisation kept
    assert {geometry_key(m.entry) for m in members} == {"c3_s96_crop"}
    assert {m.entry.input.crop_pct for m in members} == {1.0}
    for m in members[:-1]:
        assert m.entry.input.mean == ZOO[m.name].input.mean and m.entry.input.std == ZOO[m.name].input.std
    assert members[-1].entry.source == "random"


def test_prior_is_reported_top1_with_the_shufflenet_and_control_conventions() -> None:
    by = {m.name: m for m in imagenet_pool()}
    assert source_prior(by["mcunet_in3"]) == pytest.approx(0.622)
    assert source_prior(by["mobilenetv1_x025"]) == pytest.approx(0.4658)
    assert source_prior(by["shufflenetv2_trunk"]) == pytest.approx(0.60)  # assumed: full ShuffleNetV2 0.5x
    assert source_prior(by[CONTROL]) == pytest.approx(0.001)  # chance on 1000 classes
    priors = [source_prior(m) for m in by.values() if m.name != CONTROL]
    assert min(priors) == pytest.approx(0.449) and max(priors) > 0.75
    assert param_count(by["mcunet_in3"]) == 737_408


def test_pool_rejects_a_non_imagenet_model() -> None:
    with pytest.raises(TGuideError, match="not ImageNet checkpoints"):
        imagenet_pool(["resnet20_cifar10"])


def test_pca_project_is_centred_orthogonal_and_keeps_distances_when_d_is_small() -> None:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(120, 300, generator=g, dtype=torch.float64) + 5.0
    z = pca_project(x)
    assert z.shape == (120, 64)
    assert torch.allclose(z.mean(0), torch.zeros(64, dtype=torch.float64), atol=1e-9)
    gram = z.T @ z
    assert torch.allclose(gram - torch.diag(torch.diag(gram)), torch.zeros_like(gram), atol=1e-7)
    var = torch.diag(gram)
    assert bool((var[:-1] >= var[1:] - 1e-9).all())  # sorted by explained variance
    small = torch.randn(50, 10, generator=g, dtype=torch.float64)
    zs = pca_project(small)
    assert zs.shape == (50, 10)
    d = "donot_use_mm_for_euclid_dist"
    assert torch.allclose(torch.cdist(zs, zs, compute_mode=d), torch.cdist(small, small, compute_mode=d), atol=1e-9)
    assert pca_project(torch.randn(20, 300, generator=g)).shape == (20, 19)  # at most N - 1
    with pytest.raises(ValueError, match="pca_project"):
        pca_project(torch.randn(5))


def test_gbc_pca64_does_not_underflow_where_full_width_gbc_does() -> None:
    g = torch.Generator().manual_seed(1)
    y = torch.arange(4).repeat_interleave(30)
    mu = torch.randn(4, 1280, generator=g, dtype=torch.float64) * 3
    x = mu[y] + torch.randn(120, 1280, generator=g, dtype=torch.float64)
    rows = gbc_pca_rows(x, y)
    assert [r[0] for r in rows] == ["full", "half_a", "half_b"] and {r[1] for r in rows} == {"gbc_pca64"}
    # 4 well-separated classes: GBC (minus the summed Bhattacharyya coefficients) is ~0 both ways, but
    # overlapping classes on PCA features must score lower than separated ones
    x_close = mu[y] * 0.02 + torch.randn(120, 1280, generator=g, dtype=torch.float64)
    close = gbc_pca_rows(x_close, y)[0][2]
    assert close < rows[0][2] <= 0.0


def test_decide_is_the_stratified_paired_bootstrap() -> None:
    a = {"t1": ([0.5] * 50, [0.3] * 50), "t2": ([0.4] * 50, [0.3] * 50)}
    r = decide(a)
    assert r["diff"] == pytest.approx(0.15) and r["low"] == pytest.approx(0.15) and r["beats_knn"]
    rng = np.random.default_rng(0)
    noise = {t: (list(rng.normal(0, 0.2, 200)), [0.0] * 200) for t in ("t1", "t2", "t3")}
    r2 = decide(noise)
    assert r2["low"] < r2["diff"] < r2["high"] and not r2["beats_knn"]
    # the interval of a mean of 3 targets' means of 200 N(0, 0.2): ~ ±1.96 · 0.2 / sqrt(600)
    assert r2["high"] - r2["low"] == pytest.approx(2 * 1.96 * 0.2 / np.sqrt(600), rel=0.2)


def test_choose_budget_takes_the_smallest_budget_within_015_of_every_probe() -> None:
    runs = [
        {"kind": "probe", "target": "t", "candidate": "a", "val_acc": 0.8},
        {"kind": "probe", "target": "t", "candidate": "b", "val_acc": 0.6},
    ]
    for ep, va, vb in [(4, 0.50, 0.55), (12, 0.70, 0.40), (24, 0.70, 0.50)]:
        runs.append({"kind": "budget", "target": "t", "candidate": "a", "epochs": ep, "val_acc": va})
        runs.append({"kind": "budget", "target": "t", "candidate": "b", "epochs": ep, "val_acc": vb})
    assert choose_budget(runs, (4, 12, 24), ("t",), ("a", "b")) == 24
    runs[5]["val_acc"] = 0.46  # b at 12 epochs now within 0.15 of its probe: 12 is the smallest that qualifies
    assert choose_budget(runs, (4, 12, 24), ("t",), ("a", "b")) == 12
    runs[4]["val_acc"] = runs[6]["val_acc"] = 0.5  # a never within 0.15: no budget qualifies -> the largest
    assert choose_budget(runs, (4, 12, 24), ("t",), ("a", "b")) == 24
    assert choose_budget(runs[2:], (4, 12, 24), ("t",), ("a", "b")) == 24  # no probe: cannot qualify


def test_quick_run_of_the_imagenet_pool(tmp_path: Path, data_root: Path) -> None:
    from tguide.studies.zoo_benchmark.imagenet_run import main

    out = tmp_path / "inq"
    args = ["--quick", "--out", str(out), "--data-root", str(data_root)]
    assert main(args) == 0
    runs = [json.loads(line) for line in (out / "imagenet_groundtruth_runs.jsonl").read_text().splitlines()]
    probes = {r["candidate"] for r in runs if r["kind"] == "probe"}
    assert probes == {"mobilenetv1_x025", "proxyless_w025", CONTROL}
    assert {r["epochs"] for r in runs if r["kind"] == "budget"} == {1, 2}
    rows = list(csv.DictReader((out / "imagenet_scores.csv").open()))
    assert {r["candidate"] for r in rows} == probes
    metrics = {r["metric"] for r in rows}
    assert {"logme", "knn", "gbc_pca64", "leep", "sfda", "ncti.separability"} <= metrics
    gt = list(csv.DictReader((out / "imagenet_groundtruth.csv").open()))
    assert {r["candidate"] for r in gt} == probes
    assert all(0.0 <= float(r["linear_probe_acc"]) <= 1.0 for r in gt)
    # resumable: a second run adds no run
    n = len(runs)
    assert main(args) == 0
    assert len((out / "imagenet_groundtruth_runs.jsonl").read_text().splitlines()) == n


def _synthetic(n_targets: int = 3, n: int = 7) -> tuple[dict, dict]:
    from collections import defaultdict

    table: dict = defaultdict(lambda: defaultdict(dict))
    truth: dict = {}
    rng = np.random.default_rng(0)
    for t in range(n_targets):
        acc = {f"c{i}": float(v) for i, v in enumerate(rng.uniform(0.2, 0.9, n))}
        truth[f"t{t}"] = acc
        for c, a in acc.items():
            table[(f"t{t}", "full")]["sfda"][c] = a  # perfect
            table[(f"t{t}", "full")]["logme"][c] = -a  # reversed
            table[(f"t{t}", "full")]["knn"][c] = a + rng.normal(0, 0.3)
            table[(f"t{t}", "full")]["hscore"][c] = 9.0 if c in ("c0", "c1") else a  # saturated C - 1 for c0, c1
            table[(f"t{t}", "full")]["extract"][c] = 1280.0 if c in ("c0", "c1") else 64.0
    return table, truth


def test_evaluate_claims_and_saturation_on_a_synthetic_pool() -> None:
    from tguide.studies.zoo_benchmark.imagenet_quality import evaluate, paired, saturation
    from tguide.studies.zoo_benchmark.imagenet_tables import claims, default_selector

    table, truth = _synthetic()
    priors = {c: 0.5 for c in truth["t0"]}
    ev = evaluate(table, truth, priors, priors, ("sfda", "logme", "knn", "hscore"), n_pools=30)
    s = ev["summary"]
    assert s["sfda"]["mean_tau_w"] == pytest.approx(1.0) and s["sfda"]["regret"] == 0.0
    assert s["sfda"]["top1"] == 1.0 and s["sfda"]["subpool_tau_w"][1] == pytest.approx(1.0)
    assert s["logme"]["mean_tau_w"] == pytest.approx(-1.0)
    worst = np.mean([max(v.values()) - min(v.values()) for v in truth.values()])
    assert s["logme"]["regret"] == pytest.approx(worst)  # picks the worst candidate every time
    d = paired(ev, "sfda", "logme")
    assert d["diff"] == pytest.approx(2.0) and d["beats_knn"]
    shao = next(c for c in claims(ev) if c["source"].startswith("Shao"))
    assert shao["overall"] == "cannot be tested here"  # NLEEP and LEEP missing
    assert [p["verdict"] for p in shao["pairs"]] == ["cannot be tested"] * 3
    sat = saturation(table, {t: 200 for t in truth}, metrics=("hscore", "sfda"))
    assert sat["wide"]["t0"] == ["c0", "c1"]
    assert sat["tied"] == {"hscore": {t: ["c0", "c1"] for t in truth}}
    ds = default_selector(ev)
    assert ds["chosen"] == "knn" and ds["means"]["logme"] == pytest.approx(-1.0)
    assert set(ds["loto"]) == set(truth)


def test_geometry_key_tells_centre_crops_apart() -> None:
    """Two crops of one size read different pixels, so they must not share a cache file."""
    import dataclasses

    entry = ZOO["efficientnet_lite0"]
    crop = dataclasses.replace(entry.input, size=96, resize="crop")
    keys = {geometry_key(dataclasses.replace(entry, input=dataclasses.replace(crop, crop_pct=p)))
            for p in (1.0, 0.875, 0.75)}
    assert len(keys) == 3 and "c3_s96_crop" in keys and "c3_s96_crop_p0.875" in keys

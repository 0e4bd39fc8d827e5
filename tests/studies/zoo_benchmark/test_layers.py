"""Per-layer ground truth (layers.py), its tables (layer_analysis.py) and the pre-registered default selector."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import torch

from tguide.studies.zoo_benchmark import default_selector as ds
from tguide.studies.zoo_benchmark import layer_analysis as la
from tguide.studies.zoo_benchmark.layers import PCA_SCORES, SCORES, pca_project, read_rows, run

REPO = Path(__file__).resolve().parents[3]


def test_smoke_one_candidate_one_target_is_resumable(tmp_path, data_root):
    out = tmp_path / "rows.jsonl"
    rows = run(
        out,
        candidates=["simplecnn_cifar10"],
        targets=["cifar10"],
        data_root=str(data_root),
        per_class=(4, 2, 2),
        cache=None,
        log=lambda m: None,
    )
    from tguide.select.zoo import ZOO

    layers = list(ZOO["simplecnn_cifar10"].layers)
    assert [r["layer"] for r in rows] == ["@output", *layers]  # the head row, then every auto layer in order
    for r in rows[1:]:
        assert r["n_train"] == 40 and 0.0 <= r["probe_test_acc"] <= 1.0
        for s in SCORES:
            assert s in r and s + "_s" in r
        for s in PCA_SCORES:
            assert f"pca64_{s}" in r
    assert set(rows[0]) >= {"leep", "nce"} and rows[0]["dim"] == 10
    # resumable: nothing is redone
    before = out.read_text()
    run(
        out,
        candidates=["simplecnn_cifar10"],
        targets=["cifar10"],
        data_root=str(data_root),
        per_class=(4, 2, 2),
        cache=None,
        log=lambda m: None,
    )
    assert out.read_text() == before
    # a line cut by a kill is skipped (its row is redone)
    out.write_text(before + '{"target": "cif')
    assert len(read_rows(out)) == len(rows)


def test_pca_projection_keeps_the_leading_variance_and_caps_the_width():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(100, 5, generator=g) @ torch.diag(torch.tensor([10.0, 5.0, 1.0, 0.1, 0.01]))
    x = torch.cat([x, torch.zeros(100, 95)], 1)
    z = pca_project(x, k=2)
    assert z.shape == (100, 2)
    total = (x.double() - x.double().mean(0)).pow(2).sum()
    assert float(z.pow(2).sum() / total) > 0.99  # two leading directions hold ~all variance
    assert pca_project(x[:, :3], k=64).shape == (100, 3)  # narrower than k: only centred


def _rows():
    # target a: candidate A best at l1 (0.9 vs penultimate 0.7); candidate B best at its penultimate
    # score "good" tracks the probe; score "wide" grows with dim (always picks the widest layer)
    rows = []
    for t in ("a", "b"):
        for cand, accs in (("A", [0.9, 0.7]), ("B", [0.5, 0.6])):
            for layer, acc, dim in zip(("l1", "pen"), accs, (16, 64)):
                rows.append(
                    {
                        "zoo": "z",
                        "target": t,
                        "candidate": cand,
                        "layer": layer,
                        "dim": dim,
                        "probe_test_acc": acc,
                        "knn": acc + 0.01,
                        "logme": float(dim),
                    }
                )
    return rows


def test_layer_rules_hit_rate_and_regrets_by_hand():
    res = la.summary(_rows(), ["penultimate", "knn", "logme"])
    r = res["rules"]
    assert r["knn"]["hit_rate"][0] == 1.0 and r["knn"]["layer_regret"][0] == 0.0
    assert r["knn"]["global_regret"][0] == 0.0
    # the penultimate misses A's best layer in both targets: regret (0.2 + 0) / 2
    assert r["penultimate"]["hit_rate"][0] == 0.5 and r["penultimate"]["layer_regret"][0] == pytest.approx(0.1)
    # "logme" here favours the widest layer = the penultimate: same layer regret; its global pick is
    # (A|B, pen) by first-max = A/pen 0.7 vs the best 0.9
    assert r["logme"]["layer_regret"][0] == pytest.approx(0.1)
    assert r["logme"]["global_regret"][0] == pytest.approx(0.2)
    # kNN on penultimate layers only picks A/pen (0.71 > 0.61): 0.7 against the best of every layer, 0.9
    assert r["knn"]["global_regret_penultimate_only"][0] == pytest.approx(0.2)
    assert res["cells"][("a", "A")]["best_layer"] == "l1"


def test_report_writes_csv_and_tables_round_trip(tmp_path):
    rows = _rows()
    text = la.write_report(rows, tmp_path)
    assert "picks the best layer" in text
    back = la.read_csv(tmp_path / "zoo_layers.csv")
    assert len(back) == len(rows) and back[0]["probe_test_acc"] == pytest.approx(0.9)
    assert la.summary(back, ["knn"])["rules"]["knn"]["hit_rate"][0] == 1.0


def test_cli_report_only_from_jsonl(tmp_path):
    from tguide.studies.zoo_benchmark.__main__ import main

    src = tmp_path / "rows.jsonl"
    src.write_text("\n".join(json.dumps(r) for r in _rows()) + "\n")
    assert main(["layers", "--out", str(src), "--report-only", "--results", str(tmp_path / "res")]) == 0
    with open(tmp_path / "res" / "zoo_layers.csv", newline="") as fh:
        assert len(list(csv.DictReader(fh))) == 8


def test_rule_picks_the_simplest_within_the_tie_margin():
    assert ds.choose({"knn": 0.60, "logme": 0.605, "logme+knn": 0.58}) == "knn"  # within 0.01: simplest
    assert ds.choose({"knn": 0.60, "logme": 0.62, "logme+knn": 0.615}) == "logme"
    assert ds.choose({"knn": 0.50, "logme": 0.55, "logme+knn": 0.70}) == "logme+knn"
    with pytest.raises(ValueError):
        ds.choose({"knn": float("nan")})


def test_regret_and_leave_one_target_out_by_hand():
    assert ds.regret({"a": 1.0, "b": 2.0}, {"a": 0.9, "b": 0.7}) == pytest.approx(0.2)
    per = {
        "knn": {
            "t1": {"tau_w": 0.9, "regret": 0.0},
            "t2": {"tau_w": 0.1, "regret": 0.3},
            "t3": {"tau_w": 0.5, "regret": 0.1},
        },
        "logme": {
            "t1": {"tau_w": 0.2, "regret": 0.2},
            "t2": {"tau_w": 0.8, "regret": 0.0},
            "t3": {"tau_w": 0.6, "regret": 0.0},
        },
    }
    fig = ds.leave_one_target_out_figure(per)
    # held-out t1: means on t2,t3 knn 0.3, logme 0.7 -> logme; t2: knn 0.7, logme 0.4 -> knn; t3: 0.5 vs 0.5 -> knn
    assert {t: v["chosen"] for t, v in fig["per_target"].items()} == {"t1": "logme", "t2": "knn", "t3": "knn"}
    assert fig["tau_w"][0] == pytest.approx((0.2 + 0.1 + 0.5) / 3)
    assert fig["regret"][0] == pytest.approx((0.2 + 0.3 + 0.1) / 3)


def test_default_selector_on_the_shipped_files_matches_rank_default():
    res = ds.evaluate(REPO / "bench/results/zoo_scores.csv", REPO / "bench/results/zoo_groundtruth.csv", n_pools=20)
    from tguide.select.rank import DEFAULT_METRICS

    assert DEFAULT_METRICS[0] == res["linear_probe"]["choice"]
    assert set(res["linear_probe"]["loto"]["per_target"]) == {
        "cifar10",
        "office31_webcam",
        "office31_amazon",
        "mnist_m",
        "usps",
    }
    with open(REPO / "bench/results/zoo_groundtruth.csv", newline="") as fh:
        gt = {(r["target"], r["candidate"]): r for r in csv.DictReader(fh)}
    for cell in res["finetune"]["excluded"]:  # only under-trained fine-tunes are left out
        assert float(gt[cell]["finetune_acc_mean"]) < float(gt[cell]["linear_probe_acc"]) - 0.15

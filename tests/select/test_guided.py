"""The guided runner: which fine-tunes it chooses, its table, and a smoke run with two candidates."""

import csv
import math
import os
from pathlib import Path

import pytest
import torch

from tguide.errors import TGuideError
from tguide.fit import compose, run
from tguide.select.guided_recipe import choose, guided_table

REPO = Path(__file__).resolve().parents[2]


SPECS = {"a": "zoo:a", "b": "zoo:b", "c": "zoo:c"}
DEFAULT = {"a": "fa", "b": "fb", "c": "fc"}
TABLE = [
    {"candidate": "a", "layer": "a1", "metric": "logme", "kind": "score", "score": 0.2},
    {"candidate": "a", "layer": "fa", "metric": "logme", "kind": "score", "score": 0.9},
    {"candidate": "b", "layer": "b1", "metric": "logme", "kind": "score", "score": 0.5},
    {"candidate": "b", "layer": "fb", "metric": "logme", "kind": "score", "score": 0.4},
    {"candidate": "c", "layer": "c1", "metric": "logme", "kind": "score", "score": math.nan},
    {"candidate": "c", "layer": "fc", "metric": "logme", "kind": "score", "score": 0.1},
    {"candidate": "a", "layer": "@output", "metric": "leep", "kind": "score", "score": -1.0},
    {"candidate": "b", "layer": "@output", "metric": "leep", "kind": "score", "score": -0.5},
    {"candidate": "a", "layer": "", "metric": "source_accuracy", "kind": "baseline", "score": 0.7},
    {"candidate": "b", "layer": "", "metric": "source_accuracy", "kind": "baseline", "score": 0.6},
    {"candidate": "c", "layer": "", "metric": "source_accuracy", "kind": "baseline", "score": 0.95},
]


def test_choose_top_k_distinct_candidates_and_baselines():
    picks = choose(TABLE, SPECS, DEFAULT, "logme", top_k=2, baselines=["source_accuracy", "median"])
    got = {(p["candidate"], p["layer"]): p["chosen_by"] for p in picks}
    assert got == {("a", "fa"): ["metric:logme#1"], ("b", "b1"): ["metric:logme#2", "baseline:median"],
                   ("c", "fc"): ["baseline:source_accuracy"]}
    ranks = {(p["candidate"], p["layer"]): (p["rank"], p["score"]) for p in picks}
    assert ranks[("a", "fa")] == (1, 0.9) and ranks[("b", "b1")] == (2, 0.5) and ranks[("c", "fc")] == (5, 0.1)
    # a pick chosen twice is fine-tuned once; head scores (@output) map to the default layer
    picks = choose(TABLE, SPECS, DEFAULT, "leep", top_k=1, baselines=["random"], seed=3)
    assert picks[0]["candidate"] == "b" and picks[0]["layer"] == "fb" and picks[0]["spec"] == "zoo:b"
    assert sum(len(p["chosen_by"]) for p in picks) == 2
    with pytest.raises(TGuideError, match="unknown guided.baselines"):
        choose(TABLE, SPECS, DEFAULT, "logme", baselines=["oracle"])
    with pytest.raises(TGuideError, match="no finite transrate"):
        choose(TABLE, SPECS, DEFAULT, "transrate")


def test_table_and_rank_agreement_against_scipy():
    from scipy import stats

    picks = [dict(candidate=c, spec=f"zoo:{c}", layer="l", metric="logme", score=s, rank=i + 1, chosen_by=["x"],
                  results=[{"seed": 0, "run_dir": "r0", "test_acc": a0, "val_acc": 0.5},
                           {"seed": 1, "run_dir": "r1", "test_acc": a1, "val_acc": 0.5}])
             for i, (c, s, a0, a1) in enumerate([("a", 3.0, 0.9, 0.8), ("b", 2.0, 0.6, 0.7), ("c", 1.0, 0.65, 0.75),
                                                 ("d", 0.5, 0.2, 0.3)])]
    rows, agree = guided_table(picks, {"a": 0.9})
    assert rows[0]["test_acc"] == pytest.approx(0.85) and rows[0]["test_acc_per_seed"] == "0.9000;0.8000"
    assert rows[0]["source_accuracy"] == 0.9 and rows[1]["source_accuracy"] == ""
    x, y = [3.0, 2.0, 1.0, 0.5], [0.85, 0.65, 0.7, 0.25]
    assert agree["n"] == 4
    assert agree["spearman"] == pytest.approx(stats.spearmanr(x, y).statistic)
    assert agree["kendall"] == pytest.approx(stats.kendalltau(x, y).statistic)
    _, few = guided_table(picks[:2])
    assert few["n"] == 2 and math.isnan(few["spearman"])


@pytest.fixture
def tiny_cifar(tmp_path):
    from tests.conftest import _data_root

    src = _data_root() / "cifar10" / "test"
    for c in ("airplane", "cat", "ship"):
        files = sorted((src / c).glob("*.jpg"))[:20]
        for split, part in (("train", files[:10]), ("val", files[10:14]), ("test", files[14:20])):
            d = tmp_path / "data" / split / c
            d.mkdir(parents=True, exist_ok=True)
            for f in part:
                (d / f.name).symlink_to(f)
    return tmp_path / "data"


def test_guided_smoke_two_candidates_and_resume(tmp_path, tiny_cifar, monkeypatch):
    if not os.environ.get("TGUIDE_MODELS"):
        monkeypatch.setenv("TGUIDE_MODELS", str(REPO.parent / "shared" / "models"))
    out = tmp_path / "run"
    cfg = compose(["recipe=guided", f"data.root={tiny_cifar}",
                   "guided.candidates=[zoo:resnet20_cifar10,zoo:simplecnn_cifar10]",
                   "guided.top_k=1", "guided.baselines=[source_accuracy]", "guided.seeds=[0]", "guided.verbose=false",
                   "guided.cache_dir=none", "guided.device=cpu", "trainer.max_epochs=1", "trainer.accelerator=cpu",
                   "trainer.limit_train_batches=1", "trainer.enable_progress_bar=false", "data.batch_size=32",
                   "trainer.enable_model_summary=false", "logger=csv", "name=unit", f"paths.run_dir={out}"])
    res = run(cfg)
    rows = list(csv.DictReader((out / "guided.csv").open()))
    assert len(rows) == len(res["rows"]) >= 1
    chosen = ";".join(r["chosen_by"] for r in rows)
    assert "metric:logme#1" in chosen and "baseline:source_accuracy" in chosen
    by = {r["chosen_by"]: r for r in rows}
    src = next(r for k, r in by.items() if "baseline:source_accuracy" in k)
    assert src["candidate"] == "resnet20_cifar10" and src["layer"] == "avgpool"  # 0.81 vs 0.59 source accuracy
    for r in rows:
        assert 0.0 <= float(r["test_acc"]) <= 1.0 and r["rank"] and math.isfinite(float(r["predicted_score"]))
        assert (Path(r["run_dirs"]) / "metrics.json").is_file() and (Path(r["run_dirs"]) / "checkpoints").is_dir()
    md = (out / "guided.md").read_text()
    assert md.startswith("# Guided fine-tuning") and "| candidate | layer | predicted score |" in md
    assert (out / "guided.json").is_file() and (out / "report.html").is_file()
    # resumable: every fine-tune has its metrics.json, so a second run trains nothing
    import tguide.select.finetune

    def no_finetune(*_a, **_k):
        raise AssertionError("a finished fine-tune was run again")

    monkeypatch.setattr(tguide.select.finetune, "finetune", no_finetune)
    again = run(cfg)
    assert [r["test_acc"] for r in again["rows"]] == [r["test_acc"] for r in res["rows"]]


def _fake_ranking(probs):
    """A ranking of a, b, c by logme whose bootstrap gave ``probs`` (a scores highest)."""
    import pandas as pd

    from tguide.select.ranking_result import Pick, Ranking, with_confidence

    table = pd.DataFrame(TABLE)
    pick = with_confidence(Pick("a", "zoo:a", "fa", "logme", 0.9, "highest logme"), probs)
    src = Pick("c", "zoo:c", "", "source_accuracy", 0.95, "highest source accuracy")
    cands = {n: {"spec": SPECS[n], "layers": [DEFAULT[n]]} for n in SPECS}
    return Ranking(table, pick, {"source_accuracy": src}, [], {}, ["logme"], {}, cands, p_best={"logme": probs})


@pytest.mark.parametrize(
    "probs,expected",
    [
        ({"a": 0.55, "b": 0.41, "c": 0.04}, {("a", "fa"): "pick", ("b", "b1"): "contender"}),  # too close: both
        ({"a": 0.97, "b": 0.03, "c": 0.0}, {("a", "fa"): "pick"}),  # clear: one
    ],
)
def test_guided_fine_tunes_every_contender_and_the_baselines(monkeypatch, probs, expected):
    import tguide.select.finetune
    import tguide.select.rank
    from tguide.select.finetune import FineTuneResult
    from tguide.select.guided import guided

    seen = []
    monkeypatch.setattr(tguide.select.rank, "rank", lambda *a, **k: _fake_ranking(probs))

    def fake_finetune(spec, target, *, layer, epochs, seed, out_dir, **_):
        seen.append((spec, layer, seed))
        return FineTuneResult(spec, layer, 0.5, {"zoo:a": 0.8, "zoo:b": 0.7, "zoo:c": 0.6}[spec] + seed / 100, None)

    monkeypatch.setattr(tguide.select.finetune, "finetune", fake_finetune)
    res = guided(["zoo:a", "zoo:b", "zoo:c"], "somewhere", metric="logme", seeds=(0, 1), epochs=1)
    roles = {(r["candidate"], r["layer"]): r["role"] for r in res.rows}
    assert roles == {**expected, ("c", "fc"): "baseline:source_accuracy"}
    assert sorted(seen) == sorted((SPECS[c], layer, s) for c, layer in roles for s in (0, 1))
    for r in res.rows:
        assert set(r) == {"candidate", "spec", "layer", "metric", "predicted_score", "p_best", "rank", "test_acc",
                          "test_acc_std", "role"}
        assert r["p_best"] == probs[r["candidate"]] and r["test_acc_std"] == pytest.approx(math.sqrt(0.5) / 100)
    a = next(r for r in res.rows if r["candidate"] == "a")
    assert a["rank"] == 1 and a["predicted_score"] == 0.9 and a["test_acc"] == pytest.approx(0.805)
    assert res.agreement["n"] == len(res.rows)

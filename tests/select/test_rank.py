"""rank(): real zoo candidates on a small CIFAR-10 folder, NaN rows for inapplicable metrics,
a killed ranking resuming from its cache, and the recipe's one-line errors (exit 2)."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pandas as pd
import pytest
import torch
from torch import nn

from tguide.select.candidates import Candidate, create_candidate, register_source
from tguide.select.candidates import base as candidates_base
from tguide.select.rank import RankError, rank
from tguide.select.ranking_result import COLUMNS, Pick, Ranking

REPO = Path(__file__).resolve().parents[2]
THREE = ["zoo:resnet20_cifar10", "zoo:simplecnn_cifar10", "zoo:resnet20_cifar10:random"]


@pytest.fixture(scope="module")
def cifar_folder(make_cifar_folder) -> Path:
    """A class-sorted CIFAR-10 image folder, 20 JPEGs per class (copied from the shared data)."""
    return make_cifar_folder(20)


def _best(df: pd.DataFrame, metric: str) -> pd.Series:
    return df[df.metric == metric].groupby("candidate").score.max()


def test_random_init_ranks_last(cifar_folder: Path, tmp_path: Path):
    ranking = rank(THREE, cifar_folder, metrics=["logme", "hscore_shrinkage", "leep"], cache_dir=tmp_path / "cache",
                   max_samples=None, progress=False)
    assert isinstance(ranking, Ranking)
    df = ranking.table
    assert list(df.columns) == COLUMNS == ["candidate", "layer", "metric", "kind", "score", "z", "null_mean",
                                           "null_std", "flag", "warning", "ci_low", "ci_high", "p_best"]
    for metric in ("logme", "hscore_shrinkage", "leep", "knn", "linear_probe"):
        best = _best(df, metric)
        assert best.idxmin() == "resnet20_cifar10:random", (metric, best.to_dict())
    pick = ranking.pick
    assert isinstance(pick, Pick) and pick.candidate == "resnet20_cifar10" and pick.metric == "logme"
    assert "highest logme" in pick.reason and pick.spec == "zoo:resnet20_cifar10"
    logme = df[df.metric == "logme"]
    assert pick.score == logme.score.max()
    assert logme[(logme.candidate == pick.candidate) & (logme.layer == pick.layer)].score.item() == pick.score
    assert set(ranking.baseline_picks) == {"source_accuracy", "knn", "linear_probe"}
    assert ranking.baseline_picks["source_accuracy"].candidate == "resnet20_cifar10"  # 0.81 vs 0.59, random unknown
    assert ranking.baseline_picks["knn"].candidate != "resnet20_cifar10:random"
    assert ranking.warnings[0] == "resnet20_cifar10:random / source_accuracy: source accuracy unknown"
    assert len(ranking.warnings) == 2 and ranking.warnings[1].startswith("linear_probe: no bootstrap interval")
    assert df[df.metric == "logme"].ci_low.notna().all() and ranking.p_best["logme"]  # the bootstrap is on by default
    assert set(df[df.metric == "leep"].layer) == {"@output"}
    assert ranking.target == {"name": str(cifar_folder.resolve()), "samples": 200, "classes": 10}
    assert ranking.timings["total"] >= ranking.timings["extract"] + ranking.timings["score"] > 0
    assert ranking.timings["extract"] == pytest.approx(sum(ranking.timings[f"extract/{c}"] for c in
                                                           ("resnet20_cifar10", "simplecnn_cifar10",
                                                            "resnet20_cifar10:random")))
    src = df[df.metric == "source_accuracy"].set_index("candidate").score
    assert src["resnet20_cifar10"] == pytest.approx(0.8103) and math.isnan(src["resnet20_cifar10:random"])
    # second run: everything from the cache, the same table
    again = rank(THREE, cifar_folder, metrics=["logme", "hscore_shrinkage", "leep"], cache_dir=tmp_path / "cache",
                 max_samples=None, progress=False)
    assert again.cache["misses"] == 0 and again.cache["hits"] > 0 and again.timings["extract"] == 0
    assert all(t["extract_s"] == 0 for t in again.candidate_timings().values())
    pd.testing.assert_frame_equal(df, again.table)
    assert again.pick == pick and again.baseline_picks == ranking.baseline_picks


def test_headless_candidates_get_nan_rows_or_an_error(cifar_folder: Path):
    torch.manual_seed(0)
    trunk = nn.Sequential(nn.Conv2d(3, 4, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    from torchvision import transforms as T

    headless = Candidate("trunk", trunk, T.ToTensor(), ["3"], head=False, provenance="test")
    df = rank([headless], cifar_folder, metrics=["hscore", "nce"], baselines=[], max_samples=40, progress=False).table
    nce = df[df.metric == "nce"].iloc[0]
    assert math.isnan(nce.score) and "needs a classifier head" in nce.warning
    hs = df[df.metric == "hscore"].iloc[0]
    assert math.isfinite(hs.score) and hs.warning == ""
    with pytest.raises(RankError, match=r"trunk has no classifier head, but every requested metric \(leep\)"):
        rank([headless], cifar_folder, metrics=["leep"], max_samples=40, progress=False)
    with pytest.raises(RankError, match=r"no module named 'layer9'.*Did you mean"):
        rank(["zoo:resnet20_cifar10"], cifar_folder, layers=["layer9"], progress=False)
    with pytest.raises(RankError, match=r"unknown metric 'logmee'"):
        rank(["zoo:resnet20_cifar10"], cifar_folder, metrics=["logmee"], progress=False)


def test_hscore_saturation_warning_and_null(cifar_folder: Path):
    ranking = rank(["zoo:simplecnn_cifar10"], cifar_folder, layers=["pool1", "relu4"], metrics=["hscore"],
                   baselines=[], max_samples=30, null=5, progress=False)
    assert ranking.null == 5 and "against the label-shuffle null" in ranking.pick.reason
    rows = ranking.table.set_index("layer")
    assert "H-score saturated" not in rows.loc["pool1"].warning  # D = 6 < N - 1
    assert math.isfinite(rows.loc["relu4"].z) and math.isfinite(rows.loc["relu4"].null_std)
    wide = rank(["zoo:simplecnn_cifar10"], cifar_folder, layers=["relu3"], metrics=["hscore"], baselines=[],
                max_samples=40, progress=False)
    assert "H-score saturated: D=120 ≥ N−1=39" in wide.table.iloc[0].warning
    assert wide.table.iloc[0].flag == "saturated" and wide.pick is None  # a saturated score never picks
    assert any(w.startswith("simplecnn_cifar10 / relu3 / hscore: H-score saturated") for w in wide.warnings)
    assert any(w.startswith("no pick: hscore cannot pick (every hscore row is flagged (1 saturated)") for w in
               wide.warnings)


def _trunk(name: str, seed: int, width: int, gain: float = 100.0) -> Candidate:
    """A headless random conv trunk whose pooled output has ``width`` features (``gain``: their scale; at the
    scale of real features SFDA's shrinkage is at its 1e-10 floor)."""
    from torchvision import transforms as T

    torch.manual_seed(seed)
    net = nn.Sequential(nn.Conv2d(3, width, 3), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten())
    with torch.no_grad():
        net[0].weight.mul_(gain)
        net[0].bias.mul_(gain)
    return Candidate(name, net, T.ToTensor(), ["3"], head=False, provenance="test")


def test_saturated_scores_are_flagged_not_picked_and_their_ties_reported(cifar_folder: Path):
    """N = 40 images of 10 classes, D = 64 features: H-score = C − 1 and SFDA = 1 for every candidate."""
    pool = [_trunk("wide_a", 0, 64), _trunk("wide_b", 1, 64)]
    ranking = rank(pool, cifar_folder, metrics=["sfda", "hscore", "logme"], baselines=[], max_samples=40,
                   progress=False)
    df = ranking.table
    hs, sf = df[df.metric == "hscore"], df[df.metric == "sfda"]
    assert list(hs.flag) == ["saturated"] * 2 and list(sf.flag) == ["saturated"] * 2
    assert hs.score.tolist() == pytest.approx([9.0, 9.0])  # C − 1 for both: the score says nothing
    assert all("D=64 ≥ N−1=39" in w and "tie: 2 rows score 9" in w for w in hs.warning)
    assert all("SFDA saturated: D=64 > N−C=30" in w for w in sf.warning)
    assert (sf.score > 0.999).all()
    pick = ranking.pick
    assert pick is not None and pick.metric == "logme"  # falls to the next metric
    assert "sfda cannot pick (every sfda row is flagged (2 saturated): SFDA saturated: D=64 > N−C=30" in pick.reason
    assert "hscore cannot pick" in pick.reason and pick.reason.endswith(
        f"so logme picks: highest logme ({pick.score:.4g}) on layer 3; next best candidate "
        f"{({'wide_a', 'wide_b'} - {pick.candidate}).pop()} scores "
        f"{df[(df.metric == 'logme') & (df.candidate != pick.candidate)].score.item():.4g}")


def test_ties_are_reported_not_broken_by_order(cifar_folder: Path):
    pool = [_trunk("twin_a", 3, 4), _trunk("twin_b", 3, 4)]  # the same weights: equal features, equal scores
    ranking = rank(pool, cifar_folder, metrics=["logme"], baselines=[], max_samples=40, progress=False)
    df = ranking.table
    assert list(df.flag) == ["tie", "tie"] and ranking.pick is None
    assert all("tie: 2 rows score" in w and "twin_a @ 3, twin_b @ 3" in w for w in df.warning)
    assert any(w.startswith("no pick: logme cannot pick (tie: 2 rows score") and "not broken by candidate order" in w
               for w in ranking.warnings)


def test_flagged_rows_stay_out_of_pool_normalisation_and_widths_flag_transrate(cifar_folder: Path):
    pool = [_trunk("wide", 0, 64), _trunk("narrow_a", 1, 3), _trunk("narrow_b", 2, 5)]
    ranking = rank(pool, cifar_folder, metrics=["etran", "transrate", "transrate_comparable"], baselines=[],
                   max_samples=40, progress=False)
    df = ranking.table.set_index(["metric", "candidate"])
    wide = df.loc[("etran", "wide")]
    assert wide.flag == "saturated" and math.isnan(wide.score)
    assert "ETran (LDA term) saturated" in wide.warning and "left out of the pool normalisation" in wide.warning
    narrow = [df.loc[("etran", n)] for n in ("narrow_a", "narrow_b")]
    assert all(r.flag == "" and "pool-normalised over 2 candidate×layer rows" in r.warning for r in narrow)
    assert sorted(r.score for r in narrow)[0] == 0.0  # min-max over the two eligible rows only
    tr = [df.loc[("transrate", n)] for n in ("wide", "narrow_a", "narrow_b")]
    assert all(r.flag == "not_comparable" and "D = 3, 5, 64" in r.warning and "transrate_comparable" in r.warning
               for r in tr)
    assert set(df.loc["transrate_comparable"].flag) == {""}
    assert ranking.pick is not None and ranking.pick.metric == "etran" and ranking.pick.candidate != "wide"


_KILL_SCRIPT = textwrap.dedent("""
    import sys
    from tguide.select.rank import rank
    rank(sys.argv[1].split(","), sys.argv[2], metrics=["logme"], baselines=[], cache_dir=sys.argv[3],
         max_samples=None, progress=False)
""")


def test_killed_ranking_resumes_from_its_cache(cifar_folder: Path, tmp_path: Path):
    cands = ["zoo:resnet20_cifar10", "zoo:simplecnn_cifar10", "zoo:resnet32_cifar10", "zoo:resnet20_cifar10:random"]
    cache = tmp_path / "cache"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT, ",".join(cands), str(cifar_folder), str(cache)],
                            env=env, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None and not list(cache.rglob("*.pt")):
        time.sleep(0.02)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()[-2000:]
    done = list(cache.rglob("*.pt"))
    assert 0 < len(done) < 4 * len(cands)  # killed part-way
    assert not list(cache.rglob("*.tmp")) or all(p.stat().st_size >= 0 for p in cache.rglob("*.tmp"))
    resumed = rank(cands, cifar_folder, metrics=["logme"], baselines=[], cache_dir=cache, max_samples=None,
                   progress=False)
    assert resumed.cache["hits"] >= len(done) and resumed.cache["misses"] > 0
    fresh = rank(cands, cifar_folder, metrics=["logme"], baselines=[], cache_dir=None, max_samples=None,
                 progress=False)
    pd.testing.assert_frame_equal(resumed.table, fresh.table, check_exact=False, rtol=1e-6)
    assert resumed.pick.candidate == fresh.pick.candidate and resumed.pick.layer == fresh.pick.layer


def test_a_registered_source_ranks_end_to_end(cifar_folder: Path, monkeypatch):
    """A custom kind, registered once, is a spec rank() accepts; its pick names the spec that makes it again."""
    monkeypatch.setattr(candidates_base, "_SOURCES", dict(candidates_base._SOURCES))
    from torchvision import transforms as T

    def tiny(rest: str) -> Candidate:
        width = int(rest)
        torch.manual_seed(width)
        net = nn.Sequential(nn.Conv2d(3, width, 3, stride=2), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                            nn.Linear(width, 10))
        return Candidate(f"tiny{width}", net, T.Compose([T.Resize((16, 16)), T.ToTensor()]), ["3"], True, "test source")

    register_source("tiny", tiny, usage="tiny:WIDTH")
    ranking = rank(["tiny:4", "tiny:8", "zoo:resnet20_cifar10:random"], cifar_folder, metrics=["logme"],
                   baselines=["source_accuracy"], max_samples=40, progress=False)
    df = ranking.table
    assert list(dict.fromkeys(df.candidate)) == ["tiny4", "tiny8", "resnet20_cifar10:random"]
    assert set(df[df.candidate == "tiny8"].layer) == {"3", ""} and df[df.metric == "logme"].score.notna().all()
    assert ranking.candidates["tiny8"]["spec"] == "tiny:8"
    pick = ranking.pick
    assert pick is not None and pick.spec == {"tiny4": "tiny:4", "tiny8": "tiny:8",
                                              "resnet20_cifar10:random": "zoo:resnet20_cifar10:random"}[pick.candidate]
    assert create_candidate(pick.spec).name == pick.candidate  # the spec makes the pick again
    assert "source_accuracy" not in ranking.baseline_picks  # no candidate knows its source accuracy


def _cli(*overrides: str, out: Path) -> subprocess.CompletedProcess:
    full = {**os.environ, "OMP_NUM_THREADS": "1", "TGUIDE_OUTPUT": str(out), "WANDB_MODE": "offline"}
    return subprocess.run([sys.executable, "-m", "tguide.fit", "recipe=rank", "logger=none", *overrides], cwd=REPO,
                          env=full, capture_output=True, text=True, timeout=300)


def test_cli_unknown_candidate_is_one_line_and_exit_2(cifar_folder: Path, tmp_path: Path):
    res = _cli(f"rank.target={cifar_folder}", "rank.candidates=[zoo:resnet99_cifar10]", out=tmp_path)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.returncode == 2 and len(lines) == 1, res.stderr[-3000:]
    assert "unknown zoo model 'resnet99_cifar10'; valid names: resnet20_cifar10" in lines[0]
    assert not list(tmp_path.rglob("ranking.csv"))


def test_cli_bad_inputs_in_process(cifar_folder: Path, tmp_path: Path, monkeypatch, capfd):
    """The same entry point (tguide.fit.main) in this process: one stderr line, exit 2, no ranking.csv."""
    import re

    from tguide.fit import main

    one = tmp_path / "one"
    (one / "cat").mkdir(parents=True)
    shutil.copy(next((cifar_folder / "cat").glob("*.jpg")), one / "cat" / "a.jpg")
    broken = tmp_path / "broken"
    shutil.copytree(cifar_folder, broken)
    (broken / "dog" / "zz_broken.jpg").write_bytes(b"\xff\xd8 truncated")
    empty = tmp_path / "empty"
    empty.mkdir()
    bad_models = tmp_path / "models"
    (bad_models / "resnet_cifar10").mkdir(parents=True)
    (bad_models / "resnet_cifar10" / "resnet20-12fca82f.th").write_bytes(b"x")
    folder = f"rank.target={cifar_folder}"
    cases = {
        "layer typo": ((folder, "rank.candidates=[zoo:simplecnn_cifar10]", "rank.layers=[relu5]"), {},
                       r"no module named 'relu5'.*Did you mean"),
        "empty folder": (("data=image_folder", f"data.root={empty}", "rank.candidates=[zoo:simplecnn_cifar10]"), {},
                         r"no class sub-folders"),
        "one class": ((f"rank.target={one}", "rank.candidates=[zoo:simplecnn_cifar10]"), {}, r"one class only"),
        "unreadable": ((f"rank.target={broken}", "rank.candidates=[zoo:simplecnn_cifar10]", "rank.metrics=[logme]",
                        "rank.baselines=[]", "rank.cache_dir=none"), {}, r"cannot read image '.*zz_broken\.jpg'"),
        "wrong sha": ((folder, "rank.candidates=[zoo:resnet20_cifar10]"), {"TGUIDE_MODELS": str(bad_models)},
                      r"sha256 .* expected 12fca82f"),
        "needs head": ((folder, "rank.candidates=[zoo:shufflenetv2_trunk]", "rank.metrics=[leep]"), {},
                       r"no classifier head"),
        "unknown metric": ((folder, "rank.candidates=[zoo:simplecnn_cifar10]", "rank.metrics=[leap]"), {},
                           r"unknown metric 'leap'; valid names"),
    }
    for name, (args, env, pattern) in cases.items():
        out = tmp_path / "runs" / name.replace(" ", "_")
        with monkeypatch.context() as m:
            m.setenv("TGUIDE_OUTPUT", str(out))
            for key, value in env.items():
                m.setenv(key, value)
            capfd.readouterr()
            with pytest.raises(SystemExit) as exit_info:
                main(["recipe=rank", "logger=none", *args])
            err = capfd.readouterr().err
        lines = [line for line in err.splitlines() if line.strip()]
        assert exit_info.value.code == 2, (name, err[-3000:])
        assert len(lines) == 1 and re.search(pattern, lines[0]), (name, lines)
        assert not list(out.rglob("ranking.csv")), name


def test_cli_writes_the_reports(cifar_folder: Path, tmp_path: Path, monkeypatch, capfd):
    from tguide.fit import main

    monkeypatch.setenv("TGUIDE_OUTPUT", str(tmp_path))
    main(["recipe=rank", "logger=none", "data=image_folder", f"data.root={cifar_folder}", "rank.max_samples=60",
          "rank.candidates=[zoo:resnet20_cifar10,zoo:simplecnn_cifar10]", f"rank.cache_dir={tmp_path / 'cache'}"])
    run = next(tmp_path.rglob("ranking.csv")).parent
    assert {p.name for p in run.iterdir()} >= {"ranking.csv", "ranking.md", "report.html", "config.yaml"}
    table = pd.read_csv(run / "ranking.csv")
    assert list(table.columns[:6]) == ["candidate", "layer", "metric", "kind", "score", "z"]
    assert set(table.candidate) == {"resnet20_cifar10", "simplecnn_cifar10"}
    assert "Pick: resnet20_cifar10" in (run / "ranking.md").read_text()

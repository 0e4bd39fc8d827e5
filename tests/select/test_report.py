"""Reports: CSV/Markdown/HTML written atomically; the HTML page checked in a real headless chromium."""

from __future__ import annotations

import math
import re
import shutil
import subprocess
from pathlib import Path

import pandas as pd
import pytest

from tguide.select.ranking_result import COLUMNS, Pick, Ranking, best_pick
from tguide.select.report import baseline_sentences, render_html, write_reports


def _ranking() -> Ranking:
    rows = []
    for cand, base in (("alpha", 2.0), ("beta", 1.0), ("gamma", 0.5)):
        for i, layer in enumerate(("l1", "l2", "l3")):
            rows.append(dict(candidate=cand, layer=layer, metric="logme", kind="score", score=base + 0.1 * i,
                             z=5.0 + i, null_mean=0.1, null_std=0.05, warning=""))
            rows.append(dict(candidate=cand, layer=layer, metric="knn", kind="baseline",
                             score={"alpha": 0.5, "beta": 0.8, "gamma": 0.3}[cand], z=math.nan, null_mean=math.nan,
                             null_std=math.nan, warning=""))
        rows.append(dict(candidate=cand, layer="@output", metric="leep", kind="score",
                         score=math.nan if cand == "gamma" else -1.0, z=math.nan, null_mean=math.nan,
                         null_std=math.nan, warning="not applicable: leep needs a classifier head; gamma has none"
                         if cand == "gamma" else ""))
        rows.append(dict(candidate=cand, layer="", metric="source_accuracy", kind="baseline",
                         score={"alpha": 0.7, "beta": 0.9, "gamma": math.nan}[cand], z=math.nan, null_mean=math.nan,
                         null_std=math.nan, warning=""))
    df = pd.DataFrame(rows, columns=COLUMNS)
    names = ("alpha", "beta", "gamma")
    specs = {c: f"zoo:{c}" for c in names}
    timings = {**{f"extract/{c}": 1.0 for c in names}, **{f"score/{c}": 0.1 for c in names}}
    return Ranking(table=df, pick=best_pick(df, "logme", specs),
                   baseline_picks={b: best_pick(df, b, specs) for b in ("source_accuracy", "knn")}, warnings=[],
                   timings=timings, metrics=["logme", "leep"], null=10,
                   target={"name": "toy", "samples": 30, "classes": 3},
                   candidates={c: {"provenance": f"<{c}> & co", "num_params": 10} for c in names})


def test_files_and_baseline_sentences(tmp_path: Path):
    ranking = _ranking()
    df = ranking.table
    assert ranking.pick == Pick("alpha", "zoo:alpha", "l3", "logme", pytest.approx(2.2),
                                "highest logme (2.2) on layer l3; next best candidate beta scores 1.2; "
                                "z = 7.0 against the label-shuffle null")
    assert ranking.baseline_picks["knn"].candidate == "beta" and ranking.baseline_picks["source_accuracy"].score == 0.9
    assert ranking.candidate_timings() == {c: {"extract_s": 1.0, "score_s": 0.1} for c in ("alpha", "beta", "gamma")}
    assert repr(ranking) == "Ranking(target='toy', candidates=3, rows=24, pick=alpha @ l3 by logme, warnings=0)"
    sentences = baseline_sentences(ranking)
    assert any("knn would pick beta instead: logme's pick alpha loses to it on knn (0.5 vs 0.8)" in s for s in sentences)
    paths = write_reports(ranking, tmp_path)
    assert [p.name for p in paths] == ["ranking.csv", "ranking.md", "report.html"]
    table = pd.read_csv(tmp_path / "ranking.csv")
    assert list(table.columns[:5]) == ["candidate", "layer", "metric", "kind", "score"] and len(table) == len(df)
    md = (tmp_path / "ranking.md").read_text()
    assert "**Pick: alpha**" in md and "knn would pick beta" in md
    page = (tmp_path / "report.html").read_text()
    assert "&lt;alpha&gt; &amp; co" in page and "<script" not in page and "http" not in page.split("</head>")[0]
    assert len(re.findall(r'src="data:image/png;base64,', page)) == 2
    assert "<table id=\"timing\">" in page  # the cost table, from the timings
    assert not list(tmp_path.glob(".*.tmp"))
    assert ranking.write_report(tmp_path / "again") == {p.name: tmp_path / "again" / p.name for p in paths}
    assert (tmp_path / "again" / "ranking.md").read_text() == md == ranking.to_markdown()


def test_to_csv_reads_back_equal(tmp_path: Path):
    ranking = _ranking()
    path = ranking.to_csv(tmp_path / "sub" / "table.csv")
    assert path == tmp_path / "sub" / "table.csv" and not list(path.parent.glob(".*.tmp"))
    back = pd.read_csv(path, keep_default_na=False, na_values=[""])
    back["warning"] = back["warning"].fillna("")
    back["layer"] = back["layer"].fillna("")
    pd.testing.assert_frame_equal(back, ranking.table, check_dtype=False)
    assert list(back.columns) == COLUMNS


def test_pick_survives_copy_and_pickle():
    import copy
    import pickle

    ranking = _ranking()
    for clone in (copy.copy(ranking.pick), copy.deepcopy(ranking.pick), pickle.loads(pickle.dumps(ranking.pick))):
        assert clone == ranking.pick and isinstance(clone, Pick)
    again = pickle.loads(pickle.dumps(ranking))
    assert again.pick == ranking.pick and again.baseline_picks == ranking.baseline_picks
    pd.testing.assert_frame_equal(again.table, ranking.table)
    with pytest.raises(Exception):
        ranking.pick.score = 0.0  # type: ignore[misc]  # frozen
    # a copied or filtered table does not carry the pick: it lives on the Ranking
    assert not ranking.table.copy().attrs and not ranking.table[ranking.table.metric == "logme"].attrs


def test_failed_render_leaves_nothing(tmp_path: Path, monkeypatch):
    import tguide.select.report as report

    monkeypatch.setattr(report, "render_html", lambda *a, **k: (_ for _ in ()).throw(RuntimeError("boom")))
    with pytest.raises(RuntimeError):
        write_reports(_ranking(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install -y chromium; .ci/run does it)")
def test_report_in_headless_chromium(tmp_path: Path):
    write_reports(_ranking(), tmp_path)
    page = tmp_path / "report.html"
    cmd = [_chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--enable-logging=stderr", "--v=0",
           f"--user-data-dir={tmp_path / 'profile'}", "--dump-dom", page.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    dom = res.stdout
    console = [line for line in res.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line
               or "ERR_FILE_NOT_FOUND" in line or "Not allowed to load" in line]
    assert not console, console
    rows = re.findall(r'<tr class="candidate-row[^"]*">\s*<td class="l">([^<]+)</td>', dom)
    assert rows == ["alpha", "beta", "gamma"]  # one row per candidate, in ranking order
    assert 'id="pick"' in dom and "Pick: alpha" in dom
    shot = tmp_path / "shot.png"
    res = subprocess.run(cmd[:-2] + [f"--screenshot={shot}", "--window-size=1200,1600", page.as_uri()],
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0 and shot.stat().st_size > 10_000

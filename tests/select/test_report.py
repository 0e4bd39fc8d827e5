"""Reports: CSV/Markdown/HTML written atomically; the page's numbers (ranks, flags, confidence, the
guided view) with and without the optional columns; the page checked in a real headless chromium
(no horizontal overflow at 1280 px, every section present, the table sorts)."""

from __future__ import annotations

import dataclasses
import html
import json
import math
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tguide.select.ranking_result import COLUMNS, Pick, Ranking, best_pick
from tguide.select.report import render_markdown, write_report
from tguide.select.report_data import (
    baseline_sentences,
    cell_flags,
    confidence_sentence,
    flag_sentences,
    guided_rows,
    rank_matrix,
    summary_table,
)
from tguide.select.report_html import render_html


def _row(cand, layer, metric, kind, score, warning="", **extra):
    return dict(candidate=cand, layer=layer, metric=metric, kind=kind, score=score, z=extra.pop("z", math.nan),
                null_mean=extra.pop("null_mean", math.nan), null_std=extra.pop("null_std", math.nan),
                warning=warning, **extra)


def _ranking(full: bool = False) -> Ranking:
    """3 candidates × 3 layers: logme (picks), knn (baseline), leep (head score; gamma has none),
    source accuracy. ``full`` adds the optional columns: a degenerate top layer of alpha's logme, a
    saturated hscore for everyone, 90% intervals, P(best) and a Pick that says how sure it is."""
    rows = []
    pb = {"alpha": 0.55, "beta": 0.41, "gamma": 0.04}
    for cand, base in (("alpha", 2.0), ("beta", 1.0), ("gamma", 0.5)):
        for i, layer in enumerate(("l1", "l2", "l3")):
            extra = {}
            if full:
                degenerate = cand == "alpha" and layer == "l3"
                extra = dict(flag="degenerate" if degenerate else "", ci_low=base + 0.1 * i - 0.05,
                             ci_high=base + 0.1 * i + 0.05, p_best=pb[cand])
            rows.append(_row(cand, layer, "logme", "score", base + 0.1 * i + (5.0 if extra.get("flag") else 0.0),
                             "features collapse to rank 1" if extra.get("flag") else "",
                             z=5.0 + i, null_mean=0.1, null_std=0.05, **extra))
            rows.append(_row(cand, layer, "knn", "baseline", {"alpha": 0.5, "beta": 0.8, "gamma": 0.3}[cand],
                             **({"flag": "", "ci_low": math.nan, "ci_high": math.nan, "p_best": math.nan}
                                if full else {})))
            if full:
                rows.append(_row(cand, layer, "hscore", "score", 2.0, "D >= N - 1: H-score = C - 1 for any features",
                                 flag="saturated", ci_low=2.0, ci_high=2.0, p_best=math.nan))
        rows.append(_row(cand, "@output", "leep", "score", math.nan if cand == "gamma" else -1.0,
                         "not applicable: leep needs a classifier head; gamma has none" if cand == "gamma" else "",
                         **({"flag": "", "ci_low": math.nan, "ci_high": math.nan, "p_best": math.nan} if full else {})))
        rows.append(_row(cand, "", "source_accuracy", "baseline", {"alpha": 0.7, "beta": 0.9, "gamma": math.nan}[cand],
                         **({"flag": "", "ci_low": math.nan, "ci_high": math.nan, "p_best": math.nan} if full else {})))
    cols = COLUMNS + [c for c in ("flag", "ci_low", "ci_high", "p_best") if full and c not in COLUMNS]
    df = pd.DataFrame(rows, columns=cols)
    names = ("alpha", "beta", "gamma")
    specs = {c: f"zoo:{c}" for c in names}
    timings = {**{f"extract/{c}": 1.0 for c in names}, **{f"score/{c}": 0.1 for c in names}}
    usable = df[df.flag == ""] if full else df
    pick = best_pick(usable, "logme", specs)
    if full:
        pick = dataclasses.replace(pick, p_best=0.55, contenders=("alpha", "beta"),
                              confidence="alpha or beta: too close to call, P(best) 0.55 / 0.41 — fine-tune both")
    ranking = Ranking(table=df, pick=pick,
                      baseline_picks={b: best_pick(df, b, specs) for b in ("source_accuracy", "knn")}, warnings=[],
                      timings=timings, metrics=["logme", "leep"] + (["hscore"] if full else []), null=10,
                      target={"name": "toy", "samples": 30, "classes": 3},
                      candidates={c: {"provenance": f"<{c}> & co", "num_params": 10} for c in names})
    if full:
        ranking.p_best = {"logme": pb}
    return ranking


_GUIDED = [
    dict(candidate="alpha", spec="zoo:alpha", layer="l2", metric="logme", predicted_score=2.1, p_best=0.55, rank=1,
         test_acc=0.70, test_acc_std=0.02, role="pick"),
    dict(candidate="beta", spec="zoo:beta", layer="l3", metric="logme", predicted_score=1.2, p_best=0.41, rank=2,
         test_acc=0.78, test_acc_std=0.01, role="contender"),
    dict(candidate="gamma", spec="zoo:gamma", layer="l3", metric="logme", predicted_score=0.7, p_best=0.04, rank=3,
         test_acc=0.60, test_acc_std=0.03, role="contender"),
    dict(candidate="beta", spec="zoo:beta", layer="", metric="source_accuracy", predicted_score=0.9, p_best=math.nan,
         rank="", test_acc=0.78, test_acc_std=0.01, role="baseline:source_accuracy"),
]


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
    paths = write_report(ranking, tmp_path)
    assert [p.name for p in paths] == ["ranking.csv", "ranking.md", "report.html"]
    table = pd.read_csv(tmp_path / "ranking.csv")
    assert list(table.columns[:5]) == ["candidate", "layer", "metric", "kind", "score"] and len(table) == len(df)
    md = (tmp_path / "ranking.md").read_text()
    assert "**Pick: alpha**" in md and "knn would pick beta" in md and "No uncertainty computed" in md
    page = (tmp_path / "report.html").read_text()
    # self-contained: no external script, stylesheet, image or font; no address at all
    assert "&lt;alpha&gt; &amp; co" in page and "http" not in page and "<link" not in page
    assert "<script src" not in page and "url(" not in page and "<img" not in page
    for section in ("summary", "heatmap", "charts", "candidates", "timing"):
        assert f'id="{section}"' in page, section
    assert page.count('<svg class="chart"') == 1  # logme is the one chosen score with layers (leep: the head)
    assert "P(best)" not in page and "90% interval" not in page and 'id="guided"' not in page
    assert "not checked in this ranking" in page  # no flag column: saying so, not "none"
    assert not list(tmp_path.glob(".*.tmp"))
    assert ranking.write_report(tmp_path / "again") == {p.name: tmp_path / "again" / p.name for p in paths}
    assert (tmp_path / "again" / "ranking.md").read_text() == md == ranking.to_markdown()


def test_ranks_of_the_heat_map():
    ranks = rank_matrix(_ranking())
    # independent: logme 2.2 > 1.2 > 0.7; knn 0.8 > 0.5 > 0.3; leep tie; source accuracy 0.9 > 0.7, gamma none
    assert ranks.loc[["alpha", "beta", "gamma"], "logme"].tolist() == [1, 2, 3]
    assert ranks.loc[["beta", "alpha", "gamma"], "knn"].tolist() == [1, 2, 3]
    assert ranks.loc[["alpha", "beta"], "leep"].tolist() == [1, 1] and math.isnan(ranks.loc["gamma", "leep"])
    assert ranks.loc["beta", "source_accuracy"] == 1 and math.isnan(ranks.loc["gamma", "source_accuracy"])
    assert list(ranks.columns) == ["logme", "leep", "knn", "source_accuracy"]  # asked scores first, baselines last


def test_flagged_rows_take_no_rank_and_are_reported(tmp_path: Path):
    ranking = _ranking(full=True)
    ranks = rank_matrix(ranking)
    # alpha's l3 logme (7.2) is degenerate: its best usable layer is l2 (2.1), still first
    assert ranks.loc["alpha", "logme"] == 1 and ranks["hscore"].isna().all()
    assert cell_flags(ranking) == {(c, "hscore"): "saturated" for c in ("alpha", "beta", "gamma")}
    table = summary_table(ranking).set_index("candidate")
    assert table.loc["alpha", "best layer"] == "l2" and table.loc["alpha", "logme"] == pytest.approx(2.1)
    assert (table.loc["alpha", "ci_low"], table.loc["alpha", "ci_high"]) == (pytest.approx(2.05), pytest.approx(2.15))
    assert table.p_best.to_dict() == {"alpha": 0.55, "beta": 0.41, "gamma": 0.04}
    assert "logme degenerate" in table.loc["alpha", "flags"] and "hscore saturated" in table.loc["gamma", "flags"]
    flags = flag_sentences(ranking)
    assert any(s.startswith("hscore saturated for 3 of 3 candidates (9 rows)") for s in flags)
    assert any(s.startswith("logme degenerate for 1 of 3 candidates (1 row)") for s in flags)
    assert confidence_sentence(ranking).startswith("alpha or beta: too close to call")
    write_report(ranking, tmp_path)
    page = (tmp_path / "report.html").read_text()
    assert "too close to call" in page and "Worth fine-tuning too: <b>beta</b>" in page
    assert 'class="card unsure"' in page and "P(best)" in page and "90% interval" in page
    assert page.count('<svg class="chart"') == 2 and page.count('class="band"') >= 3  # logme, hscore; a band each
    assert '<span class="badge">hscore saturated</span>' in page and 'class="flagged"' in page
    md = (tmp_path / "ranking.md").read_text()
    assert "Confidence: alpha or beta: too close to call" in md and "hscore saturated for 3 of 3" in md
    assert "| p_best |" in md and "Rank of each candidate" in md


def test_confidence_from_p_best_alone():
    ranking = _ranking()
    ranking.pick = dataclasses.replace(ranking.pick, p_best=0.93)
    assert confidence_sentence(ranking) == "P(best) of alpha by logme: 0.93."
    ranking.pick = None
    assert confidence_sentence(ranking).startswith("No pick")
    assert 'class="card none"' in render_html(ranking)


@pytest.mark.parametrize("form", ["rows", "object", "mapping"])
def test_guided_view(tmp_path: Path, form: str):
    guided = {"rows": _GUIDED, "object": type("GuidedResult", (), {"rows": _GUIDED})(),
              "mapping": {"rows": _GUIDED, "agreement": {}}}[form]
    assert [r["candidate"] for r in guided_rows(guided)] == ["alpha", "beta", "gamma", "beta"]
    write_report(_ranking(full=True), tmp_path, guided=guided)
    page = (tmp_path / "report.html").read_text()
    assert 'id="guided"' in page and "Best realised: beta (contender) at 0.78" in page
    assert "The pick alpha realised 0.7 (0.080 below)" in page
    # predicted logme 2.1 > 1.2 > 0.7 vs realised 0.70, 0.78, 0.60: one discordant pair of three
    assert "Kendall τ of logme against realised accuracy over 3 rows: +0.33" in page
    md = (tmp_path / "ranking.md").read_text()
    assert "Fine-tuned (predicted vs realised)" in md and "| beta | contender |" in md


def test_bad_guided_is_refused_before_writing(tmp_path: Path):
    with pytest.raises(ValueError, match="guided= must be a GuidedResult"):
        write_report(_ranking(), tmp_path, guided=42)
    with pytest.raises(ValueError, match="has no 'candidate'"):
        write_report(_ranking(), tmp_path, guided=[{"role": "pick"}])
    assert list(tmp_path.iterdir()) == []


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
        write_report(_ranking(), tmp_path)
    assert list(tmp_path.iterdir()) == []


def _zoo_ranking(full: bool) -> Ranking:
    """A user-sized ranking: 12 candidates with long names × 4 layers × 12 scores with long names and
    3 baselines, long warnings; ``full`` adds flags, intervals and P(best) (as :func:`_ranking`)."""
    rng = np.random.default_rng(0)
    cands = [f"efficientnet_lite{i}_imagenet_variant" if i < 4 else f"cand{i:02d}" for i in range(12)]
    scores = ["logme", "hscore", "hscore_shrinkage", "transrate_comparable", "gbc", "sfda", "etran", "ncti",
              "nleep", "otce_lsr", "pac_bayes_gaussian", "leep"]
    rows = []
    for c in cands:
        for j, layer in enumerate(("features.2.conv.1", "features.5.block", "features.9.squeeze_excitation", "avgpool")):
            for m in scores + ["knn", "linear_probe"]:
                if m == "leep" and j < 3:
                    continue
                s = float(rng.normal())
                flag = "saturated" if full and m in ("sfda", "hscore") and c.startswith("eff") else ""
                warn = (f"{m} saturated: feature dimension 1280 >= samples - 1 = 199, every candidate scores the "
                        "same; use the PCA option named after the paper") if flag else ""
                extra = dict(flag=flag, ci_low=s - 0.2, ci_high=s + 0.2, p_best=float(rng.uniform()) / 12) if full else {}
                rows.append(_row(c, "@output" if m == "leep" else layer, m,
                                 "baseline" if m in ("knn", "linear_probe") else "score", s, warn, **extra))
        rows.append(_row(c, "", "source_accuracy", "baseline", float(rng.uniform(0.4, 0.8)),
                         **(dict(flag="", ci_low=math.nan, ci_high=math.nan, p_best=math.nan) if full else {})))
    df = pd.DataFrame(rows)
    specs = {c: f"zoo:{c}" for c in cands}
    usable = df[df.flag == ""] if full else df
    pick = best_pick(usable, "logme", specs)
    if full:
        pick = dataclasses.replace(pick, p_best=0.48, contenders=(pick.candidate, cands[5]),
                              confidence=f"{pick.candidate} or {cands[5]}: too close to call, P(best) 0.48 / 0.30 "
                              "— fine-tune both")
    return Ranking(table=df, pick=pick,
                   baseline_picks={b: best_pick(df, b, specs) for b in ("source_accuracy", "knn", "linear_probe")},
                   warnings=[], timings={f"extract/{c}": 2.0 for c in cands}, metrics=scores, null=0,
                   target={"name": "folder20", "samples": 200, "classes": 20},
                   candidates={c: {"provenance": "zoo", "num_params": 4_000_000} for c in cands})


def _chromium() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome"):
        if shutil.which(name):
            return shutil.which(name)
    return None


# Run inside the page after its own script: measures the layout at the window's width, lists any
# element that sticks out on the right, and clicks the table's headers; writes JSON into the DOM.
_PROBE = """<script>(function(){var r={},W=window.innerWidth;
r.innerWidth=W;r.scrollWidth=document.documentElement.scrollWidth;
r.sections=['summary','pick','confidence','baselines','flags','heatmap','charts','candidates','guided']
 .filter(function(id){return !!document.getElementById(id);});
r.charts=document.querySelectorAll('svg.chart').length;r.heatRows=document.querySelectorAll('#heatmap tbody tr').length;
r.over=[];document.querySelectorAll('body *').forEach(function(e){var b=e.getBoundingClientRect();
 if(b.right>W+0.5&&r.over.length<10)r.over.push(e.tagName+'#'+e.id+'.'+e.getAttribute('class'));});
var t=document.getElementById('candidates'),ths=t.tHead.rows[0].cells,last=ths[ths.length-1].getBoundingClientRect();
r.warnLeft=last.left;r.warnRight=last.right;r.warnHead=ths[ths.length-1].textContent;
function col(i){return Array.prototype.map.call(t.tBodies[0].rows,function(x){return x.cells[i].textContent.trim();});}
r.initial=col(0);ths[0].click();r.nameAsc=col(0);ths[0].click();r.nameDesc=col(0);
ths[2].click();r.scoreAsc=col(2);r.sortMark=ths[2].getAttribute('aria-sort');
var p=document.createElement('pre');p.id='probe';p.textContent=JSON.stringify(r);document.body.appendChild(p);})();</script>"""


def _browser(page: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    cmd = [_chromium(), "--headless", "--disable-gpu", "--no-sandbox", "--hide-scrollbars", "--enable-logging=stderr",
           "--v=0", f"--user-data-dir={tmp_path / 'profile'}", *args, page.as_uri()]
    res = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr[-2000:]
    console = [line for line in res.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line
               or "ERR_FILE_NOT_FOUND" in line or "Not allowed to load" in line]
    assert not console, console
    return res


@pytest.mark.skipif(_chromium() is None, reason="chromium is not installed (apt-get install -y chromium; .ci/run does it)")
@pytest.mark.parametrize("full", [False, True], ids=["plain", "confidence+flags+guided"])
def test_report_in_headless_chromium(tmp_path: Path, full: bool):
    ranking = _zoo_ranking(full)
    guided = None
    if full:
        guided = [dict(r, candidate=c) for r, c in zip(_GUIDED, [ranking.pick.candidate, "cand05", "cand07", "cand05"])]
    write_report(ranking, tmp_path, guided=guided)
    page = tmp_path / "report.html"
    probe = tmp_path / "probe.html"
    probe.write_text(page.read_text().replace("</body>", _PROBE + "</body>"))
    dom = _browser(probe, tmp_path, "--window-size=1280,800", "--dump-dom").stdout
    found = re.search(r'<pre id="probe">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    r = json.loads(html.unescape(found.group(1)))
    assert r["innerWidth"] == 1280
    assert r["scrollWidth"] <= 1280 and r["over"] == [], r  # no horizontal overflow at 1280 px
    assert 0 < r["warnLeft"] < r["warnRight"] <= 1280 and r["warnHead"] == "flags & warnings"  # warnings in view
    want = ["summary", "pick", "confidence", "baselines", "flags", "heatmap", "charts", "candidates"]
    assert r["sections"] == want + (["guided"] if full else [])
    assert r["charts"] == 11 and r["heatRows"] == 12  # one chart per chosen score with layers (leep: the head)
    summary = summary_table(ranking)
    assert r["initial"] == list(summary.candidate)
    assert r["nameAsc"] == sorted(summary.candidate) and r["nameDesc"] == sorted(summary.candidate, reverse=True)
    values = [float(v) for v in r["scoreAsc"]]
    assert values == sorted(values) and r["sortMark"] == "ascending"
    shot = tmp_path / "report_1280x800.png"
    _browser(page, tmp_path, "--window-size=1280,800", f"--screenshot={shot}")
    assert shot.stat().st_size > 10_000
    from PIL import Image

    assert Image.open(shot).size == (1280, 800)

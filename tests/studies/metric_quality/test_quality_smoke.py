"""Smoke run of the metric-quality benchmark: 2 source models × 1 target (USPS), tiny budgets.

Checks the report is written with a row per registered score, that a second run recomputes
nothing, and that a newly registered score is computed alone from the cached features.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest


def _load_run():
    from tguide.studies.metric_quality import run

    return run


def test_quick_run_resumes_and_extends(tmp_path: Path, data_root: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    run = _load_run()
    from tguide.studies.metric_quality import scores
    out, zoo = tmp_path / "out", tmp_path / "zoo"
    args = ["--quick", "--out", str(out), "--zoo", str(zoo), "--root", str(data_root)]
    assert run.main(args) == 0
    md = (out / "results.md").read_text()
    ranked = [s for s in scores.SCORES if s not in scores.PARTS]
    for name in ranked:
        assert f"| {name} |" in md
    res = json.loads((out / "results.json").read_text())
    assert set(res["per_target"]["usps"]) == set(ranked)
    assert all(r["n"] == 2 for r in res["per_target"]["usps"].values())
    gt = res["ground_truth"]["usps"]
    assert len(gt) == 2 and all(0.0 <= v["acc"] <= 1.0 for v in gt.values())
    assert (out / "scatter.png").stat().st_size > 1000 and (out / "weighted_tau.png").is_file()
    assert len(list(zoo.glob("*.pt"))) == 2

    cached = sorted((out / "cache").rglob("*.*"))
    stamps = {p: p.stat().st_mtime_ns for p in cached}
    # add a score: only it is computed, nothing else is touched
    calls: list[str] = []

    def width(p) -> float:
        calls.append(p.layer)
        return float(p.features.shape[1])

    monkeypatch.setitem(scores.SCORES, "feature_width", width)
    assert run.main(args) == 0
    assert calls, "the new score was not computed"
    assert all(stamps[p] == p.stat().st_mtime_ns for p in cached if "scores" not in p.parts)
    res2 = json.loads((out / "results.json").read_text())
    assert "feature_width" in res2["per_target"]["usps"]
    assert res2["ground_truth"] == res["ground_truth"]
    calls.clear()
    assert run.main(args) == 0
    assert calls == []  # third run: everything cached

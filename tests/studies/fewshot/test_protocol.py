import json
import math

import numpy as np
import pytest

from tguide.fit import compose, run
from tguide.stats import mean_ci
from tguide.studies.fewshot.protocol import markdown_table, summarise

RUNNER = "runner={_target_: tguide.studies.fewshot.protocol.run, _partial_: true}"
TINY = ["fewshot.episodes=3", "fewshot.source.epochs=1", "fewshot.finetune.steps=5", "fewshot.pretune.steps=2",
        "fewshot.pretune.max_iter=20", "fewshot.pretune.src_batch=32", "fewshot.n_query=5", "logger=csv"]


def test_mean_ci_is_student_t():
    x = [0.8, 0.9, 0.85, 0.7, 1.0, 0.95, 0.6, 0.75, 0.9, 0.88]
    mean, half = mean_ci(x)
    a = np.asarray(x)
    # t_{0.975, 9} = 2.2621571627 (statistical tables)
    assert mean == pytest.approx(a.mean())
    assert half == pytest.approx(2.2621571627 * a.std(ddof=1) / math.sqrt(10), rel=1e-8)
    assert math.isnan(mean_ci([0.5])[1])
    with pytest.raises(ValueError, match="empty"):
        mean_ci([])


def test_summarise_pairs_episodes():
    rows = [{"scratch": s, "vanilla": v, "otce": o, "scratch_seconds": 1, "vanilla_seconds": 1, "otce_seconds": 2}
            for s, v, o in [(0.5, 0.6, 0.7), (0.4, 0.8, 0.8), (0.6, 0.7, 0.9)]]
    res = summarise(rows, ["scratch", "vanilla", "otce"])
    d = res["paired_otce_minus_vanilla"]
    assert d["per_episode"] == pytest.approx([0.1, 0.0, 0.2])
    assert d["mean"] == pytest.approx(0.1) and (d["wins"], d["losses"]) == (2, 0)
    assert res["methods"]["otce"]["seconds"] == 6
    assert "| otce − vanilla (paired) | +10.00 |" in markdown_table(res, "t")


@pytest.mark.parametrize("recipe, n_way", [("fewshot_mnist_usps", 3), ("fewshot_mnist_omniglot", 5)])
def test_recipe_smoke_three_episodes(tmp_path, recipe, n_way):
    cfg = compose([f"recipe={recipe}", RUNNER, *TINY, f"paths.run_dir={tmp_path}", "name=unit"])
    res = run(cfg)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["episodes"] == 3 and saved["n_way"] == n_way and saved["split"] == "test"
    for m in ("scratch", "vanilla", "otce"):
        acc = saved["methods"][m]["per_episode"]
        assert len(acc) == 3 and all(0 <= a <= 1 for a in acc)
        assert saved["methods"][m]["mean"] == pytest.approx(np.mean(acc))
    diff = [o - v for o, v in zip(saved["methods"]["otce"]["per_episode"], saved["methods"]["vanilla"]["per_episode"])]
    assert saved["paired_otce_minus_vanilla"]["per_episode"] == pytest.approx(diff)
    assert (tmp_path / "results.md").read_text().startswith("### MNIST")
    assert (tmp_path / "source_lenet.pt").exists()
    assert (tmp_path / "csv").exists()  # episodes logged to the logger
    # the cached source model is reused when its settings match
    from tguide.studies.fewshot.protocol import load_or_train_source

    _, info = load_or_train_source(tmp_path / "source_lenet.pt", cfg.fewshot.source.digits, epochs=1, seed=0)
    assert info["reused"] and info["heldout_accuracy"] == res["source"]["heldout_accuracy"]

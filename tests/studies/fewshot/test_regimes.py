"""The regime grid of the OTCE few-shot study: fixed grid, disjoint validation/test classes,
paired statistics, and the --quick run of ``python -m tguide.studies.fewshot`` (< 60 s)."""

import csv
import json
import math

import numpy as np
import pytest

from tguide.studies.fewshot import regimes as R



def test_grid_is_fixed_and_documented():
    ids = [c.id for c in R.cells()]
    assert ids == [
        "lenet5_mnist->usps:1shot", "lenet5_mnist->usps:5shot",
        "lenet5_mnist->mnist_m:1shot", "lenet5_mnist->mnist_m:5shot",
        "lenet5_mnist->omniglot:1shot", "lenet5_mnist->omniglot:5shot",
        "resnet20_cifar10->mnist_m:1shot", "resnet20_cifar10->mnist_m:5shot",
        "resnet20_cifar10->office31_webcam:1shot", "resnet20_cifar10->office31_webcam:5shot",
    ]
    assert R.SHOTS == (1, 5) and R.N_WAY == 5
    assert R.MAIN_METHODS == ("vanilla", "otce", "proto", "probe")
    assert R.FIXED["test_episodes"] == 100 and R.FIXED["val_seed"] != R.FIXED["test_seed"]
    doc = R.__doc__
    assert "fixed **before any test episode was run**" in doc
    for p in R.PAIRS:
        assert p["target"].split("_")[0] in doc.lower()
    assert "impossible" in doc.lower() and "all 10" in doc


def test_validation_and_test_classes_are_disjoint():
    assert not set(R.VAL_DIGITS) & set(R.TEST_DIGITS)
    assert set(R.VAL_DIGITS) | set(R.TEST_DIGITS) == set(range(10))
    office_test = [c for c in range(31) if c not in R.OFFICE_VAL]
    assert len(R.OFFICE_VAL) == 11 and len(office_test) == 20 and not set(R.OFFICE_VAL) & set(office_test)
    from tguide.data.omniglot import load_omniglot

    d = load_omniglot()
    val = set(d.classes_of(list(R.VAL_ALPHABETS)))
    test = set(range(len(d.characters))) - val
    assert val and test and not {d.alphabets[c] for c in val} & {d.alphabets[c] for c in test}


def test_paired_stats_by_hand():
    a, b = [0.8, 0.6, 0.9, 0.7], [0.7, 0.6, 0.8, 0.8]
    p = R.paired_stats(a, b)
    d = np.array([0.1, 0.0, 0.1, -0.1])
    sd = math.sqrt(((d - 0.025) ** 2).sum() / 3)  # 0.0957427...
    t = 3.182446305284263  # t_{0.975, 3} from tables
    assert p["mean"] == pytest.approx(0.025)
    assert p["ci"] == pytest.approx(t * sd / 2, rel=1e-9) and p["ci"] == pytest.approx(0.152348, abs=1e-6)
    assert (p["n"], p["wins"], p["losses"]) == (4, 2, 1)


def test_loo_rule_picks_threshold_on_other_cells():
    cells = [{"vanilla": v, "gain_otce": g} for v, g in [(0.3, 0.05), (0.35, 0.04), (0.8, -0.01), (0.9, -0.02)]]
    r = R.loo_rule(cells, "vanilla")
    assert [h["switch_on"] for h in r["held_out"]] == [True, True, False, False]
    assert r["mean_realised"] == pytest.approx((0.05 + 0.04) / 4)


def test_loo_pays_rule_cannot_predict_a_lone_paying_cell():
    cells = [{"w_t": w, "gain_otce": g, "gain_otce_ci": 0.01} for w, g in [(1.0, 0.0), (1.2, 0.05), (1.4, 0.0)]]
    r = R.loo_pays_rule(cells, "w_t")
    # held out, the paying cell leaves no paying cell to learn from: "never" → missed
    assert r["paying"] == 1 and r["paying_caught"] == 0 and r["held_out"][1]["predicted"] is False
    # the others each learn a threshold around the paying cell (1.0: "< 1.3" → on; 1.4: "> 1.1" → on)
    assert r["false_on"] == 2 and r["correct"] == 0
    sep = [{"w_t": w, "gain_otce": g, "gain_otce_ci": 0.01}
           for w, g in [(1.0, 0.0), (1.1, 0.0), (1.5, 0.05), (1.6, 0.05), (1.7, 0.05)]]
    r2 = R.loo_pays_rule(sep, "w_t")
    assert r2["paying_caught"] == 3 and r2["correct"] == 5


@pytest.fixture(scope="module")
def quick_run(tmp_path_factory):
    from tguide.studies.fewshot import regimes_run as mod

    out = tmp_path_factory.mktemp("regimes")
    from tests.conftest import _data_root

    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("TGUIDE_DATA", str(_data_root()))
        assert mod.main(["--quick", "--out", str(out)]) == 0
        yield out


def test_quick_run_writes_every_cell(quick_run):
    with (quick_run / "fewshot_regimes.csv").open() as fh:
        reader = csv.DictReader(fh)
        rows = list(reader)
        assert tuple(reader.fieldnames) == R.CSV_COLUMNS
    assert [r["cell"] for r in rows] == [c.id for c in R.cells()]
    for r in rows:
        assert int(r["n_test"]) == 2 and int(r["n_variant"]) == 2
        for k in ("vanilla", "otce", "proto", "probe", "gain_otce", "w_d", "w_t", "h_joint"):
            assert math.isfinite(float(r[k])), (r["cell"], k)
    assert (quick_run / "fewshot_regimes.md").read_text().count("| lenet5_mnist") == 6
    assert (quick_run / "fewshot_regimes.png").stat().st_size < 300_000


def test_quick_run_is_resumable_and_val_test_disjoint(quick_run):
    rows = [json.loads(x) for x in (quick_run / "fewshot_regimes_episodes.jsonl").read_text().splitlines()]
    keys = [(r["phase"], r["cell"], r["hp"], r["episode"]) for r in rows]
    assert len(keys) == len(set(keys))
    for pair in {r["pair"] for r in rows}:
        val = {c for r in rows if r["pair"] == pair and r["phase"] == "val" for c in r["classes"]}
        test = {c for r in rows if r["pair"] == pair and r["phase"] != "val" for c in r["classes"]}
        assert val and test and not val & test, pair
    # a restart skips every finished episode: the second run adds no line
    n = len(rows)
    R.run_grid(quick_run / "fewshot_regimes_episodes.jsonl", quick=True, log=lambda m: None)
    assert len((quick_run / "fewshot_regimes_episodes.jsonl").read_text().splitlines()) == n

import json

import numpy as np
import pytest
import torch

from tguide.fit import compose, run
from tguide.studies.siren.prefit import SCHEMES, auc, colour_clusters, run_triples, sample_triples, score_agreement


def test_auc_on_known_curves():
    e = 200
    # linear 0..E: area E²/2 over length E -> E/2; a constant c -> c
    assert float(auc(torch.arange(e + 1.0))) == pytest.approx(e / 2)
    assert float(auc([7.0] * 11)) == pytest.approx(7.0)
    # p(e) = e² sampled on 0..E: trapezoid area = E³/3 + E/6 (exact for the sampled polygon) over E
    sq = np.arange(e + 1.0) ** 2
    assert float(auc(sq)) == pytest.approx((e**3 / 3 + e / 6) / e, rel=1e-12)
    # an independent hand-written trapezoid on random curves, batched over leading dims
    curves = torch.rand(2, 3, 51, dtype=torch.float64) * 40
    by_hand = ((curves[..., 1:] + curves[..., :-1]) / 2).sum(-1) / 50
    torch.testing.assert_close(auc(curves), by_hand)
    with pytest.raises(ValueError, match="at least 2 points"):
        auc([1.0])
    with pytest.raises(ValueError, match="NaN"):
        auc([1.0, float("nan")])


def test_triples_distinct_same_and_other_class():
    labels = torch.arange(10).repeat_interleave(30)  # 10 classes × 30
    t = sample_triples(labels, 20, seed=3)
    assert t.shape == (20, 3)
    assert t.flatten().unique().numel() == 60  # all images distinct
    assert (labels[t[:, 0]] == labels[t[:, 1]]).all()  # B: A's class
    assert (labels[t[:, 0]] != labels[t[:, 2]]).all()  # C: another class
    assert torch.equal(t, sample_triples(labels, 20, seed=3))
    assert not torch.equal(t, sample_triples(labels, 20, seed=4))
    big = sample_triples(labels, 100, seed=0)  # every image used once
    assert big.flatten().unique().numel() == 300
    with pytest.raises(ValueError, match="one class"):
        sample_triples(torch.zeros(9, dtype=torch.long), 2)
    with pytest.raises(ValueError, match="n must be"):
        sample_triples(labels, 101)


def test_colour_clusters_separate_colours():
    pix = torch.cat([torch.full((50, 3), -0.8), torch.full((50, 3), 0.7)]) + 0.01 * torch.randn(100, 3)
    lab = colour_clusters(pix, k=2)
    assert lab[:50].unique().numel() == 1 and lab[50:].unique().numel() == 1 and lab[0] != lab[-1]


def test_schemes_start_where_they_should():
    torch.manual_seed(0)
    images = torch.randint(0, 256, (9, 3, 8, 8), dtype=torch.uint8)
    images[3:6] = images[0:3]  # duplicated pixels are fine; indices must be distinct
    triples = torch.tensor([[0, 1, 2], [6, 7, 8]])
    res = run_triples(images, triples, hidden_layers=1, hidden_features=16, epochs=6, prefit_epochs=8, lr=1e-3)
    assert res["curves"].shape == (3, 2, 7) and res["auc"].shape == (3, 2)
    assert res["prefit_curves"].shape == (2, 2, 9)
    # the scores are computed before fitting: psnr0 is the curve's epoch-0 value for every scheme
    torch.testing.assert_close(res["scores"]["psnr0"], res["curves"][..., 0])
    # the prefit networks learnt B and C (their curves rose), and start A elsewhere than random
    assert (res["prefit_curves"][..., -1] > res["prefit_curves"][..., 0]).all()
    assert not torch.allclose(res["curves"][0, :, 0], res["curves"][1, :, 0])
    assert (res["curves"][..., -1] > res["curves"][..., 0]).all()
    with pytest.raises(ValueError, match="distinct"):
        run_triples(images, torch.tensor([[0, 1, 0]]), hidden_layers=1, hidden_features=8, epochs=1)


def test_score_agreement_counts_winners():
    # rows = schemes (random, prefit_same, prefit_other), columns = triples
    aucs = torch.tensor([[1.0, 5.0, 2.0], [2.0, 1.0, 3.0], [3.0, 0.0, 1.0]])  # winners: other, random, same
    scores = torch.tensor([[0.0, 9.0, 10.0], [1.0, 0.0, 9.0], [2.0, 1.0, 0.0]])  # picks: other, random, random
    res = score_agreement(scores, aucs)
    assert res["three_way"] == pytest.approx(2 / 3)
    # same > other? scores F, F, T; AUCs F, T, T -> agree on triples 0 and 2
    assert res["same_vs_other"] == pytest.approx(2 / 3)


def test_recipe_smoke_tiny(tmp_path):
    cfg = compose(["recipe=siren_prefit", "prefit.triples=2", "prefit.epochs=3", "prefit.hidden_layers=1",
                   "prefit.hidden_features=8", "prefit.clusters=3", "logger=csv", f"paths.run_dir={tmp_path}",
                   "name=unit"])
    summary = run(cfg)
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["config"]["prefit_epochs"] == 3 and len(saved["triples"]) == 2
    for s in SCHEMES:
        r = saved["schemes"][s]
        assert len(r["auc"]) == 2 and r["auc_mean"] == pytest.approx(np.mean(r["auc"]))
    assert sum(saved["schemes"][s]["wins"] for s in SCHEMES) == 2
    assert summary["schemes"]["random"]["auc"] == saved["schemes"]["random"]["auc"]
    curves = torch.load(tmp_path / "curves.pt")["curves"]
    assert curves.shape == (3, 2, 4)
    for name in ("results.md", "curves.png", "config.yaml"):
        assert (tmp_path / name).stat().st_size > 0
    assert (tmp_path / "csv" / "metrics.csv").exists()

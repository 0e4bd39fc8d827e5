"""Graded target shifts, transfer scores and the seg_transfer recipe (tguide/studies/segmentation/transfer.py)."""

import json
from functools import partial

import numpy as np
import pytest
import torch

from tguide.studies.segmentation.segmenter import Segmenter, build_unet
from tguide.studies.segmentation.transfer import SHIFTS, evaluate, graded_shift, pixel_scores, shifted_pairs, train_patches


def image(seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(3, 40, 48, generator=g) * 0.6 + 0.2


def high_freq(x: torch.Tensor) -> float:
    return float((x[:, 1:] - x[:, :-1]).abs().mean() + (x[:, :, 1:] - x[:, :, :-1]).abs().mean())


def test_shifts_grow_with_severity():
    x = image()
    assert torch.equal(graded_shift("none", 3)(x, 0), x)
    dist = {k: [float((graded_shift(k, s)(x, 0) - x).abs().mean()) for s in (1, 2, 3)] for k in SHIFTS[1:]}
    for kind, d in dist.items():
        assert 0 < d[0] < d[1] < d[2], kind  # each severity moves the image further
    stds = [float(graded_shift("contrast", s)(x, 0).std()) for s in (1, 2, 3)]
    assert stds[0] > stds[1] > stds[2]  # less contrast
    hf = [high_freq(graded_shift("blur", s)(x, 0)) for s in (1, 2, 3)]
    assert high_freq(x) > hf[0] > hf[1] > hf[2]  # smoother
    for s in (1, 2, 3):
        y = graded_shift("noise", s, seed=4)(x, 7)
        assert torch.equal(y, graded_shift("noise", s, seed=4)(x, 7))  # same seed and index, same noise
        assert not torch.equal(y, graded_shift("noise", s, seed=4)(x, 8))
        assert 0 <= float(y.min()) and float(y.max()) <= 1
    flat = torch.full((3, 20, 20), 0.3)
    torch.testing.assert_close(graded_shift("blur", 3)(flat, 0), flat)  # blur keeps a constant image
    grey = torch.full((3, 5, 5), 0.4)
    torch.testing.assert_close(graded_shift("colour", 3)(grey, 0), grey)  # channel mixing keeps grey


def test_shift_errors():
    with pytest.raises(ValueError, match="shift"):
        graded_shift("fog", 1)
    with pytest.raises(ValueError, match="severity"):
        graded_shift("blur", 4)
    with pytest.raises(ValueError, match="not in the drive val split"):
        shifted_pairs("drive", "val", ids=["01"], downscale=4)


def test_finetune_improves_dice_and_scores_are_finite():
    torch.manual_seed(0)
    model = Segmenter(build_unet("resnet18", 3, (32, 16, 8)), optimizer=partial(torch.optim.Adam, lr=1e-3)).eval()
    pairs = shifted_pairs("drive", "val", "blur", 1, downscale=4)
    before = evaluate(model, pairs)
    assert set(before) == {"dice", "iou", "auroc"}
    losses = train_patches(model, pairs[:2], steps=40, lr=3e-3, batch_size=4, patch_size=64)
    after = evaluate(model, pairs[2:])
    assert np.mean(losses[-5:]) < np.mean(losses[:5])
    assert after["auroc"] > before["auroc"] + 0.03  # starts to find vessels in unseen images (0.5 = chance)
    scores = pixel_scores(model, pairs[:2], pairs[2:], pixels_per_image=100)
    for key in ("otce_sim_boundary", "otce_sim_uniform", "hscore_boundary", "transrate_uniform", "seconds"):
        assert np.isfinite(scores[key])
    # OTCE_sim = -H(Y_t | Y_s) ≤ 0, and ≥ -log 2 for binary labels
    assert -np.log(2) - 1e-9 <= scores["otce_sim_boundary"] <= 0


def test_seg_transfer_recipe_smoke(tmp_path):
    from tguide.fit import compose, run

    over = ["recipe=seg_transfer", "logger=csv", f"paths.run_dir={tmp_path}", "name=unit",
            "seg_transfer.target=drive", "seg_transfer.shift=noise", "seg_transfer.severity=2",
            "seg_transfer.downscale=4", "seg_transfer.patch_size=64", "seg_transfer.batch_size=4",
            "seg_transfer.source.steps=3", "seg_transfer.finetune.steps=2", "seg_transfer.shots=[1]",
            "seg_transfer.score.pixels_per_image=60", "seg_transfer.score.source_images=2",
            "model.net.decoder_channels=[32,16,8]"]
    res = run(compose(over))
    saved = json.loads((tmp_path / "results.json").read_text())
    assert saved["target"] == "drive" and saved["shift"] == "noise" and saved["severity"] == 2
    r = saved["shots"]["1"]
    assert len(r["ids"]) == 1 and r["ids"][0] in ("37", "38", "39", "40")  # shots from the val split
    assert 0 <= r["after"]["dice"] <= 1 and np.isfinite(r["scores"]["otce_sim_boundary"])
    assert res["before"]["dice"] == pytest.approx(saved["before"]["dice"])
    assert (tmp_path / "source_drive.pt").exists() and (tmp_path / "results.md").read_text().startswith("### drive")
    assert (tmp_path / "csv").exists()
    # the cached source is reused, and a seg_drive-style checkpoint path is accepted
    res2 = run(compose(over))
    assert res2["source"]["reused"] and res2["before"] == res["before"]
    res3 = run(compose([*over, f"seg_transfer.checkpoint={tmp_path / 'source_drive.pt'}"]))
    assert res3["before"] == res["before"]

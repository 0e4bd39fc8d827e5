"""The U-Net segmenter: loss inside the FOV, decoder feature capture, a training signal, the seg_drive recipe."""

import json
from functools import partial

import numpy as np
import pytest
import torch

from tguide.features import LayerCapture
from tguide.features.pixels import extract_pixel_features
from tguide.studies.segmentation.segmenter import Segmenter, build_unet, dice_bce_loss, prediction_panel


IGNORE = 255


def reference_loss(z: np.ndarray, y: np.ndarray) -> float:
    keep = y != IGNORE
    z, y = z[keep].astype(np.float64), y[keep].astype(np.float64)
    p = 1 / (1 + np.exp(-z))
    bce = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
    dice = 1 - (2 * np.sum(p * y) + 1) / (np.sum(p) + np.sum(y) + 1)
    return bce + dice


def test_loss_matches_formula_and_ignores_outside_the_fov():
    rng = np.random.default_rng(0)
    z = rng.normal(size=(2, 1, 5, 6))
    y = rng.integers(0, 2, size=(2, 5, 6))
    y[:, 0, :] = IGNORE
    got = dice_bce_loss(torch.tensor(z), torch.tensor(y))
    assert float(got) == pytest.approx(reference_loss(z[:, 0], y), rel=1e-10)
    z2 = z.copy()
    z2[:, 0, 0, :] += 100.0  # logits outside the FOV do not matter
    assert float(dice_bce_loss(torch.tensor(z2), torch.tensor(y))) == pytest.approx(float(got), rel=1e-12)
    empty = torch.zeros(1, 1, 3, 3, requires_grad=True)
    loss = dice_bce_loss(empty, torch.full((1, 3, 3), IGNORE))
    assert float(loss) == 0.0
    loss.backward()  # still differentiable
    with pytest.raises(ValueError, match="same"):
        dice_bce_loss(torch.zeros(1, 1, 3, 3), torch.zeros(1, 4, 3, dtype=torch.int64))


def small_segmenter() -> Segmenter:
    torch.manual_seed(0)
    return Segmenter(build_unet("resnet18", 3, (32, 16, 8)), optimizer=partial(torch.optim.Adam, lr=3e-3))


def test_decoder_layers_capture_shapes():
    model = small_segmenter().eval()
    x = torch.rand(2, 3, 64, 96)
    with LayerCapture(model, ["net.decoder", "net.decoder.blocks.1", "net.decoder.blocks.0"], pool="none") as cap:
        out = model(x)
    assert out.shape == (2, 1, 64, 96)
    assert cap.outputs["net.decoder"].shape == (2, 8, 64, 96)  # full resolution, last decoder channel
    assert cap.outputs["net.decoder.blocks.1"].shape == (2, 16, 32, 48)
    assert cap.outputs["net.decoder.blocks.0"].shape == (2, 32, 16, 24)
    y = torch.zeros(2, 64, 96, dtype=torch.int64)
    y[:, :, 40:44] = 1
    y[:, :8] = IGNORE
    fs = extract_pixel_features(model, [(x, y)], ["net.decoder", "net.decoder.blocks.1"], pixels_per_image=50,
                                ignore_index=IGNORE, sampling="boundary", band=2)
    assert fs.features["net.decoder"].shape == (100, 8) and fs.features["net.decoder.blocks.1"].shape == (100, 16)
    assert set(fs.labels.tolist()) == {0, 1}
    # at full resolution the pixel features are the decoder map at those pixels
    with LayerCapture(model, "net.decoder", pool="none") as cap, torch.no_grad():
        model(x)
    img0 = fs.ids == 0
    rows = cap.outputs["net.decoder"][0].permute(1, 2, 0).reshape(-1, 8)  # (H*W, C)
    matches = (fs.features["net.decoder"][img0][:, None, :] - rows[None]).abs().amax(-1).min(-1).values
    assert float(matches.max()) < 1e-5


def test_a_few_steps_lower_the_loss_on_a_synthetic_vessel_task():
    torch.manual_seed(1)
    x = torch.rand(4, 3, 32, 32) * 0.2
    y = torch.zeros(4, 32, 32, dtype=torch.int64)
    y[:, :, 10:13] = 1
    y[:, 20:23, :] = 1
    x[:, 1][y == 1] += 0.7  # brighter "vessels" in the green channel
    y[:, :2] = IGNORE
    model = small_segmenter()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    losses = []
    for _ in range(25):
        loss = dice_bce_loss(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_build_unet_errors_and_panel():
    with pytest.raises(ValueError, match="decoder_channels"):
        build_unet("resnet18", 3, (32, 16))
    with pytest.raises(ValueError, match="encoder"):
        build_unet("no_such_encoder", 3, (32, 16, 8))
    panel = prediction_panel(torch.rand(3, 8, 10), torch.full((8, 10), IGNORE), torch.rand(8, 10))
    assert panel.shape == (3, 8, 30) and float(panel[:, :, 10:20].mean()) == pytest.approx(0.5)


def test_seg_drive_recipe_one_epoch(tmp_path):
    from tguide.fit import compose, run

    cfg = compose(["recipe=seg_drive", "trainer.max_epochs=1", "logger=csv", f"paths.run_dir={tmp_path}",
                   "name=unit", "threads=1", "data.downscale=4", "data.patch_size=64", "data.patches_per_epoch=16",
                   "trainer.limit_val_batches=1", "trainer.limit_test_batches=1", "trainer.enable_progress_bar=false",
                   "model.net.decoder_channels=[32,16,8]", "callbacks.transferability.max_samples=2",
                   "callbacks.transferability.source_max_samples=2", "callbacks.transferability.pixels_per_image=100"])
    metrics = run(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    for key in ("test/dice", "test/iou", "test/auroc", "val/dice", "transfer/otce_sim/net.decoder",
                "transfer/hscore/net.decoder.blocks.1"):
        assert key in saved and np.isfinite(saved[key])
    assert 0 <= saved["test/dice"] <= 1 and 0 <= saved["test/auroc"] <= 1
    assert (tmp_path / "checkpoints" / "best.ckpt").exists()
    assert metrics["test/dice"] == pytest.approx(saved["test/dice"])

import lightning as L
import pytest
import torch

from tguide.studies.siren.data import ImageFitDataModule, coordinate_grid, image_to_pixels, pixels_to_image
from tguide.fit import compose
from tguide.studies.siren.module import SirenFit, psnr


def test_psnr_formula():
    # pixels in [-1, 1]: R = 2, so MSE 0.04 -> 10 log10(4 / 0.04) = 20 dB
    assert float(psnr(torch.tensor(0.04))) == pytest.approx(20.0)
    assert float(psnr(0.01, data_range=1.0)) == pytest.approx(20.0)
    torch.testing.assert_close(psnr(torch.tensor([4.0, 0.4])), torch.tensor([0.0, 10.0]))
    with pytest.raises(ValueError, match=">= 0"):
        psnr(torch.tensor(-1.0))


def test_coordinates_and_pixels_round_trip():
    c = coordinate_grid(4, 5)
    assert c.shape == (20, 2)
    assert c.min() == -1 and c.max() == 1
    torch.testing.assert_close(c[1], torch.tensor([-1.0, -0.5]))  # row-major: x moves first
    img = torch.randint(0, 256, (3, 4, 5), dtype=torch.uint8)
    p = image_to_pixels(img)
    assert p.shape == (20, 3) and p.min() >= -1 and p.max() <= 1
    torch.testing.assert_close(p[7], img[:, 1, 2].float() / 127.5 - 1)
    torch.testing.assert_close(pixels_to_image(p, 4, 5), img.float() / 255)
    with pytest.raises(ValueError, match="at least 2"):
        coordinate_grid(1, 5)


def test_siren_fits_cifar_image_above_30db_within_default_epochs():
    torch.set_num_threads(1)
    defaults = compose(["recipe=siren_prefit"]).prefit
    L.seed_everything(0, verbose=False)
    dm = ImageFitDataModule(index=1234)
    model = SirenFit(hidden_features=defaults.hidden_features, hidden_layers=defaults.hidden_layers,
                     omega0=defaults.omega0, lr=defaults.lr)
    trainer = L.Trainer(max_epochs=defaults.epochs, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, num_sanity_val_steps=0,
                        check_val_every_n_epoch=defaults.epochs)
    trainer.fit(model, datamodule=dm)
    assert dm.coords.shape == (1024, 2) and dm.pixels.shape == (1024, 3)
    assert len(model.psnr_history) == defaults.epochs
    final = float(trainer.callback_metrics["val/psnr"])
    assert final > 30.0, f"PSNR {final:.1f} dB after {defaults.epochs} epochs"
    assert model.psnr_history[0] < 20.0  # it really learnt the image
    with torch.no_grad():
        mse = ((model(dm.coords) - dm.pixels) ** 2).mean()
    assert float(psnr(mse)) == pytest.approx(final, abs=1e-3)


def test_siren_fit_recipe_smoke(tmp_path):
    import json

    from tguide.fit import run

    cfg = compose(["recipe=siren_fit", "trainer.max_epochs=3", "model.hidden_features=8", "model.hidden_layers=1",
                   "data.index=7", "logger=csv", f"paths.run_dir={tmp_path}", "name=unit"])
    metrics = run(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    assert saved["test/psnr"] == pytest.approx(metrics["test/psnr"]) and 0 < saved["test/psnr"] < 60
    assert (tmp_path / "checkpoints" / "best.ckpt").exists()

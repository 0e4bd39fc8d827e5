import functools

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from tguide.studies.denoising.noise import n2n_pair, parse_noise
from tguide.studies.denoising.denoiser import Denoiser, denoise_loss, l0_gamma
from tguide.studies.denoising.unet import N2NUNet


def test_losses_against_their_formulas():
    g = torch.Generator().manual_seed(0)
    p, t = torch.randn(2, 1, 8, 8, generator=g), torch.randn(2, 1, 8, 8, generator=g)
    assert float(denoise_loss(p, t, "l2")) == pytest.approx(float(((p - t) ** 2).mean()))
    assert float(denoise_loss(p, t, "l1")) == pytest.approx(float((p - t).abs().mean()))
    # (|e| + eps)^gamma: gamma 2 ~ L2, gamma 1 ~ L1, gamma -> 0 counts pixels (-> 1)
    assert float(denoise_loss(p, t, "l0", gamma=2.0)) == pytest.approx(float(((p - t) ** 2).mean()), rel=1e-6)
    assert float(denoise_loss(p, t, "l0", gamma=1.0)) == pytest.approx(float((p - t).abs().mean()), rel=1e-6)
    assert float(denoise_loss(p, t, "l0", gamma=1e-3)) == pytest.approx(1.0, abs=0.01)
    with pytest.raises(ValueError, match="unknown loss"):
        denoise_loss(p, t, "huber")
    with pytest.raises(ValueError, match="shape"):
        denoise_loss(p, t[:1], "l2")


def test_l0_gamma_anneals_linearly_from_two_to_zero():
    assert [l0_gamma(s, 100) for s in (0, 25, 50, 100, 150)] == [2.0, 1.5, 1.0, 0.0, 0.0]


class Pairs(Dataset):
    """Smooth synthetic images with N2N pairs (or fixed noisy/clean for eval)."""

    def __init__(self, n, size=32, eval=False):
        g = torch.Generator().manual_seed(1 if eval else 0)
        low = torch.rand(n, 1, size // 8, size // 8, generator=g)
        self.clean = torch.nn.functional.interpolate(low, size=size, mode="bilinear", align_corners=False)
        self.noise, self.eval, self.g = parse_noise("gaussian:25"), eval, g

    def __len__(self):
        return len(self.clean)

    def __getitem__(self, i):
        c = self.clean[i]
        x, y = n2n_pair(c, self.noise, self.g)
        return (x, c, c) if self.eval else (x, y, c)


def test_lightning_fit_lowers_the_loss_and_logs_psnr_ssim_and_images(tmp_path):
    torch.manual_seed(0)
    model = Denoiser(N2NUNet(1, width=8), functools.partial(torch.optim.Adam, lr=3e-3), loss="l2",
                     test_names=["a", "b"], log_images=1)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        num_sanity_val_steps=0)
    train = DataLoader(Pairs(48), batch_size=8)
    val = DataLoader(Pairs(2, eval=True), batch_size=1)
    losses = []

    class Track(L.Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
            losses.append(float(outputs["loss"]))

    trainer.callbacks.append(Track())
    trainer.fit(model, train, val)
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5
    assert {"val/psnr", "val/ssim", "train/loss_epoch"} <= set(trainer.callback_metrics)
    assert len(list((tmp_path / "images").glob("val_epoch*.png"))) == 2
    out = trainer.test(model, [val, DataLoader(Pairs(1, eval=True), batch_size=1)], verbose=False)
    keys = set(out[0]) | set(out[1])
    assert {"test/psnr/a", "test/ssim/a", "test/psnr/b", "test/ssim/b"} <= keys
    # PSNR logged = mean of per-image 10 log10(1 / mse) on the clamped output
    with torch.no_grad():
        x, _, c = next(iter(DataLoader(Pairs(1, eval=True), batch_size=1)))
        ref = float(10 * torch.log10(1 / (model(x).clamp(0, 1) - c).pow(2).mean()))
    assert out[1]["test/psnr/b"] == pytest.approx(ref, abs=1e-3)
    fresh = L.Trainer(accelerator="cpu", logger=False, enable_progress_bar=False, enable_model_summary=False,
                      default_root_dir=tmp_path)
    single = fresh.test(model, DataLoader(Pairs(1, eval=True), batch_size=1), verbose=False)
    assert single[0]["test/psnr/a"] == pytest.approx(ref, abs=1e-3)  # one loader: the first name


def test_l0_model_logs_gamma(tmp_path):
    model = Denoiser(N2NUNet(1, width=4), functools.partial(torch.optim.Adam, lr=1e-3), loss="l0")
    trainer = L.Trainer(max_steps=4, accelerator="cpu", logger=False, enable_checkpointing=False,
                        enable_progress_bar=False, enable_model_summary=False, default_root_dir=tmp_path,
                        limit_val_batches=0)
    trainer.fit(model, DataLoader(Pairs(16), batch_size=4))
    assert 0 < float(trainer.callback_metrics["train/l0_gamma"]) < 2

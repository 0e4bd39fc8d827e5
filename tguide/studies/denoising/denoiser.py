r"""Image denoising as a LightningModule (Noise2Noise / Noise2Clean), and its losses.

Losses (Lehtinen et al., *Noise2Noise*, ICML 2018, §2–3), :math:`e = f_\theta(\hat x) - \hat y`:

- ``l2``: :math:`\operatorname{mean} e^2` — the minimiser is the *mean* of the targets, so noisy
  targets with zero-mean noise (Gaussian, Poisson) give the clean image in expectation;
- ``l1``: :math:`\operatorname{mean} |e|` — the *median* (text overlay: under 50% corruption);
- ``l0``: :math:`\operatorname{mean} (|e| + \varepsilon)^{\gamma}` with γ annealed linearly from 2
  to 0 over training (ε = 1e-8) — approaches the *mode* (random-valued impulse noise).

Evaluation clamps the output to [0, 1] and reports the mean per-image PSNR (data range 1) and
SSIM, both from torchmetrics.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics.image import PeakSignalNoiseRatio, StructuralSimilarityIndexMeasure

from tguide.errors import TGuideError

LOSSES = ("l2", "l1", "l0")
DEFAULT_LOSS = {"gaussian": "l2", "poisson": "l2", "bernoulli": "l2", "impulse": "l0", "text": "l1"}

__all__ = ["LOSSES", "DEFAULT_LOSS", "l0_gamma", "denoise_loss", "Denoiser"]


def l0_gamma(step: int, total_steps: int, start: float = 2.0) -> float:
    """γ of the annealed L0 loss at ``step`` of ``total_steps``: linear from ``start`` to 0."""
    if total_steps <= 0:
        return start
    return start * max(0.0, 1.0 - step / total_steps)


def denoise_loss(pred: Tensor, target: Tensor, kind: str = "l2", gamma: float = 2.0, eps: float = 1e-8) -> Tensor:
    """The Noise2Noise losses on ``(B, C, H, W)`` tensors: ``l2``, ``l1``, or ``l0`` with exponent ``gamma``."""
    if pred.shape != target.shape:
        raise ValueError(f"prediction {tuple(pred.shape)} and target {tuple(target.shape)} differ in shape")
    e = pred - target
    if kind == "l2":
        return e.pow(2).mean()
    if kind == "l1":
        return e.abs().mean()
    if kind == "l0":
        return (e.abs() + eps).pow(gamma).mean()
    raise ValueError(f"unknown loss {kind!r}; choose from {LOSSES}")


class Denoiser(L.LightningModule):
    """Train ``net`` on ``(input, target, clean)`` batches; log loss, PSNR and SSIM; log example images.

    Logs ``train/loss``, ``val/loss``, ``val/psnr``, ``val/ssim`` and per test set
    ``test/psnr/<name>``, ``test/ssim/<name>`` (names from ``test_names``, else the datamodule's
    ``test_sets``). Example triptychs (noisy | denoised | clean) of the first ``log_images``
    validation images go to the logger (``log_image`` where the logger has it, W&B) and to
    ``<run>/images/val_epoch<k>.png``.

    Args:
        net: ``(B, C, H, W) → (B, C, H, W)`` denoiser (e.g. :class:`tguide.studies.denoising.unet.N2NUNet`).
        optimizer: partial taking ``params``; scheduler: optional partial taking ``optimizer``
            (stepped every epoch).
        loss: ``l2``, ``l1`` or ``l0`` (annealed over ``trainer.estimated_stepping_batches``).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: Callable[..., torch.optim.Optimizer],
        scheduler: Callable[..., Any] | None = None,
        loss: str = "l2",
        l0_eps: float = 1e-8,
        test_names: Sequence[str] | None = None,
        log_images: int = 2,
    ) -> None:
        super().__init__()
        if loss not in LOSSES:
            raise TGuideError(f"model.loss must be one of {LOSSES}, got {loss!r}")
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net, self.loss_kind, self.l0_eps = net, loss, l0_eps
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.test_names = list(test_names) if test_names else None
        self.log_images = int(log_images)
        self.val_psnr = PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3))
        self.val_ssim = StructuralSimilarityIndexMeasure(data_range=1.0)
        self.test_psnr = nn.ModuleList()
        self.test_ssim = nn.ModuleList()
        self._examples: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def gamma(self) -> float:
        total = int(self.trainer.estimated_stepping_batches) if self._trainer is not None else 0
        return l0_gamma(self.global_step, total)

    def training_step(self, batch: Sequence[Tensor], batch_idx: int) -> Tensor:
        x, y = batch[0], batch[1]
        loss = denoise_loss(self(x), y, self.loss_kind, self.gamma(), self.l0_eps)
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=x.shape[0])
        if self.loss_kind == "l0":
            self.log("train/l0_gamma", self.gamma(), on_step=True, on_epoch=False)
        return loss

    def _denoise_eval(self, batch: Sequence[Tensor]) -> tuple[Tensor, Tensor, Tensor]:
        x, clean = batch[0], batch[2] if len(batch) > 2 else batch[1]
        return x, self(x).clamp(0, 1), clean

    def validation_step(self, batch: Sequence[Tensor], batch_idx: int) -> None:
        x, out, clean = self._denoise_eval(batch)
        self.log("val/loss", nn.functional.mse_loss(out, clean), batch_size=x.shape[0], sync_dist=True)
        self.val_psnr.update(out, clean)
        self.val_ssim.update(out, clean)
        self.log("val/psnr", self.val_psnr, on_epoch=True, prog_bar=True, batch_size=x.shape[0])
        self.log("val/ssim", self.val_ssim, on_epoch=True, batch_size=x.shape[0])
        if batch_idx < self.log_images:
            self._examples.append(torch.cat([x[0].clamp(0, 1), out[0], clean[0]], dim=-1).detach().cpu())

    def on_validation_epoch_end(self) -> None:
        examples, self._examples = self._examples, []
        if not examples or self.trainer.sanity_checking or not self.trainer.is_global_zero:
            return
        h = max(e.shape[-2] for e in examples)
        w = max(e.shape[-1] for e in examples)
        grid = torch.zeros(examples[0].shape[0], h * len(examples), w)
        for i, e in enumerate(examples):
            grid[:, i * h : i * h + e.shape[-2], : e.shape[-1]] = e
        for logger in self.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(
                    key="val/examples", images=[grid], caption=["noisy | denoised | clean"], step=self.global_step
                )
        folder = Path(self.trainer.default_root_dir) / "images"
        folder.mkdir(parents=True, exist_ok=True)
        from PIL import Image

        pixels = (grid.clamp(0, 1) * 255).round().byte()  # (C, H, W) uint8
        array = pixels[0].numpy() if pixels.shape[0] == 1 else pixels.permute(1, 2, 0).numpy()
        Image.fromarray(array).save(folder / f"val_epoch{self.current_epoch:03d}.png")

    def on_test_start(self) -> None:
        names = self.test_names
        if names is None:
            dm = getattr(self.trainer, "datamodule", None)
            names = list(getattr(dm, "test_sets", []) or [])
        loaders = self.trainer.test_dataloaders
        n = len(loaders) if isinstance(loaders, (list, tuple)) else (1 if loaders is not None else len(names))
        self._test_names = (
            (names + [f"set{i}" for i in range(len(names), n)])[:n] if names else [f"set{i}" for i in range(n)]
        )
        self.test_psnr = nn.ModuleList(
            [PeakSignalNoiseRatio(data_range=1.0, reduction="elementwise_mean", dim=(1, 2, 3)) for _ in range(n)]
        ).to(self.device)
        self.test_ssim = nn.ModuleList([StructuralSimilarityIndexMeasure(data_range=1.0) for _ in range(n)]).to(
            self.device
        )

    def test_step(self, batch: Sequence[Tensor], batch_idx: int, dataloader_idx: int = 0) -> None:
        x, out, clean = self._denoise_eval(batch)
        name = self._test_names[dataloader_idx]
        psnr, ssim = self.test_psnr[dataloader_idx], self.test_ssim[dataloader_idx]
        # on_test_start fills the lists with one metric of each kind per test loader
        assert isinstance(psnr, PeakSignalNoiseRatio) and isinstance(ssim, StructuralSimilarityIndexMeasure)
        psnr.update(out, clean)
        ssim.update(out, clean)
        self.log(
            f"test/psnr/{name}",
            psnr,
            on_epoch=True,
            batch_size=x.shape[0],
            add_dataloader_idx=False,
        )
        self.log(
            f"test/ssim/{name}",
            ssim,
            on_epoch=True,
            batch_size=x.shape[0],
            add_dataloader_idx=False,
        )

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer)}}

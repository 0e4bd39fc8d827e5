r"""SIREN image fitting as a LightningModule: coordinates → RGB, MSE loss, PSNR every epoch.

.. math::
    \mathrm{PSNR} = 10 \log_{10} \frac{R^2}{\mathrm{MSE}}

with the data range :math:`R = 2` for pixels in :math:`[-1, 1]` (the same number as the usual
PSNR on :math:`[0, 1]` pixels with :math:`R = 1`). The data module
(:class:`tguide.studies.siren.data.ImageFitDataModule`) gives the whole image as one batch, so one
training step is one epoch; ``train/psnr`` is the PSNR of that step's forward pass (the network
*before* the step's update) and ``val/psnr`` the PSNR after it.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn

from tguide.studies.siren.net import Siren

__all__ = ["psnr", "SirenFit"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]


def psnr(mse: Tensor | float, data_range: float = 2.0) -> Tensor:
    """PSNR in dB from a mean squared error (any shape): ``10 log10(data_range² / mse)``."""
    mse = torch.as_tensor(mse, dtype=torch.float64 if not torch.is_tensor(mse) else None)
    if (mse < 0).any():
        raise ValueError("mse must be >= 0")
    return 10.0 * torch.log10(data_range**2 / mse.clamp_min(1e-30))


class SirenFit(L.LightningModule):
    """Fit one image with a SIREN; log ``train/loss``, ``train/psnr``, ``val/psnr``, ``test/psnr``.

    Args:
        net: a :class:`~tguide.studies.siren.net.Siren` (or any ``(P, 2) → (P, C)`` module); ``None``
            builds ``Siren(2, hidden_features, hidden_layers, 3, omega0)``.
        optimizer: partial taking the parameters (default Adam, ``lr``).
        lr: learning rate of the default Adam.
    """

    def __init__(
        self,
        net: nn.Module | None = None,
        hidden_features: int = 128,
        hidden_layers: int = 3,
        omega0: float = 30.0,
        lr: float = 1e-4,
        optimizer: OptimizerFactory | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer"])
        self.net = net if net is not None else Siren(2, hidden_features, hidden_layers, 3, omega0)
        self.optimizer_factory = optimizer
        self.psnr_history: list[float] = []  # train PSNR of every epoch, epoch 0 = initialisation

    def forward(self, coords: Tensor) -> Tensor:  # (P, 2) -> (P, 3)
        return self.net(coords)

    def _mse(self, batch: tuple[Tensor, Tensor]) -> Tensor:
        coords, pixels = batch
        if coords.dim() == 3:  # a DataLoader with batch_size=1 adds a leading dim
            coords, pixels = coords[0], pixels[0]
        return torch.mean((self(coords) - pixels) ** 2)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        loss = self._mse(batch)
        value = psnr(loss.detach())
        self.psnr_history.append(float(value))
        self.log("train/loss", loss, on_step=False, on_epoch=True, batch_size=1)
        self.log("train/psnr", value, on_step=False, on_epoch=True, prog_bar=True, batch_size=1)
        return loss

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("val/psnr", psnr(self._mse(batch)), on_epoch=True, prog_bar=True, batch_size=1)

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self.log("test/psnr", psnr(self._mse(batch)), on_epoch=True, batch_size=1)

    def configure_optimizers(self) -> Any:
        if self.optimizer_factory is not None:
            return self.optimizer_factory(params=self.parameters())
        return torch.optim.Adam(self.parameters(), lr=float(self.hparams["lr"]))

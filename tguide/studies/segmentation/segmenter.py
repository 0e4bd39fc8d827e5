"""Binary (vessel) segmentation as a LightningModule over a U-Net, loss and metrics inside the FOV.

Batches are ``(image (B, 3, H, W), label (B, H, W))`` with labels 0/1 and ``ignore_index``
(255, :data:`tguide.studies.segmentation.retina.IGNORE`) outside the field of view and in padding. The loss is

.. math::

    \\mathcal{L} = \\underbrace{-\\frac{1}{|V|}\\sum_{p\\in V} y_p\\log\\sigma(z_p)
    + (1-y_p)\\log(1-\\sigma(z_p))}_{\\text{BCE}}
    + \\underbrace{1 - \\frac{2\\sum_{p\\in V}\\sigma(z_p)\\,y_p + 1}
    {\\sum_{p\\in V}\\sigma(z_p) + \\sum_{p\\in V} y_p + 1}}_{\\text{soft Dice}}

over the labelled pixels ``V`` of the batch (Milletari et al. 2016 for the soft Dice). Metrics
(torchmetrics, ``ignore_index`` honoured): Dice = binary F1 at threshold 0.5 over all FOV pixels
of the split (micro), IoU (Jaccard) and the exact AUROC of the vessel probabilities.

The network (``self.net``) is :func:`build_unet` = ``segmentation_models_pytorch.Unet``: its
decoder output ``"net.decoder"`` (``(B, decoder_channels[-1], H, W)``, full resolution) and
blocks ``"net.decoder.blocks.<i>"`` are the named layers for pixel-level transferability
(:func:`tguide.features.extract_pixel_features`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torchmetrics.classification import BinaryAUROC, BinaryF1Score, BinaryJaccardIndex

__all__ = ["build_unet", "dice_bce_loss", "Segmenter"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]
IGNORE = 255


def build_unet(
    encoder_name: str = "resnet18",
    encoder_depth: int = 3,
    decoder_channels: Sequence[int] = (64, 32, 16),
    encoder_weights: str | None = None,
    in_channels: int = 3,
    classes: int = 1,
) -> nn.Module:
    """``segmentation_models_pytorch.Unet`` with a checked configuration.

    ``encoder_weights=None`` (default) starts from random weights: pretrained ones
    (``"imagenet"``) need a download, which works only where a network is available.
    """
    import segmentation_models_pytorch as smp

    decoder_channels = [int(c) for c in decoder_channels]
    if len(decoder_channels) != encoder_depth:
        raise ValueError(
            f"`decoder_channels` needs one entry per encoder stage (encoder_depth={encoder_depth}), "
            f"got {decoder_channels}."
        )
    try:
        return smp.Unet(
            encoder_name=encoder_name,
            encoder_depth=encoder_depth,
            encoder_weights=encoder_weights,
            decoder_channels=decoder_channels,
            in_channels=in_channels,
            classes=classes,
        )
    except KeyError as err:
        raise ValueError(
            f"`encoder_name` {encoder_name!r} is not a segmentation_models_pytorch encoder: {err}"
        ) from err


def dice_bce_loss(logits: Tensor, labels: Tensor, ignore_index: int = IGNORE, smooth: float = 1.0) -> Tensor:
    """BCE + soft Dice over the pixels whose label is not ``ignore_index`` (formula in the module
    docstring). ``logits (B, 1, H, W)`` or ``(B, H, W)``, ``labels (B, H, W)`` in {0, 1, ignore}."""
    logits = logits[:, 0] if logits.ndim == 4 else logits
    if logits.shape != labels.shape:
        raise ValueError(f"logits {tuple(logits.shape)} and labels {tuple(labels.shape)} must have the same (B, H, W).")
    valid = labels != ignore_index
    if not bool(valid.any()):
        return logits.sum() * 0.0  # a batch with no labelled pixel contributes nothing
    z, y = logits[valid], labels[valid].to(logits.dtype)
    bce = F.binary_cross_entropy_with_logits(z, y)
    p = torch.sigmoid(z)
    dice = 1.0 - (2.0 * (p * y).sum() + smooth) / (p.sum() + y.sum() + smooth)
    return bce + dice


class Segmenter(L.LightningModule):
    """Train ``net`` (logits ``(B, 1, H, W)``) with Dice + BCE inside the FOV.

    Logs ``{train,val,test}/loss`` and ``{val,test}/{dice,iou,auroc}``; at the end of each
    validation, a W&B logger gets ``val/predictions`` (image | reference | probability of the
    first ``log_images`` validation images; other loggers skip it).

    Args:
        net: e.g. :func:`build_unet`; held as ``self.net`` (layers ``net.decoder``, ...).
        optimizer: partial taking ``params``; scheduler: optional partial taking ``optimizer``.
        ignore_index: label of unlabelled pixels (outside the FOV, padding).
        log_images: how many validation images to log (0 = none).
    """

    def __init__(
        self,
        net: nn.Module,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        ignore_index: int = IGNORE,
        log_images: int = 2,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.optimizer_factory, self.scheduler_factory = optimizer, scheduler
        self.ignore_index, self.log_images = ignore_index, log_images
        for stage in ("val", "test"):
            setattr(self, f"{stage}_dice", BinaryF1Score(ignore_index=ignore_index))
            setattr(self, f"{stage}_iou", BinaryJaccardIndex(ignore_index=ignore_index))
            setattr(self, f"{stage}_auroc", BinaryAUROC(ignore_index=ignore_index))
        self._shown: list[Tensor] = []

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        x, y = batch
        loss = dice_bce_loss(self(x), y, self.ignore_index)
        self.log("train/loss", loss, on_step=True, on_epoch=True, batch_size=x.shape[0], sync_dist=True)
        return loss

    def _eval_step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = dice_bce_loss(logits, y, self.ignore_index)
        prob = torch.sigmoid(logits[:, 0])  # (B, H, W)
        for name in ("dice", "iou", "auroc"):
            metric = getattr(self, f"{stage}_{name}")
            metric.update(prob, y)
            self.log(f"{stage}/{name}", metric, on_step=False, on_epoch=True, prog_bar=name == "dice")
        self.log(f"{stage}/loss", loss, on_step=False, on_epoch=True, batch_size=x.shape[0], sync_dist=True)
        return prob

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        prob = self._eval_step(batch, "val")
        if len(self._shown) < self.log_images:
            x, y = batch
            for i in range(min(x.shape[0], self.log_images - len(self._shown))):
                self._shown.append(prediction_panel(x[i], y[i], prob[i], self.ignore_index))

    def on_validation_epoch_end(self) -> None:
        panels, self._shown = self._shown, []
        if not panels or self.trainer.sanity_checking:
            return
        from lightning.pytorch.loggers import WandbLogger

        for logger in self.loggers:
            if isinstance(logger, WandbLogger):
                logger.log_image(
                    "val/predictions",
                    [p.permute(1, 2, 0).cpu().numpy() for p in panels],
                    step=self.global_step,
                    caption=["image | reference | prediction"] * len(panels),
                )

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._eval_step(batch, "test")

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer)}}


def prediction_panel(image: Tensor, label: Tensor, prob: Tensor, ignore_index: int = IGNORE) -> Tensor:
    """``(3, H, 3W)`` in [0, 1]: the image, the reference (grey outside the FOV) and the probability."""
    ref = label.to(torch.float32).clone()
    ref[label == ignore_index] = 0.5
    ref3, prob3 = ref[None].expand(3, -1, -1), prob.detach().to(torch.float32)[None].expand(3, -1, -1)
    return torch.cat([image.detach().to(torch.float32).clamp(0, 1), ref3, prob3], dim=-1)

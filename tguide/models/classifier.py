"""Image classification as a LightningModule: any ``nn.Module`` net, cross-entropy, accuracy."""

from __future__ import annotations

from typing import Any, Callable

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]


class Classifier(L.LightningModule):
    """Train ``net`` with cross-entropy; log ``{train,val,test}/loss`` and ``{train,val,test}/acc``.

    Args:
        net: maps ``(B, ...)`` inputs to ``(B, num_classes)`` logits; held as ``self.net``, so its
            layers are named ``net.<name>`` in ``named_modules()``.
        num_classes: number of output classes (for the accuracy metric).
        optimizer: a partial taking the parameters (Hydra ``_partial_: true``), e.g.
            ``functools.partial(torch.optim.Adam, lr=1e-3)``.
        scheduler: optional partial taking the optimizer; stepped every epoch.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
    ) -> None:
        super().__init__()
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.loss = nn.CrossEntropyLoss()
        # one accuracy state per stage (ModuleDict keys may not shadow Module.train)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        acc = getattr(self, f"{stage}_acc")
        acc(logits, y)
        on_step = stage == "train"
        self.log(f"{stage}/loss", loss, on_step=on_step, on_epoch=True, prog_bar=stage != "train",
                 sync_dist=True, batch_size=y.shape[0])
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.parameters())
        if self.scheduler_factory is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": self.scheduler_factory(optimizer=optimizer)}}

"""The one LightningModule base for "network + classification head" training.

:class:`ClassificationModule` holds what every classifier of the project shares: the
cross-entropy loss (optional label smoothing), one ``torchmetrics`` accuracy per stage, the
training / validation / test step that logs ``{train,val,test}/loss`` and ``{train,val,test}/acc``,
and ``configure_optimizers`` (an optimiser over :meth:`ClassificationModule.param_groups`, an
optional learning-rate scheduler stepped every ``scheduler_interval``). Subclasses give
``forward`` and, where they differ, ``param_groups`` / ``make_optimizer`` / ``make_scheduler``:
:class:`tguide.models.classifier.Classifier` (any net, optimiser and scheduler from the config)
and :class:`tguide.select.finetune.FineTuner` (a candidate cut at a layer + a new head).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from tguide.errors import TGuideError

__all__ = ["ClassificationModule", "OptimizerFactory", "SchedulerFactory"]

OptimizerFactory = Callable[..., torch.optim.Optimizer]
SchedulerFactory = Callable[..., Any]
STAGES = ("train", "val", "test")


class ClassificationModule(L.LightningModule):
    """Cross-entropy classification: shared steps, accuracy metrics and optimiser configuration.

    Args:
        num_classes: output classes; ``None`` defers the metrics to :meth:`build_metrics` (a
            subclass that learns the class count from the data module calls it in ``setup``).
        optimizer: a partial taking ``params`` (e.g. ``functools.partial(torch.optim.Adam, lr=1e-3)``);
            used by the default :meth:`make_optimizer`.
        scheduler: optional partial taking ``optimizer``; used by the default :meth:`make_scheduler`.
        scheduler_interval: ``"epoch"`` or ``"step"``.
        label_smoothing: of the cross-entropy.
    """

    def __init__(
        self,
        num_classes: int | None = None,
        *,
        optimizer: OptimizerFactory | None = None,
        scheduler: SchedulerFactory | None = None,
        scheduler_interval: str = "epoch",
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        if scheduler_interval not in ("epoch", "step"):
            raise TGuideError(f"scheduler_interval must be 'epoch' or 'step', got {scheduler_interval!r}")
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        self.scheduler_interval = scheduler_interval
        self.loss = nn.CrossEntropyLoss(label_smoothing=float(label_smoothing))
        if num_classes is not None:
            self.build_metrics(int(num_classes))

    def build_metrics(self, num_classes: int) -> None:
        """One micro accuracy per stage (attributes ``train_acc``, ``val_acc``, ``test_acc``;
        a ModuleDict key may not shadow ``Module.train``)."""
        if num_classes < 2:
            raise TGuideError(f"a classifier needs at least 2 classes, got num_classes={num_classes}")
        for stage in STAGES:
            setattr(self, f"{stage}_acc", MulticlassAccuracy(num_classes, average="micro"))

    # ------------------------------------------------------------------ steps

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)  # (B, num_classes)
        loss = self.loss(logits, y)
        acc = getattr(self, f"{stage}_acc")
        acc(logits, y)
        self.log(
            f"{stage}/loss",
            loss,
            on_step=stage == "train",
            on_epoch=True,
            prog_bar=stage != "train",
            sync_dist=True,
            batch_size=y.shape[0],
        )
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    # ------------------------------------------------------------------ optimisation

    def param_groups(self) -> Iterable[Any]:
        """What the optimiser trains: all parameters (subclasses return per-group learning rates)."""
        return self.parameters()

    def make_optimizer(self, params: Iterable[Any]) -> torch.optim.Optimizer:
        if self.optimizer_factory is None:
            raise TGuideError(f"{type(self).__name__} has no optimizer: pass optimizer=partial(torch.optim.X, lr=...)")
        return self.optimizer_factory(params=params)

    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        return None if self.scheduler_factory is None else self.scheduler_factory(optimizer=optimizer)

    def configure_optimizers(self) -> Any:
        optimizer = self.make_optimizer(self.param_groups())
        scheduler = self.make_scheduler(optimizer)
        if scheduler is None:
            return optimizer
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": self.scheduler_interval}}

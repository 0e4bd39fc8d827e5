"""Image classification as a LightningModule: any ``nn.Module`` net, cross-entropy, accuracy."""

from __future__ import annotations

from torch import Tensor, nn

from tguide.models.classification import ClassificationModule, OptimizerFactory, SchedulerFactory

__all__ = ["Classifier", "OptimizerFactory", "SchedulerFactory"]


class Classifier(ClassificationModule):
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
        super().__init__(num_classes, optimizer=optimizer, scheduler=scheduler, scheduler_interval="epoch")
        self.save_hyperparameters(ignore=["net", "optimizer", "scheduler"])
        self.net = net

    def forward(self, x: Tensor) -> Tensor:
        return self.net(x)

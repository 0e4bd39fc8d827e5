"""The shared base of the project's classifiers: one step, one set of metrics, one optimiser config."""

import functools

import lightning as L
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tguide.errors import TGuideError
from tguide.models.classification import ClassificationModule
from tguide.models.classifier import Classifier


class _Linear(ClassificationModule):
    def __init__(self) -> None:
        super().__init__(2, optimizer=functools.partial(torch.optim.SGD, lr=0.5))
        self.fc = nn.Linear(2, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x)


def test_subclasses_share_the_step_logic():
    from tguide.select.finetune import FineTuner

    for cls in (Classifier, FineTuner):
        for name in ("_step", "training_step", "validation_step", "test_step", "configure_optimizers"):
            assert getattr(cls, name) is getattr(ClassificationModule, name), (cls.__name__, name)


def test_a_separable_problem_is_learned_and_logged():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(2).repeat(64)
    x = torch.randn(128, 2, generator=g) * 0.3 + torch.stack([y * 2.0 - 1, 1 - y * 2.0], 1)
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    model = _Linear()
    before = float(nn.functional.cross_entropy(model(x), y))
    trainer = L.Trainer(max_epochs=5, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False)
    trainer.fit(model, loader, loader)
    after = float(nn.functional.cross_entropy(model(x), y))
    assert after < before / 2
    assert trainer.callback_metrics["val/acc"] > 0.95 and "train/loss_epoch" in trainer.callback_metrics


def test_bad_settings_are_clear_errors():
    with pytest.raises(TGuideError, match="at least 2 classes"):
        ClassificationModule(1)
    with pytest.raises(TGuideError, match="scheduler_interval"):
        ClassificationModule(2, scheduler_interval="batch")
    with pytest.raises(TGuideError, match="no optimizer"):
        ClassificationModule(2).configure_optimizers()

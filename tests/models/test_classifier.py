import functools

import lightning as L
import torch
from torch.utils.data import DataLoader, TensorDataset

from tguide.models.classifier import Classifier
from tguide.nets.lenet import LeNet5


def test_lenet_shapes():
    net = LeNet5(num_classes=3, image_size=16)
    assert net(torch.zeros(2, 1, 16, 16)).shape == (2, 3)
    assert net.embed(torch.zeros(2, 1, 16, 16)).shape == (2, 84)


def test_training_reduces_loss(tmp_path):
    torch.manual_seed(0)
    x = torch.randn(64, 1, 28, 28)
    y = torch.randint(0, 4, (64,))
    loader = DataLoader(TensorDataset(x, y), batch_size=16, shuffle=True)
    model = Classifier(LeNet5(num_classes=4), num_classes=4,
                       optimizer=functools.partial(torch.optim.Adam, lr=3e-3))
    with torch.no_grad():
        before = float(model.loss(model(x), y))
    trainer = L.Trainer(max_epochs=15, logger=False, enable_checkpointing=False, enable_progress_bar=False,
                        enable_model_summary=False, accelerator="cpu", default_root_dir=tmp_path)
    trainer.fit(model, loader, loader)
    with torch.no_grad():
        after = float(model.loss(model(x), y))
    assert after < 0.5 * before  # memorises 64 random images
    assert "val/acc" in trainer.callback_metrics and "train/loss_epoch" in trainer.callback_metrics

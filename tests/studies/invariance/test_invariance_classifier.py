"""InvarianceClassifier: GIT in training_step touches only small classes; the recipe runs end to end."""

import json

import pytest
import torch

from tguide.fit import compose, run
from tguide.studies.invariance.classifier import InvarianceClassifier
from tguide.nets.lenet import LeNet5


class _FakeGenerator:
    """Stands in for a trained GIT model: adds 10 and records what it was asked to transform."""

    info = {"family": "fake"}

    def __init__(self) -> None:
        self.seen: list[torch.Tensor] = []

    def __call__(self, x: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
        self.seen.append(x.clone())
        return x + 10.0

    def to(self, device):
        return self


def test_training_step_replaces_only_small_classes(monkeypatch):
    torch.manual_seed(0)
    model = InvarianceClassifier(LeNet5(), 10, lambda params: torch.optim.SGD(params, lr=0.1), git=True,
                                 git_threshold=20)
    fake = _FakeGenerator()
    counts = torch.tensor([500, 125, 56, 31, 20, 14, 10, 8, 6, 5])
    model.set_generator(fake, counts)
    model.on_fit_start()
    seen_by_net = []
    monkeypatch.setattr(model, "_step", lambda batch, stage: seen_by_net.append(batch) or torch.tensor(0.0))
    x = torch.randn(20, 1, 28, 28)
    y = torch.arange(10).repeat(2)
    model.training_step((x, y), 0)
    small = counts[y] <= 20
    assert len(fake.seen) == 1 and torch.equal(fake.seen[0], x[small])
    xb, yb = seen_by_net[0]
    assert torch.equal(yb, y)
    torch.testing.assert_close(xb[small], x[small] + 10.0)
    assert torch.equal(xb[~small], x[~small])
    # git=False: the batch reaches the network untouched
    plain = InvarianceClassifier(LeNet5(), 10, lambda params: torch.optim.SGD(params, lr=0.1), git=False)
    monkeypatch.setattr(plain, "_step", lambda batch, stage: seen_by_net.append(batch) or torch.tensor(0.0))
    plain.training_step((x, y), 0)
    assert seen_by_net[-1][0] is x


def test_recipe_smoke_with_git(tmp_path):
    cfg = compose(["recipe=invariance_lt", "git=true", "transform=rotation", "trainer.max_epochs=2",
                   "model.git_steps=15", "logger=csv", f"paths.run_dir={tmp_path}", "name=unit",
                   "trainer.enable_progress_bar=false"])
    metrics = run(cfg)
    saved = json.loads((tmp_path / "metrics.json").read_text())
    # class-balanced sampling: 6 of 10 classes have ≤ 20 images, so ~60% of examples are generated
    assert 0.45 < saved["train/git_fraction"] < 0.75
    for key in ("test/acc_balanced", "test/acc_head", "test/acc_mid", "test/acc_tail"):
        assert 0.0 <= saved[key] <= 1.0
    assert saved["test/acc_balanced"] > 0.2  # two short epochs already beat chance (0.1)
    assert metrics["test/ekld_tail"] >= 0
    assert (tmp_path / "invariance.csv").exists()


def test_recipe_rejects_a_bad_transform(tmp_path):
    from tguide.errors import TGuideError

    cfg = compose(["recipe=invariance_lt", "transform=shear", "logger=none", f"paths.run_dir={tmp_path}", "name=unit"])
    with pytest.raises((TGuideError, ValueError), match="shear"):
        run(cfg)

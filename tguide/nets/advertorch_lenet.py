"""The "LeNet5" MNIST classifier of advertorch (its clean and PGD-adversarially trained examples).

``conv1`` (1→32, 3×3, padding 1) → ``relu1`` → ``pool1`` (2×2 max, 28→14) → ``conv2`` (32→64,
3×3, padding 1) → ``relu2`` → ``pool2`` (2×2 max, 14→7) → ``flatten`` (64·7·7 = 3136) →
``linear1`` (→200) → ``relu3`` → ``linear2`` (→10). Despite the name it is not LeCun's LeNet-5
(compare :class:`tguide.nets.lenet.LeNet5`). State dict keys: ``conv1, conv2, linear1, linear2``.

Input ``(B, 1, 28, 28)``: grey in [0, 1] (white digit on black), **no** normalisation; output
logits ``(B, 10)``. :attr:`AdvertorchLeNet5.STAGES`: both pooled conv maps and the 200-d
penultimate layer (``relu3``).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["AdvertorchLeNet5"]


class AdvertorchLeNet5(nn.Module):
    """advertorch's MNIST LeNet5 (0.65M parameters); see the module docstring."""

    STAGES: tuple[str, ...] = ("pool1", "pool2", "relu3")

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(1, 32, 3, padding=1)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2)
        self.flatten = nn.Flatten(1)
        self.linear1 = nn.Linear(64 * 7 * 7, 200)
        self.relu3 = nn.ReLU()
        self.linear2 = nn.Linear(200, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Penultimate features ``(B, 200)``; needs 28×28 input."""
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        return self.relu3(self.linear1(self.flatten(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear2(self.embed(x))

"""The small CNN of PyTorch's CIFAR-10 tutorial, as shipped with Captum's tutorials.

``conv1`` (3→6, 5×5) → ``relu1`` → ``pool1`` (2×2 max) → ``conv2`` (6→16, 5×5) → ``relu2`` →
``pool2`` (2×2 max) → ``flatten`` (16·5·5 = 400) → ``fc1`` (→120) → ``relu3`` → ``fc2`` (→84)
→ ``relu4`` → ``fc3`` (→10). All convs and linears have biases; the activations and pools are
separate parameter-free modules so that each can be captured by name. State dict keys:
``conv1, conv2, fc1, fc2, fc3`` (weight/bias).

Input ``(B, 3, 32, 32)``: RGB in [0, 1], then (x − 0.5) / 0.5 per channel; output logits
``(B, 10)``. :attr:`CaptumCifarCNN.STAGES`: both pooled conv maps and the two hidden fc layers
(after ReLU); ``relu4`` (84-d) is the penultimate layer.
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["CaptumCifarCNN"]


class CaptumCifarCNN(nn.Module):
    """LeNet-style CIFAR-10 CNN (62k parameters); see the module docstring."""

    STAGES: tuple[str, ...] = ("pool1", "pool2", "relu3", "relu4")

    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 6, 5)
        self.relu1 = nn.ReLU()
        self.pool1 = nn.MaxPool2d(2, 2)
        self.conv2 = nn.Conv2d(6, 16, 5)
        self.relu2 = nn.ReLU()
        self.pool2 = nn.MaxPool2d(2, 2)
        self.flatten = nn.Flatten(1)
        self.fc1 = nn.Linear(16 * 5 * 5, 120)
        self.relu3 = nn.ReLU()
        self.fc2 = nn.Linear(120, 84)
        self.relu4 = nn.ReLU()
        self.fc3 = nn.Linear(84, num_classes)

    def embed(self, x: Tensor) -> Tensor:
        """Penultimate features ``(B, 84)``; needs 32×32 input (the flatten is fixed at 400)."""
        x = self.pool1(self.relu1(self.conv1(x)))
        x = self.pool2(self.relu2(self.conv2(x)))
        x = self.relu3(self.fc1(self.flatten(x)))
        return self.relu4(self.fc2(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(self.embed(x))

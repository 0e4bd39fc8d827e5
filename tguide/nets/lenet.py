"""LeNet-5 (LeCun et al. 1998), the small CNN of the default recipe and the few-shot studies."""

from __future__ import annotations

import torch
from torch import Tensor, nn


class LeNet5(nn.Module):
    """LeNet-5 for 1-channel images (28×28 by default; any size ≥ 16 works).

    Layers, by their ``named_modules()`` names (the names a transferability monitor
    takes): ``conv1`` (1→6, 5×5, pad 2) → ``pool1`` → ``conv2`` (6→16, 5×5) →
    ``pool2`` → ``fc1`` (→120) → ``fc2`` (→84) → ``fc3`` (→``num_classes``); ReLU
    after every conv and hidden fc. ``embed(x)`` returns the 84-d ``fc2`` features.

    Shapes: ``x (B, in_channels, H, W)`` → logits ``(B, num_classes)``.
    """

    def __init__(self, num_classes: int = 10, in_channels: int = 1, image_size: int = 28) -> None:
        super().__init__()
        if image_size < 16:
            raise ValueError(f"LeNet5 needs images of at least 16×16, got image_size={image_size}.")
        self.conv1 = nn.Conv2d(in_channels, 6, kernel_size=5, padding=2)
        self.pool1 = nn.MaxPool2d(2)
        self.conv2 = nn.Conv2d(6, 16, kernel_size=5)
        self.pool2 = nn.MaxPool2d(2)
        side = ((image_size // 2) - 4) // 2
        self.fc1 = nn.Linear(16 * side * side, 120)
        self.fc2 = nn.Linear(120, 84)
        self.fc3 = nn.Linear(84, num_classes)
        self.num_classes = num_classes

    def embed(self, x: Tensor) -> Tensor:
        """Penultimate features ``(B, 84)``."""
        x = self.pool1(torch.relu(self.conv1(x)))
        x = self.pool2(torch.relu(self.conv2(x)))
        x = torch.relu(self.fc1(x.flatten(1)))
        return torch.relu(self.fc2(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc3(self.embed(x))

"""Small ResNets (He et al. 2016, CIFAR-style) for 28×28 / 32×32 inputs, in a few widths.

``SmallResNet(width=w)``: ``stem`` (3×3 conv, ``w`` channels, BN, ReLU) → ``layer1`` (w, stride 1)
→ ``layer2`` (2w, stride 2) → ``layer3`` (4w, stride 2) → global average pool → ``fc``
(``num_classes``). Each ``layerK`` is ``blocks`` basic blocks (two 3×3 conv + BN, identity or
1×1-conv shortcut). Widths 8 / 16 / 32 give about 20k / 80k / 310k parameters with
``blocks=1`` (ResNet-8 style). ``embed(x)`` returns the pooled ``4w``-d penultimate features;
the block names ``stem, layer1, layer2, layer3`` are the layers a monitor or the benchmark scores.

Shapes: ``x (B, in_channels, H, W)``, any ``H, W ≥ 8`` → logits ``(B, num_classes)``.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["BasicBlock", "SmallResNet", "WIDTHS"]

WIDTHS = (8, 16, 32)


class BasicBlock(nn.Module):
    """out = ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x)), shortcut = 1×1 conv + BN when the shape changes."""

    def __init__(self, c_in: int, c_out: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(c_out)
        self.conv2 = nn.Conv2d(c_out, c_out, 3, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(c_out)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or c_in != c_out:
            self.shortcut = nn.Sequential(nn.Conv2d(c_in, c_out, 1, stride=stride, bias=False), nn.BatchNorm2d(c_out))

    def forward(self, x: Tensor) -> Tensor:
        out = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(self.bn2(self.conv2(out)) + self.shortcut(x))


class SmallResNet(nn.Module):
    """CIFAR-style ResNet with three stages of widths ``(w, 2w, 4w)`` (see the module docstring)."""

    def __init__(self, num_classes: int = 10, in_channels: int = 3, width: int = 16, blocks: int = 1) -> None:
        super().__init__()
        if width < 1 or blocks < 1:
            raise ValueError(f"SmallResNet needs width ≥ 1 and blocks ≥ 1, got width={width}, blocks={blocks}.")
        if num_classes < 1:
            raise ValueError(f"num_classes must be ≥ 1, got {num_classes}.")
        self.stem = nn.Sequential(
            nn.Conv2d(in_channels, width, 3, padding=1, bias=False), nn.BatchNorm2d(width), nn.ReLU()
        )

        def stage(c_in: int, c_out: int, stride: int) -> nn.Sequential:
            return nn.Sequential(
                BasicBlock(c_in, c_out, stride), *[BasicBlock(c_out, c_out) for _ in range(blocks - 1)]
            )

        self.layer1 = stage(width, width, 1)
        self.layer2 = stage(width, 2 * width, 2)
        self.layer3 = stage(2 * width, 4 * width, 2)
        self.fc = nn.Linear(4 * width, num_classes)
        self.num_classes = num_classes
        self.width = width

    def embed(self, x: Tensor) -> Tensor:
        """Penultimate features ``(B, 4·width)`` (global average pool of ``layer3``)."""
        x = self.layer3(self.layer2(self.layer1(self.stem(x))))
        return x.mean(dim=(2, 3))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.embed(x))

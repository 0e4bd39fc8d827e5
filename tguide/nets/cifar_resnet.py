"""CIFAR-10 ResNet-20/32/44/56 (He et al. 2016, §4.2) in the layout of akamaster's checkpoints.

Architecture: ``conv1`` (3×3, 3→16, no bias) → ``bn1`` → ReLU → ``layer1`` (n blocks, 16 ch,
stride 1) → ``layer2`` (n blocks, 32 ch, first stride 2) → ``layer3`` (n blocks, 64 ch, first
stride 2) → ``avgpool`` (global average, ``(B, 64, 1, 1)``) → ``flatten`` → ``linear`` (64→10),
with n = 3/5/7/9 for depth 20/32/44/56 (depth = 6n + 2). Each :class:`BasicBlock` is two 3×3
convs without bias, each followed by BN, and a parameter-free "option A" shortcut: where the
shape changes it subsamples ``x[:, :, ::2, ::2]`` and zero-pads ``planes // 4`` channels on each
side. BatchNorm keeps PyTorch's default eps (1e-5).

The published files hold ``{'state_dict', 'best_prec1'}`` with keys prefixed ``module.``
(DataParallel); :func:`tguide.select.zoo.load_zoo_model` strips the prefix. They were saved
without ``num_batches_tracked``; BatchNorm fills that buffer in when the key is absent, so
``load_state_dict(strict=True)`` accepts them.

Input: ``(B, 3, 32, 32)`` RGB in [0, 1] normalised with ImageNet's mean/std; output: logits
``(B, 10)``. :attr:`CifarResNet.STAGES` names the layers of :func:`~tguide.features.extract_features`'s
"auto" choice: the three stage outputs and the pooled 64-d penultimate features.
"""

from __future__ import annotations

import torch.nn.functional as F
from torch import Tensor, nn

__all__ = ["BasicBlock", "CifarResNet", "DEPTHS", "cifar_resnet"]

DEPTHS = (20, 32, 44, 56)


class BasicBlock(nn.Module):
    """out = ReLU(BN(conv(ReLU(BN(conv(x))))) + shortcut(x)), option-A (zero-pad) shortcut."""

    def __init__(self, in_planes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(in_planes, planes, 3, stride=stride, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride=1, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = stride != 1 or in_planes != planes
        self.pad = planes // 4

    def shortcut(self, x: Tensor) -> Tensor:
        if not self.downsample:
            return x
        return F.pad(x[:, :, ::2, ::2], (0, 0, 0, 0, self.pad, self.pad))

    def forward(self, x: Tensor) -> Tensor:
        out = F.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return F.relu(out + self.shortcut(x))


class CifarResNet(nn.Module):
    """ResNet-(6n+2) for CIFAR (see the module docstring). ``embed(x)`` gives the 64-d features."""

    STAGES: tuple[str, ...] = ("layer1", "layer2", "layer3", "avgpool")

    def __init__(self, depth: int = 20, num_classes: int = 10) -> None:
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ValueError(f"CIFAR ResNet depth must be 6n + 2 (20, 32, 44, 56, ...), got {depth}.")
        n = (depth - 2) // 6
        self.depth = depth
        self.num_classes = num_classes
        self.conv1 = nn.Conv2d(3, 16, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.layer1 = self._stage(16, 16, n, 1)
        self.layer2 = self._stage(16, 32, n, 2)
        self.layer3 = self._stage(32, 64, n, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.linear = nn.Linear(64, num_classes)

    @staticmethod
    def _stage(in_planes: int, planes: int, blocks: int, stride: int) -> nn.Sequential:
        layers = [BasicBlock(in_planes, planes, stride)]
        layers += [BasicBlock(planes, planes, 1) for _ in range(blocks - 1)]
        return nn.Sequential(*layers)

    def embed(self, x: Tensor) -> Tensor:
        """Pooled penultimate features ``(B, 64)``."""
        x = F.relu(self.bn1(self.conv1(x)))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.flatten(self.avgpool(x))

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.embed(x))


def cifar_resnet(depth: int, num_classes: int = 10) -> CifarResNet:
    """``cifar_resnet(20)`` … ``cifar_resnet(56)``: an untrained :class:`CifarResNet`."""
    return CifarResNet(depth, num_classes)

"""ShuffleNetV2 (Ma et al. 2018) **trunk**, in Megvii's ShuffleNet-Series layout, without head.

Layout (0.5×: channels 24 / 48 / 96 / 192, repeats 4 / 8 / 4): ``first_conv`` (3×3 conv stride
2 → BN → ReLU) → ``maxpool`` (3×3, stride 2) → ``stage2`` → ``stage3`` → ``stage4`` (each a
``nn.Sequential`` of :class:`ShuffleV2Block`, the first with stride 2) → ``pool`` (global
average, ``(B, 192, 1, 1)``) → ``flatten``. There is no ``conv5`` and no classifier: the
checkpoint is the backbone a detector starts from.

**forward(x) returns the pooled 192-d features** ``(B, 192)`` (the trunk's representation);
:meth:`ShuffleNetV2Trunk.forward_features` returns the stage4 map ``(B, 192, H/32, W/32)``.
:attr:`ShuffleNetV2Trunk.STAGES` names the three stage outputs and ``pool`` (average-pooled,
``stage4`` and ``pool`` give the same 192-d vector; under ``pool="flatten"`` they differ).

Block (Megvii's): stride 1 splits the channels with the reshape/permute trick (even channels
kept, odd channels through the branch, which is also the channel shuffle of the previous
block's concat), then ``cat(x_proj, branch_main(x))``; stride 2 gives
``cat(branch_proj(x), branch_main(x))``. ``branch_main``: 1×1 conv → BN → ReLU → k×k depthwise
(stride s) → BN → 1×1 conv → BN → ReLU (indices 0, 1, 3, 4, 5, 6 hold parameters), with mid
channels = out/2 and outputs = out − in. ``branch_proj``: k×k depthwise (stride s) → BN → 1×1
conv → BN → ReLU. No conv has a bias.

Input: RGB; the shared checkpoint works best with plain [0, 1] pixels, no mean/std (see
``shared/models/README.md``).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

__all__ = ["ShuffleV2Block", "ShuffleNetV2Trunk", "channel_split"]


def channel_split(x: Tensor) -> tuple[Tensor, Tensor]:
    """Megvii's split: channels ``0, 2, 4, …`` and ``1, 3, 5, …`` of ``x (B, C, H, W)``."""
    b, c, h, w = x.shape
    if c % 4:
        raise ValueError(f"ShuffleV2Block needs a channel count divisible by 4, got {c}")
    x = x.reshape(b * c // 2, 2, h * w).permute(1, 0, 2).reshape(2, -1, c // 2, h, w)
    return x[0], x[1]


class ShuffleV2Block(nn.Module):
    """One ShuffleNetV2 unit; ``inp`` is the branch input (half the block input when stride is 1)."""

    def __init__(self, inp: int, oup: int, mid: int, ksize: int = 3, stride: int = 1) -> None:
        super().__init__()
        if stride not in (1, 2):
            raise ValueError(f"stride must be 1 or 2, got {stride}")
        self.stride = stride
        pad = ksize // 2
        outputs = oup - inp
        self.branch_main = nn.Sequential(
            nn.Conv2d(inp, mid, 1, bias=False),
            nn.BatchNorm2d(mid),
            nn.ReLU(inplace=True),
            nn.Conv2d(mid, mid, ksize, stride, pad, groups=mid, bias=False),
            nn.BatchNorm2d(mid),
            nn.Conv2d(mid, outputs, 1, bias=False),
            nn.BatchNorm2d(outputs),
            nn.ReLU(inplace=True),
        )
        self.branch_proj: nn.Module | None = None
        if stride == 2:
            self.branch_proj = nn.Sequential(
                nn.Conv2d(inp, inp, ksize, stride, pad, groups=inp, bias=False),
                nn.BatchNorm2d(inp),
                nn.Conv2d(inp, inp, 1, bias=False),
                nn.BatchNorm2d(inp),
                nn.ReLU(inplace=True),
            )

    def forward(self, x: Tensor) -> Tensor:
        if self.branch_proj is None:
            x_proj, x_main = channel_split(x)
            return torch.cat((x_proj, self.branch_main(x_main)), 1)
        return torch.cat((self.branch_proj(x), self.branch_main(x)), 1)


class ShuffleNetV2Trunk(nn.Module):
    """ShuffleNetV2 backbone without conv5 and classifier; ``forward`` → pooled features ``(B, C4)``."""

    STAGES: tuple[str, ...] = ("stage2", "stage3", "stage4", "pool")
    # the three stages, registered by name in __init__ (checkpoint keys stage2.*, stage3.*, stage4.*)
    stage2: nn.Sequential
    stage3: nn.Sequential
    stage4: nn.Sequential

    def __init__(
        self, channels: tuple[int, int, int, int] = (24, 48, 96, 192), repeats: tuple[int, int, int] = (4, 8, 4)
    ) -> None:
        super().__init__()
        stem, *outs = channels
        self.num_features = outs[-1]
        self.num_classes = None
        self.first_conv = nn.Sequential(
            nn.Conv2d(3, stem, 3, 2, 1, bias=False), nn.BatchNorm2d(stem), nn.ReLU(inplace=True)
        )
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        c_in = stem
        for k, (c_out, n) in enumerate(zip(outs, repeats), start=2):
            blocks = [ShuffleV2Block(c_in, c_out, c_out // 2, 3, 2)]
            blocks += [ShuffleV2Block(c_out // 2, c_out, c_out // 2, 3, 1) for _ in range(n - 1)]
            setattr(self, f"stage{k}", nn.Sequential(*blocks))
            c_in = c_out
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)

    def forward_features(self, x: Tensor) -> Tensor:
        """The stage4 map ``(B, 192, H/32, W/32)``."""
        x = self.maxpool(self.first_conv(x))
        return self.stage4(self.stage3(self.stage2(x)))

    def forward(self, x: Tensor) -> Tensor:
        """Pooled stage4 features ``(B, 192)`` (there are no logits)."""
        return self.flatten(self.pool(self.forward_features(x)))

"""The Noise2Noise U-Net (Lehtinen et al., ICML 2018, appendix A, table 2).

Encoder: ``enc_conv0, enc_conv1`` then five blocks (conv 3×3 + max-pool 2×2), ``enc_conv6``,
all ``width`` (paper: 48) channels. Decoder: five levels of nearest-neighbour ×2 upsampling,
concatenation with the matching encoder output (skip), two 3×3 convs of ``2·width`` (96)
channels; the last level (skip = the input) has convs of 64 and 32 channels (scaled by
``width/48``) and a linear 3×3 conv to ``out_channels``. Every conv but the last is followed by
LeakyReLU(0.1). No batch norm. Five poolings need sides divisible by 32: other sizes are
reflect-padded to the next multiple of 32 and the output is cropped back, so any ``(B, C, H, W)``
works and the output has the input's shape (``out_channels`` channels).

``width`` is configurable so that CPU studies can use a narrower net (e.g. 16 or 24);
the default is the paper's.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn import functional as F

__all__ = ["N2NUNet"]


def _conv(cin: int, cout: int, act: bool = True) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, 3, padding=1)]
    if act:
        layers.append(nn.LeakyReLU(0.1))
    return nn.Sequential(*layers)


class N2NUNet(nn.Module):
    """Noise2Noise U-Net. ``(B, in_channels, H, W) → (B, out_channels, H, W)``.

    Args:
        in_channels: input channels (1 grey, 3 RGB).
        out_channels: output channels (default = ``in_channels``).
        width: encoder channels (paper 48); decoder uses ``2·width``, the last level
            ``round(64·width/48)`` and ``round(32·width/48)``.
        residual: if true, predict the noise-free image as ``x + net(x)`` (not in the paper;
            default false = the paper's direct linear output).
    """

    DEPTH = 5

    def __init__(
        self, in_channels: int = 1, out_channels: int | None = None, width: int = 48, residual: bool = False
    ) -> None:
        super().__init__()
        if in_channels < 1 or width < 1:
            raise ValueError(f"in_channels and width must be ≥ 1, got {in_channels}, {width}")
        out_channels = out_channels or in_channels
        w, d = int(width), 2 * int(width)
        a, b = max(1, round(64 * w / 48)), max(1, round(32 * w / 48))
        self.in_channels, self.out_channels, self.width, self.residual = in_channels, out_channels, w, residual
        self.enc_conv0 = _conv(in_channels, w)
        self.enc_conv1 = _conv(w, w)  # then pool1
        self.enc_blocks = nn.ModuleList([_conv(w, w) for _ in range(4)])  # enc_conv2..5, each then pool
        self.enc_conv6 = _conv(w, w)
        # decoder levels 5..2: concat(upsampled, pool_{k-1}) → two convs of d channels
        self.dec_blocks = nn.ModuleList(
            [nn.Sequential(_conv(w + w if k == 0 else d + w, d), _conv(d, d)) for k in range(4)]
        )
        self.dec_conv1 = nn.Sequential(_conv(d + in_channels, a), _conv(a, b), _conv(b, out_channels, act=False))
        self._init()

    def _init(self) -> None:
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, a=0.1, nonlinearity="leaky_relu")
                if m.bias is not None:  # every conv here has one
                    nn.init.zeros_(m.bias)

    def forward(self, x: Tensor) -> Tensor:
        if x.dim() != 4 or x.shape[1] != self.in_channels:
            raise ValueError(f"N2NUNet expects (B, {self.in_channels}, H, W), got {tuple(x.shape)}")
        h, w = x.shape[-2:]
        m = 2**self.DEPTH
        ph, pw = (-h) % m, (-w) % m
        mode = "reflect" if ph < h and pw < w else "replicate"  # reflect needs pad < side
        xp = F.pad(x, (0, pw, 0, ph), mode=mode) if (ph or pw) else x
        skips = [xp]  # input, pool1..pool4
        t = F.max_pool2d(self.enc_conv1(self.enc_conv0(xp)), 2)
        for block in self.enc_blocks:
            skips.append(t)
            t = F.max_pool2d(block(t), 2)  # pool2..pool5
        t = self.enc_conv6(t)
        for block in self.dec_blocks:  # levels 5, 4, 3, 2
            t = F.interpolate(t, scale_factor=2, mode="nearest")
            t = block(torch.cat([t, skips.pop()], dim=1))
        t = F.interpolate(t, scale_factor=2, mode="nearest")
        out = self.dec_conv1(torch.cat([t, skips.pop()], dim=1))
        out = out[..., :h, :w]
        return x + out if self.residual and self.out_channels == self.in_channels else out

"""MobileNetV1 ×0.25 (Howard et al., arXiv 2017) with **LeakyReLU(0.1)**, in the layout of the
ImageNet-pretrained backbone that RetinaFace implementations start from.

Layout: ``stage1``, ``stage2``, ``stage3`` (``nn.Sequential``) → ``avg`` (global average pool,
``(B, 256, 1, 1)``) → ``flatten`` → ``fc`` (256 → 1000 ImageNet logits, with bias).

- The stem is ``stage1.0``: 3×3 stride-2 conv 3 → 8 (``.0``), BN (``.1``), activation (``.2``).
- Each of the 13 depthwise-separable units is one ``nn.Sequential``: 3×3 depthwise conv
  (stride s, padding 1, ``.0``) → BN (``.1``) → act (``.2``) → 1×1 conv (``.3``) → BN (``.4``)
  → act (``.5``). The stride sits on the depthwise conv.
- Unit output widths (``/s2`` = stride 2): ``stage1`` 16, 32/s2, 32, 64/s2, 64 (after the stem);
  ``stage2`` 128/s2, then 128 ×5; ``stage3`` 256/s2, 256.

No conv has a bias; BN keeps PyTorch's eps 1e-5; the activation is LeakyReLU with slope 0.1
everywhere (the published weights were trained with it: plain ReLU ruins their features, see
``shared/models/README.md``). 470,072 parameters.

``STAGES`` (the "auto" layers): ``stage1.3`` (32 channels, stride 4), ``stage1`` (64, stride 8),
``stage2`` (128, stride 16) and the pooled 256-d penultimate features ``avg``. ``stage3``
is left out: average-pooled, it is the same vector as ``avg``.

Input: RGB, 224 × 224, [0, 1] pixels normalised with ImageNet mean (0.485, 0.456, 0.406) and
std (0.229, 0.224, 0.225).
"""

from __future__ import annotations

from torch import Tensor, nn

__all__ = ["MobileNetV1", "UNITS"]

# (stage, output width, stride) of the 13 depthwise-separable units, in order
UNITS: tuple[tuple[int, int, int], ...] = (
    (1, 16, 1),
    (1, 32, 2),
    (1, 32, 1),
    (1, 64, 2),
    (1, 64, 1),
    (2, 128, 2),
    (2, 128, 1),
    (2, 128, 1),
    (2, 128, 1),
    (2, 128, 1),
    (2, 128, 1),
    (3, 256, 2),
    (3, 256, 1),
)


def _unit(c_in: int, c_out: int, stride: int, slope: float) -> nn.Sequential:
    """3×3 depthwise (stride) → BN → act → 1×1 pointwise → BN → act."""
    return nn.Sequential(
        nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False),
        nn.BatchNorm2d(c_in),
        nn.LeakyReLU(slope, inplace=True),
        nn.Conv2d(c_in, c_out, 1, 1, 0, bias=False),
        nn.BatchNorm2d(c_out),
        nn.LeakyReLU(slope, inplace=True),
    )


class MobileNetV1(nn.Module):
    """MobileNetV1 ×0.25; ``forward`` → ``(B, num_classes)`` logits. See the module docstring.

    Args:
        num_classes: outputs of ``fc``.
        negative_slope: slope of every LeakyReLU (0.1 for the published weights; 0 gives ReLU).
    """

    STAGES: tuple[str, ...] = ("stage1.3", "stage1", "stage2", "avg")

    def __init__(self, num_classes: int = 1000, negative_slope: float = 0.1) -> None:
        super().__init__()
        self.num_classes = num_classes
        stem = 8
        stages: dict[int, list[nn.Module]] = {
            1: [
                nn.Sequential(
                    nn.Conv2d(3, stem, 3, 2, 1, bias=False),
                    nn.BatchNorm2d(stem),
                    nn.LeakyReLU(negative_slope, inplace=True),
                )
            ],
            2: [],
            3: [],
        }
        c_prev = stem
        for stage, c_out, stride in UNITS:
            stages[stage].append(_unit(c_prev, c_out, stride, negative_slope))
            c_prev = c_out
        self.stage1 = nn.Sequential(*stages[1])
        self.stage2 = nn.Sequential(*stages[2])
        self.stage3 = nn.Sequential(*stages[3])
        self.num_features = c_prev
        self.avg = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten(1)
        self.fc = nn.Linear(c_prev, num_classes)

    def forward_features(self, x: Tensor) -> Tensor:
        """The stage3 map ``(B, 256, H/32, W/32)``."""
        return self.stage3(self.stage2(self.stage1(x)))

    def embed(self, x: Tensor) -> Tensor:
        """Pooled penultimate features ``(B, 256)``."""
        return self.flatten(self.avg(self.forward_features(x)))

    def forward(self, x: Tensor) -> Tensor:
        return self.fc(self.embed(x))

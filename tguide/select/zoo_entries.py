"""The entries of the pretrained source zoo: :class:`ZooEntry` and the published checkpoints.

The registry that every part reads (:data:`tguide.select.zoo.ZOO`, ``register_zoo_model``,
``load_zoo_model``) is :mod:`tguide.select.zoo`; this module only defines the type and the table
it registers at import:


=====================  ==============================  ==========  =======================
name                   architecture                    source      input
=====================  ==============================  ==========  =======================
resnet20_cifar10       CIFAR ResNet-20 (option A)      CIFAR-10    32² RGB, ImageNet norm
resnet32_cifar10       CIFAR ResNet-32                 CIFAR-10    32² RGB, ImageNet norm
resnet44_cifar10       CIFAR ResNet-44                 CIFAR-10    32² RGB, ImageNet norm
resnet56_cifar10       CIFAR ResNet-56                 CIFAR-10    32² RGB, ImageNet norm
simplecnn_cifar10      PyTorch-tutorial CNN (Captum)   CIFAR-10    32² RGB, (x−.5)/.5
lenet5_mnist           advertorch LeNet5, clean        MNIST       28² grey in [0, 1]
lenet5_mnist_adv       advertorch LeNet5, PGD-trained  MNIST       28² grey in [0, 1]
shufflenetv2_trunk     ShuffleNetV2 0.5× trunk, no     (ImageNet)  224² RGB in [0, 1]
                       head: 192-d pooled features
efficientnet_lite0     EfficientNet-Lite0              ImageNet    224² RGB, (x−127)/128
efficientnet_lite1     EfficientNet-Lite1              ImageNet    240² RGB, (x−127)/128
efficientnet_lite2     EfficientNet-Lite2              ImageNet    260² RGB, (x−127)/128
mobilenetv1_x025       MobileNetV1 ×0.25, LeakyReLU    ImageNet    224² RGB, ImageNet norm
mcunet_in2             MCUNet-in2 (MIT HAN Lab)        ImageNet    160² RGB, (x−.5)/.5
mcunet_in3             MCUNet-in3                      ImageNet    176² RGB, (x−.5)/.5
proxyless_w025         ProxylessNAS-Mobile ×0.25       ImageNet    112² RGB, (x−.5)/.5
proxyless_w03          ProxylessNAS-Mobile ×0.3        ImageNet    176² RGB, (x−.5)/.5
=====================  ==============================  ==========  =======================
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from torch import nn

from tguide.data.transforms import InputSpec
from tguide.nets.advertorch_lenet import AdvertorchLeNet5
from tguide.nets.captum_cnn import CaptumCifarCNN
from tguide.nets.cifar_resnet import CifarResNet
from tguide.nets.efficientnet_lite import efficientnet_lite
from tguide.nets.mcunet import hanlab_layers, hanlab_net
from tguide.nets.mobilenetv1 import MobileNetV1
from tguide.nets.shufflenetv2 import ShuffleNetV2Trunk

__all__ = ["ENTRIES", "IMAGENET_SUBZOO", "ZooEntry"]


@dataclass(frozen=True)
class ZooEntry:
    """One pretrained checkpoint of :data:`ZOO` (accuracies are fractions in [0, 1]).

    Attributes:
        name: short registry name.
        path: file path relative to the models root.
        sha256: hex digest of the published file.
        builder: ``() -> nn.Module`` (untrained) whose state dict matches the file.
        input: the input the model expects.
        source: the training data (``"cifar10"``, ``"mnist"``, ``"imagenet"``).
        num_classes: classes of the head; ``None`` for the headless trunk.
        reported_acc: top-1 the publisher reports (on the original test set), if any.
        measured_acc: top-1 measured on the shared data (``measured_on`` says which), if any.
        measured_on: what ``measured_acc`` was measured on, or what was checked instead.
        params: parameter count.
        layers: the "auto" feature layers (stage outputs, then the penultimate features).
        has_head: whether ``forward`` returns class logits (else pooled features).
        state_dict_key: key of the state dict inside the file's dict, if any.
        strip_prefix: prefix removed from every key (``"module."`` for DataParallel files).
        load: ``() -> nn.Module`` with its weights, for an entry that has no file (``path`` and
            ``sha256`` empty): a random control, or a source a study trains and caches.
            :func:`load_zoo_model` calls it instead of reading a checkpoint.
    """

    name: str
    path: str
    sha256: str
    builder: Callable[[], nn.Module] = field(repr=False, compare=False)
    input: InputSpec
    source: str
    num_classes: int | None
    reported_acc: float | None
    measured_acc: float | None
    measured_on: str
    params: int
    layers: tuple[str, ...]
    has_head: bool
    state_dict_key: str | None = None
    strip_prefix: str = ""
    load: Callable[[], nn.Module] | None = field(default=None, repr=False, compare=False)


_CIFAR_IMAGENET_NORM = InputSpec(32, 3, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), "stretch")
_CIFAR_HALF_NORM = InputSpec(32, 3, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "stretch")
_MNIST_RAW = InputSpec(28, 1, (0.0,), (1.0,), "pad", inner=20)
_RGB01 = InputSpec(224, 3, (0.0, 0.0, 0.0), (1.0, 1.0, 1.0), "crop", crop_pct=0.875)


def _lite_input(size: int) -> InputSpec:
    """TF EfficientNet evaluation: centre crop of ``size / (size + 32)`` of the shorter side (256 → 224
    for Lite0; this reproduces the README's Office-31 per-class counts, e.g. mouse 30/30)."""
    return InputSpec(size, 3, (127 / 255,) * 3, (128 / 255,) * 3, "crop", crop_pct=size / (size + 32))


_CIFAR_JPEG = "shared/data/cifar10/test (3,000 JPEG q≈75 images, 300 per class)"
_RESNET_LAYERS = CifarResNet.STAGES


def _resnet(depth: int, file: str, sha: str, reported: float, measured: float, params: int) -> ZooEntry:
    return ZooEntry(
        name=f"resnet{depth}_cifar10",
        path=f"resnet_cifar10/{file}",
        sha256=sha,
        builder=lambda: CifarResNet(depth),
        input=_CIFAR_IMAGENET_NORM,
        source="cifar10",
        num_classes=10,
        reported_acc=reported,
        measured_acc=measured,
        measured_on=_CIFAR_JPEG,
        params=params,
        layers=_RESNET_LAYERS,
        has_head=True,
        state_dict_key="state_dict",
        strip_prefix="module.",
    )


def _lite(
    k: int, file: str, sha: str, size: int, reported: float, params: int, layers: tuple[str, ...], measured_on: str
) -> ZooEntry:
    return ZooEntry(
        name=f"efficientnet_lite{k}",
        path=f"efficientnet_lite_imagenet/{file}",
        sha256=sha,
        builder=lambda: efficientnet_lite(f"efficientnet-lite{k}"),
        input=_lite_input(size),
        source="imagenet",
        num_classes=1000,
        reported_acc=reported,
        measured_acc=None,
        measured_on=measured_on,
        params=params,
        layers=layers,
        has_head=True,
    )


ENTRIES: tuple[ZooEntry, ...] = (
    _resnet(
        20,
        "resnet20-12fca82f.th",
        "12fca82f0bebc4135bf1f32f6e3710e61d5108578464b84fd6d7f5c1b04036c8",
        0.9173,
        0.8103,
        269_722,
    ),
    _resnet(
        32,
        "resnet32-d509ac18.th",
        "d509ac1820d7f25398913559d7e81a13229b1e7adc5648e3bfa5e22dc137f850",
        0.9263,
        0.8310,
        464_154,
    ),
    _resnet(
        44,
        "resnet44-014dd654.th",
        "014dd6541728a1c700b1642ab640e211dc6eb8ed507d70697458dc8f8a0ae2e4",
        0.9310,
        0.8250,
        658_586,
    ),
    _resnet(
        56,
        "resnet56-4bfd9763.th",
        "4bfd97631478d6b638d2764fd2baff3edb1d7d82252d54439343b6596b9b5367",
        0.9339,
        0.8293,
        853_018,
    ),
    ZooEntry(
        name="simplecnn_cifar10",
        path="simplecnn_cifar10/cifar_torchvision.pt",
        sha256="228d8332085282b6d2626d1b1b1b17944c760507d9b0cabe318dc6b108acf6e9",
        builder=CaptumCifarCNN,
        input=_CIFAR_HALF_NORM,
        source="cifar10",
        num_classes=10,
        reported_acc=None,
        measured_acc=0.5903,
        measured_on=_CIFAR_JPEG,
        params=62_006,
        layers=CaptumCifarCNN.STAGES,
        has_head=True,
    ),
    ZooEntry(
        name="lenet5_mnist",
        path="lenet5_mnist/mnist_lenet5_clntrained.pt",
        sha256="551a11267982991fb0c9f74e9094de19e54b51455eff9bd1c19c77a69d85156a",
        builder=AdvertorchLeNet5,
        input=_MNIST_RAW,
        source="mnist",
        num_classes=10,
        reported_acc=None,
        measured_acc=0.9889,
        measured_on="MNIST test (10,000); USPS test 93.32% padded (resize 20 + pad to 28), 71.10% stretched",
        params=648_226,
        layers=AdvertorchLeNet5.STAGES,
        has_head=True,
    ),
    ZooEntry(
        name="lenet5_mnist_adv",
        path="lenet5_mnist/mnist_lenet5_advtrained.pt",
        sha256="b89abfcfe8b33235fe8f8e964188d82a97c56a12ffe25132eaba197e40ac7658",
        builder=AdvertorchLeNet5,
        input=_MNIST_RAW,
        source="mnist",
        num_classes=10,
        reported_acc=None,
        measured_acc=0.9864,
        measured_on="MNIST test (10,000); USPS test 87.10% padded, 71.70% stretched",
        params=648_226,
        layers=AdvertorchLeNet5.STAGES,
        has_head=True,
    ),
    ZooEntry(
        name="shufflenetv2_trunk",
        path="shufflenetv2_imagenet_backbone/shufflenetv2.pth",
        sha256="c9e6e3ac1c4997e05529cfb4897a3b5d29165e3ed4105cfb6897fc11efa72e4b",
        builder=ShuffleNetV2Trunk,
        input=_RGB01,
        source="imagenet",
        num_classes=None,
        reported_acc=None,
        measured_acc=None,
        measured_on="no head; leave-one-out 1-NN on Office-31 webcam (224 px, pooled 192-d): 88.2% "
        "(random weights 16.2%); provenance of the weights undocumented",
        params=143_136,
        layers=ShuffleNetV2Trunk.STAGES,
        has_head=False,
    ),
    _lite(
        0,
        "efficientnet-lite0-57934424.pth",
        "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        224,
        0.751,
        4_652_008,
        ("_blocks.2", "_blocks.4", "_blocks.10", "_blocks.15", "_avg_pooling"),
        "Office-31 webcam, 20 classes with an ImageNet counterpart: top-1 in the plausible set 64.4%, "
        "top-5 88.5% (495 images)",
    ),
    _lite(
        1,
        "efficientnet-lite1-77cc7160.pth",
        "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850",
        240,
        0.767,
        5_416_680,
        ("_blocks.3", "_blocks.6", "_blocks.14", "_blocks.20", "_avg_pooling"),
        "Office-31 webcam plausible-set top-1 60.0%, top-5 89.0% (100 images)",
    ),
    _lite(
        2,
        "efficientnet-lite2-9656183e.pth",
        "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
        260,
        0.776,
        6_092_072,
        ("_blocks.3", "_blocks.6", "_blocks.14", "_blocks.20", "_avg_pooling"),
        "Office-31 webcam plausible-set top-1 71.0%, top-5 92.0% (100 images)",
    ),
)

# ---- ImageNet sub-zoo (shared/models/README.md, "ImageNet sub-zoo"): MobileNetV1 ×0.25, MCUNet-in2/in3,
# ProxylessNAS-Mobile ×0.25/×0.3. Evaluation crop as in that README's sanity check: shorter side to
# int(size · 256 / 224), then a centre size × size crop (crop_pct = size / that side).
_IMAGENET_MEAN_STD = ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
_HALF_MEAN_STD = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))


def _imagenet_input(size: int, mean_std: tuple[tuple[float, ...], tuple[float, ...]]) -> InputSpec:
    return InputSpec(size, 3, mean_std[0], mean_std[1], "crop", crop_pct=size / int(size * 256 / 224))


def _webcam_check(top1: float, top5: float) -> str:
    return (
        f"Office-31 webcam, 108 images of 9 classes with an ImageNet counterpart (first 12 per class): "
        f"top-1 {top1:.3f}, top-5 {top5:.3f} hold a matching ImageNet class; source_accuracy is the "
        "reported ImageNet top-1"
    )


def _hanlab(
    name: str, arch: str, file: str, sha: str, size: int, reported: float, params: int, top1: float, top5: float
) -> ZooEntry:
    return ZooEntry(
        name=name,
        path=f"mcunet_imagenet/{file}",
        sha256=sha,
        builder=lambda: hanlab_net(arch),
        input=_imagenet_input(size, _HALF_MEAN_STD),
        source="imagenet",
        num_classes=1000,
        reported_acc=reported,
        measured_acc=None,
        measured_on=_webcam_check(top1, top5),
        params=params,
        layers=hanlab_layers(arch),
        has_head=True,
        state_dict_key="state_dict",
    )


IMAGENET_SUBZOO: tuple[ZooEntry, ...] = (
    ZooEntry(
        name="mobilenetv1_x025",
        path="mobilenetv1_x025_imagenet/mobilenetV1X0.25_pretrain.tar",
        sha256="75c37f8d438b7c6aed2e6b310fd0540c40dabf0dd820770bd7082668dfd7c1c1",
        builder=MobileNetV1,
        input=_imagenet_input(224, _IMAGENET_MEAN_STD),
        source="imagenet",
        num_classes=1000,
        reported_acc=0.4658,
        measured_acc=None,
        measured_on=_webcam_check(0.259, 0.685),
        params=470_072,
        layers=MobileNetV1.STAGES,
        has_head=True,
        state_dict_key="state_dict",
        strip_prefix="module.",
    ),
    _hanlab(
        "mcunet_in2",
        "mcunet-in2",
        "mcunet-256kb-1mb_imagenet.pth",
        "63565b5773a8aa70d75baf5a349f5f384da649804c48a5e7af1f655460158c7d",
        160,
        0.609,
        729_392,
        0.519,
        0.815,
    ),
    _hanlab(
        "mcunet_in3",
        "mcunet-in3",
        "mcunet-320kb-1mb_imagenet.pth",
        "c0d4ccf4bb8ba93ef69a609c60ca053be2c6bab3b4ece19d9b7e66cec8a485e5",
        176,
        0.622,
        737_408,
        0.519,
        0.815,
    ),
    _hanlab(
        "proxyless_w025",
        "proxyless-w0.25",
        "proxyless-w0.25-r112_imagenet.pth",
        "d4bfc7a6fd8c2ee846cbad32a42153f454b02f73da605c6506bb233dc236ebbb",
        112,
        0.449,
        569_600,
        0.407,
        0.731,
    ),
    _hanlab(
        "proxyless_w03",
        "proxyless-w0.3",
        "proxyless-w0.3-r176_imagenet.pth",
        "5c94b02905bff62a4b1c11454b32e90d5c3e355d576aedf48257e2393de18d20",
        176,
        0.570,
        754_280,
        0.454,
        0.769,
    ),
)

r"""Long-tailed MNIST with a nuisance transformation ("RotMNIST-LT" style, Zhou, Tajwar & Finn, ICLR 2022).

Built from the offline MNIST (**MNIST here is the 10k test set**) and its deterministic
stratified split :func:`tguide.data.mnist.split_indices` (8/1/1 of every ten images of a digit):

- **train**: class sizes follow Zipf's law :math:`n_k = \mathrm{round}(n_{max} / k^s)` for the
  class of rank ``k = 1..C``, with ``s = log(n_max / n_min) / log C`` so that the smallest class has
  ``n_min`` images (defaults 500 → 5: 500, 125, 56, 31, 20, 14, 10, 8, 6, 5). Which digit gets
  which rank is a permutation drawn with ``seed`` (``class_order="random"``) or digit order
  (``"identity"``); each class's images are a seeded random subset of its train part. Every
  training image is transformed once by a random nuisance ``T_t`` of the chosen family
  (:mod:`tguide.studies.invariance.transforms`), ``t`` drawn per image with ``seed``; no further augmentation.
- **val / test**: near-balanced (the 1/10 parts: 89–114 images per digit; report the mean of
  per-class accuracies), each image transformed by its own ``t``; the
  draws use ``eval_seed`` (fixed, independent of ``seed``) so every run is scored on the same
  images. For eKLD each val/test image also has a second, independent transform of the *same*
  clean digit: the pair ``(T_t(x0), T_t'(x0))`` samples the nuisance orbit exactly
  (:meth:`LongTailMNISTDataModule.invariance_dataloader`).

Images are standardised with MNIST's mean/std after transforming. The true nuisance parameters
are kept (``train_params``) for diagnostics only; nothing trains on them.
"""

from __future__ import annotations

import math

import lightning as L
import torch
from torch import Tensor
from torch.utils.data import DataLoader, TensorDataset, WeightedRandomSampler

from tguide.callbacks.invariance import size_buckets
from tguide.data.mnist import IMAGES, LABELS, load_mnist_test, split_indices
from tguide.data.roots import dataset_dir
from tguide.errors import TGuideError
from tguide.studies.invariance.transforms import family, sample_params

__all__ = ["zipf_counts", "longtail_indices", "transform_images", "LongTailMNISTDataModule"]


def zipf_counts(num_classes: int = 10, n_max: int = 500, n_min: int = 5) -> list[int]:
    r"""Zipf class sizes :math:`\mathrm{round}(n_{max} k^{-s})`, ``k = 1..C``, ``s = \log(n_{max}/n_{min})/\log C``
    (largest first, non-increasing, first ``n_max`` and last ``n_min``)."""
    if num_classes < 2:
        raise TGuideError(f"a long tail needs at least 2 classes, got num_classes={num_classes}")
    if not 1 <= n_min <= n_max:
        raise TGuideError(f"need 1 ≤ n_min ≤ n_max, got n_min={n_min}, n_max={n_max}")
    s = math.log(n_max / n_min) / math.log(num_classes)
    return [max(n_min, int(round(n_max / k**s))) for k in range(1, num_classes + 1)]


def longtail_indices(labels: Tensor, counts_by_class: dict[int, int], generator: torch.Generator) -> Tensor:
    """A seeded random subset of ``labels``' indices with ``counts_by_class[c]`` per class (sorted)."""
    chosen = []
    for c, n in counts_by_class.items():
        idx = torch.nonzero(labels == c).flatten()
        if n > idx.numel():
            raise TGuideError(
                f"class {c} has {idx.numel()} images in the train part but {n} were asked for; "
                f"lower data.n_max (at most {idx.numel()})"
            )
        chosen.append(idx[torch.randperm(idx.numel(), generator=generator)[:n]])
    return torch.sort(torch.cat(chosen)).values


def transform_images(
    images: Tensor,
    fam: str,
    generator: torch.Generator,
    low: float | None = None,
    high: float | None = None,
    chunk: int = 2048,
) -> tuple[Tensor, Tensor]:
    """``uint8 (N, 28, 28)`` → transformed pixel-space float ``(N, 1, 28, 28)`` and the parameters ``(N,)``."""
    fam_ = family(fam, low, high)
    t = sample_params(fam_, images.shape[0], generator)
    x = images.float().div(255.0).unsqueeze(1)
    out = (
        torch.cat([fam_.apply(x[i : i + chunk], t[i : i + chunk]) for i in range(0, x.shape[0], chunk)])
        if x.shape[0]
        else x
    )
    return out.clamp(0.0, 1.0), t


def _standardise(pixels: Tensor) -> Tensor:
    """Pixel-space float ``(N, 1, H, W)`` → MNIST-standardised (as :func:`tguide.data.mnist.normalise`)."""
    from tguide.data.mnist import MEAN, STD

    return (pixels - MEAN) / STD


class LongTailMNISTDataModule(L.LightningDataModule):
    """Long-tailed, nuisance-transformed MNIST (see the module docstring).

    Args:
        root: data root (``None`` = ``$TGUIDE_DATA``).
        transform: nuisance family (``rotation``, ``scale``, ``background``, ``dilation``).
        low, high: the family's parameter range (``None`` = its default).
        n_max, n_min: largest and smallest class sizes of the Zipf profile.
        class_order: ``"random"`` (seeded permutation of digits over ranks) or ``"identity"``.
        seed: draws the class order, the training subset and the training nuisances.
        eval_seed: draws the val/test nuisances (keep it fixed across runs).
        batch_size: training batch size (eval loaders use 4×).
        sampler: ``"instance"`` (uniform over images) or ``"class_balanced"`` (each class equally
            likely per draw; the epoch has as many draws as training images).
        num_workers: DataLoader workers.

    Attributes after :meth:`setup`: ``class_counts`` ``(C,)`` (training images per digit),
    ``train_set`` / ``val_set`` / ``test_set`` (``x, y``), ``train_params`` (true nuisance
    parameters, diagnostics only), ``train_indices`` (positions in the MNIST files).
    """

    def __init__(
        self,
        root: str | None = None,
        transform: str = "rotation",
        low: float | None = None,
        high: float | None = None,
        n_max: int = 500,
        n_min: int = 5,
        class_order: str = "random",
        seed: int = 0,
        eval_seed: int = 1234,
        batch_size: int = 64,
        sampler: str = "class_balanced",
        num_workers: int = 0,
    ) -> None:
        super().__init__()
        family(transform, low, high)  # fail fast on a wrong name or range
        if class_order not in ("random", "identity"):
            raise TGuideError(f"data.class_order must be 'random' or 'identity', got {class_order!r}")
        if sampler not in ("instance", "class_balanced"):
            raise TGuideError(f"data.sampler must be 'instance' or 'class_balanced', got {sampler!r}")
        if batch_size < 1:
            raise TGuideError(f"data.batch_size must be ≥ 1, got {batch_size}")
        zipf_counts(10, n_max, n_min)
        dataset_dir("mnist", root, required=(IMAGES, LABELS))
        self.root, self.transform, self.low, self.high = root, transform, low, high
        self.n_max, self.n_min, self.class_order = int(n_max), int(n_min), class_order
        self.seed, self.eval_seed = int(seed), int(eval_seed)
        self.batch_size, self.sampler, self.num_workers = int(batch_size), sampler, int(num_workers)
        self.num_classes = 10
        self.class_counts: Tensor | None = None
        self.train_set: TensorDataset | None = None
        self.val_set: TensorDataset | None = None
        self.test_set: TensorDataset | None = None
        self.train_params: Tensor | None = None
        self.train_indices: Tensor | None = None
        self._pairs: dict[str, TensorDataset] = {}

    def setup(self, stage: str | None = None) -> None:
        if self.train_set is not None:
            return
        images, labels = load_mnist_test(self.root)
        train, val, test = split_indices(labels, (8, 1, 1))
        gen = torch.Generator().manual_seed(self.seed)
        ranks = torch.randperm(10, generator=gen) if self.class_order == "random" else torch.arange(10)
        sizes = zipf_counts(10, self.n_max, self.n_min)
        by_class = {int(c): sizes[k] for k, c in enumerate(ranks.tolist())}
        lt = train[longtail_indices(labels[train], by_class, gen)]
        x, self.train_params = transform_images(images[lt], self.transform, gen, self.low, self.high)
        self.train_set = TensorDataset(_standardise(x), labels[lt])
        self.train_indices = lt  # positions in the 10k MNIST files (provenance)
        self.class_counts = torch.bincount(labels[lt], minlength=10)
        eval_gen = torch.Generator().manual_seed(self.eval_seed)
        for name, idx in (("val", val), ("test", test)):
            xa, _ = transform_images(images[idx], self.transform, eval_gen, self.low, self.high)
            xb, _ = transform_images(images[idx], self.transform, eval_gen, self.low, self.high)
            self._pairs[name] = TensorDataset(_standardise(xa), _standardise(xb), labels[idx])
        self.val_set = TensorDataset(self._pairs["val"].tensors[0], self._pairs["val"].tensors[2])
        self.test_set = TensorDataset(self._pairs["test"].tensors[0], self._pairs["test"].tensors[2])

    def _weights(self) -> Tensor:
        assert self.train_set is not None and self.class_counts is not None
        y = self.train_set.tensors[1]
        return 1.0 / self.class_counts[y].double()

    def train_dataloader(self) -> DataLoader:
        self.setup()
        assert self.train_set is not None
        gen = torch.Generator().manual_seed(self.seed + 1)
        if self.sampler == "class_balanced":
            sampler = WeightedRandomSampler(
                self._weights().tolist(), num_samples=len(self.train_set), replacement=True, generator=gen
            )
            return DataLoader(self.train_set, batch_size=self.batch_size, sampler=sampler, num_workers=self.num_workers)
        return DataLoader(
            self.train_set, batch_size=self.batch_size, shuffle=True, generator=gen, num_workers=self.num_workers
        )

    def val_dataloader(self) -> DataLoader:
        self.setup()
        assert self.val_set is not None
        return DataLoader(self.val_set, batch_size=4 * self.batch_size, num_workers=self.num_workers)

    def test_dataloader(self) -> DataLoader:
        self.setup()
        assert self.test_set is not None
        return DataLoader(self.test_set, batch_size=4 * self.batch_size, num_workers=self.num_workers)

    def invariance_dataloader(self, split: str = "val") -> DataLoader:
        """Batches ``(x, x', y)``: two independent nuisance draws of the same clean val/test digit."""
        if split not in ("val", "test"):
            raise TGuideError(f"invariance split must be 'val' or 'test', got {split!r}")
        self.setup()
        return DataLoader(self._pairs[split], batch_size=4 * self.batch_size, num_workers=self.num_workers)

    def bucket_of(self, head_above: int = 50, tail_at_most: int = 10) -> dict[str, list[int]]:
        """Classes by training size: ``head`` (> ``head_above``), ``tail`` (≤ ``tail_at_most``), ``mid``."""
        self.setup()
        return size_buckets(self.class_counts, head_above, tail_at_most)

"""A :class:`~tguide.models.classifier.Classifier` that applies the GIT batch rule while training.

With ``git=True``, at the start of fit the module trains a GIT transformation model
(:func:`tguide.studies.invariance.git.fit_git`) on the datamodule's training set, unless one was given with
:meth:`InvarianceClassifier.set_generator`; then every training batch goes through
:func:`tguide.studies.invariance.git.git_batch`: examples of classes with at most ``git_threshold``
training images are replaced by generated ones. With ``git=False`` it is the plain classifier.

The test stage also logs per-class accuracy: ``test/acc_balanced`` (mean of per-class
accuracies) and ``test/acc_{head,mid,tail}`` with the buckets of
:func:`tguide.callbacks.invariance.size_buckets` (needs the datamodule's ``class_counts``).
"""

from __future__ import annotations

from typing import Any, TypedDict

import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from tguide.callbacks.invariance import size_buckets
from tguide.errors import TGuideError
from tguide.models.classifier import Classifier, OptimizerFactory, SchedulerFactory
from tguide.studies.invariance.git import GITGenerator, fit_git, git_batch, small_class_mask

__all__ = ["InvarianceClassifier"]


class _GITSettings(TypedDict):
    """The training settings passed to :func:`~tguide.studies.invariance.git.fit_git`."""

    steps: int
    batch: int
    lr: float
    z_dim: int
    beta: float
    seed: int


class InvarianceClassifier(Classifier):
    """Classifier + Generative Invariance Transfer (Zhou, Tajwar & Finn, ICLR 2022).

    Args:
        net, num_classes, optimizer, scheduler: as :class:`~tguide.models.classifier.Classifier`.
        git: apply the GIT rule in ``training_step``.
        git_threshold: classes with at most this many training images are replaced.
        git_prob: probability that an eligible example is replaced (1 = always, the seed's rule).
        git_family: transformation family of the generator (``None`` = the datamodule's ``transform``).
        git_steps, git_batch, git_lr, git_z_dim, git_beta, git_seed: :func:`~tguide.studies.invariance.git.fit_git`.
        head_above, tail_at_most: class-size bucket bounds for the per-bucket test accuracy.
    """

    def __init__(
        self,
        net: nn.Module,
        num_classes: int,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None = None,
        git: bool = False,
        git_threshold: int = 20,
        git_prob: float = 1.0,
        git_family: str | None = None,
        git_steps: int = 600,
        git_batch: int = 64,
        git_lr: float = 2e-3,
        git_z_dim: int = 2,
        git_beta: float = 1.0,
        git_seed: int = 0,
        head_above: int = 50,
        tail_at_most: int = 10,
    ) -> None:
        super().__init__(net, num_classes, optimizer, scheduler)
        if not 0.0 <= git_prob <= 1.0:
            raise TGuideError(f"model.git_prob must be in [0, 1], got {git_prob}")
        self.git, self.git_threshold, self.git_prob, self.git_family = (
            bool(git),
            int(git_threshold),
            git_prob,
            git_family,
        )
        self.git_kwargs: _GITSettings = {
            "steps": git_steps,
            "batch": git_batch,
            "lr": git_lr,
            "z_dim": git_z_dim,
            "beta": git_beta,
            "seed": git_seed,
        }
        self.head_above, self.tail_at_most = int(head_above), int(tail_at_most)
        self.test_class_acc = MulticlassAccuracy(num_classes, average=None)
        # kept out of the module tree: not trained by the classifier's optimizer, not in checkpoints
        self._generator: list[GITGenerator] = []
        self._small: Tensor | None = None
        self._class_counts: Tensor | None = None
        self._rng = torch.Generator().manual_seed(int(git_seed) + 1)
        self.git_info: dict[str, Any] = {}

    # ------------------------------------------------------------------ GIT set-up
    def set_generator(self, generator: GITGenerator, class_counts: Tensor) -> None:
        """Use an already trained generator (e.g. shared between runs) with these class sizes."""
        self._generator = [generator]
        self._class_counts = torch.as_tensor(class_counts)
        self.git_info = dict(generator.info)

    def _datamodule(self) -> Any:
        trainer = getattr(self, "_trainer", None)
        return getattr(trainer, "datamodule", None) if trainer is not None else None

    def _counts(self) -> Tensor:
        if self._class_counts is None:
            dm = self._datamodule()
            counts = getattr(dm, "class_counts", None) if dm is not None else None
            if counts is None:
                raise TGuideError(
                    "InvarianceClassifier needs the training class sizes: use a datamodule with a "
                    "`class_counts` attribute (data=mnist_lt) or call set_generator(gen, counts)"
                )
            self._class_counts = torch.as_tensor(counts)
        return self._class_counts

    def on_fit_start(self) -> None:
        if not self.git:
            return
        counts = self._counts()
        self._small = small_class_mask(counts, self.git_threshold)
        if not self._generator:
            dm = self._datamodule()
            fam = self.git_family or getattr(dm, "transform", None)
            if fam is None or getattr(dm, "train_set", None) is None:
                raise TGuideError(
                    "GIT trains on the datamodule's `train_set` with its `transform` family; "
                    "set model.git_family or use data=mnist_lt"
                )
            x, y = dm.train_set.tensors
            self._generator = [fit_git(x, y, counts, self.git_threshold, fam, **self.git_kwargs)]
            self.git_info = dict(self._generator[0].info)
        self._generator[0].to(self.device)

    # ------------------------------------------------------------------ steps
    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        if self.git:
            if not self._generator or self._small is None:
                raise TGuideError("GIT is on but no generator is set (on_fit_start did not run)")
            x, y = batch
            gen = self._generator[0]
            x, y, replaced = git_batch(x, y, self._small, lambda v: gen(v, self._rng), self.git_prob, self._rng)
            self.log("train/git_fraction", replaced.float().mean(), on_step=False, on_epoch=True, batch_size=y.shape[0])
            batch = (x, y)
        return self._step(batch, "train")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        super().test_step(batch, batch_idx)
        x, y = batch
        with torch.no_grad():
            self.test_class_acc.update(self(x), y)

    def on_test_epoch_end(self) -> None:
        per_class = self.test_class_acc.compute()  # (C,)
        self.test_class_acc.reset()
        self.log("test/acc_balanced", per_class.mean(), sync_dist=True)
        try:
            buckets = size_buckets(self._counts(), self.head_above, self.tail_at_most)
        except TGuideError:
            return
        for name, classes in buckets.items():
            if classes:
                self.log(f"test/acc_{name}", per_class[classes].mean(), sync_dist=True)

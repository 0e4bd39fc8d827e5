r"""Fine-tune a candidate cut at a layer: :class:`FineTuner` (a LightningModule) and the ``finetune`` recipe.

The model is :class:`~tguide.select.backbone.Backbone` (the candidate's network run up to
``layer``, pooled as the ranking pooled it) followed by a new linear head with one output per
target class:

.. math::
    \text{logits} = W\,\mathrm{pool}\big(\mathrm{network}_{\le \mathrm{layer}}(x)\big) + b,
    \qquad W \in \mathbb{R}^{C_t \times D}

trained with cross-entropy and AdamW (one learning rate for the backbone, another for the
head), a cosine learning-rate schedule over all training steps, and accuracy from
``torchmetrics``; it logs ``{train,val,test}/{loss,acc}`` like :class:`tguide.models.classifier.Classifier`,
so checkpoints (best ``val/acc``), loggers and the run folder are those of any ``tguide.fit`` run.

``pretune="otce"`` runs the OTCE pre-fine-tune (:func:`tguide.select.pretune.otce_pretune`,
Tan et al., CVPR 2021) in ``on_fit_start``: the backbone is moved to minimise
:math:`W_T = H(Y_t \mid Y_s)` between source samples and the training shots, then ordinary
fine-tuning starts. The **source samples** come from ``pretune_source`` when given (a named dataset of
:func:`tguide.data.image_folder.load_target` — ``mnist``, ``cifar10``, ``usps``, ``mnist_m``,
``office31_*`` — or an image folder), else from the candidate's own source dataset when the
candidate says which (zoo entries: ``cifar10`` → the shared CIFAR-10 JPEG copy, ``mnist`` → the
10k MNIST test set); ImageNet is not available offline, so ImageNet candidates, torchvision/timm
models and ``ckpt:``/``file:`` candidates need ``pretune_source``. Source images pass through the
candidate's transform; at most ``pretune_samples`` of them (seeded, class-stratified), and at most
``pretune_options.max_target`` training shots. ``W_T`` before/after is logged as
``pretune/w_t_before`` and ``pretune/w_t_after`` and written to ``<run>/pretune.json``.

Data: :func:`target_datamodule` builds the loaders of a named target (the fixed splits of
:mod:`tguide.select.targets`) or an image folder (:class:`tguide.data.image_folder.ImageFolderDataModule`),
always through the candidate's own transform (size, normalisation, grey ↔ RGB).

Recipe::

    python -m tguide.fit recipe=finetune finetune.candidate=zoo:resnet20_cifar10 finetune.layer=layer3 \
        data.root=PATH_OR_TARGET [finetune.pretune=otce] [trainer.max_epochs=10]
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import lightning as L
import torch
from torch import Tensor, nn
from torchmetrics.classification import MulticlassAccuracy

from tguide.errors import TGuideError
from tguide.select.backbone import Backbone

__all__ = ["FineTuner", "PRETUNE_DEFAULTS", "TargetDataModule", "build_finetuner", "candidate_transform",
           "source_samples", "target_datamodule"]

PRETUNE = (None, "otce")
PRETUNE_DEFAULTS: dict[str, Any] = {"steps": 20, "lr": 1e-3, "reg": 0.1, "batch": 128, "normalise": "l2",
                                    "trainable": "all", "max_iter": 100, "max_target": 256, "seed": 0}
#: candidate source dataset (Candidate.meta["source"]) → name for :func:`tguide.data.image_folder.load_target`
_OFFLINE_SOURCES = {"cifar10": "cifar10", "mnist": "mnist"}


# ----------------------------------------------------------------------------- candidates and data


def _resolve(candidate: Any) -> Any:
    from tguide.select.candidates import resolve_candidate

    return resolve_candidate(candidate)


def candidate_transform(candidate: Any) -> Callable[[Any], Tensor]:
    """The candidate's own input transform (PIL image → tensor); a Hydra factory for ``data.transform``."""
    return _resolve(candidate).transform


def _input_shape(transform: Callable[[Any], Tensor]) -> tuple[int, ...]:
    from PIL import Image

    return tuple(transform(Image.new("RGB", (64, 64))).shape)


class TargetDataModule(L.LightningDataModule):
    """Loaders over fixed train/val/test :class:`~tguide.data.image_folder.TargetData` parts.

    Args:
        parts: ``{"train": TargetData, "val": ..., "test": ...}`` (``val`` and ``test`` may be missing;
            the missing one reuses the other).
        transform: PIL image → tensor (the candidate's).
        batch_size, num_workers, seed: loader settings (``seed`` orders the training shuffle).
        train_per_class: keep a seeded random subset of this many training images per class (few-shot).
    """

    def __init__(self, parts: Mapping[str, Any], transform: Callable[[Any], Tensor], batch_size: int = 64,
                 num_workers: int = 0, seed: int = 0, train_per_class: int | None = None) -> None:
        super().__init__()
        if "train" not in parts:
            raise TGuideError("TargetDataModule needs a 'train' part")
        self.parts = dict(parts)
        self.parts.setdefault("val", self.parts.get("test"))
        self.parts.setdefault("test", self.parts.get("val"))
        if self.parts["val"] is None:
            raise TGuideError("TargetDataModule needs a 'val' or a 'test' part")
        if train_per_class is not None:
            self.parts["train"] = _per_class(self.parts["train"], int(train_per_class), seed)
        self.transform = transform
        self.batch_size, self.num_workers, self.seed = int(batch_size), int(num_workers), int(seed)
        self.classes: tuple[str, ...] = tuple(self.parts["train"].classes)

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def _loader(self, part: str, shuffle: bool) -> Any:
        from torch.utils.data import DataLoader

        return DataLoader(self.parts[part].dataset(self.transform), batch_size=self.batch_size, shuffle=shuffle,
                          num_workers=self.num_workers, generator=torch.Generator().manual_seed(self.seed))

    def train_dataloader(self) -> Any:
        return self._loader("train", True)

    def val_dataloader(self) -> Any:
        return self._loader("val", False)

    def test_dataloader(self) -> Any:
        return self._loader("test", False)


def _per_class(data: Any, k: int, seed: int) -> Any:
    """A seeded subset of ``k`` items per class (all of a class with fewer)."""
    if k < 1:
        raise TGuideError(f"train_per_class must be ≥ 1, got {k}")
    gen = torch.Generator().manual_seed(int(seed))
    keep: list[int] = []
    for c in torch.unique(data.labels).tolist():
        idx = torch.nonzero(data.labels == c).flatten()
        keep += idx[torch.randperm(idx.numel(), generator=gen)[:k]].tolist()
    return data.subset(sorted(keep))


def _benchmark_parts(name: str, root: Any) -> dict[str, Any]:
    """The fixed train/val/test splits of a named benchmark target, as TargetData parts."""
    from tguide.data.targets import Target as TargetData
    from tguide.data.targets import load_target as load_split

    split = load_split(name, root)
    parts = {}
    for part in ("train", "val", "test"):
        items = split.split(part)
        parts[part] = TargetData([it for it, _ in items], torch.tensor([y for _, y in items], dtype=torch.int64),
                                 tuple(split.classes), f"{name}/{part}",
                                 [f"{name}/{part}:{i}" for i in range(len(items))])
    return parts


def target_datamodule(root: Any, transform: Callable[[Any], Tensor] | None = None, candidate: Any = None, *,
                      batch_size: int = 64, num_workers: int = 0, seed: int = 0,
                      split: Sequence[float] = (0.8, 0.1, 0.1), train_per_class: int | None = None,
                      data_root: Any = None, **kwargs: Any) -> L.LightningDataModule:
    """A target's data module, read through the candidate's transform.

    Args:
        root: a named target (the fixed splits of :mod:`tguide.select.targets`: ``cifar10``,
            ``office31_webcam``, ``office31_amazon``, ``mnist_m``, ``usps``; or ``mnist``, split
            by ``split``) or an image folder (``<class>/<image>`` or ``train/ val/ test/`` splits,
            :class:`~tguide.data.image_folder.ImageFolderDataModule`).
        transform: PIL image → tensor; default the transform of ``candidate``.
        candidate: a candidate spec (used only for its transform).
        split: train/val/test fractions for a folder (or ``mnist``) without split folders.
        train_per_class: keep this many training images per class (seeded; few-shot targets).
        data_root: data root of the named targets (default ``$TGUIDE_DATA``).
        kwargs: further :class:`ImageFolderDataModule` options (``image_size`` …; ignored when a
            transform is given).
    """
    from tguide.data import targets
    from tguide.data.image_folder import ImageFolderDataModule

    if transform is None:
        if candidate is None:
            raise TGuideError("target_datamodule needs a transform or a candidate (whose transform it uses)")
        transform = candidate_transform(candidate)
    if root is None or str(root) == "":
        raise TGuideError("no target: set data.root to an image folder or a named target "
                          f"({', '.join(targets.TARGETS + ('mnist',))})")
    name = str(root)
    if name in targets.TARGETS:
        return TargetDataModule(_benchmark_parts(name, data_root), transform, batch_size, num_workers, seed,
                                train_per_class)
    if name in targets.TARGETS:
        data = targets.load_target(name, root=data_root)
        idx = targets.stratified_split(data.labels, tuple(float(f) for f in split), seed)
        return TargetDataModule(dict(zip(targets.SPLITS, (data.subset(i) for i in idx))), transform, batch_size,
                                num_workers, seed, train_per_class)
    kwargs = {k: v for k, v in kwargs.items() if k in ("image_size", "channels", "mean", "std")}
    dm = ImageFolderDataModule(root, batch_size=batch_size, num_workers=num_workers, split=split, seed=seed,
                                   transform=transform, **kwargs)
    if train_per_class is None:
        return dm
    dm.setup()
    return TargetDataModule(dm.parts, transform, batch_size, num_workers, seed, train_per_class)


def source_samples(candidate: Any, source: Any = None, *, max_samples: int = 512, seed: int = 0,
                   data_root: Any = None) -> tuple[Tensor, Tensor]:
    """Source images ``(M, C, H, W)`` (through the candidate's transform) and labels ``(M,)`` for the pre-fine-tune.

    ``source``: a named dataset or folder for :func:`tguide.data.image_folder.load_target`; default
    the candidate's own source dataset (``Candidate.meta["source"]``) when it is available offline.
    ``max_samples``: a seeded, class-stratified subset.
    """
    from tguide.data.targets import load_target

    cand = _resolve(candidate) if not hasattr(candidate, "transform") else candidate
    if source is None:
        known = (getattr(cand, "meta", None) or {}).get("source")
        if known not in _OFFLINE_SOURCES:
            raise TGuideError(
                f"candidate {cand.name!r}: its source dataset is "
                f"{'unknown' if known is None else repr(known) + ', not available offline'}; pass the source samples "
                "for the OTCE pre-fine-tune with finetune.pretune_source=NAME_OR_FOLDER (e.g. cifar10, mnist, a folder)"
            )
        source = _OFFLINE_SOURCES[known]
    data = load_target(str(source), root=data_root, max_samples=int(max_samples), seed=int(seed))
    x = torch.stack([cand.transform(data.image(i)) for i in range(len(data))])
    return x, data.labels.clone()


# ----------------------------------------------------------------------------- the module


class FineTuner(L.LightningModule):
    """A candidate cut at ``layer`` plus a new linear head, fine-tuned on the target.

    Args:
        candidate: a candidate spec (``zoo:NAME``, ``torchvision:ARCH``, ``ckpt:PATH``, ``file:PATH#ARCH``),
            a :class:`~tguide.select.candidates.Candidate` or an ``nn.Module`` (then ``input_shape``
            may be needed). A spec is saved in the checkpoint, so ``FineTuner.load_from_checkpoint``
            rebuilds the model.
        layer: the cut (a module name); default the candidate's last "auto" layer (its penultimate
            features).
        num_classes: target classes; ``None`` = from the data module (``num_classes`` or
            ``classes``) in :meth:`setup`.
        pool: pooling of the layer's output (default the candidate's, else ``"avg"``).
        lr_backbone, lr_head, weight_decay: AdamW with two parameter groups.
        freeze_backbone: train the head only (a linear probe).
        freeze_bn: keep BatchNorm layers in eval mode (running statistics frozen) while training.
        label_smoothing: of the cross-entropy.
        pretune: ``None`` or ``"otce"`` (see the module doc).
        pretune_options: overrides of :data:`PRETUNE_DEFAULTS` (``steps``, ``lr``, ``reg``, ``batch``,
            ``normalise``, ``trainable``, ``max_iter``, ``max_target``, ``seed``).
        pretune_source: source dataset name or folder (default: the candidate's source dataset).
        pretune_samples: at most this many source images.
        input_shape: one input's shape for the backbone's dummy forward (default: from the transform).
    """

    def __init__(
        self,
        candidate: Any,
        layer: str | None = None,
        num_classes: int | None = None,
        *,
        pool: Any = None,
        lr_backbone: float = 1e-3,
        lr_head: float = 1e-2,
        weight_decay: float = 1e-4,
        freeze_backbone: bool = False,
        freeze_bn: bool = False,
        label_smoothing: float = 0.0,
        pretune: str | None = None,
        pretune_options: Mapping[str, Any] | None = None,
        pretune_source: str | None = None,
        pretune_samples: int = 512,
        input_shape: Sequence[int] | None = None,
    ) -> None:
        super().__init__()
        if pretune not in PRETUNE:
            raise TGuideError(f"finetune.pretune must be one of {PRETUNE}, got {pretune!r}")
        unknown = set(pretune_options or {}) - set(PRETUNE_DEFAULTS)
        if unknown:
            raise TGuideError(f"unknown pretune option(s) {sorted(unknown)}; valid: {sorted(PRETUNE_DEFAULTS)}")
        self.save_hyperparameters(ignore=["candidate"] if not isinstance(candidate, str) else None)
        from tguide.features import pool_for

        cand = _resolve(candidate)
        self.candidate = cand
        known = (getattr(cand, "meta", None) or {}).get("source")
        if pretune == "otce" and pretune_source is None and known not in _OFFLINE_SOURCES:
            raise TGuideError(
                f"candidate {cand.name!r}: pretune='otce' needs source samples, and its source dataset is "
                f"{'unknown' if known is None else repr(known) + ' (not available offline)'}; pass "
                "finetune.pretune_source=NAME_OR_FOLDER (e.g. cifar10, mnist, an image folder)"
            )
        layer = layer if layer not in (None, "", "auto") else (cand.layers[-1] if cand.layers else None)
        if pool is None:
            pool = pool_for(cand.pool, layer) if layer is not None else "avg"
        shape = tuple(input_shape) if input_shape is not None else _input_shape(cand.transform)
        self.backbone = Backbone(cand.network, layer, pool, input_shape=shape)
        self.layer = self.backbone.layer
        self.head: nn.Linear | None = None
        self.num_classes: int | None = None
        self.pretune_history: list[float] = []
        self.loss = nn.CrossEntropyLoss(label_smoothing=float(label_smoothing))
        if freeze_backbone:
            for p in self.backbone.parameters():
                p.requires_grad_(False)
        if num_classes is not None:
            self._build_head(int(num_classes))
        self.train()  # candidates come in eval mode and Lightning keeps modules' modes: start in train mode

    # ------------------------------------------------------------------ head and data

    def _build_head(self, num_classes: int) -> None:
        if num_classes < 2:
            raise TGuideError(f"the target needs at least 2 classes, got num_classes={num_classes}")
        self.num_classes = num_classes
        self.head = nn.Linear(self.backbone.feature_dim, num_classes)
        self.train_acc = MulticlassAccuracy(num_classes, average="micro")
        self.val_acc = MulticlassAccuracy(num_classes, average="micro")
        self.test_acc = MulticlassAccuracy(num_classes, average="micro")
        self.hparams["num_classes"] = num_classes  # saved with checkpoints: load_from_checkpoint builds the head

    def setup(self, stage: str) -> None:
        if self.head is not None:
            return
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        n = getattr(dm, "num_classes", None)
        if n is None and getattr(dm, "classes", None):
            n = len(dm.classes)
        if n is None:
            raise TGuideError("FineTuner: num_classes is not set and the data module does not say it "
                              "(no `num_classes` or `classes`); set model.num_classes")
        self._build_head(int(n))

    # ------------------------------------------------------------------ steps

    def forward(self, x: Tensor) -> Tensor:
        if self.head is None:
            raise TGuideError("FineTuner has no head yet: pass num_classes or run it under a Trainer with a datamodule")
        return self.head(self.backbone(x))

    def train(self, mode: bool = True) -> FineTuner:
        super().train(mode)
        if mode and self.hparams.get("freeze_bn"):
            for m in self.backbone.modules():
                if isinstance(m, nn.modules.batchnorm._BatchNorm):
                    m.eval()
        return self

    def _step(self, batch: tuple[Tensor, Tensor], stage: str) -> Tensor:
        x, y = batch
        logits = self(x)
        loss = self.loss(logits, y)
        acc = getattr(self, f"{stage}_acc")
        acc(logits, y)
        self.log(f"{stage}/loss", loss, on_step=stage == "train", on_epoch=True, prog_bar=stage != "train",
                 sync_dist=True, batch_size=y.shape[0])
        self.log(f"{stage}/acc", acc, on_step=False, on_epoch=True, prog_bar=stage != "train")
        return loss

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        return self._step(batch, "train")

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "val")

    def test_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        self._step(batch, "test")

    def configure_optimizers(self) -> Any:
        hp = self.hparams
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        groups = [{"params": list(self.head.parameters()), "lr": float(hp.lr_head)}]
        if backbone:
            groups.insert(0, {"params": backbone, "lr": float(hp.lr_backbone)})
        optimizer = torch.optim.AdamW(groups, weight_decay=float(hp.weight_decay))
        steps = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        steps = int(steps) if steps is not None and math.isfinite(float(steps)) else 1
        scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    # ------------------------------------------------------------------ OTCE pre-fine-tune

    def on_fit_start(self) -> None:
        resuming = self._trainer is not None and (self.trainer.ckpt_path or self.global_step > 0)
        if self.hparams.get("pretune") == "otce" and not self.pretune_history and not resuming:
            self.pretune_history = self.run_pretune()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pretune_history"] = list(self.pretune_history)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.pretune_history = list(checkpoint.get("pretune_history") or [])

    def on_train_epoch_start(self) -> None:
        if self.pretune_history and self.current_epoch == 0:
            self.log("pretune/w_t_before", self.pretune_history[0], on_step=False, on_epoch=True)
            self.log("pretune/w_t_after", self.pretune_history[-1], on_step=False, on_epoch=True)

    def _target_shots(self, max_target: int) -> tuple[Tensor, Tensor]:
        dm = getattr(self.trainer, "datamodule", None)
        if dm is None:
            raise TGuideError("pretune='otce' needs a data module (its train loader gives the target shots)")
        xs, ys, n = [], [], 0
        for x, y in dm.train_dataloader():
            xs.append(x)
            ys.append(torch.as_tensor(y))
            n += x.shape[0]
            if n >= max_target:
                break
        return torch.cat(xs)[:max_target], torch.cat(ys)[:max_target]

    def run_pretune(self) -> list[float]:
        """Step 1 of OTCE fine-tuning on the backbone (in place); returns the W_T history."""
        from tguide.select.pretune import otce_pretune

        hp = self.hparams
        opts = {**PRETUNE_DEFAULTS, **dict(hp.get("pretune_options") or {})}
        max_target = int(opts.pop("max_target"))
        xs, ys = source_samples(self.candidate, hp.get("pretune_source"), max_samples=int(hp.pretune_samples),
                                seed=int(opts["seed"]))
        xt, yt = self._target_shots(max_target)
        history = otce_pretune(self.backbone, xs, ys, xt, yt, **opts)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for p in self.backbone.parameters():  # every rank starts step 2 from rank 0's pre-tuned weights
                torch.distributed.broadcast(p.data, src=0)
        if self.trainer.is_global_zero:
            record = {"w_t": history, "source": hp.get("pretune_source") or self.candidate.meta.get("source"),
                      "source_samples": int(xs.shape[0]), "target_shots": int(xt.shape[0]),
                      "options": {k: (v if isinstance(v, (int, float, str)) else repr(v)) for k, v in opts.items()}}
            run_dir = Path(self.trainer.default_root_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "pretune.json").write_text(json.dumps(record, indent=2) + "\n")
        return history


def build_finetuner(candidate: Any, layer: str | None = None, num_classes: int | None = None,
                    **kwargs: Any) -> FineTuner:
    """:class:`FineTuner` from a candidate spec (the ``model._target_`` of the ``finetune`` recipe).

    ``kwargs`` are :class:`FineTuner`'s options; a Hydra ``DictConfig`` for ``pretune_options`` is
    turned into a dict.
    """
    opts = kwargs.get("pretune_options")
    if opts is not None and not isinstance(opts, dict):
        from omegaconf import OmegaConf

        kwargs["pretune_options"] = OmegaConf.to_container(opts, resolve=True)
    return FineTuner(candidate, layer, num_classes, **kwargs)

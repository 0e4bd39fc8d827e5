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

``pretune="otce"`` adds the :class:`tguide.select.pretune_callback.OTCEPretune` callback (the OTCE
pre-fine-tune, :func:`tguide.select.pretune.otce_pretune`, Tan et al., CVPR 2021), which runs in
``on_fit_start``: the backbone is moved to minimise
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

Data: :func:`tguide.select.target_data.target_datamodule` (the candidate's own transform over a
named target or an image folder). The steps, metrics and optimiser plumbing are those of
:class:`tguide.models.classification.ClassificationModule`.

Recipe::

    python -m tguide.fit recipe=finetune finetune.candidate=zoo:resnet20_cifar10 finetune.layer=layer3 \
        data.root=PATH_OR_TARGET [finetune.pretune=otce] [trainer.max_epochs=10]
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tguide.errors import TGuideError
from tguide.models.classification import ClassificationModule
from tguide.select.backbone import Backbone
from tguide.select.pretune_callback import PRETUNE_DEFAULTS, OTCEPretune
from tguide.select.target_data import OFFLINE_SOURCES
from tguide.select.target_data import input_shape as _input_shape
from tguide.select.target_data import resolve as _resolve

__all__ = ["FineTuneResult", "FineTuner", "PRETUNE_DEFAULTS", "build_finetuner", "finetune"]

PRETUNE = (None, "otce")


class FineTuner(ClassificationModule):
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
        super().__init__(
            num_classes=None,
            scheduler_interval="step",
            label_smoothing=label_smoothing,
            optimizer=partial(torch.optim.AdamW, weight_decay=float(weight_decay)),
        )
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
        if pretune == "otce" and pretune_source is None and known not in OFFLINE_SOURCES:
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
        self.build_metrics(num_classes)
        self.hparams["num_classes"] = num_classes  # saved with checkpoints: load_from_checkpoint builds the head

    def setup(self, stage: str) -> None:
        if self.head is not None:
            return
        dm = getattr(self.trainer, "datamodule", None) if self._trainer is not None else None
        n = getattr(dm, "num_classes", None)
        classes = getattr(dm, "classes", None)
        if n is None and classes:
            n = len(classes)
        if n is None:
            raise TGuideError(
                "FineTuner: num_classes is not set and the data module does not say it "
                "(no `num_classes` or `classes`); set model.num_classes"
            )
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

    def param_groups(self) -> list[dict[str, Any]]:
        """AdamW groups: the trainable backbone parameters at ``lr_backbone``, the head at ``lr_head``."""
        hp = self.hparams
        if self.head is None:
            raise TGuideError("FineTuner has no head yet: pass num_classes or run it under a Trainer with a datamodule")
        backbone = [p for p in self.backbone.parameters() if p.requires_grad]
        groups = [{"params": list(self.head.parameters()), "lr": float(hp["lr_head"])}]
        if backbone:
            groups.insert(0, {"params": backbone, "lr": float(hp["lr_backbone"])})
        return groups

    def make_scheduler(self, optimizer: torch.optim.Optimizer) -> Any:
        """Cosine from the group rates to 0 over all training steps (stepped every step)."""
        steps = self.trainer.estimated_stepping_batches if self._trainer is not None else 1
        steps = int(steps) if steps is not None and math.isfinite(float(steps)) else 1
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=max(1, steps))

    # ------------------------------------------------------------------ OTCE pre-fine-tune

    def pretune_callback(self) -> OTCEPretune:
        """The OTCE pre-fine-tune of this module's settings."""
        hp = self.hparams
        return OTCEPretune(
            self.candidate, hp.get("pretune_source"), int(hp["pretune_samples"]), dict(hp.get("pretune_options") or {})
        )

    def configure_callbacks(self) -> list[Any]:
        return [self.pretune_callback()] if self.hparams.get("pretune") == "otce" else []

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["pretune_history"] = list(self.pretune_history)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.pretune_history = list(checkpoint.get("pretune_history") or [])

    def run_pretune(self) -> list[float]:
        """Step 1 of OTCE fine-tuning on the backbone (in place, under the attached Trainer).

        Returns the W_T history.
        """
        self.pretune_history = self.pretune_callback().run(self.trainer, self)
        return self.pretune_history


def build_finetuner(
    candidate: Any, layer: str | None = None, num_classes: int | None = None, **kwargs: Any
) -> FineTuner:
    """:class:`FineTuner` from a candidate spec (the ``model._target_`` of the ``finetune`` recipe).

    ``kwargs`` are :class:`FineTuner`'s options; a Hydra ``DictConfig`` for ``pretune_options`` is
    turned into a dict.
    """
    opts = kwargs.get("pretune_options")
    if opts is not None and not isinstance(opts, dict):
        from omegaconf import OmegaConf

        kwargs["pretune_options"] = OmegaConf.to_container(opts, resolve=True)
    return FineTuner(candidate, layer, num_classes, **kwargs)


@dataclass(frozen=True)
class FineTuneResult:
    """What :func:`finetune` returns: accuracies on the target's val and test parts, the best
    checkpoint (by ``val/acc``; ``None`` without ``out_dir``), the cut layer and the W_T history of
    the OTCE pre-fine-tune (empty without it)."""

    candidate: str
    layer: str | None
    val_acc: float
    test_acc: float
    checkpoint: Path | None
    pretune_history: tuple[float, ...] = ()


def finetune(
    candidate: Any,
    target: Any,
    *,
    layer: str | None = None,
    epochs: int = 10,
    lr: float = 1e-3,
    lr_head: float | None = None,
    seed: int = 0,
    pretune: str | None = None,
    pretune_source: str | None = None,
    batch_size: int = 64,
    out_dir: str | Path | None = None,
    data_root: Any = None,
    trainer_options: Mapping[str, Any] | None = None,
    **options: Any,
) -> FineTuneResult:
    """Fine-tune ``candidate`` cut at ``layer`` (+ a new head) on ``target``; a plain function, no config.

    Args:
        candidate: a candidate spec (``zoo:NAME`` …), a Candidate or an ``nn.Module`` with a transform.
        target: a named target or an image folder (:func:`tguide.select.target_data.target_datamodule`).
        layer: the cut (default: the candidate's penultimate features).
        epochs, lr, lr_head: training length, backbone learning rate, head learning rate (default ``10·lr``).
        seed: seeds the head, the split of a folder and the batch order.
        pretune: ``None`` or ``"otce"`` (the :class:`~tguide.select.pretune_callback.OTCEPretune` callback).
        out_dir: where the best checkpoint (``checkpoints/best.ckpt``) and ``pretune.json`` go (default: nothing kept).
        trainer_options: further ``lightning.Trainer`` arguments (``accelerator``, ``limit_train_batches`` …);
            the epochs, callbacks and root folder are this function's.
        options: further :class:`FineTuner` options (``freeze_backbone``, ``freeze_bn``, ``weight_decay`` …).
    """
    import tempfile

    import lightning as L
    from lightning.pytorch.callbacks import ModelCheckpoint

    from tguide.select.target_data import target_datamodule

    if epochs < 1:
        raise TGuideError(f"epochs must be ≥ 1, got {epochs}")
    L.seed_everything(int(seed), workers=True, verbose=False)
    model = FineTuner(
        candidate,
        layer,
        None,
        lr_backbone=float(lr),
        lr_head=float(10 * lr if lr_head is None else lr_head),
        pretune=pretune,
        pretune_source=pretune_source,
        **options,
    )
    dm = target_datamodule(
        target, candidate=model.candidate, batch_size=batch_size, seed=int(seed), data_root=data_root
    )
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(out_dir) if out_dir is not None else Path(tmp)
        ckpt = ModelCheckpoint(dirpath=root / "checkpoints", filename="best", monitor="val/acc", mode="max")
        settings: dict[str, Any] = {
            "logger": False,
            "enable_progress_bar": False,
            "enable_model_summary": False,
            "deterministic": False,
            **dict(trainer_options or {}),
        }
        trainer = L.Trainer(max_epochs=int(epochs), default_root_dir=str(root), callbacks=[ckpt], **settings)
        trainer.fit(model, datamodule=dm)
        val = trainer.validate(model, datamodule=dm, ckpt_path="best", verbose=False)[0]["val/acc"]
        test = trainer.test(model, datamodule=dm, ckpt_path="best", verbose=False)[0]["test/acc"]
        best = Path(ckpt.best_model_path) if out_dir is not None and ckpt.best_model_path else None
    return FineTuneResult(
        model.candidate.name, model.layer, float(val), float(test), best, tuple(model.pretune_history)
    )

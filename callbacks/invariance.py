"""Watch invariance transfer while training: per-class eKLD against class size, every epoch.

:class:`InvarianceMonitor` runs the model (eval mode, no grad) over pairs ``(x, x', y)`` of two
independent nuisance draws of the same input (``datamodule.invariance_dataloader(split)``,
:class:`tguide.studies.invariance.longtail.LongTailMNISTDataModule`), feeds the logits to
:class:`tguide.metrics.invariance.EKLD` (no formula lives here) and logs

- ``invariance/ekld`` (mean over samples), ``invariance/ekld_{head,mid,tail}`` (mean of the per-class
  eKLDs of each class-size bucket) and ``invariance/ekld_class_<c>`` after every ``every_n_epochs``
  training epochs (after that epoch's validation);
- ``test/ekld`` and ``test/ekld_{head,mid,tail}`` in the test stage (pairs of the test split);
- into the run folder (``trainer.default_root_dir``): ``invariance.csv`` (split, epoch, class,
  class size, bucket, eKLD) and ``invariance.png`` (eKLD vs class size, one line per epoch);
- to W&B loggers at the end of fit and test: ``invariance/<split>_table`` and ``invariance/<split>_ekld_vs_size``
  (a scatter of the last epoch's per-class eKLD against log10 class size).

Every rank reads the whole (small) pair set, so all ranks compute and log the same numbers.
"""

from __future__ import annotations

import csv
import math
import os
import time
from collections.abc import Callable, Sequence
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import Callback
from torch import Tensor
from torch.utils.data import DataLoader

from tguide.errors import TGuideError
from tguide.metrics.invariance import EKLD

__all__ = ["InvarianceMonitor", "per_class_ekld"]

COLUMNS = ["split", "epoch", "class", "class_size", "bucket", "ekld"]


@torch.no_grad()
def per_class_ekld(
    model: torch.nn.Module, loader: DataLoader, num_classes: int, device: torch.device | str | None = None
) -> torch.Tensor:
    """Per-class eKLD ``(num_classes,)`` of ``model`` over batches ``(x, x', y)`` (eval mode, restored)."""
    modes = {m: m.training for m in model.modules()}
    model.eval()
    metric = EKLD(num_classes, average="none")
    try:
        for x, x2, y in loader:
            if device is not None:
                x, x2 = x.to(device), x2.to(device)
            metric.update(model(x).cpu(), model(x2).cpu(), y.cpu())
    finally:
        for m, was in modes.items():
            m.train(was)
    return metric.compute()


class InvarianceMonitor(Callback):
    """Log per-class eKLD vs class size (see the module docstring).

    Args:
        pairs: a datamodule method name called with the split (``"invariance_dataloader"``), a
            DataLoader of ``(x, x', y)`` or a callable ``split -> DataLoader``.
        class_counts: the datamodule attribute holding training class sizes, or the sizes.
        num_classes: ``None`` = the LightningModule's ``hparams.num_classes`` or ``len(class_counts)``.
        every_n_epochs: measure after epochs ``n-1, 2n-1, ...``.
        test: also measure on the test pairs in the test stage.
        head_above, tail_at_most: bucket bounds (:func:`size_buckets`).
        filename: CSV name in the run folder.
    """

    def __init__(
        self,
        pairs: str | DataLoader | Callable[[str], DataLoader] = "invariance_dataloader",
        class_counts: str | Sequence[int] = "class_counts",
        num_classes: int | None = None,
        every_n_epochs: int = 1,
        test: bool = True,
        head_above: int = 50,
        tail_at_most: int = 10,
        filename: str = "invariance.csv",
    ) -> None:
        super().__init__()
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be an integer ≥ 1, got {every_n_epochs!r}.")
        if tail_at_most >= head_above:
            raise ValueError(f"need tail_at_most < head_above, got {tail_at_most} and {head_above}.")
        self.pairs, self.class_counts_spec, self.num_classes = pairs, class_counts, num_classes
        self.every_n_epochs, self.test = every_n_epochs, test
        self.head_above, self.tail_at_most, self.filename = head_above, tail_at_most, filename
        self.rows: list[list[Any]] = []
        self.seconds: list[float] = []

    # -- helpers -------------------------------------------------------------------------
    def _loader(self, trainer: L.Trainer, split: str) -> DataLoader:
        if isinstance(self.pairs, DataLoader):
            return self.pairs
        if isinstance(self.pairs, str):
            # Lightning attaches `datamodule` to the trainer at fit time; Trainer does not declare it
            method = getattr(getattr(trainer, "datamodule", None), self.pairs, None)
            if not callable(method):
                raise ValueError(
                    f"`pairs`={self.pairs!r}: the datamodule has no such method; use data=mnist_lt "
                    "or pass a DataLoader of (x, x', y) batches."
                )
            return method(split)
        return self.pairs(split)

    def _counts(self, trainer: L.Trainer) -> list[int]:
        spec = self.class_counts_spec
        if isinstance(spec, str):
            value = getattr(getattr(trainer, "datamodule", None), spec, None)
            if value is None:
                raise ValueError(f"`class_counts`={spec!r}: the datamodule has no such attribute (after setup).")
            spec = value
        return [int(n) for n in (spec.tolist() if isinstance(spec, torch.Tensor) else spec)]

    def _measure(self, trainer: L.Trainer, pl_module: L.LightningModule, split: str) -> dict[str, float]:
        start = time.perf_counter()
        counts = self._counts(trainer)
        hparams = getattr(pl_module, "hparams", None) or {}
        c = self.num_classes or hparams.get("num_classes") or len(counts)
        per = per_class_ekld(pl_module, self._loader(trainer, split), int(c), pl_module.device)
        buckets = size_buckets(counts, self.head_above, self.tail_at_most)
        bucket_of = {k: name for name, ks in buckets.items() for k in ks}
        seen = per[~torch.isnan(per)]
        out = {"ekld": float(seen.mean()) if seen.numel() else float("nan")}
        for name, ks in buckets.items():
            vals = per[ks]
            vals = vals[~torch.isnan(vals)]
            if vals.numel():
                out[f"ekld_{name}"] = float(vals.mean())
        for k in range(len(counts)):
            out[f"ekld_class_{k}"] = float(per[k])
            self.rows.append([split, trainer.current_epoch, k, counts[k], bucket_of.get(k, ""), float(per[k])])
        self.seconds.append(time.perf_counter() - start)
        return out

    # -- hooks ---------------------------------------------------------------------------
    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or (trainer.current_epoch + 1) % self.every_n_epochs:
            return
        for key, value in self._measure(trainer, pl_module, "val").items():
            pl_module.log(f"invariance/{key}", value, on_step=False, on_epoch=True)

    def on_test_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not self.test:
            return
        for key, value in self._measure(trainer, pl_module, "test").items():
            if not key.startswith("ekld_class_"):
                pl_module.log(f"test/{key}", value, on_step=False, on_epoch=True)

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._report(trainer, "val")

    def on_test_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.test:
            self._report(trainer, "test")

    # -- outputs -------------------------------------------------------------------------
    def _report(self, trainer: L.Trainer, split: str) -> None:
        rows = [r for r in self.rows if r[0] == split]
        if not trainer.is_global_zero or not rows:
            return
        folder = trainer.default_root_dir
        os.makedirs(folder, exist_ok=True)
        with open(os.path.join(folder, self.filename), "w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(COLUMNS)
            writer.writerows(self.rows)
        if split == "val":
            self._plot(os.path.join(folder, os.path.splitext(self.filename)[0] + ".png"), rows)
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                self._log_wandb(logger.experiment, split, rows)  # type: ignore[attr-defined]  # a WandbLogger's run; Lightning's Logger base does not declare it

    @staticmethod
    def _plot(path: str, rows: list[list[Any]]) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(5, 3.5))
        epochs = sorted({r[1] for r in rows})
        cmap = plt.get_cmap("viridis")
        for i, e in enumerate(epochs):
            pts = sorted((r[3], r[5]) for r in rows if r[1] == e)
            ax.plot(
                [p[0] for p in pts],
                [p[1] for p in pts],
                "o-",
                ms=3,
                lw=1,
                color=cmap(i / max(1, len(epochs) - 1)),
                label=f"epoch {e}" if e in (epochs[0], epochs[-1]) else None,
            )
        ax.set_xscale("log")
        ax.set_xlabel("training images in the class")
        ax.set_ylabel("eKLD (nats)")
        ax.legend(fontsize=8)
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        plt.close(fig)

    @staticmethod
    def _log_wandb(run: Any, split: str, rows: list[list[Any]]) -> None:
        import wandb

        last = max(r[1] for r in rows)
        pts = [[math.log10(max(r[3], 1)), r[5]] for r in rows if r[1] == last and r[5] == r[5]]
        payload: dict[str, Any] = {f"invariance/{split}_table": wandb.Table(columns=COLUMNS, data=rows)}  # type: ignore[arg-type]  # wandb types columns as an invariant list[str | int]
        if pts:
            table = wandb.Table(columns=["log10_class_size", "ekld"], data=pts)
            payload[f"invariance/{split}_ekld_vs_size"] = wandb.plot.scatter(
                table, "log10_class_size", "ekld", title=f"per-class eKLD vs class size ({split}, epoch {last})"
            )
        run.log(payload)


def size_buckets(
    class_counts: Sequence[int] | Tensor, head_above: int = 50, tail_at_most: int = 10
) -> dict[str, list[int]]:
    """``{"head": [...], "mid": [...], "tail": [...]}``: class ids grouped by their training size."""
    counts = [int(n) for n in (class_counts.tolist() if isinstance(class_counts, Tensor) else class_counts)]
    if tail_at_most >= head_above:
        raise TGuideError(f"bucket bounds need tail_at_most < head_above, got {tail_at_most} and {head_above}")
    out: dict[str, list[int]] = {"head": [], "mid": [], "tail": []}
    for c, n in enumerate(counts):
        key = "head" if n > head_above else "tail" if n <= tail_at_most else "mid"
        out[key].append(c)
    return out

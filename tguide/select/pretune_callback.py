"""The OTCE pre-fine-tune as a Lightning callback (Tan, Li, Huang, CVPR 2021).

:class:`OTCEPretune` runs step 1 of OTCE fine-tuning (:func:`tguide.select.pretune.otce_pretune`)
on ``pl_module.backbone`` in ``on_fit_start`` — before the first optimiser step, never again on a
resumed run — with source samples from :func:`tguide.select.target_data.source_samples` and the
first ``max_target`` training shots of the data module. ``W_T`` before/after is logged as
``pretune/w_t_before`` and ``pretune/w_t_after`` in the first epoch, kept as
``pl_module.pretune_history`` (saved with checkpoints by the module) and written to
``<run>/pretune.json``.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import lightning as L
import torch
from torch import Tensor

from tguide.errors import TGuideError

__all__ = ["OTCEPretune", "PRETUNE_DEFAULTS"]

PRETUNE_DEFAULTS: dict[str, Any] = {
    "steps": 20,
    "lr": 1e-3,
    "reg": 0.1,
    "batch": 128,
    "normalise": "l2",
    "trainable": "all",
    "max_iter": 100,
    "max_target": 256,
    "seed": 0,
}


def _target_shots(trainer: L.Trainer, max_target: int) -> tuple[Tensor, Tensor]:
    dm = getattr(trainer, "datamodule", None)
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


class OTCEPretune(L.Callback):
    """Step 1 of OTCE fine-tuning on ``pl_module.backbone`` at the start of fitting.

    Args:
        candidate: the candidate (its transform reads the source images; its ``meta["source"]``
            names the default source dataset).
        source: source dataset name or folder (default: the candidate's source dataset).
        samples: at most this many source images (seeded, class-stratified).
        options: overrides of :data:`PRETUNE_DEFAULTS`.
    """

    def __init__(
        self, candidate: Any, source: str | None = None, samples: int = 512, options: Mapping[str, Any] | None = None
    ) -> None:
        unknown = set(options or {}) - set(PRETUNE_DEFAULTS)
        if unknown:
            raise TGuideError(f"unknown pretune option(s) {sorted(unknown)}; valid: {sorted(PRETUNE_DEFAULTS)}")
        self.candidate, self.source, self.samples = candidate, source, int(samples)
        self.options = {**PRETUNE_DEFAULTS, **dict(options or {})}

    def on_fit_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        resuming = bool(trainer.ckpt_path) or trainer.global_step > 0
        if getattr(pl_module, "pretune_history", None) or resuming:
            return
        history = self.run(trainer, pl_module)
        pl_module.pretune_history = history  # type: ignore[assignment]  # torch types Module.__setattr__ for tensors/modules only; any value works

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        history = getattr(pl_module, "pretune_history", None)
        if history and trainer.current_epoch == 0:
            pl_module.log("pretune/w_t_before", history[0], on_step=False, on_epoch=True)
            pl_module.log("pretune/w_t_after", history[-1], on_step=False, on_epoch=True)

    def run(self, trainer: L.Trainer, pl_module: L.LightningModule) -> list[float]:
        """Pre-tune ``pl_module.backbone`` in place; return the W_T history."""
        from tguide.select.pretune import otce_pretune
        from tguide.select.target_data import source_samples

        opts = dict(self.options)
        max_target = int(opts.pop("max_target"))
        xs, ys = source_samples(self.candidate, self.source, max_samples=self.samples, seed=int(opts["seed"]))
        xt, yt = _target_shots(trainer, max_target)
        backbone = getattr(pl_module, "backbone", None)
        if not isinstance(backbone, torch.nn.Module):
            raise TGuideError(
                f"OTCEPretune needs a module with a `backbone` network (a FineTuner), got {type(pl_module).__name__}"
            )
        history = otce_pretune(backbone, xs, ys, xt, yt, **opts)
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            for p in backbone.parameters():  # every rank starts step 2 from rank 0's pre-tuned weights
                torch.distributed.broadcast(p.data, src=0)
        if trainer.is_global_zero:
            record = {
                "w_t": history,
                "source": self.source or (getattr(self.candidate, "meta", None) or {}).get("source"),
                "source_samples": int(xs.shape[0]),
                "target_shots": int(xt.shape[0]),
                "options": {k: (v if isinstance(v, (int, float, str)) else repr(v)) for k, v in opts.items()},
            }
            run_dir = Path(trainer.default_root_dir)
            run_dir.mkdir(parents=True, exist_ok=True)
            (run_dir / "pretune.json").write_text(json.dumps(record, indent=2) + "\n")
        return history

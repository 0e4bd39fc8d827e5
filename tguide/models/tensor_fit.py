"""One plain training loop for a classifier on tensors held in memory (no Trainer, no loader).

:func:`fit_tensors` is the loop the studies share for "backbone + new head" on cached tensors:
the zoo benchmark's fine-tune (SGD, per-step cosine, a head learning-rate multiplier), the metric
quality study's source training (Adam for a number of minibatch steps) and the few-shot
fine-tunes (:func:`tguide.select.pretune.finetune`, the few-shot study's full-batch step 2 and
LeNet-5 source training). Per step, in this order:
``xb = transform(x[idx])``, ``loss = cross_entropy(model(xb), y[idx])``, ``zero_grad``,
``backward``, optimiser step, scheduler step. Minibatches are the consecutive slices of one
seeded permutation per pass (``torch.randperm(N, generator)``, the generator seeded with
``seed``; the last partial batch kept); ``batch_size=None`` is the full batch in the given row
order (no permutation). Training with a Trainer on loaders is
:class:`tguide.models.classification.ClassificationModule`'s job.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

__all__ = ["FitLog", "fit_tensors"]

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("constant", "cosine")


@dataclass
class FitLog:
    """What :func:`fit_tensors` did: the loss of every step, the mean loss and wall time of every pass."""

    step_losses: list[float] = field(default_factory=list)
    epoch_losses: list[float] = field(default_factory=list)
    epoch_seconds: list[float] = field(default_factory=list)


def _param_groups(model: nn.Module, head: nn.Module | None, lr: float, head_lr_mult: float) -> list[dict]:
    if head is None:
        return [{"params": [p for p in model.parameters() if p.requires_grad], "lr": lr}]
    in_head = {id(p) for p in head.parameters()}
    return [
        {"params": [p for p in model.parameters() if id(p) not in in_head], "lr": lr},
        {"params": list(head.parameters()), "lr": lr * head_lr_mult},
    ]


def fit_tensors(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    lr: float,
    epochs: int | None = None,
    steps: int | None = None,
    batch_size: int | None = None,
    optimizer: str = "adam",
    momentum: float = 0.0,
    weight_decay: float = 0.0,
    head: nn.Module | None = None,
    head_lr_mult: float = 1.0,
    schedule: str = "constant",
    seed: int = 0,
    transform: Callable[[Tensor], Tensor] | None = None,
    train_mode: bool = True,
    stop_if_nonfinite: bool = False,
    on_epoch: Callable[[int, float, float], None] | None = None,
) -> FitLog:
    """Train ``model`` in place with cross-entropy on ``x (N, ...)``, ``y (N,)`` class ids.

    Args:
        lr: learning rate of the optimiser (of every parameter outside ``head``).
        epochs, steps: passes over the data, or minibatch steps (exactly one of them): ``steps``
            runs that many minibatches, a fresh permutation each time a pass is used up.
        batch_size: rows per step; ``None`` = the full batch, in the given order.
        optimizer: ``"adam"`` (``torch.optim.Adam``) or ``"sgd"`` (with ``momentum``);
            ``weight_decay`` for both.
        head, head_lr_mult: the new head's parameters learn at ``lr · head_lr_mult``; without
            ``head``, every parameter with ``requires_grad`` is trained at ``lr``.
        schedule: ``"constant"``, or ``"cosine"``: per step ``lr · ½(1 + cos(π·min(s, T)/T))``
            over the ``T`` steps of the run.
        seed: seeds the generator of the batch order (the global RNG, e.g. dropout, is untouched).
        transform: applied to every batch of inputs (normalisation, augmentation).
        train_mode: ``model.train()`` at the start of every pass; ``False``: ``model.eval()``
            (BatchNorm statistics and dropout frozen).
        stop_if_nonfinite: stop after a pass whose mean loss is NaN or infinite.
        on_epoch: called after every pass with ``(pass index, mean loss, seconds)`` (logging).

    Returns:
        A :class:`FitLog`. ``ValueError`` for a bad option.
    """
    if (epochs is None) == (steps is None):
        raise ValueError(f"fit_tensors: give exactly one of `epochs` and `steps`, got epochs={epochs}, steps={steps}.")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"fit_tensors: `optimizer` must be one of {OPTIMIZERS}, got {optimizer!r}.")
    if schedule not in SCHEDULES:
        raise ValueError(f"fit_tensors: `schedule` must be one of {SCHEDULES}, got {schedule!r}.")
    if batch_size is not None and int(batch_size) < 1:
        raise ValueError(f"fit_tensors: `batch_size` must be a positive integer or None, got {batch_size!r}.")
    n = int(x.shape[0])
    if n == 0 or int(y.shape[0]) != n:
        raise ValueError(f"fit_tensors: `x` and `y` must have the same, non-zero number of rows ({n} vs {len(y)}).")
    groups = _param_groups(model, head, lr, head_lr_mult)
    opt: torch.optim.Optimizer
    if optimizer == "sgd":
        opt = torch.optim.SGD(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    else:
        opt = torch.optim.Adam(groups, lr=lr, weight_decay=weight_decay)
    per_pass = 1 if batch_size is None else math.ceil(n / int(batch_size))
    total_steps = int(steps) if steps is not None else int(epochs or 0) * per_pass
    sched = None
    if schedule == "cosine":
        total = max(1, total_steps)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 0.5 * (1 + math.cos(math.pi * min(s, total) / total)))
    gen = torch.Generator().manual_seed(int(seed))
    log = FitLog()
    done, epoch = 0, 0
    while done < total_steps:
        t0 = time.perf_counter()
        model.train(train_mode)
        if batch_size is None:
            batches: list[Tensor | None] = [None]
        else:
            batches = list(torch.randperm(n, generator=gen).split(int(batch_size)))
        losses: list[float] = []
        for idx in batches:
            if done >= total_steps:
                break
            xb, yb = (x, y) if idx is None else (x[idx], y[idx])
            if transform is not None:
                xb = transform(xb)
            loss = nn.functional.cross_entropy(model(xb), yb)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
            if sched is not None:
                sched.step()
            losses.append(loss.item())
            done += 1
        log.step_losses += losses
        log.epoch_losses.append(float(np.mean(losses)))
        log.epoch_seconds.append(time.perf_counter() - t0)
        if on_epoch is not None:
            on_epoch(epoch, log.epoch_losses[-1], log.epoch_seconds[-1])
        epoch += 1
        if stop_if_nonfinite and not math.isfinite(log.epoch_losses[-1]):
            break
    return log

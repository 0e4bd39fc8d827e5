"""Ground truth of the zoo benchmark: a fixed linear-probe and fine-tuning protocol.

It measures how well each candidate network *actually* transfers to a target, so that
transferability scores can be judged against it. Inputs, candidates and the budget are those of
:mod:`tguide.studies.zoo_benchmark.protocol`; the defaults are :class:`~.protocol.Protocol`'s.

**Ground truth 1, linear probe.** Penultimate features (``model.embed``, or the trunk's pooled
output) in eval mode; standardised with the train mean/std; multinomial logistic regression
(weights and bias, float64, full-batch L-BFGS with strong-Wolfe line search) minimising
``mean cross-entropy + l2 · ||W||²``; ``l2`` chosen on val accuracy from
``Protocol.l2_grid = (1e-4, 1e-3, 1e-2, 1e-1)`` (ties → the larger ``l2``); the reported number is
the test accuracy of the train-only fit at that ``l2``.

**Ground truth 2, fine-tuning.** The head is replaced by a new ``nn.Linear(features, classes)``
(PyTorch default init under ``torch.manual_seed(seed)``; the headless trunk gets one on its
pooled features; EfficientNet's dropout is not used). The whole network is trained with SGD
(momentum 0.9, weight decay 1e-4 on all parameters), batch 32 (reshuffled each epoch by a
generator seeded with ``seed``; last partial batch kept), BatchNorm in train mode, learning rate
``lr`` for the backbone and ``10·lr`` for the head, a per-step cosine schedule from those rates
to 0 over a fixed number of epochs (``Protocol.epochs`` = 4), no early stopping. After the last
epoch, val and test accuracy in eval mode (the loop: :func:`tguide.models.tensor_fit.fit_tensors`).
``lr`` is chosen from ``Protocol.lrs`` by val accuracy at seed 0 (ties → the smaller lr), then
seeds 1 and 2 are run at the chosen lr; the ground truth is the mean test accuracy over seeds
0–2 with a Student-t 95% interval (:func:`tguide.stats.mean_ci`). The random-init control keeps
the same seed-0 backbone in every run; the run seed only changes the head and batch order.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

from tguide.models.tensor_fit import fit_tensors
from tguide.studies.zoo_benchmark.protocol import Member, Protocol, normalise

__all__ = ["FineTuneNet", "ProbeResult", "accuracy", "extract_features", "finetune", "fit_logreg", "linear_probe"]


# ----------------------------------------------------------------------------- models


def _features(model: nn.Module, x: Tensor) -> Tensor:
    embed = getattr(model, "embed", None)
    return embed(x) if callable(embed) else model(x)  # the headless trunk returns pooled features


class FineTuneNet(nn.Module):
    """``backbone`` (its penultimate features: ``embed`` or, for a headless trunk, ``forward``) + a new head."""

    def __init__(self, backbone: nn.Module, num_classes: int, feature_dim: int) -> None:
        super().__init__()
        self.backbone = backbone
        self.head = nn.Linear(feature_dim, num_classes)

    def forward(self, x: Tensor) -> Tensor:
        return self.head(_features(self.backbone, x))


@torch.no_grad()
def extract_features(model: nn.Module, x_u8: Tensor, entry: Any, batch: int = 200) -> Tensor:
    """Penultimate features of ``model`` (eval mode) on uint8 inputs, float32 ``(N, D)``."""
    model.eval()
    return torch.cat(
        [_features(model, normalise(x_u8[i : i + batch], entry)).float() for i in range(0, len(x_u8), batch)]
    )


@torch.no_grad()
def accuracy(model: nn.Module, x_u8: Tensor, y: Tensor, entry: Any, batch: int = 200) -> float:
    model.eval()
    correct = 0
    for i in range(0, len(x_u8), batch):
        correct += int((model(normalise(x_u8[i : i + batch], entry)).argmax(1) == y[i : i + batch]).sum())
    return correct / max(1, len(y))


# ----------------------------------------------------------------------------- linear probe


def fit_logreg(x: Tensor, y: Tensor, num_classes: int, l2: float, max_iter: int = 500) -> tuple[Tensor, Tensor]:
    """Multinomial logistic regression, float64 full-batch L-BFGS on ``mean CE + l2·||W||²``."""
    x = x.double()
    w = torch.zeros(x.shape[1], num_classes, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(num_classes, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS(
        [w, b],
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-9,
        tolerance_change=1e-12,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        opt.zero_grad()
        loss = nn.functional.cross_entropy(x @ w + b, y) + l2 * (w * w).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return w.detach(), b.detach()


@dataclass(frozen=True)
class ProbeResult:
    test_acc: float
    val_acc: float
    l2: float
    val_by_l2: dict[float, float]


def linear_probe(
    train: tuple[Tensor, Tensor],
    val: tuple[Tensor, Tensor],
    test: tuple[Tensor, Tensor],
    num_classes: int,
    l2_grid: Sequence[float] = Protocol.l2_grid,
) -> ProbeResult:
    """Standardise with train statistics, fit on train for each ``l2``, pick ``l2`` by val accuracy
    (ties → larger ``l2``), report the test accuracy of that fit. Inputs are ``(features, labels)``."""
    (xtr, ytr), (xva, yva), (xte, yte) = train, val, test
    mu = xtr.double().mean(0)
    sd = xtr.double().std(0, unbiased=False).clamp_min(1e-8)
    z = [((a.double() - mu) / sd) for a in (xtr, xva, xte)]
    best: tuple[float, float, Tensor, Tensor] | None = None
    val_by: dict[float, float] = {}
    for l2 in sorted(l2_grid):
        w, b = fit_logreg(z[0], ytr, num_classes, float(l2))
        acc = float(((z[1] @ w + b).argmax(1) == yva).double().mean())
        val_by[float(l2)] = acc
        if best is None or acc >= best[0]:
            best = (acc, float(l2), w, b)
    assert best is not None
    acc, l2, w, b = best
    test_acc = float(((z[2] @ w + b).argmax(1) == yte).double().mean())
    return ProbeResult(test_acc, acc, l2, val_by)


# ----------------------------------------------------------------------------- fine-tuning


def finetune(
    candidate: Member,
    data: dict[str, tuple[Tensor, Tensor]],
    num_classes: int,
    lr: float,
    seed: int,
    protocol: Protocol | None = None,
    epochs: int | None = None,
    log: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """One fine-tuning run of the protocol; returns ``val_acc``, ``test_acc``, ``train_loss`` (last
    epoch mean), ``seconds`` (wall time of the whole run, evaluation included) and ``epoch_seconds``."""
    t0 = time.perf_counter()
    protocol = Protocol() if protocol is None else protocol
    epochs = protocol.epochs if epochs is None else int(epochs)
    entry = candidate.entry
    backbone = candidate.build()
    xtr, ytr = data["train"]
    with torch.no_grad():
        dim = int(_features(backbone.eval(), normalise(xtr[:2], entry)).shape[1])
    torch.manual_seed(seed)
    net = FineTuneNet(backbone, num_classes, dim)

    def report(epoch: int, loss: float, seconds: float) -> None:
        if log is not None:
            log(f"  {candidate.name} lr={lr:g} seed={seed} epoch {epoch + 1}/{epochs} loss {loss:.4f} ({seconds:.1f}s)")

    fit = fit_tensors(
        net,
        xtr,
        ytr,
        lr=lr,
        epochs=epochs,
        batch_size=protocol.batch_size,
        optimizer="sgd",
        momentum=protocol.momentum,
        weight_decay=protocol.weight_decay,
        head=net.head,
        head_lr_mult=protocol.head_lr_mult,
        schedule="cosine",
        seed=seed,
        transform=lambda xb: normalise(xb, entry),
        stop_if_nonfinite=True,
        on_epoch=report,
    )
    last_loss = fit.epoch_losses[-1] if fit.epoch_losses else float("nan")
    epoch_seconds = fit.epoch_seconds
    val_acc = accuracy(net, *data["val"], entry, protocol.eval_batch)
    test_acc = accuracy(net, *data["test"], entry, protocol.eval_batch)
    return {
        "val_acc": val_acc,
        "test_acc": test_acc,
        "train_loss": last_loss,
        "epochs": epochs,
        "seconds": time.perf_counter() - t0,
        "epoch_seconds": epoch_seconds,
    }

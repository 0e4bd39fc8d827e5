r"""Pre-fitting as transfer for SIREN image fitting (a SIREN pre-fitting study after Sitzmann et al., NeurIPS 2020).

To fit image A with a SIREN, start from (``random``) a fresh initialisation θ0, (``prefit_same``)
θ0 first fit to an image B of A's class, or (``prefit_other``) θ0 first fit to an image C of
another class. Triples (A, B, C) are drawn by seed with all 3T images distinct
(:func:`sample_triples`). Per triple the three schemes share θ0 (a paired design), every fit is
full-batch MSE + Adam, and a fresh Adam starts the fit of A. PSNR (dB, pixels in [-1, 1],
:func:`tguide.studies.siren.module.psnr`) is recorded at epochs 0..E, epoch e = after e updates.

The AUC of a curve :math:`p_0..p_E` is the trapezoid area divided by its length E, i.e. the
curve's mean height in dB (comparable across E):

.. math::
    \mathrm{AUC} = \frac{1}{E} \sum_{e=1}^{E} \frac{p_{e-1} + p_e}{2}.

All SIRENs of one run are fit at once (:class:`tguide.studies.siren.net.BatchedSiren`): 2T for the
pre-fits (B and C), then 3T for A. Before A is fit, each starting network gets transferability
scores for A (:func:`transfer_scores`): ``psnr0`` (PSNR on A at epoch 0), ``lstsq_psnr`` (PSNR
of the best linear head on the last hidden layer, least squares) and ``hscore`` (H-score,
Bao et al. 2019, of the last hidden layer over A's pixel coordinates labelled by k-means colour
cluster of A's pixels); :func:`score_agreement` says how often a score picks the winning scheme.
"""

from __future__ import annotations

import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tguide.runs import prepare_run
from tguide.studies.siren.data import coordinate_grid, image_to_pixels
from tguide.studies.siren.module import psnr
from tguide.studies.siren.net import BatchedSiren

SCHEMES = ("random", "prefit_same", "prefit_other")
SCORES = ("psnr0", "lstsq_psnr", "hscore")

__all__ = [
    "SCHEMES",
    "SCORES",
    "auc",
    "sample_triples",
    "fit_batched",
    "colour_clusters",
    "transfer_scores",
    "run_triples",
    "score_agreement",
    "summarise",
    "markdown_table",
    "run",
]


def auc(curves: Tensor | np.ndarray | Sequence[float]) -> Tensor:
    """Mean height (dB) of PSNR curves ``(..., E+1)`` by the trapezoid rule: ``trapz(p) / E`` → ``(...)``."""
    p = torch.as_tensor(np.asarray(curves, dtype=np.float64) if not torch.is_tensor(curves) else curves).double()
    if p.dim() < 1 or p.shape[-1] < 2:
        raise ValueError(f"curves need at least 2 points (epochs 0..E) on the last dim, got shape {tuple(p.shape)}")
    if not torch.isfinite(p).all():
        raise ValueError("curves contain NaN or Inf")
    e = p.shape[-1] - 1
    return torch.trapezoid(p, dim=-1) / e


def sample_triples(labels: Tensor, n: int, seed: int = 0) -> Tensor:
    """``(n, 3)`` indices (A, B, C): B in A's class, C in another, all 3n distinct; deterministic in ``seed``."""
    labels = torch.as_tensor(labels).long()
    if labels.dim() != 1 or labels.numel() < 3:
        raise ValueError(f"labels must be (N,) with N >= 3, got shape {tuple(labels.shape)}")
    classes = labels.unique()
    if classes.numel() < 2:
        raise ValueError("labels hold one class only; C must come from another class")
    if not 1 <= int(n) <= labels.numel() // 3:
        raise ValueError(f"n must be in 1..{labels.numel() // 3}, got {n}")
    gen = torch.Generator().manual_seed(int(seed))
    pools = {
        int(c): (labels == c).nonzero().flatten()[torch.randperm(int((labels == c).sum()), generator=gen)].tolist()
        for c in classes
    }
    out: list[list[int]] = []
    for _ in range(int(n)):  # each draw takes 2 images of A's class and 1 of C's, without replacement
        ok = [c for c, p in pools.items() if len(p) >= 2]
        if not ok:
            break
        ca = ok[int(torch.randint(len(ok), (1,), generator=gen))]
        others = [c for c, p in pools.items() if c != ca and (len(p) >= 1)]
        if not others:
            break
        cc = others[int(torch.randint(len(others), (1,), generator=gen))]
        a, b = pools[ca].pop(), pools[ca].pop()
        out.append([a, b, pools[cc].pop()])
    if len(out) < n:
        raise ValueError(f"could not draw {n} triples with distinct images from these labels")
    return torch.tensor(out, dtype=torch.long)


def fit_batched(net: BatchedSiren, coords: Tensor, targets: Tensor, epochs: int, lr: float = 1e-4) -> Tensor:
    """Fit every member ``m`` to ``targets[m]`` ``(M, P, C)`` with its own Adam; PSNR curves ``(M, epochs+1)``.

    The loss is the sum over members of their mean squared errors, so each member's gradient is its
    own; Adam's state is element-wise, hence this equals ``M`` separate fits. ``curves[:, e]`` is the
    PSNR after ``e`` updates (column ``e`` comes from update ``e+1``'s forward pass, the last from an
    extra forward).
    """
    if targets.dim() != 3 or targets.shape[0] != net.members:
        raise ValueError(f"targets must be ({net.members}, P, C), got {tuple(targets.shape)}")
    if int(epochs) < 0:
        raise ValueError(f"epochs must be >= 0, got {epochs}")
    opt = torch.optim.Adam(net.parameters(), lr=float(lr))
    curves = torch.empty(net.members, int(epochs) + 1, dtype=torch.float64)
    for e in range(int(epochs)):
        mse = ((net(coords) - targets) ** 2).mean(dim=(1, 2))  # (M,)
        curves[:, e] = psnr(mse.detach().double())
        opt.zero_grad(set_to_none=True)
        mse.sum().backward()
        opt.step()
    with torch.no_grad():
        curves[:, -1] = psnr(((net(coords) - targets) ** 2).mean(dim=(1, 2)).double())
    return curves


def colour_clusters(pixels: Tensor, k: int = 8, iters: int = 20, seed: int = 0) -> Tensor:
    """k-means labels ``(P,)`` of RGB ``pixels (P, 3)`` (k-means++-free: seeded random init, Lloyd steps)."""
    x = pixels.double()
    gen = torch.Generator().manual_seed(int(seed))
    centres = x[torch.randperm(x.shape[0], generator=gen)[: int(k)]].clone()
    for _ in range(int(iters)):
        lab = torch.cdist(x, centres).argmin(dim=1)
        for j in range(centres.shape[0]):
            if (lab == j).any():
                centres[j] = x[lab == j].mean(dim=0)
    return torch.cdist(x, centres).argmin(dim=1)


@torch.no_grad()
def transfer_scores(net: BatchedSiren, coords: Tensor, targets: Tensor, k: int = 8) -> dict[str, Tensor]:
    """Scores ``(M,)`` of each starting network for its target ``targets[m]`` ``(P, 3)``, before fitting."""
    from tguide.metrics import hscore

    feats = net(coords, hidden=True).double()  # (M, P, D)
    out = net(coords).double()
    t = targets.double()
    ones = torch.ones(*feats.shape[:2], 1, dtype=feats.dtype)
    design = torch.cat([feats, ones], dim=2)  # (M, P, D+1)
    coef = torch.linalg.lstsq(design, t, driver="gelsd").solution
    scores = {
        "psnr0": psnr(((out - t) ** 2).mean(dim=(1, 2))),
        "lstsq_psnr": psnr(((design @ coef - t) ** 2).mean(dim=(1, 2))),
        "hscore": torch.stack([hscore(feats[m], colour_clusters(targets[m], k)) for m in range(net.members)]),
    }
    return {name: v.double() for name, v in scores.items()}


def run_triples(
    images: Tensor,
    triples: Tensor,
    *,
    hidden_layers: int,
    hidden_features: int,
    epochs: int,
    prefit_epochs: int | None = None,
    lr: float = 1e-4,
    omega0: float = 30.0,
    seed: int = 0,
    clusters: int = 8,
) -> dict[str, Any]:
    """Run the three schemes on ``triples (T, 3)`` of ``images (N, 3, H, W)``; curves ``(3, T, E+1)`` etc."""
    triples = torch.as_tensor(triples).long()
    if triples.dim() != 2 or triples.shape[1] != 3:
        raise ValueError(f"triples must be (T, 3), got {tuple(triples.shape)}")
    if triples.flatten().unique().numel() != triples.numel():
        raise ValueError("triples must use distinct images (an index appears twice)")
    t_count = triples.shape[0]
    prefit_epochs = int(epochs if prefit_epochs is None else prefit_epochs)
    coords = coordinate_grid(images.shape[2], images.shape[3])  # (P, 2)
    pix = image_to_pixels(images[triples.flatten()]).reshape(t_count, 3, -1, images.shape[1])  # (T, 3, P, C)
    a, b, c = pix[:, 0], pix[:, 1], pix[:, 2]
    torch.manual_seed(int(seed))
    hidden, depth, w0 = int(hidden_features), int(hidden_layers), float(omega0)
    theta0 = BatchedSiren(t_count, hidden_features=hidden, hidden_layers=depth, omega0=w0)
    t0 = time.perf_counter()
    pre = theta0.select(list(range(t_count)) * 2)  # members: B of triples 0..T-1, then C
    prefit_curves = fit_batched(pre, coords, torch.cat([b, c]), prefit_epochs, lr)
    prefit_seconds = time.perf_counter() - t0
    # members: random (T), prefit_same (T), prefit_other (T)
    start = BatchedSiren(3 * t_count, hidden_features=hidden, hidden_layers=depth, omega0=w0)
    with torch.no_grad():
        for dst, s0, sp in zip(
            list(start.weights) + list(start.biases),
            list(theta0.weights) + list(theta0.biases),
            list(pre.weights) + list(pre.biases),
        ):
            dst.copy_(torch.cat([s0, sp]))
    targets = torch.cat([a, a, a])
    scores = transfer_scores(start, coords, targets, clusters)
    t1 = time.perf_counter()
    curves = fit_batched(start, coords, targets, int(epochs), lr).reshape(3, t_count, -1)
    fit_seconds = time.perf_counter() - t1
    return {
        "curves": curves,
        "auc": auc(curves),
        "prefit_curves": prefit_curves.reshape(2, t_count, -1),
        "scores": {k: v.reshape(3, t_count) for k, v in scores.items()},
        "triples": triples,
        "prefit_seconds": prefit_seconds,
        "fit_seconds": fit_seconds,
    }


def score_agreement(scores: Tensor, aucs: Tensor) -> dict[str, float]:
    """How often ``argmax`` of a score ``(3, T)`` over schemes is the AUC winner (3-way, and same vs other)."""
    win = aucs.argmax(dim=0)
    three = float((scores.argmax(dim=0) == win).double().mean())
    two = float(((scores[1] > scores[2]) == (aucs[1] > aucs[2])).double().mean())
    return {"three_way": three, "same_vs_other": two}


def summarise(res: dict[str, Any], cfg: dict[str, Any]) -> dict[str, Any]:
    """JSON-ready summary: AUC mean/std per scheme, winners, per-score agreement, timings."""
    from tguide.stats import mean_ci

    aucs, curves = res["auc"], res["curves"]
    out: dict[str, Any] = {
        "config": cfg,
        "triples": res["triples"].tolist(),
        "prefit_seconds": res["prefit_seconds"],
        "fit_seconds": res["fit_seconds"],
        "schemes": {},
    }
    win = aucs.argmax(dim=0)
    for i, s in enumerate(SCHEMES):
        m, half = mean_ci(aucs[i].tolist())
        out["schemes"][s] = {
            "auc_mean": m,
            "auc_ci95": half,
            "auc_std": float(aucs[i].std()),
            "auc": aucs[i].tolist(),
            "final_psnr_mean": float(curves[i, :, -1].mean()),
            "psnr0_mean": float(curves[i, :, 0].mean()),
            "wins": int((win == i).sum()),
            **{f"{k}_mean": float(v[i].mean()) for k, v in res["scores"].items()},
        }
    out["agreement"] = {k: score_agreement(v, aucs) for k, v in res["scores"].items()}
    out["scores"] = {k: v.tolist() for k, v in res["scores"].items()}
    return out


def markdown_table(summary: dict[str, Any]) -> str:
    """One table: AUC (mean ± 95% CI), final PSNR, wins, and the score means per scheme."""
    c = summary["config"]
    lines = [
        f"### SIREN pre-fit, {c['hidden_layers']} hidden layers × {c['hidden_features']} features, "
        f"{len(summary['triples'])} triples, {c['epochs']} epochs (pre-fit {c['prefit_epochs']}), lr {c['lr']}",
        "",
        "| scheme | AUC (dB) | final PSNR | wins | psnr0 | lstsq_psnr | hscore |",
        "|---|---|---|---|---|---|---|",
    ]
    for s, r in summary["schemes"].items():
        lines.append(
            f"| {s} | {r['auc_mean']:.2f} ± {r['auc_ci95']:.2f} | {r['final_psnr_mean']:.2f} | {r['wins']} | "
            f"{r['psnr0_mean']:.2f} | {r['lstsq_psnr_mean']:.2f} | {r['hscore_mean']:.2f} |"
        )
    lines += [
        "",
        "Score picks the AUC winner (3-way / same-vs-other): "
        + ", ".join(f"{k} {v['three_way']:.2f} / {v['same_vs_other']:.2f}" for k, v in summary["agreement"].items()),
        f"Time: pre-fit {summary['prefit_seconds']:.1f} s, fit {summary['fit_seconds']:.1f} s (batched).",
    ]
    return "\n".join(lines) + "\n"


def run(cfg: Any) -> dict[str, Any]:
    """Runner for ``python -m tguide.fit recipe=siren_prefit``: writes results.json/.md, curves.pt, curves.png."""
    from hydra.utils import instantiate

    from tguide.data.cifar10 import load_cifar10

    pc, run_dir = prepare_run(cfg, "prefit", "recipe=siren_prefit")
    images, labels, _ = load_cifar10(pc.get("root"))
    triples = sample_triples(labels, int(pc["triples"]), int(pc["triple_seed"]))
    pc["prefit_epochs"] = int(pc["epochs"] if pc.get("prefit_epochs") is None else pc["prefit_epochs"])
    res = run_triples(
        images,
        triples,
        hidden_layers=pc["hidden_layers"],
        hidden_features=pc["hidden_features"],
        epochs=pc["epochs"],
        prefit_epochs=pc["prefit_epochs"],
        lr=pc["lr"],
        omega0=pc["omega0"],
        seed=int(cfg.get("seed", 0)),
        clusters=pc["clusters"],
    )
    summary = summarise(res, pc)
    (run_dir / "results.json").write_text(json.dumps(summary, indent=1) + "\n")
    (run_dir / "results.md").write_text(markdown_table(summary))
    torch.save(
        {
            "curves": res["curves"].float(),
            "prefit_curves": res["prefit_curves"].float(),
            "triples": triples,
            "schemes": SCHEMES,
        },
        run_dir / "curves.pt",
    )
    _plot_curves(res["curves"], run_dir / "curves.png", summary)
    logger_cfg = cfg.get("logger")
    logger = instantiate(logger_cfg) if logger_cfg and "_target_" in logger_cfg else None
    if logger is not None:
        logger.log_hyperparams({"prefit": pc, "seed": cfg.get("seed")})
        mean = res["curves"].mean(dim=1)  # (3, E+1)
        for e in range(mean.shape[1]):
            logger.log_metrics({f"psnr/{s}": float(mean[i, e]) for i, s in enumerate(SCHEMES)}, step=e)
        logger.log_metrics({f"auc/{s}": r["auc_mean"] for s, r in summary["schemes"].items()}, step=mean.shape[1])
        logger.finalize("success")
    print((run_dir / "results.md").read_text(), flush=True)
    return summary


def _plot_curves(curves: Tensor, path: Path, summary: dict[str, Any]) -> None:
    """Mean ± std PSNR vs epoch per scheme (the seed's curve plots)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    x = np.arange(curves.shape[2])
    for i, s in enumerate(SCHEMES):
        m, sd = curves[i].mean(0).numpy(), curves[i].std(0).numpy()
        ax.plot(x, m, label=s)
        ax.fill_between(x, m - sd, m + sd, alpha=0.2)
    c = summary["config"]
    ax.set(
        xlabel="epoch",
        ylabel="PSNR (dB)",
        title=f"{c['hidden_layers']}×{c['hidden_features']}, {len(summary['triples'])} triples",
    )
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)

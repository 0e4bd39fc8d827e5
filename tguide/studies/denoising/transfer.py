r"""Denoising transfer: train (or load) a denoiser on noise domain A, score it against target domains B.

For each target B the runner reports the transferability score
:math:`T(A \to B)` (:func:`tguide.metrics.denoising.score_denoiser`: residuals of A's model on
A's held-out images vs on B's images, sliced :math:`W_2`, :math:`\exp(-d/s_A)`), its cost in
seconds, and — since the images are synthetic-noise versions of clean images — the PSNR of A's
model on B, which the score does *not* use.

Images: BSD68 (grey), central ``crop × crop`` crops; images 1–34 carry A's held-out noise
(A's residuals), images 35–68 carry B's noise (B's residuals and the PSNR). The two halves are
different images with independent noise draws, so "B = A" is two subsets of one domain.

:func:`train_denoiser` is the plain training loop used by the runner and the study (Adam
β=(0.9, 0.99) as in Noise2Noise, cosine decay of the learning rate to 0, random Train400
patches with fresh noise per step); :func:`load_or_train` caches models on disk keyed by
their settings (default ``~/.cache/tguide/denoise``), so that studies are resumable.
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from tguide.errors import TGuideError
from tguide.metrics.denoising import (
    denoiser_residuals,
    denoising_transferability,
    residual_patches,
)
from tguide.runs import prepare_run
from tguide.studies.denoising.data import RandomPatches, center_crop, load_images, train_val_split
from tguide.studies.denoising.denoiser import DEFAULT_LOSS, denoise_loss, l0_gamma
from tguide.studies.denoising.noise import NoiseModel, parse_noise
from tguide.studies.denoising.unet import N2NUNet

CACHE = Path("~/.cache/tguide/denoise")

__all__ = [
    "CACHE",
    "train_denoiser",
    "load_or_train",
    "load_checkpoint",
    "score_pool",
    "noisy_copies",
    "mean_psnr",
    "transfer_rows",
    "markdown",
    "run",
]


def train_denoiser(
    noise: str | NoiseModel,
    *,
    mode: str = "n2n",
    steps: int = 1000,
    width: int = 24,
    patch: int = 64,
    batch: int = 8,
    lr: float = 1e-3,
    loss: str | None = None,
    seed: int = 0,
    root: str | None = None,
) -> tuple[N2NUNet, dict[str, Any]]:
    """Train an :class:`N2NUNet` of ``width`` on Train400 (380 training images) for ``steps`` steps.

    ``loss`` defaults to the paper's choice for the noise kind (:data:`DEFAULT_LOSS`); ``l0`` is
    annealed γ: 2 → 0 over ``steps``. Returns the net (eval mode) and an info dict (seconds, loss).
    """
    noise = parse_noise(noise)
    loss = loss or DEFAULT_LOSS[noise.kind]
    images = load_images("Train400", root)
    train_idx, _ = train_val_split(len(images))
    data = RandomPatches([images[i] for i in train_idx], noise, mode, patch, length=steps * batch, seed=seed)
    torch.manual_seed(int(seed))
    net = N2NUNet(images[0].shape[0], width=width)
    opt = torch.optim.Adam(net.parameters(), lr=lr, betas=(0.9, 0.99))
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=max(1, steps))
    loader = torch.utils.data.DataLoader(data, batch_size=batch, drop_last=True)
    t0, losses = time.perf_counter(), []
    net.train()
    for step, (x, y, _) in enumerate(loader):
        value = denoise_loss(net(x), y, loss, l0_gamma(step, steps))
        opt.zero_grad(set_to_none=True)
        value.backward()
        opt.step()
        sched.step()
        losses.append(value.item())
    net.eval()
    tail = losses[-max(1, len(losses) // 10) :]
    info = {
        "noise": noise.name,
        "mode": mode,
        "steps": steps,
        "width": width,
        "patch": patch,
        "batch": batch,
        "lr": lr,
        "loss": loss,
        "seed": seed,
        "train_seconds": time.perf_counter() - t0,
        "final_loss": sum(tail) / len(tail),
    }
    return net, info


def load_or_train(
    noise: str | NoiseModel, cache_dir: str | Path | None = CACHE, **hp: Any
) -> tuple[N2NUNet, dict[str, Any]]:
    """:func:`train_denoiser` with a disk cache: ``<cache_dir>/<noise>_<mode>_<hash of settings>.pt``.

    ``cache_dir=None`` disables the cache. ``info["reused"]`` says whether the file was loaded.
    """
    noise = parse_noise(noise)
    settings = {"noise": noise.name, **{k: hp[k] for k in sorted(hp) if k != "root"}}
    key = hashlib.sha1(json.dumps(settings, sort_keys=True, default=str).encode()).hexdigest()[:10]
    path = None
    if cache_dir is not None:
        path = Path(cache_dir).expanduser() / f"{noise.kind}{noise.name.split(':')[1]}_{hp.get('mode', 'n2n')}_{key}.pt"
        if path.exists():
            blob = torch.load(path, map_location="cpu", weights_only=False)
            net = N2NUNet(blob["in_channels"], width=blob["info"]["width"])
            net.load_state_dict(blob["state_dict"])
            return net.eval(), {**blob["info"], "reused": True, "path": str(path)}
    net, info = train_denoiser(noise, **hp)
    if path is not None:
        path.parent.mkdir(parents=True, exist_ok=True)
        torch.save({"state_dict": net.state_dict(), "in_channels": net.in_channels, "info": info}, path)
    return net, {**info, "reused": False, "path": str(path) if path else None}


def load_checkpoint(path: str | Path) -> nn.Module:
    """A denoiser from a Lightning checkpoint of :class:`~tguide.studies.denoising.denoiser.Denoiser` (recipe
    ``denoise_n2n``) or from a :func:`load_or_train` file."""
    path = Path(path).expanduser()
    if not path.exists():
        raise TGuideError(
            f"checkpoint {str(path)!r} does not exist; train one with "
            f"`python -m tguide.fit recipe=denoise_n2n` or leave transfer.checkpoint=null"
        )
    blob = torch.load(path, map_location="cpu", weights_only=False)
    if "state_dict" in blob and "in_channels" in blob:
        net = N2NUNet(blob["in_channels"], width=blob["info"]["width"])
        net.load_state_dict(blob["state_dict"])
        return net.eval()
    state = {k[len("net.") :]: v for k, v in blob.get("state_dict", {}).items() if k.startswith("net.")}
    if not state:
        raise TGuideError(f"{str(path)!r} holds no `net.*` weights of a Denoiser")
    width = int(state["enc_conv0.0.weight"].shape[0])
    net = N2NUNet(int(state["enc_conv0.0.weight"].shape[1]), width=width)
    net.load_state_dict(state)
    return net.eval()


def score_pool(root: str | None = None, crop: int = 128, n_images: int = 68) -> tuple[Tensor, Tensor]:
    """Clean BSD68 crops ``(34, 1, crop, crop)`` for A's held-out side and for the B side (disjoint halves)."""
    images = center_crop(load_images("BSD68", root)[:n_images], crop)
    half = images.shape[0] // 2
    return images[:half], images[half:]


def noisy_copies(clean: Tensor, noise: str | NoiseModel, seed: int) -> Tensor:
    """Fixed noisy copies of ``clean (N, C, H, W)``: image i drawn with generator ``(seed, i)``."""
    noise = parse_noise(noise)
    return torch.stack(
        [noise(x, torch.Generator().manual_seed(seed * 1_000_003 + 7919 * i + 1)) for i, x in enumerate(clean)]
    )


@torch.no_grad()
def mean_psnr(model: nn.Module, noisy: Tensor | Sequence[Tensor], clean: Tensor | Sequence[Tensor]) -> float:
    """Mean per-image PSNR (dB, data range 1) of ``model(noisy).clamp(0, 1)`` against ``clean``."""
    from torchmetrics.functional.image import peak_signal_noise_ratio

    model.eval()
    vals = [
        float(peak_signal_noise_ratio(model(x[None]).clamp(0, 1), c[None], data_range=1.0))
        for x, c in zip(noisy, clean)
    ]
    return sum(vals) / len(vals)


def transfer_rows(
    model: nn.Module,
    source: str | NoiseModel,
    targets: Sequence[str | NoiseModel],
    clean_a: Tensor,
    clean_b: Tensor,
    *,
    seed: int = 0,
    psnr: bool = True,
    patch: int = 8,
    variants: dict[str, dict[str, Any]] | None = None,
    **score_kwargs: Any,
) -> list[dict[str, Any]]:
    """Score A → B for every target B (and PSNR of A's model on B if ``psnr``).

    A's residual patches are computed once (noise seed ``2·seed+1``), B's images carry noise seed
    ``2·seed+2``. Each row's ``score_seconds`` = B's forward pass + distance + A's side; A's side
    (``a_seconds``) is shared by all targets, so the marginal cost per target is ``b_seconds``.
    ``score_kwargs`` go to :func:`~tguide.metrics.denoising.denoising_transferability`; ``variants``
    maps a name to other keyword arguments whose score is added as ``score_<name>`` (same residuals).
    """
    source = parse_noise(source)
    t0 = time.perf_counter()
    held_a = noisy_copies(clean_a, source, seed * 2 + 1)
    res_a_images = denoiser_residuals(model, held_a)  # (N, C, H, W)
    res_a = residual_patches(res_a_images, patch)
    a_seconds = time.perf_counter() - t0
    rows = []
    for t in targets:
        t = parse_noise(t)
        noisy_b = noisy_copies(clean_b, t, seed * 2 + 2)
        t1 = time.perf_counter()
        res_b = denoiser_residuals(model, noisy_b)  # (N, C, H, W)
        result = denoising_transferability(
            res_a, residual_patches(res_b, patch), patch=patch, seed=seed, return_result=True, **score_kwargs
        )
        b_seconds = time.perf_counter() - t1
        row = {
            "source": source.name,
            "target": t.name,
            "score": float(result.score),
            "distance": float(result.distance),
            "scale": float(result.scale),
            "score_seconds": b_seconds + a_seconds,
            "a_seconds": a_seconds,
            "b_seconds": b_seconds,
        }
        for name, kw in (variants or {}).items():
            row[f"score_{name}"] = float(denoising_transferability(res_a_images, res_b, seed=seed, **kw))
        if psnr:  # uses the clean images, which the score never sees
            row["psnr_a_on_b"] = _psnr((noisy_b - res_b).clamp(0, 1), clean_b)
            row["psnr_noisy"] = _psnr(noisy_b.clamp(0, 1), clean_b)
        rows.append(row)
    return rows


def _psnr(images: Tensor, clean: Tensor) -> float:
    """Mean per-image PSNR (data range 1) of ``images (N, C, H, W)`` against ``clean``."""
    mse = (images - clean).pow(2).flatten(1).mean(1).clamp(min=1e-12)
    return float((10 * torch.log10(1.0 / mse)).mean())


def markdown(rows: list[dict[str, Any]], title: str) -> str:
    """Rows as a markdown table."""
    lines = [
        f"### {title}",
        "",
        "| source A | target B | T(A→B) | SW₂ distance | s_A | PSNR A on B (dB) | noisy (dB) | score s |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for r in rows:
        lines.append(
            f"| {r['source']} | {r['target']} | {r['score']:.3f} | {r['distance']:.4f} | {r['scale']:.4f} | "
            f"{r.get('psnr_a_on_b', float('nan')):.2f} | {r.get('psnr_noisy', float('nan')):.2f} | "
            f"{r['score_seconds']:.2f} |"
        )
    return "\n".join(lines) + "\n"


def run(cfg: Any) -> dict[str, Any]:
    """Runner for ``python -m tguide.fit recipe=denoise_transfer``: score one source model against
    ``transfer.targets``; writes ``results.json`` and ``results.md`` into the run folder."""

    tr, run_dir = prepare_run(cfg, "transfer", "recipe=denoise_transfer")
    root = (cfg.get("data") or {}).get("root")
    threads = torch.get_num_threads()
    torch.set_num_threads(int(cfg.get("threads") or tr.get("threads") or 1))
    try:
        if tr.get("checkpoint"):
            model, info = load_checkpoint(tr["checkpoint"]), {"checkpoint": tr["checkpoint"]}
        else:
            hp = dict(tr["train"])
            model, info = load_or_train(tr["source"], tr.get("cache_dir"), root=root, **hp)
        clean_a, clean_b = score_pool(root, tr["crop"], tr.get("n_images", 68))
        rows = transfer_rows(
            model,
            tr["source"],
            tr["targets"],
            clean_a,
            clean_b,
            seed=int(cfg.get("seed", 0)),
            psnr=bool(tr.get("psnr", True)),
            patch=tr["patch"],
            n_projections=tr["n_projections"],
            max_patches=tr["max_patches"],
            method=tr["method"],
        )
    finally:
        torch.set_num_threads(threads)
    res = {
        "source": parse_noise(tr["source"]).name,
        "model": info,
        "rows": rows,
        "note": "BSD68 grey central crops: images 1-34 = A's held-out side, 35-68 = B's side",
    }
    (run_dir / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    md = markdown(rows, f"Denoising transferability from {res['source']}")
    (run_dir / "results.md").write_text(md)
    print(md, flush=True)
    print(f"tguide.fit: run folder {run_dir.resolve()}", flush=True)
    return res

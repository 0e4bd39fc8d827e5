"""Few-shot segmentation transfer (DRIVE ↔ CHASE_DB1, graded shifts) and its pixel-level scores.

One *transfer* = a source U-Net (trained on a source dataset's training split, or loaded from a
``recipe=seg_drive`` checkpoint) fine-tuned on ``k`` labelled target images (the *shots*, drawn
from the target's **val** split, which no source model trains on) and evaluated on the target's
**test** split: Dice (binary F1 over all FOV pixels), IoU, AUROC before and after fine-tuning.

Targets are a dataset, optionally with a graded shift of its images (:mod:`tguide.studies.segmentation.shifts`,
applied to shots and test images alike; labels unchanged).

Transferability of the *source* model to a target (before any fine-tuning), from per-pixel
features of one layer (default ``net.decoder``, :func:`tguide.features.extract_pixel_features`):
OTCE_sim between source-training pixels and target-shot pixels (boundary-band or uniform
pixel sampling, Tan et al., CVPR 2021), H-score and TransRate of the target-shot pixels (:func:`pixel_scores`).
"""

from __future__ import annotations

import copy
import json
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

from tguide.studies.segmentation.retina import IGNORE, SPLITS, RetinaImages, RetinaPatches, load_retina
from tguide.studies.segmentation.segmenter import dice_bce_loss
from tguide.studies.segmentation.shifts import SEVERITIES, SHIFTS, graded_shift

__all__ = [
    "SHIFTS",
    "SEVERITIES",
    "graded_shift",
    "shifted_pairs",
    "train_patches",
    "evaluate",
    "pixel_scores",
    "load_source",
    "run",
]

Pairs = list[tuple[Tensor, Tensor]]


def shifted_pairs(
    dataset: str,
    split: str,
    shift: str = "none",
    severity: int = 1,
    *,
    downscale: int = 2,
    root: str | None = None,
    ids: Sequence[str] | None = None,
    seed: int = 0,
) -> Pairs:
    """``[(shifted image, label)]`` of a split (optionally only ``ids``), shift applied once."""
    pairs = load_retina(dataset, split, root, downscale)
    names = SPLITS[dataset][split]
    if ids is not None:
        unknown = sorted(set(ids) - set(names))
        if unknown:
            raise ValueError(f"ids {unknown} are not in the {dataset} {split} split {names}.")
        chosen = [names.index(i) for i in ids]
    else:
        chosen = list(range(len(names)))
    f = graded_shift(shift, severity, seed)
    return [(f(pairs[i][0], i), pairs[i][1]) for i in chosen]


def train_patches(
    model: nn.Module,
    pairs: Pairs,
    *,
    steps: int,
    lr: float = 1e-3,
    batch_size: int = 8,
    patch_size: int = 96,
    seed: int = 0,
    weight_decay: float = 0.0,
) -> list[float]:
    """Train ``model`` in place with Adam on ``steps`` batches of random patches of ``pairs``
    (Dice + BCE inside the FOV); returns the loss per step."""
    if steps < 0:
        raise ValueError(f"`steps` must be ≥ 0, got {steps}.")
    data = RetinaPatches(pairs, patch_size, length=steps * batch_size, seed=seed)
    loader = DataLoader(data, batch_size=batch_size, shuffle=False)
    device = next(model.parameters()).device
    opt = torch.optim.Adam(model.parameters(), lr=lr, weight_decay=weight_decay)
    model.train()
    losses = []
    for x, y in loader:
        loss = dice_bce_loss(model(x.to(device)), y.to(device))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    model.eval()
    return losses


@torch.no_grad()
def evaluate(model: nn.Module, pairs: Pairs, pad_multiple: int = 32) -> dict[str, float]:
    """Dice (= binary F1 at 0.5), IoU and AUROC over all FOV pixels of ``pairs`` (whole images)."""
    from torchmetrics.functional.classification import binary_auroc, binary_f1_score, binary_jaccard_index

    device = next(model.parameters()).device
    was = model.training
    model.eval()
    probs, labels = [], []
    for x, y in DataLoader(RetinaImages(pairs, pad_multiple), batch_size=1):
        p = torch.sigmoid(model(x.to(device))[:, 0]).cpu()
        keep = y != IGNORE
        probs.append(p[keep])
        labels.append(y[keep])
    model.train(was)
    p, y = torch.cat(probs), torch.cat(labels)
    return {
        "dice": float(binary_f1_score(p, y)),
        "iou": float(binary_jaccard_index(p, y)),
        "auroc": float(binary_auroc(p, y)),
    }


def pixel_scores(
    model: nn.Module,
    source: Pairs,
    target: Pairs,
    *,
    layer: str = "net.decoder",
    samplings: Sequence[str] = ("boundary", "uniform"),
    band: int = 3,
    pixels_per_image: int = 250,
    target_pixels_per_image: int | None = None,
    seed: int = 0,
    otce_max_samples: int = 1000,
) -> dict[str, float]:
    """Transferability scores of ``model``'s ``layer`` from ``source`` to ``target`` pixels.

    Keys: ``otce_sim_<sampling>`` for each sampling (OTCE_sim, exact OT on at most
    ``otce_max_samples`` pixels per side), ``hscore_<sampling>`` and ``transrate_<sampling>`` of
    the target pixels, and ``seconds`` (the whole call). Target images give
    ``target_pixels_per_image`` pixels each (default ``pixels_per_image``).
    """
    from tguide.features.pixels import extract_pixel_features
    from tguide.metrics.functional.hscore import hscore
    from tguide.metrics.functional.otce import otce_sim
    from tguide.metrics.functional.transrate import transrate

    start = time.perf_counter()
    src_loader = DataLoader(RetinaImages(source), batch_size=1)
    tgt_loader = DataLoader(RetinaImages(target), batch_size=1)
    out: dict[str, float] = {}
    for sampling in samplings:
        fs = extract_pixel_features(
            model,
            src_loader,
            layer,
            pixels_per_image=pixels_per_image,
            seed=seed,
            ignore_index=IGNORE,
            sampling=sampling,
            band=band,
        )
        ft = extract_pixel_features(
            model,
            tgt_loader,
            layer,
            pixels_per_image=target_pixels_per_image or pixels_per_image,
            seed=seed + 1,
            ignore_index=IGNORE,
            sampling=sampling,
            band=band,
        )
        xs, ys, xt, yt = fs.features[layer].double(), fs.labels, ft.features[layer].double(), ft.labels
        out[f"otce_sim_{sampling}"] = float(otce_sim(xs, ys, xt, yt, max_samples=otce_max_samples))
        out[f"hscore_{sampling}"] = float(hscore(xt, yt))
        out[f"transrate_{sampling}"] = float(transrate(xt, yt))
    out["seconds"] = time.perf_counter() - start
    return out


def load_source(model: nn.Module, checkpoint: str | Path) -> dict[str, Any]:
    """Load weights into ``model`` (a Segmenter) from a Lightning ``.ckpt`` of ``recipe=seg_drive``
    or a ``.pt`` written by :func:`run`; returns the file's metadata (``{}`` for a ``.ckpt``).
    Lightning checkpoints are unpickled in full: load only files you trust."""
    path = Path(checkpoint)
    if not path.is_file():
        from tguide.errors import TGuideError

        raise TGuideError(
            f"source checkpoint {str(path)!r} does not exist; train one with "
            "`python -m tguide.fit recipe=seg_drive` or set seg_transfer.checkpoint=null."
        )
    blob = torch.load(path, map_location="cpu", weights_only=path.suffix != ".ckpt")
    state = blob["state_dict"]
    state = {k: v for k, v in state.items() if k.startswith("net.")}
    model.load_state_dict(state, strict=False)
    return dict(blob.get("meta", {}))


def _source_model(cfg: Any, run_dir: Path) -> tuple[nn.Module, dict[str, Any]]:
    from hydra.utils import instantiate

    st = cfg.seg_transfer
    torch.manual_seed(int(st.source.seed))
    model = instantiate(cfg.model)
    if st.checkpoint:
        return model.eval(), {
            "dataset": st.source.dataset,
            "checkpoint": str(st.checkpoint),
            **load_source(model, st.checkpoint),
        }
    cache = Path(st.source.cache) if st.source.cache else run_dir / f"source_{st.source.dataset}.pt"
    meta = {
        "dataset": st.source.dataset,
        "steps": int(st.source.steps),
        "lr": float(st.source.lr),
        "downscale": int(st.downscale),
        "seed": int(st.source.seed),
        "net": str(cfg.model.net),
    }
    if cache.is_file():
        blob = torch.load(cache, map_location="cpu", weights_only=True)
        if blob.get("meta", {}).get("settings") == meta:
            model.load_state_dict(blob["state_dict"])
            return model.eval(), {**blob["meta"], "reused": True, "cache": str(cache)}
    start = time.perf_counter()
    pairs = load_retina(st.source.dataset, "train", None, int(st.downscale))
    losses = train_patches(
        model,
        pairs,
        steps=int(st.source.steps),
        lr=float(st.source.lr),
        batch_size=int(st.batch_size),
        patch_size=int(st.patch_size),
        seed=int(st.source.seed),
    )
    info = {
        "dataset": meta["dataset"],
        "settings": meta,
        "seconds": time.perf_counter() - start,
        "final_loss": float(sum(losses[-20:]) / max(1, len(losses[-20:]))),
    }
    cache.parent.mkdir(parents=True, exist_ok=True)
    torch.save({"state_dict": model.state_dict(), "meta": info}, cache)
    return model.eval(), {**info, "reused": False, "cache": str(cache)}


def run(cfg: Any) -> dict[str, Any]:
    """Runner of ``recipe=seg_transfer``: source model → scores → few-shot fine-tune for each k.

    Writes ``results.json`` and ``results.md`` into ``cfg.paths.run_dir`` and logs
    ``transfer/dice_before``, ``transfer/dice_after/k<k>`` and the scores to the logger.
    """
    from hydra.utils import instantiate

    st = cfg.seg_transfer
    run_dir = Path(cfg.paths.run_dir)
    if st.get("threads"):
        torch.set_num_threads(int(st.threads))
    model, source_info = _source_model(cfg, run_dir)
    ds = int(st.downscale)
    src_pairs = load_retina(st.source.dataset, "train", None, ds)[: int(st.score.source_images)]
    pool = SPLITS[st.target][st.shot_split]
    gen = torch.Generator().manual_seed(int(st.shot_seed))
    order = [pool[i] for i in torch.randperm(len(pool), generator=gen).tolist()]
    test = shifted_pairs(st.target, "test", st.shift, int(st.severity), downscale=ds, seed=int(st.shot_seed))
    before = evaluate(model, test)
    result: dict[str, Any] = {
        "source": source_info,
        "target": st.target,
        "shift": st.shift,
        "severity": int(st.severity) if st.shift != "none" else 0,
        "before": before,
        "shots": {},
    }
    for k in st.shots:
        k = int(k)
        if k > len(order):
            raise ValueError(
                f"seg_transfer.shots: k={k} but the {st.target} {st.shot_split} split has {len(order)} images."
            )
        shots = shifted_pairs(
            st.target, st.shot_split, st.shift, int(st.severity), downscale=ds, ids=order[:k], seed=int(st.shot_seed)
        )
        scores = pixel_scores(
            model,
            src_pairs,
            shots,
            layer=st.score.layer,
            band=int(st.score.band),
            pixels_per_image=int(st.score.pixels_per_image),
            seed=int(st.shot_seed),
        )
        tuned = copy.deepcopy(model)
        start = time.perf_counter()
        train_patches(
            tuned,
            shots,
            steps=int(st.finetune.steps),
            lr=float(st.finetune.lr),
            batch_size=int(st.batch_size),
            patch_size=int(st.patch_size),
            seed=int(st.shot_seed),
        )
        seconds = time.perf_counter() - start
        after = evaluate(tuned, test)
        result["shots"][str(k)] = {"ids": order[:k], "scores": scores, "after": after, "finetune_seconds": seconds}
    (run_dir / "results.json").write_text(json.dumps(result, indent=2) + "\n")
    (run_dir / "results.md").write_text(markdown_table(result))
    logger_cfg = cfg.get("logger")
    if logger_cfg and "_target_" in logger_cfg:
        logger = instantiate(logger_cfg)
        flat = {"transfer/dice_before": before["dice"]}
        for k, r in result["shots"].items():
            flat[f"transfer/dice_after/k{k}"] = r["after"]["dice"]
            flat.update({f"transfer/{name}/k{k}": v for name, v in r["scores"].items()})
        logger.log_metrics(flat, step=0)
        logger.finalize("success")
    print(markdown_table(result), flush=True)
    return result


def markdown_table(result: dict[str, Any]) -> str:
    """The run's results as a markdown table (one row per k)."""
    shift = result["shift"] + (f" s{result['severity']}" if result["shift"] != "none" else "")
    lines = [
        f"### {result['source'].get('dataset', result['source'].get('checkpoint', '?'))} → "
        f"{result['target']} ({shift}); Dice before fine-tuning {result['before']['dice']:.3f}",
        "",
        "| k | Dice after | AUROC after | OTCE_sim boundary | OTCE_sim uniform | H-score | TransRate | "
        "score s | fine-tune s |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for k, r in result["shots"].items():
        s = r["scores"]
        lines.append(
            f"| {k} | {r['after']['dice']:.3f} | {r['after']['auroc']:.3f} | {s['otce_sim_boundary']:.4f} | "
            f"{s['otce_sim_uniform']:.4f} | {s['hscore_boundary']:.4f} | {s['transrate_boundary']:.4f} | "
            f"{s['seconds']:.1f} | {r['finetune_seconds']:.1f} |"
        )
    return "\n".join(lines) + "\n"

"""Does pixel-level transferability rank segmentation transfers? (Tan et al., CVPR 2021)

Two source U-Nets (resnet18 encoder, depth 3, decoder 64-32-16, random init, half resolution),
trained on the DRIVE / CHASE_DB1 training splits for ``--source-steps`` batches of 8 random 96-px
patches, or loaded from a ``recipe=seg_drive`` checkpoint (``--source-ckpt drive=PATH``), are
transferred to 20 targets:

- DRIVE→CHASE_DB1 and CHASE_DB1→DRIVE (cross-dataset),
- DRIVE→DRIVE and CHASE_DB1→CHASE_DB1 (no shift, in-domain anchors),
- DRIVE→DRIVE with a graded shift: contrast/gamma, blur, noise, colour × severity 1, 2, 3,
- CHASE_DB1→CHASE_DB1 with each shift at severity 2.

For each pair, on the source model before any fine-tuning: OTCE_sim (exact OT, ≤ 1000 pixels a
side) between source-training pixels (4 images × 250) and target-shot pixels (k images × 500)
with boundary-band (band 3) and uniform pixel sampling, H-score and TransRate of the target
pixels, of the decoder output ``net.decoder`` (16 channels). Ground truth: Dice on the target's
test split after fine-tuning the whole network on the k shots (from the target's val split)
for ``--finetune-steps`` steps (Adam, lr 5e-4, batch 8, fixed beforehand, not tuned; test = the first
``--test-images`` test images). Reported: Spearman and Kendall correlation of each score with
that Dice, and the cost of the score vs fine-tuning (seconds, 1 thread on shared cores).

    TGUIDE_DATA=../shared/data .venv/bin/python bench/seg_transfer.py --source-steps 300 \
        --finetune-steps 20 --test-images 10 [--source-ckpt drive=outputs/seg_drive/<run>/checkpoints/best.ckpt]

(≈ 40 min wall on 2 CPU cores shared by ~6 jobs, 1 thread; ≈ 10 min of CPU time.)

Writes ``outputs/bench/seg_transfer/{pairs.jsonl,results.md,scatter.png}`` (pairs.jsonl is
appended per pair and reused: a rerun with the same settings skips finished pairs).
"""

from __future__ import annotations

import argparse
import copy
import json
import time
from pathlib import Path

import torch

from tguide.studies.segmentation.retina import SPLITS, load_retina
from tguide.studies.segmentation.transfer import evaluate, load_source, pixel_scores, shifted_pairs, train_patches

SCORES = ["otce_sim_boundary", "otce_sim_uniform", "hscore_boundary", "hscore_uniform", "transrate_boundary",
          "transrate_uniform", "dice_before"]


def pairs_list() -> list[tuple[str, str, str, int]]:
    pairs = [("drive", "chasedb1", "none", 0), ("chasedb1", "drive", "none", 0),
             ("drive", "drive", "none", 0), ("chasedb1", "chasedb1", "none", 0)]
    for kind in ("contrast", "blur", "noise", "colour"):
        pairs += [("drive", "drive", kind, s) for s in (1, 2, 3)]
    pairs += [("chasedb1", "chasedb1", kind, 2) for kind in ("contrast", "blur", "noise", "colour")]
    return pairs


def make_model(seed: int) -> torch.nn.Module:
    from functools import partial

    from tguide.studies.segmentation.segmenter import Segmenter, build_unet

    torch.manual_seed(seed)
    return Segmenter(build_unet("resnet18", 3, (64, 32, 16)), optimizer=partial(torch.optim.Adam, lr=1e-3))


def source_model(name: str, args: argparse.Namespace, out: Path) -> tuple[torch.nn.Module, float]:
    model = make_model(args.seed)
    ckpt = dict(c.split("=", 1) for c in args.source_ckpt).get(name)
    if ckpt:  # a recipe=seg_drive checkpoint (same network), its training time unknown here
        load_source(model, ckpt)
        return model.eval(), float("nan")
    path = out / f"source_{name}_{args.source_steps}.pt"
    if path.is_file():
        blob = torch.load(path, map_location="cpu", weights_only=True)
        model.load_state_dict(blob["state_dict"])
        return model.eval(), float(blob["seconds"])
    start = time.perf_counter()
    train_patches(model, load_retina(name, "train", None, args.downscale), steps=args.source_steps, lr=1e-3,
                  seed=args.seed)
    seconds = time.perf_counter() - start
    torch.save({"state_dict": model.state_dict(), "seconds": seconds}, path)
    return model.eval(), seconds


def rank_table(rows: list[dict], what: str = "all") -> str:
    """Spearman / Kendall of each score with the Dice after fine-tuning (the ground truth) and,
    for reference, with the Dice of the source model before fine-tuning (zero-shot)."""
    from scipy.stats import kendalltau, spearmanr

    after = [r["dice_after"] for r in rows]
    before = [r["dice_before"] for r in rows]
    lines = [f"Correlation with the target test Dice, {what} ({len(rows)} transfers; "
             f"after = {rows[0]['k']}-shot fine-tuning, before = zero-shot)", "",
             "| score | Spearman ρ (after) | p | Kendall τ (after) | p | ρ (before) | τ (before) |",
             "|---|---|---|---|---|---|---|"]
    for s in SCORES:
        x = [r[s] for r in rows]
        rho, prho = spearmanr(x, after)
        tau, ptau = kendalltau(x, after)
        rho_b, tau_b = (spearmanr(x, before)[0], kendalltau(x, before)[0]) if s != "dice_before" else (1.0, 1.0)
        lines.append(f"| {s} | {rho:+.3f} | {prho:.3f} | {tau:+.3f} | {ptau:.3f} | {rho_b:+.3f} | {tau_b:+.3f} |")
    return "\n".join(lines) + "\n"


def pair_table(rows: list[dict]) -> str:
    lines = ["| source → target | shift | Dice before | Dice after | OTCE_sim boundary | OTCE_sim uniform | "
             "H-score b. | TransRate b. | score s | fine-tune s |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        shift = "—" if r["shift"] == "none" else f"{r['shift']} {r['severity']}"
        lines.append(f"| {r['source']} → {r['target']} | {shift} | {r['dice_before']:.3f} | {r['dice_after']:.3f} | "
                     f"{r['otce_sim_boundary']:.4f} | {r['otce_sim_uniform']:.4f} | {r['hscore_boundary']:.4f} | "
                     f"{r['transrate_boundary']:.4f} | {r['score_seconds']:.1f} | {r['finetune_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def scatter(rows: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, 2, figsize=(9, 3.8))
    for ax, s in zip(axes, ("otce_sim_boundary", "otce_sim_uniform")):
        for r in rows:
            ax.scatter(r[s], r["dice_after"], c="C0" if r["source"] == "drive" else "C1", s=18)
        ax.set_xlabel(s)
        ax.set_ylabel("Dice after fine-tuning")
    axes[0].set_title("source DRIVE (blue) / CHASE_DB1 (orange)")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--source-steps", type=int, default=500)
    ap.add_argument("--finetune-steps", type=int, default=30)
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--downscale", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--source-ckpt", nargs="*", default=[], metavar="NAME=PATH",
                    help="use a recipe=seg_drive checkpoint as a source, e.g. drive=outputs/.../best.ckpt")
    ap.add_argument("--test-images", type=int, default=None, help="evaluate on the first N test images only")
    ap.add_argument("--limit", type=int, default=None, help="only the first N pairs (a quick look)")
    ap.add_argument("--out", default="outputs/bench/seg_transfer")
    args = ap.parse_args()
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    settings = {k: getattr(args, k) for k in ("source_steps", "finetune_steps", "k", "downscale", "seed",
                                              "source_ckpt", "test_images")}
    log = out / "pairs.jsonl"
    done = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
    done = [r for r in done if r.get("settings") == settings]
    sources: dict[str, tuple[torch.nn.Module, float]] = {}
    src_pixels = {name: load_retina(name, "train", None, args.downscale)[:4] for name in ("drive", "chasedb1")}
    rows = list(done)
    for source, target, shift, sev in pairs_list()[: args.limit]:
        if any((r["source"], r["target"], r["shift"], r["severity"]) == (source, target, shift, sev) for r in done):
            continue
        if source not in sources:
            sources[source] = source_model(source, args, out)
            print(f"source {source}: {sources[source][1]:.0f} s of training", flush=True)
        model = sources[source][0]
        gen = torch.Generator().manual_seed(args.seed)
        pool = SPLITS[target]["val"]
        ids = [pool[i] for i in torch.randperm(len(pool), generator=gen)[: args.k].tolist()]
        shots = shifted_pairs(target, "val", shift, max(sev, 1), downscale=args.downscale, ids=ids, seed=args.seed)
        test_ids = SPLITS[target]["test"][: args.test_images]
        test = shifted_pairs(target, "test", shift, max(sev, 1), downscale=args.downscale, ids=test_ids, seed=args.seed)
        scores = pixel_scores(model, src_pixels[source], shots, pixels_per_image=250, target_pixels_per_image=500,
                              seed=args.seed)
        before = evaluate(model, test)
        tuned = copy.deepcopy(model)
        start = time.perf_counter()
        train_patches(tuned, shots, steps=args.finetune_steps, lr=5e-4, seed=args.seed)
        ft_seconds = time.perf_counter() - start
        after = evaluate(tuned, test)
        row = {"settings": settings, "source": source, "target": target, "shift": shift, "severity": sev,
               "k": args.k, "shot_ids": ids, **{k: v for k, v in scores.items() if k != "seconds"},
               "score_seconds": scores["seconds"], "dice_before": before["dice"], "auroc_before": before["auroc"],
               "dice_after": after["dice"], "auroc_after": after["auroc"], "finetune_seconds": ft_seconds}
        rows.append(row)
        with log.open("a") as f:
            f.write(json.dumps(row) + "\n")
        print(f"{source}->{target} {shift} {sev}: before {before['dice']:.3f} after {after['dice']:.3f} "
              f"otce_b {scores['otce_sim_boundary']:.4f} otce_u {scores['otce_sim_uniform']:.4f} "
              f"({scores['seconds']:.1f} s score, {ft_seconds:.1f} s fine-tune)", flush=True)
    order = {p: i for i, p in enumerate(pairs_list())}
    rows.sort(key=lambda r: order.get((r["source"], r["target"], r["shift"], r["severity"]), 99))
    drive = [r for r in rows if r["source"] == "drive"]
    score_s = sum(r["score_seconds"] for r in rows) / len(rows)
    ft_s = sum(r["finetune_seconds"] for r in rows) / len(rows)
    text = (f"## Segmentation transfer study (settings {settings}; 1 thread on 2 shared CPU cores)\n\n"
            + pair_table(rows) + "\n" + (rank_table(rows, "all sources") if len(rows) >= 3 else "")
            + ("\n" + rank_table(drive, "source DRIVE only") if len(drive) >= 3 else "")
            + f"\nMean cost per transfer: score {score_s:.1f} s (both samplings, 3 metrics) vs fine-tuning "
              f"{ft_s:.1f} s ({args.finetune_steps} steps; excludes evaluation).\n")
    (out / "results.md").write_text(text)
    if len(rows) >= 2:
        scatter(rows, out / "scatter.png")
    print(text, flush=True)


if __name__ == "__main__":
    main()

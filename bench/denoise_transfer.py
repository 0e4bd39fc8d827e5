"""Noise2Noise study and the denoising transferability score (Patil 2022, denoising transferability).

    TGUIDE_DATA=../shared/data .venv/bin/python bench/denoise_transfer.py [--steps 400 --width 16] [--quick]

1. PSNR on BSD68 and Set12 (grey, whole images) at Gaussian σ=25: Noise2Noise vs Noise2Clean,
   same budget (steps × batch × patch, same net, same seed).
2. Transferability: source models A ∈ {gaussian 15, 25, 50, poisson λ=30, impulse p=0.2}, targets
   B over intensity grids; the score T(A→B) and PSNR of A's model on B (BSD68 central crops:
   images 1-34 are A's held-out side, 35-68 B's side).
3. Properties: (1) T(A→A') on disjoint subsets ≥ 0.95; (2) T decreasing in σ_B − σ_A for
   σ_B > σ_A; (3) Spearman(T, −PSNR loss) where loss = PSNR(f_B on B) − PSNR(f_A on B), over
   the pairs whose B has its own model; (4) score seconds vs seconds to train f_B.

Models are cached under ~/.cache/tguide/denoise (resumable). One torch thread. No
hyperparameter was tuned: the training settings are fixed before the run (no test-set selection).
Tables (markdown), results.json and plots go to outputs/bench/denoise_transfer/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tguide.studies.denoising.data import load_images  # noqa: E402
from tguide.studies.denoising.noise import parse_noise  # noqa: E402
from tguide.studies.denoising.transfer import (CACHE, load_or_train, noisy_copies, score_pool,  # noqa: E402
                                              transfer_rows)

SOURCES = ["gaussian:15", "gaussian:25", "gaussian:50", "poisson:30", "impulse:0.2"]
EXTRA_MODELS = ["gaussian:35", "poisson:10", "impulse:0.4"]       # targets that get their own model
PSNR_SETS = ("BSD68", "Set12")
# exploratory variants of the score on the same residuals (not the pre-set design; reported apart)
VARIANTS = {"pixel": {"method": "pixel"}}
TARGETS = ([f"gaussian:{s}" for s in (5, 10, 15, 20, 25, 35, 50, 60, 75)]
           + [f"poisson:{lam}" for lam in (10, 30, 100)]
           + [f"impulse:{p}" for p in (0.1, 0.2, 0.4)])


def log(msg: str) -> None:
    print(time.strftime("%H:%M:%S"), msg, flush=True)


@torch.no_grad()
def psnr_full(model: torch.nn.Module, name: str, noise: str, seed: int = 100) -> float:
    clean = load_images(name)
    vals = []
    for i, c in enumerate(clean):
        noisy = noisy_copies(c[None], noise, seed + i)
        out = model(noisy).clamp(0, 1)
        vals.append(float(10 * torch.log10(1 / (out - c[None]).pow(2).mean())))
    return float(np.mean(vals))


def spearman(x: list[float], y: list[float]) -> float:
    from scipy.stats import spearmanr

    return float(spearmanr(x, y).statistic)


def bootstrap_spearman(x: list[float], y: list[float], reps: int = 2000, seed: int = 0) -> tuple[float, float]:
    """95% percentile interval of Spearman's rho over pairs resampled with replacement."""
    from scipy.stats import spearmanr

    rng = np.random.default_rng(seed)
    x, y = np.asarray(x), np.asarray(y)
    vals = []
    for _ in range(reps):
        i = rng.integers(0, len(x), len(x))
        r = spearmanr(x[i], y[i]).statistic
        if np.isfinite(r):
            vals.append(r)
    return float(np.percentile(vals, 2.5)), float(np.percentile(vals, 97.5))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--width", type=int, default=16)
    ap.add_argument("--batch", type=int, default=8)
    ap.add_argument("--patch", type=int, default=64)
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--seed", type=int, default=0, help="training seed (patches, noise stream, init)")
    ap.add_argument("--crop", type=int, default=128)
    ap.add_argument("--cache", default=str(CACHE))
    ap.add_argument("--out", default=str(ROOT / "outputs/bench/denoise_transfer"))
    ap.add_argument("--skip-psnr-table", action="store_true")
    ap.add_argument("--psnr-only", action="store_true", help="only the N2N vs N2C table (e.g. a longer budget)")
    ap.add_argument("--quick", action="store_true", help="smoke run: 2 sources, 4 targets, Set12 only, 64² crops")
    args = ap.parse_args()
    global SOURCES, EXTRA_MODELS, TARGETS, PSNR_SETS
    if args.quick:
        SOURCES, EXTRA_MODELS = ["gaussian:15", "gaussian:25"], ["impulse:0.2"]
        TARGETS, PSNR_SETS, args.crop = ["gaussian:15", "gaussian:25", "gaussian:50", "impulse:0.2"], ("Set12",), 64
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    hp = dict(steps=args.steps, width=args.width, batch=args.batch, patch=args.patch, lr=args.lr, seed=args.seed)
    budget = f"{args.steps} steps × batch {args.batch} × {args.patch}² patches, U-Net width {args.width}"
    res: dict = {"budget": budget, "hp": hp}
    t_start = time.perf_counter()

    models, infos = {}, {}
    order = ["gaussian:25"] + [s for s in SOURCES if s != "gaussian:25"] + EXTRA_MODELS
    if args.psnr_only:
        order = ["gaussian:25"]
    for dom in order:
        models[dom], infos[dom] = load_or_train(dom, args.cache, mode="n2n", **hp)
        log(f"model {dom} n2n: {'cached' if infos[dom]['reused'] else 'trained'} "
            f"{infos[dom]['train_seconds']:.0f}s loss {infos[dom]['final_loss']:.4g}")
    res["models"] = infos

    # ---------------------------------------------------------------- 1. N2N vs N2C at σ=25
    lines = []
    if not args.skip_psnr_table:
        n2c, n2c_info = load_or_train("gaussian:25", args.cache, mode="n2c", **hp)
        log(f"model gaussian:25 n2c: {n2c_info['train_seconds']:.0f}s")
        ident = torch.nn.Identity()
        table = {}
        for name in PSNR_SETS:
            table[name] = {"noisy": psnr_full(ident, name, "gaussian:25"),
                           "n2n": psnr_full(models["gaussian:25"], name, "gaussian:25"),
                           "n2c": psnr_full(n2c, name, "gaussian:25")}
            log(f"PSNR {name}: {table[name]}")
        res["psnr_table"] = table
        (out / "psnr_table.json").write_text(json.dumps({"budget": budget, "table": table}, indent=1))
        res["n2c_info"] = n2c_info
        lines += ["### Denoising PSNR (dB), Gaussian σ=25, grey, whole images", "",
                  f"Budget: {budget}, Adam lr {args.lr} cosine → 0, one CPU thread "
                  f"(N2N {infos['gaussian:25']['train_seconds']:.0f} s, N2C {n2c_info['train_seconds']:.0f} s "
                  "of training on 2 shared cores). The paper's ≈31 dB needs full training.", "",
                  "| test set | noisy input | Noise2Noise | Noise2Clean | N2N − N2C |", "|---|---:|---:|---:|---:|"]
        for name, r in table.items():
            lines.append(f"| {name} | {r['noisy']:.2f} | {r['n2n']:.2f} | {r['n2c']:.2f} | {r['n2n'] - r['n2c']:+.2f} |")
        lines.append("")

    if args.psnr_only:
        (out / "results_psnr.md").write_text("\n".join(lines) + "\n")
        print("\n".join(lines), flush=True)
        return

    # ---------------------------------------------------------------- 2. transferability grid
    clean_a, clean_b = score_pool(crop=args.crop)
    rows = []
    key = json.dumps({"hp": hp, "crop": args.crop, "targets": TARGETS, "variants": VARIANTS}, sort_keys=True)
    for src in SOURCES:  # resumable: rows of a finished source are kept in <out>/rows/
        part = out / "rows" / f"{src.replace(':', '')}.json"
        if part.exists() and json.loads(part.read_text())["key"] == key:
            rows += json.loads(part.read_text())["rows"]
            continue
        new = transfer_rows(models[src], src, TARGETS, clean_a, clean_b, seed=0, variants=VARIANTS)
        part.parent.mkdir(parents=True, exist_ok=True)
        part.write_text(json.dumps({"key": key, "rows": new}))
        rows += new
        log(f"scored {src} against {len(TARGETS)} targets")
    own = {}
    for dom in models:  # PSNR of B's own model on B (for the PSNR loss)
        own[dom] = transfer_rows(models[dom], dom, [dom], clean_a, clean_b, seed=0)[0]["psnr_a_on_b"]
    for r in rows:
        if r["target"] in own:
            r["psnr_b_on_b"] = own[r["target"]]
            r["psnr_loss"] = own[r["target"]] - r["psnr_a_on_b"]
    res["rows"] = rows

    lines += ["### Transferability T(A→B) (rows: source A; columns: target B)", "",
              f"BSD68 central {args.crop}² crops (34 held-out images for A, 34 other images for B); "
              "sliced W₂ over 8×8 residual patches, 128 projections, 8192 patches per side.", ""]
    short = {t: t.replace("gaussian:", "g").replace("poisson:", "P").replace("impulse:", "i") for t in TARGETS}
    lines.append("| A \\ B | " + " | ".join(short[t] for t in TARGETS) + " |")
    lines.append("|---|" + "---:|" * len(TARGETS))
    for src in SOURCES:
        by_t = {r["target"]: r for r in rows if r["source"] == src}
        lines.append(f"| {src} | " + " | ".join(f"{by_t[t]['score']:.2f}" for t in TARGETS) + " |")
    lines += ["", "PSNR (dB) of A's model on B (same crops; the score does not use clean images):", "",
              "| A \\ B | " + " | ".join(short[t] for t in TARGETS) + " |", "|---|" + "---:|" * len(TARGETS)]
    for src in SOURCES:
        by_t = {r["target"]: r for r in rows if r["source"] == src}
        lines.append(f"| {src} | " + " | ".join(f"{by_t[t]['psnr_a_on_b']:.1f}" for t in TARGETS) + " |")
    lines.append("")

    # ---------------------------------------------------------------- 3. properties
    diag = [r for r in rows if r["source"] == r["target"]]
    p1 = min(r["score"] for r in diag)
    mono = {}
    for src in ("gaussian:15", "gaussian:25", "gaussian:50"):
        sa = parse_noise(src).level
        seq = sorted((parse_noise(r["target"]).level, r["score"]) for r in rows
                     if r["source"] == src and r["target"].startswith("gaussian") and parse_noise(r["target"]).level >= sa)
        mono[src] = {"levels": [s for s, _ in seq], "scores": [v for _, v in seq],
                     "decreasing": all(b[1] < a[1] for a, b in zip(seq, seq[1:]))}
    pairs = [r for r in rows if "psnr_loss" in r]
    rho_all = spearman([r["score"] for r in pairs], [-r["psnr_loss"] for r in pairs])
    off = [r for r in pairs if r["source"] != r["target"]]
    rho_off = spearman([r["score"] for r in off], [-r["psnr_loss"] for r in off])
    per_src = {s: spearman([r["score"] for r in pairs if r["source"] == s], [-r["psnr_loss"] for r in pairs
                                                                            if r["source"] == s]) for s in SOURCES}
    ci_all = bootstrap_spearman([r["score"] for r in pairs], [-r["psnr_loss"] for r in pairs])
    rho_pixel = spearman([r["score_pixel"] for r in pairs], [-r["psnr_loss"] for r in pairs])
    ci_pixel = bootstrap_spearman([r["score_pixel"] for r in pairs], [-r["psnr_loss"] for r in pairs])
    rho_noisy = spearman([r["psnr_noisy"] for r in pairs], [-r["psnr_loss"] for r in pairs])
    cost = [{"source": r["source"], "target": r["target"], "score_seconds": r["score_seconds"],
             "b_seconds": r["b_seconds"],
             "train_seconds_b": infos[r["target"]]["train_seconds"],
             "ratio": r["score_seconds"] / infos[r["target"]]["train_seconds"]} for r in pairs]
    res["properties"] = {"p1_min_same_domain": p1, "p1_scores": {r["source"]: r["score"] for r in diag},
                         "p2": mono, "p3_spearman_all": rho_all, "p3_spearman_offdiag": rho_off,
                         "p3_per_source": per_src, "p3_ci95": ci_all, "p3_pixel": rho_pixel, "p3_pixel_ci95": ci_pixel,
                         "p3_baseline_noisy_psnr": rho_noisy, "p4": cost, "n_pairs": len(pairs)}
    ratios = [c["ratio"] for c in cost]
    diag_txt = ", ".join(f"{r['score']:.3f}" for r in diag)
    lines += ["### Properties", "",
              "| property | target | measured |", "|---|---|---|",
              f"| (1) T(A→A') on disjoint image subsets, min over 5 sources | ≥ 0.95 | {p1:.3f} "
              f"({diag_txt}) |"]
    for src, m in mono.items():
        lines.append(f"| (2) T({src}→gaussian σ_B), σ_B ≥ σ_A decreasing | strictly | {m['decreasing']} "
                     f"({' > '.join(f'{v:.3f}' for v in m['scores'])}) |")
    lines += [f"| (3) Spearman(T, −PSNR loss), {len(pairs)} pairs A×B with a model on B | ≥ 0.8 | {rho_all:.3f} "
              f"(bootstrap 95% CI {ci_all[0]:.2f}–{ci_all[1]:.2f}) |",
              f"| (3') same, A ≠ B only ({len(off)} pairs) | — | {rho_off:.3f} |",
              "| (3'') per source: " + ", ".join(f"{s} {v:.2f}" for s, v in per_src.items()) + " | — | — |",
              f"| (3) exploratory: same with method=pixel (1-D W₂ of residual values) | — | {rho_pixel:.3f} "
              f"(CI {ci_pixel[0]:.2f}–{ci_pixel[1]:.2f}) |",
              f"| (3) baseline: Spearman(PSNR of the noisy B input, −PSNR loss) | — | {rho_noisy:.3f} |",
              f"| (4) marginal score seconds per target (B side) / seconds to train f_B | < 5% | median "
              f"{100 * np.median([c['b_seconds'] / c['train_seconds_b'] for c in cost]):.2f}%, max "
              f"{100 * max(c['b_seconds'] / c['train_seconds_b'] for c in cost):.2f}% |",
              f"| (4) score seconds incl. A's side / seconds to train f_B | < 5% | median {100 * np.median(ratios):.2f}%, "
              f"max {100 * max(ratios):.2f}% (score {np.median([c['score_seconds'] for c in cost]):.2f} s vs "
              f"training {np.median([c['train_seconds_b'] for c in cost]):.0f} s) |", ""]
    lines += ["PSNR loss table (dB, PSNR of B's own model on B − PSNR of A's model on B):", "",
              "| A \\ B | " + " | ".join(models_b := [d for d in order if d in own]) + " |",
              "|---|" + "---:|" * len(models_b)]
    for src in SOURCES:
        by_t = {r["target"]: r for r in pairs if r["source"] == src}
        lines.append(f"| {src} | " + " | ".join(f"{by_t[t]['psnr_loss']:.2f} (T {by_t[t]['score']:.2f})"
                                                for t in models_b) + " |")
    res["wall_seconds"] = time.perf_counter() - t_start
    lines += ["", f"Wall time {res['wall_seconds']:.0f} s (models cached in {args.cache}); "
              "measured on 2 shared CPU cores, 1 thread: timings are inflated by other users' load."]
    md = "\n".join(lines) + "\n"
    (out / "results.md").write_text(md)
    (out / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    _plots(rows, pairs, out)
    print(md, flush=True)


def _plots(rows: list[dict], pairs: list[dict], out: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(1, 2, figsize=(11, 4))
    for src in SOURCES:
        g = sorted((parse_noise(r["target"]).level, r["score"]) for r in rows
                   if r["source"] == src and r["target"].startswith("gaussian"))
        ax[0].plot([a for a, _ in g], [b for _, b in g], marker="o", label=src)
    ax[0].set_xlabel("target Gaussian σ_B"), ax[0].set_ylabel("T(A→B)"), ax[0].legend(fontsize=7)
    for src in SOURCES:
        p = [r for r in pairs if r["source"] == src]
        ax[1].scatter([r["score"] for r in p], [r["psnr_loss"] for r in p], label=src)
    ax[1].set_xlabel("T(A→B)"), ax[1].set_ylabel("PSNR loss vs model trained on B (dB)"), ax[1].legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(out / "transfer.png", dpi=120)


if __name__ == "__main__":
    main()

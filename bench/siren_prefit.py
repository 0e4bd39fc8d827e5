"""SIREN pre-fitting study over a grid of model sizes (a SIREN pre-fitting study after Sitzmann et al., NeurIPS 2020), and the batched-fit speed-up.

    # speed-up of fitting M SIRENs at once (bmm and torch.func.vmap) over one at a time
    python bench/siren_prefit.py speed --members 12 --layers 3 --features 64 --epochs 20
    # the grid (each cell = `python -m tguide.fit recipe=siren_prefit ...`, resumable)
    python bench/siren_prefit.py grid --layers 2 3 5 --features 32 64 128 --triples 20 --epochs 200
    # or collect the cells of a Hydra multirun
    python -m tguide.fit -m recipe=siren_prefit prefit.hidden_layers=2,3,5 prefit.hidden_features=32,64,128
    python bench/siren_prefit.py collect outputs/multirun/<time>

Writes ``outputs/bench/siren_prefit/{grid.md,grid.json,auc_box.png}`` (``--wandb`` also logs them
to W&B, offline unless WANDB_MODE says otherwise) and prints the tables. One torch thread.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from tguide.studies.siren.prefit import SCHEMES, SCORES  # noqa: E402

OUT = Path("outputs/bench/siren_prefit")


def speed(members: int, layers: int, features: int, epochs: int) -> str:
    """ms per epoch for M SIRENs: a Python loop of M Sirens (M Adams), BatchedSiren (bmm), vmap."""
    from torch.func import functional_call, stack_module_state

    from tguide.studies.siren.data import coordinate_grid
    from tguide.studies.siren.net import BatchedSiren, Siren

    coords = coordinate_grid(32, 32)
    targets = torch.rand(members, 1024, 3) * 2 - 1
    torch.manual_seed(0)
    nets = [Siren(2, features, layers, 3) for _ in range(members)]
    times: dict[str, float] = {}

    opts = [torch.optim.Adam(n.parameters(), lr=1e-4) for n in nets]
    t = time.perf_counter()
    for _ in range(epochs):
        for n, o, y in zip(nets, opts, targets):
            o.zero_grad(set_to_none=True)
            ((n(coords) - y) ** 2).mean().backward()
            o.step()
    times["loop (one at a time)"] = time.perf_counter() - t

    bnet = BatchedSiren.from_sirens(nets)
    opt = torch.optim.Adam(bnet.parameters(), lr=1e-4)
    t = time.perf_counter()
    for _ in range(epochs):
        opt.zero_grad(set_to_none=True)
        ((bnet(coords) - targets) ** 2).mean(dim=(1, 2)).sum().backward()
        opt.step()
    times["batched weights (baddbmm)"] = time.perf_counter() - t

    params, buffers = stack_module_state(nets)
    params = {k: v.detach().requires_grad_() for k, v in params.items()}
    base = Siren(2, features, layers, 3).to("meta")
    opt = torch.optim.Adam(list(params.values()), lr=1e-4)

    def one(p: dict, b: dict, y: torch.Tensor) -> torch.Tensor:
        return ((functional_call(base, (p, b), (coords,)) - y) ** 2).mean()

    batched = torch.vmap(one, in_dims=(0, 0, 0))
    t = time.perf_counter()
    for _ in range(epochs):
        opt.zero_grad(set_to_none=True)
        batched(params, buffers, targets).sum().backward()
        opt.step()
    times["torch.func.vmap + functional_call"] = time.perf_counter() - t

    loop = times["loop (one at a time)"]
    lines = [f"### Fitting {members} SIRENs ({layers} hidden layers × {features}) on a 32×32 image, "
             f"{epochs} epochs, 1 thread", "", "| method | ms / epoch (all M) | speed-up vs loop |", "|---|---|---|"]
    lines += [f"| {k} | {1000 * v / epochs:.1f} | {loop / v:.2f}× |" for k, v in times.items()]
    return "\n".join(lines) + "\n"


def run_cell(layers: int, features: int, triples: int, epochs: int, lr: float, seed: int) -> dict:
    from tguide.fit import compose, run

    cell = OUT / "cells" / f"L{layers}_H{features}"
    done = cell / "results.json"
    if done.exists():
        res = json.loads(done.read_text())
        c = res["config"]
        if (c["triples"], c["epochs"], c["lr"]) == (triples, epochs, lr):
            return res
    cfg = compose(["recipe=siren_prefit", f"prefit.hidden_layers={layers}", f"prefit.hidden_features={features}",
                   f"prefit.triples={triples}", f"prefit.epochs={epochs}", f"prefit.lr={lr}", f"seed={seed}",
                   "logger=none", f"paths.run_dir={cell}", "name=siren_prefit"])
    return run(cfg)


def aggregate(results: list[dict], wandb: bool = False) -> str:
    """Grid table (AUC per scheme, paired differences with 95% t-intervals, wins), score agreement, box plot."""
    from tguide.stats import mean_ci

    results = sorted(results, key=lambda r: (r["config"]["hidden_layers"] * r["config"]["hidden_features"],
                                             r["config"]["hidden_layers"]))
    lines = ["| layers × features | " + " | ".join(f"AUC {s}" for s in SCHEMES) + " | wins r/s/o | "
             "Δ same−random (paired) | Δ other−random (paired) | pre-fit + fit s |", "|---|" + "---|" * (len(SCHEMES) + 4)]
    agree = ["| layers × features | " + " | ".join(f"{k} (3-way / same-vs-other)" for k in SCORES) + " |",
             "|---|" + "---|" * len(SCORES)]
    for r in results:
        c, s = r["config"], r["schemes"]
        a = {k: np.asarray(s[k]["auc"]) for k in SCHEMES}
        d1, d2 = mean_ci(a["prefit_same"] - a["random"]), mean_ci(a["prefit_other"] - a["random"])
        lines.append(f"| {c['hidden_layers']} × {c['hidden_features']} | "
                     + " | ".join(f"{s[k]['auc_mean']:.2f} ± {s[k]['auc_ci95']:.2f}" for k in SCHEMES)
                     + f" | {'/'.join(str(s[k]['wins']) for k in SCHEMES)} | {d1[0]:+.2f} ± {d1[1]:.2f} | {d2[0]:+.2f} ± {d2[1]:.2f} | "
                     f"{r['prefit_seconds']:.0f} + {r['fit_seconds']:.0f} |")
        agree.append(f"| {c['hidden_layers']} × {c['hidden_features']} | " + " | ".join(
            f"{r['agreement'][k]['three_way']:.2f} / {r['agreement'][k]['same_vs_other']:.2f}" for k in SCORES) + " |")
    c0 = results[0]["config"]
    head = (f"### SIREN pre-fit AUC (mean PSNR dB over epochs 0..{c0['epochs']}, ± 95% CI over "
            f"{len(results[0]['triples'])} triples), CIFAR-10 test JPEG copy, lr {c0['lr']}\n\n")
    text = head + "\n".join(lines) + "\n\n### Does a pre-fit score pick the winning scheme? (fraction of triples)\n\n" \
        + "\n".join(agree) + "\n"
    OUT.mkdir(parents=True, exist_ok=True)
    (OUT / "grid.md").write_text(text)
    (OUT / "grid.json").write_text(json.dumps(results) + "\n")
    png = box_plot(results, OUT / "auc_box.png")
    if wandb:
        import wandb as wb

        run = wb.init(project="tguide", name="siren_prefit_grid", mode=os.environ.get("WANDB_MODE", "offline"))
        run.log({"auc_box": wb.Image(str(png)), "grid": wb.Table(
            columns=["layers", "features", *SCHEMES],
            data=[[r["config"]["hidden_layers"], r["config"]["hidden_features"],
                   *[r["schemes"][k]["auc_mean"] for k in SCHEMES]] for r in results])})
        run.finish()
    return text


def box_plot(results: list[dict], path: Path) -> Path:
    """Box plot of per-triple AUC per scheme, cells sorted by layers × features (the seed's figure)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(max(6, 1.2 * len(results)), 4))
    width = 0.8 / len(SCHEMES)
    colours = ["tab:blue", "tab:orange", "tab:green"]
    for j, k in enumerate(SCHEMES):
        data = [r["schemes"][k]["auc"] for r in results]
        pos = np.arange(len(results)) + (j - 1) * width
        bp = ax.boxplot(data, positions=pos, widths=width * 0.9, patch_artist=True, showfliers=False)
        for b in bp["boxes"]:
            b.set_facecolor(colours[j])
        ax.plot([], [], color=colours[j], lw=8, label=k)
    ax.set_xticks(np.arange(len(results)),
                  [f"{r['config']['hidden_layers']}×{r['config']['hidden_features']}" for r in results], rotation=45)
    ax.set(xlabel="hidden layers × hidden features (sorted by product)", ylabel="AUC (mean PSNR, dB)")
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    s = sub.add_parser("speed")
    s.add_argument("--members", type=int, default=12)
    s.add_argument("--layers", type=int, default=3)
    s.add_argument("--features", type=int, nargs="+", default=[64])
    s.add_argument("--epochs", type=int, default=20)
    g = sub.add_parser("grid")
    g.add_argument("--layers", type=int, nargs="+", default=[2, 3, 5])
    g.add_argument("--features", type=int, nargs="+", default=[32, 64, 128])
    g.add_argument("--triples", type=int, default=20)
    g.add_argument("--epochs", type=int, default=200)
    g.add_argument("--lr", type=float, default=1e-4)
    g.add_argument("--seed", type=int, default=0)
    g.add_argument("--wandb", action="store_true")
    c = sub.add_parser("collect")
    c.add_argument("folders", nargs="+", help="folders searched recursively for results.json")
    c.add_argument("--wandb", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(1)
    os.environ.setdefault("TGUIDE_DATA", str(Path(__file__).resolve().parents[2] / "shared" / "data"))
    if args.cmd == "speed":
        text = "\n".join(speed(args.members, args.layers, f, args.epochs) for f in args.features)
        OUT.mkdir(parents=True, exist_ok=True)
        (OUT / "speed.md").write_text(text)
    elif args.cmd == "grid":
        results = []
        for layers in args.layers:
            for features in args.features:
                t = time.perf_counter()
                results.append(run_cell(layers, features, args.triples, args.epochs, args.lr, args.seed))
                print(f"cell {layers}×{features}: {time.perf_counter() - t:.0f} s", flush=True)
        text = aggregate(results, args.wandb)
    else:
        results = [json.loads(f.read_text()) for d in args.folders for f in sorted(Path(d).rglob("results.json"))]
        if not results:
            raise SystemExit(f"no results.json under {args.folders}")
        text = aggregate(results, args.wandb)
    print(text)


if __name__ == "__main__":
    main()

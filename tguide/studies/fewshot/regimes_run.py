"""When does the OTCE pre-fine-tune pay? The regime grid of :mod:`tguide.studies.fewshot.regimes`.

    OMP_NUM_THREADS=1 TGUIDE_DATA=../shared/data python -m tguide.studies.fewshot  # full grid (~70 min)
    python -m tguide.studies.fewshot --quick --out /tmp/q  # < 60 s smoke run
    python -m tguide.studies.fewshot --report-only  # tables/plot from the JSONL

Resumable: every finished episode is a line of ``<out>/fewshot_regimes_episodes.jsonl``; a
restart skips them. Writes ``fewshot_regimes.csv``, ``.md`` and ``.png`` into ``--out``.
"""

from __future__ import annotations

import argparse
import csv
import json
import time
from pathlib import Path

import numpy as np
import torch

from tguide.studies.fewshot import regimes as R

RESULTS = Path(__file__).resolve().parents[3] / "bench" / "results"


def _accs(by_lr: dict) -> str:
    """``{lr: accuracy}`` as compact JSON (lr in %g, accuracy to 3 decimals)."""
    return json.dumps({f"{k:g}": round(v, 3) for k, v in by_lr.items()})


def _fmt(v: float, ci: float, scale: float = 100.0, sign: bool = False) -> str:
    if not np.isfinite(v):
        return "—"
    s = f"{scale * v:+.2f}" if sign else f"{scale * v:.2f}"
    return s + (f" ± {scale * ci:.2f}" if np.isfinite(ci) else "")


def write_report(out: Path, rows: list[dict], hps: dict, wall_s: float | None = None) -> list[dict]:
    cells = R.summarise_cells(rows, hps)
    out.mkdir(parents=True, exist_ok=True)
    with (out / "fewshot_regimes.csv").open("w", newline="") as fh:
        w = csv.DictWriter(fh, fieldnames=list(R.CSV_COLUMNS))
        w.writeheader()
        for c in cells:
            w.writerow({k: c[k] for k in R.CSV_COLUMNS})
    lines = [
        "| cell | shot | n (main / variants) | vanilla | OTCE (a) | OTCE − vanilla (a) | W_T+λW_D (b) − vanilla | "
        "last block (c) − vanilla | proto | linear probe | scratch | W_D | W_T | H(Y_s,Y_t) | lr step 1 / 2 |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for c in cells:
        lines.append(
            f"| {c['source']} → {c['target']} | {c['shot']} | {c['n_test']} / {c['n_variant']} | "
            f"{_fmt(c['vanilla'], c['vanilla_ci'])} | {_fmt(c['otce'], c['otce_ci'])} | "
            f"**{_fmt(c['gain_otce'], c['gain_otce_ci'], sign=True)}** | "
            f"{_fmt(c['gain_otce_wd'], c['gain_otce_wd_ci'], sign=True)} | "
            f"{_fmt(c['gain_otce_last'], c['gain_otce_last_ci'], sign=True)} | {_fmt(c['proto'], c['proto_ci'])} | "
            f"{_fmt(c['probe'], c['probe_ci'])} | {_fmt(c['scratch'], c['scratch_ci'])} | {c['w_d']:.3f} | "
            f"{c['w_t']:.3f} | {c['h_joint']:.3f} | {c['step1_lr']:g} / {c['step2_lr']:g} |"
        )
    pays = [c for c in cells if np.isfinite(c["gain_otce_ci"]) and c["gain_otce"] - c["gain_otce_ci"] > 0]
    hurts = [c for c in cells if np.isfinite(c["gain_otce_ci"]) and c["gain_otce"] + c["gain_otce_ci"] < 0]
    md = [
        "# Few-shot regimes: when does the OTCE pre-fine-tune pay?",
        "",
        "Accuracy on the query sets in %, mean ± 95% Student-t half-width over test episodes; gains are "
        "paired differences with vanilla on the same episodes (variants: on their first n episodes). "
        "Grid, data and hyper-parameter protocol: `tguide/studies/fewshot/regimes.py`.",
        "",
        *lines,
        "",
        f"Cells with the OTCE (a) gain CI entirely above 0: {', '.join(c['cell'] for c in pays) or 'none'}; "
        f"entirely below 0: {', '.join(c['cell'] for c in hurts) or 'none'}.",
        "",
    ]
    if pays:
        md += [
            "Leave-one-cell-out threshold rules on one property, fitted on the other 9 cells and applied to the "
            'held-out one. (i) classify "pays" (gain CI entirely above 0); (ii) maximise the summed gain of '
            "the switched-on cells:",
            "",
        ]
        always_on = 100 * float(np.nanmean([c["gain_otce"] for c in cells]))
        for prop in ("vanilla", "w_t", "w_d", "h_joint"):
            r = R.loo_pays_rule(cells, prop)
            g = R.loo_rule(cells, prop)
            on = sum(h["switch_on"] for h in g["held_out"])
            md.append(
                f"- {prop}: (i) {r['correct']}/{len(r['held_out'])} held-out cells classified right, paying cells "
                f"caught {r['paying_caught']}/{r['paying']}, switched on wrongly {r['false_on']}; (ii) switched on "
                f"in {on}/{len(g['held_out'])}, mean realised gain {100 * g['mean_realised']:+.2f} points "
                f"(always off: +0.00, always on: {always_on:+.2f})"
            )
        md.append("")
    md += [
        "Validation choices per pair: "
        + "; ".join(
            f"{p}: step-2 lr {h['step2_lr']:g} (vanilla val acc {_accs(h['val_vanilla'])}), "
            f"step-1 lr {h['step1_lr']:g} (otce val acc {_accs(h['val_otce'])})"
            for p, h in hps.items()
        ),
        "",
    ]
    diag: dict[str, dict[int, float]] = {}  # cell -> episode -> accuracy of the longer vanilla
    for r in rows:
        if r["phase"] == "diag":
            diag.setdefault(r["cell"], {})[r["episode"]] = r["vanilla_long"]
    if diag:
        md += [
            "Post-hoc diagnostic (not part of the fixed grid): `vanilla` given as many gradient steps as OTCE "
            "spends (10 step-1 + 20 step-2 = 30 step-2 steps), same episodes:",
            "",
        ]
        for cid, d in diag.items():
            main = {r["episode"]: r for r in rows if r["phase"] == "main" and r["cell"] == cid}
            eps = [e for e in sorted(d) if e in main]
            p1 = R.paired_stats([d[e] for e in eps], [main[e]["vanilla"] for e in eps])
            p2 = R.paired_stats([main[e]["otce"] for e in eps], [d[e] for e in eps])
            md.append(
                f"- {cid} ({len(eps)} episodes): vanilla-30 − vanilla-20 {100 * p1['mean']:+.2f} ± "
                f"{100 * p1['ci']:.2f}; OTCE − vanilla-30 {100 * p2['mean']:+.2f} ± {100 * p2['ci']:.2f} points"
            )
        md.append("")
    if wall_s is not None:
        md.append(f"Wall time of this run: {wall_s / 60:.1f} min (1 thread, shared loaded CPU).")
    md.append(f"Not run: {R.IMPOSSIBLE}; variant (d) class-balanced source batches (see module docstring).")
    (out / "fewshot_regimes.md").write_text("\n".join(md) + "\n")
    plot(cells, out / "fewshot_regimes.png")
    return cells


def plot(cells: list[dict], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    props = [
        ("vanilla", "mean vanilla accuracy"),
        ("w_t", "W_T = H(Y_t|Y_s) before step 1 (nats)"),
        ("w_d", "W_D before step 1 (L2 features)"),
        ("h_joint", "H(Y_s, Y_t) (nats)"),
    ]
    fig, axes = plt.subplots(1, 4, figsize=(14, 3.6), sharey=True)
    colours = {p: f"C{i}" for i, p in enumerate(dict.fromkeys(f"{c['source']}→{c['target']}" for c in cells))}
    for ax, (k, label) in zip(axes, props):
        for c in cells:
            if not np.isfinite(c["gain_otce"]):
                continue
            pair = f"{c['source']}→{c['target']}"
            ax.errorbar(
                c[k],
                100 * c["gain_otce"],
                yerr=100 * np.nan_to_num(c["gain_otce_ci"]),
                fmt="o" if c["shot"] == 1 else "s",
                color=colours[pair],
                capsize=3,
                label=f"{pair} {c['shot']}-shot",
            )
        ax.axhline(0, color="k", lw=0.8)
        ax.set_xlabel(label, fontsize=8)
    axes[0].set_ylabel("OTCE − vanilla (points, 95% CI)")
    handles, names = axes[0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=5, fontsize=7, frameon=False)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=80)
    plt.close(fig)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m tguide.studies.fewshot", description=__doc__.splitlines()[0])
    ap.add_argument("--out", default=str(RESULTS))
    ap.add_argument("--quick", action="store_true", help="1 val + 2 test episodes per cell, tiny steps (< 60 s)")
    ap.add_argument("--budget-min", type=float, default=66.0, help="no new variant round after this many minutes")
    ap.add_argument("--report-only", action="store_true")
    ap.add_argument(
        "--diagnose",
        nargs="*",
        default=[],
        help="cells (ids) for the post-hoc check: vanilla with step-1 + step-2 steps, same episodes",
    )
    ap.add_argument("--log", default=None, help="also append progress lines to this file")
    a = ap.parse_args(argv)
    torch.set_num_threads(1)
    out = Path(a.out)
    jsonl = out / "fewshot_regimes_episodes.jsonl"
    logf = open(a.log, "a") if a.log else None

    def log(msg: str) -> None:
        line = f"{time.strftime('%H:%M:%S')} {msg}"
        print(line, flush=True)
        if logf:
            logf.write(line + "\n")
            logf.flush()

    t0 = time.perf_counter()
    if a.report_only:
        rows = [json.loads(x) for x in jsonl.read_text().splitlines() if x.strip()]
        hps = json.loads((out / "fewshot_regimes_hp.json").read_text())
        hps = {
            p: {
                **h,
                "val_vanilla": {float(k): v for k, v in h["val_vanilla"].items()},
                "val_otce": {float(k): v for k, v in h["val_otce"].items()},
            }
            for p, h in hps.items()
        }
        meta = out / "fewshot_regimes_meta.json"
        wall = json.loads(meta.read_text()).get("wall_s") if meta.is_file() else None
    else:
        rows, hps = R.run_grid(jsonl, quick=a.quick, budget_s=60 * a.budget_min, log=log)
        (out / "fewshot_regimes_hp.json").write_text(json.dumps(hps, indent=1))
        wall = time.perf_counter() - t0
        (out / "fewshot_regimes_meta.json").write_text(json.dumps({"wall_s": wall, "quick": a.quick}) + "\n")
    if a.diagnose:
        R.diagnose_steps(jsonl, a.diagnose, hps=hps, log=log)
        rows = [json.loads(x) for x in jsonl.read_text().splitlines() if x.strip()]
    write_report(out, rows, hps, wall)
    log(f"wrote {out}/fewshot_regimes.csv/.md/.png [{time.perf_counter() - t0:.0f}s]")
    return 0

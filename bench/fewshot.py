"""Few-shot hyperparameter search on VALIDATION episodes only, and timed runs.

    TGUIDE_DATA=../shared/data python bench/fewshot.py usps --episodes 30 --out /tmp/fs_val_usps.json
    TGUIDE_DATA=../shared/data python bench/fewshot.py omniglot --episodes 30 --out /tmp/fs_val_omni.json

Each grid entry overrides the recipe's ``fewshot`` block (dotted keys); every entry is run with
``split=val`` (USPS train file / Omniglot validation alphabets) and a validation seed (1000),
never the test episodes. Prints one line per entry: vanilla, otce, paired difference ± CI.
"""

from __future__ import annotations

import argparse
import copy
import json
import tempfile
import time

import torch
from omegaconf import OmegaConf

from tguide.fit import compose
from tguide.studies.fewshot.protocol import run_protocol

GRID = [
    {},
    {"pretune.lr": 3e-3},
    {"pretune.lr": 1e-2},
    {"pretune.steps": 50},
    {"pretune.normalise": "l2", "pretune.lr": 3e-3},
    {"pretune.reg": 0.03, "pretune.lr": 3e-3},
    {"pretune.reg": 0.3, "pretune.lr": 3e-3},
    {"finetune.lr": 3e-3},
    {"finetune.steps": 200},
    {"finetune.freeze": ["conv1", "conv2"]},
]


def _set(d: dict, dotted: str, value: object) -> None:
    *path, last = dotted.split(".")
    for p in path:
        d = d[p]
    d[last] = value


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("target", choices=["usps", "omniglot"])
    ap.add_argument("--episodes", type=int, default=30)
    ap.add_argument("--seed", type=int, default=1000)
    ap.add_argument("--methods", default="vanilla,otce")
    ap.add_argument("--grid", default=None, help="JSON list of override dicts (default: the built-in grid)")
    ap.add_argument("--ckpt", default=None, help="source checkpoint cache path")
    ap.add_argument("--out", default=None)
    args = ap.parse_args()
    torch.set_num_threads(1)
    cfg = compose([f"recipe=fewshot_mnist_{args.target}"])
    base = OmegaConf.to_container(cfg.fewshot, resolve=True)
    base.update({"split": "val", "seed": args.seed, "episodes": args.episodes, "methods": args.methods.split(",")})
    base["source"]["checkpoint"] = args.ckpt or f"/tmp/tguide_fewshot_source_{args.target}.pt"
    grid = json.loads(args.grid) if args.grid else GRID
    out = []
    for entry in grid:
        fs = copy.deepcopy(base)
        for k, v in entry.items():
            _set(fs, k, v)
        t0 = time.perf_counter()
        with tempfile.TemporaryDirectory() as tmp:
            res = run_protocol(fs, tmp, verbose=False)
        line = {"overrides": entry, "seconds": time.perf_counter() - t0,
                **{m: (r["mean"], r["ci95"]) for m, r in res["methods"].items()}}
        if "paired_otce_minus_vanilla" in res:
            p = res["paired_otce_minus_vanilla"]
            line["diff"] = (p["mean"], p["ci95"])
        out.append(line)
        print(json.dumps(line), flush=True)
        if args.out:
            with open(args.out, "w") as fh:
                json.dump(out, fh, indent=1)


if __name__ == "__main__":
    main()

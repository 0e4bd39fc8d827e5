r"""When does the OTCE pre-fine-tune pay? Real pretrained sources, 1- and 5-shot, growing domain gaps.

The grid below was fixed **before any test episode was run** (it is the constant :data:`GRID`).

Sources (real pretrained zoo checkpoints, :func:`tguide.select.zoo.load_zoo_model`):

- ``lenet5_mnist`` (advertorch LeNet5, trained on MNIST *train*). Source data for step 1: the
  offline MNIST 10k *test* set — all the MNIST we have — minus the 3,000 images that MNIST-M's
  offline files were made from (7,000 images, the same for every LeNet cell). Input 28 px grey
  in [0, 1] (the zoo's input spec).
- ``resnet20_cifar10`` (CIFAR ResNet-20, trained on CIFAR-10 train). Source data: the offline
  CIFAR-10 JPEG test folder (3,000 images, 10 classes), ImageNet mean/std, 32 px.

Targets, by growing domain gap (all 5-way; shots 1 and 5; 15 queries per class, 10 on
Office-31 whose smallest classes have 11–21 images):

========================  =================  ================================  ============================
cell pair                 target             validation classes                test classes
========================  =================  ================================  ============================
lenet5_mnist → usps       USPS 28 px (pad)   digits 0–4, USPS *train* file      digits 5–9, USPS *test* file
lenet5_mnist → mnist_m    MNIST-M, grey      digits 0–4                          digits 5–9
lenet5_mnist → omniglot   Omniglot chars     alphabets Japanese (katakana),     the 6 other alphabets
                                             Tagalog
resnet20 → mnist_m        MNIST-M RGB 32 px  digits 0–4                          digits 5–9
resnet20 → office31_webcam  webcam 32 px     classes 0, 3, 6, …, 30 (sorted)     the other 20 classes
========================  =================  ================================  ============================

MNIST-M for LeNet goes through :func:`~tguide.select.zoo.zoo_transform` of the LeNet entry with
``resize="stretch"`` (RGB → ITU-R 601 grey, 32 → 28 px; the entry's default ``"pad"`` policy is
meant for 16-px USPS digits and would shrink the already-framed MNIST-M digit to 12 px).
A "CIFAR classes unseen by the source" cell is impossible here: ``resnet20_cifar10`` was trained
on all 10 CIFAR-10 classes, so every CIFAR class is seen; such a cell needs a source fine-tuned
on a class split, which is not a real pretrained checkpoint, so MNIST-M and Office-31 webcam are
the larger-gap targets for ResNet-20.

Methods, all on the *same* episodes, all with the same new-head initialisation per episode:

- ``vanilla``: step 2 only (full-batch Adam on the support set, cross-entropy, new head).
- ``otce`` (variant a, the paper): step 1 = :func:`~tguide.select.pretune.otce_pretune` minimising
  W_T alone, every fine-tuned parameter trainable, then the same step 2.
- ``otce_wd`` (variant b): step 1 minimises W_T + λ·W_D/W_D⁰ (W_D = ⟨π, C⟩ of the same
  coupling, divided by its detached value at the first step so λ is scale-free), λ = 1 fixed
  a priori.
- ``otce_last`` (variant c): step 1 moves only the last block (LeNet: ``linear1``, the last
  trunk layer; ResNet-20: ``layer3.2``, the last BasicBlock).
- ``proto``: nearest class mean of L2-normalised frozen source features; ``probe``: a linear
  head on the frozen features (same init, 50 full-batch Adam steps, lr 0.01, fixed a priori).
- ``scratch`` (LeNet only): random-init LeNet5 trained by step 2.
- Variant (d), class-balanced vs proportional source batches, is **not run**: both source sets
  are (near) class-balanced (CIFAR 300 per class; MNIST 892–1,135 per class), so the two
  samplers differ only in per-batch variance; the time went to episodes instead.

Cost cuts, fixed before the test episodes: for ResNet-20 every method fine-tunes only
``layer3`` (+ the head): the stem, ``layer1`` and ``layer2`` are frozen and their output is
precomputed once (a 5-image support set cannot sensibly retrain BatchNorm nets end to end,
and it makes ResNet episodes 3× cheaper). Step 2 and step 1 run in eval mode (BatchNorm
uses its running statistics). Step 1: 10 Adam steps, 40 source samples per step, Sinkhorn
``reg`` = 0.1 (relative to the mean cost), 30 iterations, L2-normalised features. Step 2:
20 full-batch Adam steps. (Timed on one validation episode per cell before launch: with 25
step-2 steps and 50 Sinkhorn iterations the 100 main episodes alone would take ~60 min.)

Hyper-parameters chosen on validation episodes only (5 per shot per target pair, 10 per pair, sampler seed
1000, classes disjoint from the test classes), per target pair, pooled over the two shots:
step-2 lr ∈ {1e-3, 3e-3, 1e-2} by mean vanilla accuracy, then step-1 lr ∈ {3e-4, 3e-3} by mean
``otce`` accuracy with that step-2 lr (ties → the smaller lr). The step-1 lr is reused for
variants b and c.

Test: 100 episodes per cell (sampler seed 0) for ``vanilla``, ``otce``, ``proto``, ``probe``;
the variant methods (``otce_wd``, ``otce_last``, ``scratch``) run afterwards, round-robin over
the cells, until the wall-time budget is spent; their episode count is reported per cell.
Paired differences (method − vanilla) get a 95% Student-t interval (:func:`tguide.stats.mean_ci`).

Per cell properties (means over the test episodes, measured before step 1 on the first
source batch): W_D = ⟨π, C⟩ (L2-normalised features), W_T = H(Y_t|Y_s), and the
source–target joint label entropy H(Y_s, Y_t) of the coupling's label table P̂(y_s, y_t).

The grid is defined in :mod:`~tguide.studies.fewshot.regime_grid`, its data in
:mod:`~tguide.studies.fewshot.regime_data`, one episode in :mod:`~tguide.studies.fewshot.regime_episode`
and the summaries in :mod:`~tguide.studies.fewshot.regime_summary`; this module runs the grid and
re-exports their public names.
"""

from __future__ import annotations

import copy
import json
import os
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch

from tguide.studies.fewshot.episodes import Episode, EpisodeSampler
from tguide.studies.fewshot.regime_data import PairData, load_pair
from tguide.studies.fewshot.regime_episode import run_episode
from tguide.studies.fewshot.regime_grid import (
    CSV_COLUMNS,
    FIXED,
    GRID,
    HP_GRID,
    IMPOSSIBLE,
    MAIN_METHODS,
    N_WAY,
    OFFICE_VAL,
    PAIRS,
    SHOTS,
    TEST_DIGITS,
    VAL_ALPHABETS,
    VAL_DIGITS,
    VARIANT_METHODS,
    Cell,
    cells,
)
from tguide.studies.fewshot.regime_summary import loo_pays_rule, loo_rule, paired_stats, summarise_cells

__all__ = [
    "GRID",
    "PAIRS",
    "SHOTS",
    "MAIN_METHODS",
    "VARIANT_METHODS",
    "FIXED",
    "HP_GRID",
    "Cell",
    "cells",
    "paired_stats",
    "summarise_cells",
    "loo_rule",
    "loo_pays_rule",
    "diagnose_steps",
    "run_grid",
    "CSV_COLUMNS",
    "IMPOSSIBLE",
    "N_WAY",
    "OFFICE_VAL",
    "TEST_DIGITS",
    "VAL_ALPHABETS",
    "VAL_DIGITS",
]


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a cut-off last line of a killed run
                continue
    return rows


def _key(r: dict[str, Any]) -> tuple:
    return (r["phase"], r["cell"], r.get("hp", ""), int(r["episode"]))


def run_grid(
    jsonl: str | Path,
    *,
    quick: bool = False,
    budget_s: float = 70 * 60,
    root: str | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, Any]]]:
    """Validation, then the 100 main test episodes of every cell, then variant rounds until ``budget_s``.

    Every finished episode is appended to ``jsonl`` at once; rows already there are skipped.
    Returns (all rows, chosen hyper-parameters per pair).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_grid(Path(jsonl), quick, budget_s, root, log)
    finally:
        torch.set_num_threads(threads)


def _run_grid(jsonl: Path, quick: bool, budget_s: float, root: str | None, log: Callable[[str], None]):
    t_start = time.perf_counter()
    fixed = copy.deepcopy(FIXED)
    n_val, n_test = fixed["val_episodes_per_shot"], fixed["test_episodes"]
    grid2, grid1 = HP_GRID["step2_lr"], HP_GRID["step1_lr"]
    if quick:
        n_val, n_test = 1, 2
        grid2, grid1 = grid2[:2], grid1[:1]
        fixed["step1"].update(steps=1, batch=10, max_iter=10)
        fixed["step2"]["steps"] = 2
        fixed["probe"]["steps"] = 2
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    rows = _read_jsonl(jsonl)
    done = {_key(r) for r in rows}
    if rows:
        log(f"resuming: {len(rows)} finished episodes in {jsonl}")
    with jsonl.open("w") as fh:  # rewrite: complete lines only
        fh.writelines(json.dumps(r) + "\n" for r in rows)

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        done.add(_key(row))
        with jsonl.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    cache: dict[str, PairData] = {}

    def pair_data(c: Cell) -> PairData:
        if c.pair not in cache:
            t0 = time.perf_counter()
            cache[c.pair] = load_pair(c.source, c.target, root=root, quick=quick)
            log(f"loaded {c.pair} in {time.perf_counter() - t0:.1f}s")
        return cache[c.pair]

    samplers: dict[tuple[str, str], EpisodeSampler] = {}

    def sampler(c: Cell, split: str) -> EpisodeSampler:
        if (c.id, split) not in samplers:
            samplers[(c.id, split)] = _sampler(c, split)
        return samplers[(c.id, split)]

    def _sampler(c: Cell, split: str) -> EpisodeSampler:
        _, y, cls = pair_data(c).pools[split]
        q = 2 if quick else c.n_query
        return EpisodeSampler(
            y, N_WAY, c.shot, q, classes=cls, seed=fixed["val_seed"] if split == "val" else fixed["test_seed"]
        )

    def flat(phase: str, c: Cell, ep: Episode, res: dict[str, Any], hp_tag: str = "") -> dict[str, Any]:
        row = {
            "phase": phase,
            "cell": c.id,
            "pair": c.pair,
            "shot": c.shot,
            "episode": ep.index,
            "hp": hp_tag,
            "classes": ep.classes.tolist(),
            "result": res,
        }
        row.update({k: v for k, v in res.items() if not k.endswith("_s")})
        return row

    # ---- validation (per pair, pooled over shots)
    hps: dict[str, dict[str, Any]] = {}
    for pair in dict.fromkeys(c.pair for c in cells()):
        pcells = [c for c in cells() if c.pair == pair]
        score2 = {}
        for lr2 in grid2:
            accs = []
            for c in pcells:
                for i in range(n_val):
                    tag = f"s2={lr2:g}"
                    if ("val", c.id, tag, i) not in done:
                        s = sampler(c, "val")
                        res = run_episode(pair_data(c), "val", s.episode(i), ["vanilla"], {"step2_lr": lr2}, fixed)
                        record(flat("val", c, s.episode(i), res, tag))
                    accs += [r["vanilla"] for r in rows if _key(r) == ("val", c.id, tag, i)]
            score2[lr2] = float(np.mean(accs))
        lr2 = max(grid2, key=lambda v: (score2[v], -v))
        score1 = {}
        for lr1 in grid1:
            accs = []
            for c in pcells:
                for i in range(n_val):
                    tag = f"s2={lr2:g},s1={lr1:g}"
                    if ("val", c.id, tag, i) not in done:
                        s = sampler(c, "val")
                        res = run_episode(
                            pair_data(c), "val", s.episode(i), ["otce"], {"step2_lr": lr2, "step1_lr": lr1}, fixed
                        )
                        record(flat("val", c, s.episode(i), res, tag))
                    accs += [r["otce"] for r in rows if _key(r) == ("val", c.id, tag, i)]
            score1[lr1] = float(np.mean(accs))
        lr1 = max(grid1, key=lambda v: (score1[v], -v))
        hps[pair] = {"step2_lr": lr2, "step1_lr": lr1, "val_vanilla": score2, "val_otce": score1}
        log(
            f"validation {pair}: step-2 lr {lr2:g} (vanilla {score2}), step-1 lr {lr1:g} (otce {score1}) "
            f"[{time.perf_counter() - t_start:.0f}s]"
        )

    # ---- main test episodes
    for c in cells():
        t0 = time.perf_counter()
        n_new = 0
        for i in range(n_test):
            if ("main", c.id, "", i) in done:
                continue
            s = sampler(c, "test")
            res = run_episode(pair_data(c), "test", s.episode(i), MAIN_METHODS, hps[c.pair], fixed)
            record(flat("main", c, s.episode(i), res))
            n_new += 1
            if i == 0 or (i + 1) % 25 == 0:
                log(
                    f"main {c.id} episode {i + 1}/{n_test} ({(time.perf_counter() - t0) / n_new:.2f}s/ep) "
                    f"[{time.perf_counter() - t_start:.0f}s]"
                )
    # ---- variant rounds until the budget is spent
    n_rounds = 2 if quick else n_test
    for i in range(n_rounds):
        if not quick and time.perf_counter() - t_start > budget_s:
            log(f"budget spent after {i} variant rounds [{time.perf_counter() - t_start:.0f}s]")
            break
        for c in cells():
            if ("var", c.id, "", i) in done:
                continue
            s = sampler(c, "test")
            res = run_episode(pair_data(c), "test", s.episode(i), VARIANT_METHODS, hps[c.pair], fixed)
            record(flat("var", c, s.episode(i), res))
        log(f"variant round {i + 1} done [{time.perf_counter() - t_start:.0f}s]")
    return rows, hps


def diagnose_steps(
    jsonl: str | Path,
    cell_ids: Sequence[str],
    *,
    hps: dict[str, dict[str, Any]],
    root: str | None = None,
    n: int | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Post-hoc diagnostic (not part of the fixed grid): ``vanilla`` with as many gradient steps as
    ``otce`` spends (step-1 steps + step-2 steps) on the same test episodes, as phase ``diag`` rows.

    Tells whether a gain of step 1 comes from the transport objective or just from more steps.
    """
    jsonl = Path(jsonl)
    rows = _read_jsonl(jsonl)
    done = {_key(r) for r in rows}
    fixed = copy.deepcopy(FIXED)
    fixed["step2"]["steps"] = FIXED["step2"]["steps"] + FIXED["step1"]["steps"]
    n = FIXED["test_episodes"] if n is None else int(n)
    torch.set_num_threads(1)
    for c in cells():
        if c.id not in cell_ids:
            continue
        data = None
        for i in range(n):
            if ("diag", c.id, "", i) in done:
                continue
            if data is None:
                data = load_pair(c.source, c.target, root=root)
                _, y, cls = data.pools["test"]
                s = EpisodeSampler(y, N_WAY, c.shot, c.n_query, classes=cls, seed=FIXED["test_seed"])
            ep = s.episode(i)
            res = run_episode(data, "test", ep, ["vanilla"], hps[c.pair], fixed)
            row = {
                "phase": "diag",
                "cell": c.id,
                "pair": c.pair,
                "shot": c.shot,
                "episode": i,
                "hp": "",
                "classes": ep.classes.tolist(),
                "result": res,
                "vanilla_long": res["vanilla"],
            }
            with jsonl.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
        log(f"diagnostic {c.id}: done")

r"""Few-shot transfer protocol: scratch vs vanilla fine-tune vs OTCE fine-tune on shared episodes.

For every episode (N-way K-shot support + query, :class:`tguide.studies.fewshot.episodes.EpisodeSampler`):

- ``scratch``: a randomly initialised LeNet-5 trained on the support set;
- ``vanilla``: the source LeNet-5 with a new head, fine-tuned on the support set;
- ``otce``: step 1 (:func:`~tguide.select.pretune.otce_pretune`, minimise W_T between
  source batches and the support set), then the same step 2 as ``vanilla``.

All three get the same step-2 budget (steps, lr) and, for ``vanilla``/``otce``, the same new-head
initialisation, so that the per-episode difference is paired. Accuracy on the query set is
reported as the mean over E episodes with a 95% t-interval

.. math::
    \bar a \pm t_{0.975,\,E-1}\, s / \sqrt{E},

and the paired difference :math:`d_e = a^{otce}_e - a^{vanilla}_e` with the same interval.

Data here: MNIST is the offline 10k *test* set (source training images are its deterministic
train part, :func:`tguide.data.mnist.split_indices`); Omniglot is the background "small" subset.
The source network and the target pools are :mod:`tguide.studies.fewshot.protocol_data`
(``train_source``, ``load_or_train_source`` and ``target_pool`` are re-exported here).
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor

from tguide.errors import TGuideError
from tguide.nets.lenet import LeNet5
from tguide.runs import prepare_run
from tguide.select.pretune import accuracy, finetune, otce_head, otce_pretune
from tguide.stats import mean_ci
from tguide.studies.fewshot.episodes import Episode, EpisodeSampler
from tguide.studies.fewshot.protocol_data import load_or_train_source, source_data, target_pool, train_source

METHODS = ("scratch", "vanilla", "otce")
EPISODES_FILE = "episodes.jsonl"

__all__ = [
    "METHODS",
    "train_source",
    "load_or_train_source",
    "target_pool",
    "run_episode",
    "run_protocol",
    "summarise",
    "markdown_table",
    "run",
]


# ----------------------------------------------------------------------------- protocol


def run_episode(
    source: LeNet5,
    src_x: Tensor,
    src_y: Tensor,
    tgt_x: Tensor,
    episode: Episode,
    hp: dict[str, Any],
    methods: Sequence[str] = METHODS,
) -> dict[str, Any]:
    """Accuracy of each method on one episode's query set, plus W_T before/after step 1 and timings."""
    xs, ys = tgt_x[episode.support], episode.support_labels
    xq, yq = tgt_x[episode.query], episode.query_labels
    n_way = int(episode.classes.numel())
    ft, pt = dict(hp["finetune"]), dict(hp["pretune"])
    head_seed = 1_000_003 * int(episode.seed) + int(episode.index)
    out: dict[str, Any] = {"episode": episode.index, "classes": episode.classes.tolist()}
    for method in methods:
        t0 = time.perf_counter()
        if method == "scratch":
            torch.manual_seed(head_seed)
            net = finetune(
                LeNet5(num_classes=n_way),
                xs,
                ys,
                n_way,
                new_head=False,
                seed=head_seed,
                **{k: v for k, v in ft.items() if k != "freeze"},
            )
        elif method == "vanilla":
            net = finetune(source, xs, ys, n_way, seed=head_seed, **ft)
        elif method == "otce":
            import copy

            pre = copy.deepcopy(source)
            head_init = bool(pt.pop("head_init", False))
            hist = otce_pretune(pre, src_x, src_y, xs, ys, seed=head_seed, **pt)
            out["w_t_before"], out["w_t_after"] = hist[0], hist[-1]
            if head_init:  # our addition: new head = source head rows mixed by P̂(y_s | y_t)
                idx = torch.randperm(src_x.shape[0], generator=torch.Generator().manual_seed(head_seed))
                idx = idx[: pt.get("batch", 128)]
                pre.fc3 = otce_head(
                    pre,
                    src_x[idx],
                    src_y[idx],
                    xs,
                    ys,
                    n_way,
                    reg=pt.get("reg", 0.1),
                    max_iter=pt.get("max_iter", 200),
                    normalise=pt.get("normalise", "none"),
                )
            net = finetune(pre, xs, ys, n_way, seed=head_seed, new_head=not head_init, **ft)
        else:
            raise TGuideError(f"unknown few-shot method {method!r}; choose from {METHODS}")
        out[method] = accuracy(net, xq, yq)
        out[f"{method}_seconds"] = time.perf_counter() - t0
    return out


def summarise(rows: list[dict[str, Any]], methods: Sequence[str]) -> dict[str, Any]:
    """Per-method mean, 95% CI, per-episode accuracies; paired otce − vanilla difference."""
    res: dict[str, Any] = {"episodes": len(rows), "methods": {}}
    for m in methods:
        acc = [r[m] for r in rows]
        mean, ci = mean_ci(acc)
        res["methods"][m] = {
            "mean": mean,
            "ci95": ci,
            "per_episode": acc,
            "seconds": float(sum(r[f"{m}_seconds"] for r in rows)),
        }
    if "otce" in methods and "vanilla" in methods:
        d = [r["otce"] - r["vanilla"] for r in rows]
        mean, ci = mean_ci(d)
        res["paired_otce_minus_vanilla"] = {
            "mean": mean,
            "ci95": ci,
            "per_episode": d,
            "wins": int(sum(x > 0 for x in d)),
            "losses": int(sum(x < 0 for x in d)),
        }
    if rows and "w_t_before" in rows[0]:
        res["w_t"] = {
            "before": float(np.mean([r["w_t_before"] for r in rows])),
            "after": float(np.mean([r["w_t_after"] for r in rows])),
        }
    return res


def markdown_table(res: dict[str, Any], title: str) -> str:
    """The summary as a markdown table (accuracy in %, ± 95% half-width)."""
    lines = [
        f"### {title}",
        "",
        f"{res['episodes']} episodes.",
        "",
        "| method | mean accuracy (%) | 95% CI (±) | time (s) |",
        "|---|---|---|---|",
    ]
    for m, r in res["methods"].items():
        lines.append(f"| {m} | {100 * r['mean']:.2f} | {100 * r['ci95']:.2f} | {r['seconds']:.1f} |")
    if "paired_otce_minus_vanilla" in res:
        p = res["paired_otce_minus_vanilla"]
        lines.append(
            f"| otce − vanilla (paired) | {100 * p['mean']:+.2f} | {100 * p['ci95']:.2f} | "
            f"wins {p['wins']} / losses {p['losses']} |"
        )
    if "w_t" in res:
        lines += [
            "",
            f"Mean W_T = H(Y_t|Y_s) before / after step 1: {res['w_t']['before']:.3f} / "
            f"{res['w_t']['after']:.3f} nats.",
        ]
    return "\n".join(lines) + "\n"


def run_protocol(
    fs: dict[str, Any],
    run_dir: str | Path,
    *,
    root: str | None = None,
    logger: Any = None,
    log_every: int = 1,
    verbose: bool = True,
    resume: bool = False,
) -> dict[str, Any]:
    """Build source model, target pool and episodes from the ``fewshot`` settings; run every episode.

    Writes ``results.json`` and ``results.md`` into ``run_dir`` and returns the results dict;
    every finished episode is appended to ``run_dir/episodes.jsonl`` at once, and with
    ``resume=True`` the episodes found there are not run again.
    Runs with ``fs["threads"]`` torch threads (default 1), restored afterwards.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(int(fs.get("threads") or 1))  # tiny nets: one thread beats oversubscribed cores
    try:
        return _run_protocol(fs, Path(run_dir), root, logger, log_every, verbose, resume)
    finally:
        torch.set_num_threads(threads)


def _run_protocol(
    fs: dict[str, Any],
    run_dir: Path,
    root: str | None,
    logger: Any,
    log_every: int,
    verbose: bool,
    resume: bool = False,
) -> dict[str, Any]:
    methods = list(fs.get("methods", METHODS))
    src = fs["source"]
    ckpt = src.get("checkpoint") or (run_dir / "source_lenet.pt")
    source, source_info = load_or_train_source(
        ckpt, src["digits"], epochs=src["epochs"], lr=src["lr"], batch=src["batch"], seed=src["seed"], root=root
    )
    src_x, src_y, _, _ = source_data(src["digits"], root)
    tgt_x, tgt_y, pool = target_pool(
        fs["target"],
        fs["split"],
        root=root,
        classes=fs.get("classes"),
        val_alphabets=fs.get("val_alphabets") or (),
        usps_mode=fs.get("usps_mode", "pad"),
    )
    sampler = EpisodeSampler(tgt_y, fs["n_way"], fs["k_shot"], fs["n_query"], classes=pool, seed=fs["seed"])
    hp = {"finetune": dict(fs["finetune"]), "pretune": dict(fs["pretune"])}
    if "src_batch" in hp["pretune"]:  # the recipes' key; otce_pretune calls it `batch`
        hp["pretune"]["batch"] = hp["pretune"].pop("src_batch")
    hp["finetune"]["freeze"] = list(hp["finetune"].get("freeze") or [])
    # finished episodes, one JSON line each, appended as they end: `resume=<run folder>` skips them
    done_file = run_dir / EPISODES_FILE
    done: dict[int, dict[str, Any]] = {}
    if resume and done_file.is_file():
        for line in done_file.read_text().splitlines():
            try:
                row = json.loads(line)
            except json.JSONDecodeError:  # the last line of a killed run may be cut short
                continue
            done[int(row["episode"])] = row
        if done:
            print(f"resuming: {len(done)} finished episodes read from {done_file}", flush=True)
    run_dir.mkdir(parents=True, exist_ok=True)
    with done_file.open("w") as fh:  # rewritten: complete lines only, each episode once
        fh.writelines(json.dumps(done[i]) + "\n" for i in sorted(done))
    rows = []
    t0 = time.perf_counter()
    for i in range(int(fs["episodes"])):
        if i in done:
            rows.append(done[i])
            continue
        row = run_episode(source, src_x, src_y, tgt_x, sampler.episode(i), hp, methods)
        with done_file.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())
        rows.append(row)
        if logger is not None:
            logger.log_metrics({f"fewshot/{m}_acc": row[m] for m in methods}, step=i)
        if verbose and (i + 1) % log_every == 0:
            print(f"episode {i + 1}/{fs['episodes']}: " + " ".join(f"{m}={row[m]:.3f}" for m in methods), flush=True)
    res = summarise(rows, methods)
    res.update(
        {
            "target": fs["target"],
            "split": fs["split"],
            "seed": fs["seed"],
            "n_way": fs["n_way"],
            "k_shot": fs["k_shot"],
            "n_query": fs["n_query"],
            "pool_classes": len(pool),
            "hyperparameters": hp,
            "source": source_info,
            "wall_seconds": time.perf_counter() - t0,
            "rows": rows,
            "note": "MNIST here is the 10k test set (train part 8/10 for the source model)"
            + ("; Omniglot is the background 'small' subset (242 characters)" if fs["target"] == "omniglot" else ""),
        }
    )
    title = f"MNIST{tuple(src['digits'])} → {fs['target']} ({fs['split']}), {fs['n_way']}-way {fs['k_shot']}-shot"
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "results.json").write_text(json.dumps(res, indent=1) + "\n")
    (run_dir / "results.md").write_text(markdown_table(res, title))
    if logger is not None:
        final = {f"fewshot/{m}_mean": r["mean"] for m, r in res["methods"].items()}
        final.update({f"fewshot/{m}_ci95": r["ci95"] for m, r in res["methods"].items()})
        if "paired_otce_minus_vanilla" in res:
            final["fewshot/otce_minus_vanilla"] = res["paired_otce_minus_vanilla"]["mean"]
            final["fewshot/otce_minus_vanilla_ci95"] = res["paired_otce_minus_vanilla"]["ci95"]
        logger.log_metrics(final, step=int(fs["episodes"]))
    return res


def run(cfg: Any) -> dict[str, Any]:
    """Runner for ``python -m tguide.fit recipe=fewshot_mnist_usps|fewshot_mnist_omniglot``."""
    from hydra.utils import instantiate

    fs, run_dir = prepare_run(cfg, "fewshot", "recipe=fewshot_mnist_usps or fewshot_mnist_omniglot")
    torch.manual_seed(int(cfg.get("seed", 0)))
    logger_cfg = cfg.get("logger")
    logger = instantiate(logger_cfg) if logger_cfg and "_target_" in logger_cfg else None
    if logger is not None:
        logger.log_hyperparams({"fewshot": fs, "seed": cfg.get("seed")})
    root = (cfg.get("data") or {}).get("root")
    res = run_protocol(fs, run_dir, root=root, logger=logger, resume=bool(cfg.get("resume")))
    if logger is not None:
        logger.finalize("success")
    print((run_dir / "results.md").read_text(), flush=True)
    print(f"tguide.fit: run folder {run_dir.resolve()}", flush=True)
    return res

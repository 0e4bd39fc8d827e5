"""The ``recipe=rank`` runner: the config block ``rank:`` mapped onto :func:`tguide.select.rank.rank`,
the reports written into the run folder (``ranking.csv``, ``ranking.md``, ``report.html``), W&B when
the logger is W&B. Under ``torchrun`` every rank ranks its share of the candidates and rank 0 writes.
"""

from __future__ import annotations

import resource
from pathlib import Path
from typing import Any

from tguide.select.distributed import is_rank_zero, session
from tguide.select.rank import BASELINES, DEFAULT_METRICS, RankError, rank
from tguide.select.ranking_result import Ranking

__all__ = ["peak_rss_mb", "run"]


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (MB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run(cfg: Any) -> Ranking:
    """The ``recipe=rank`` runner: rank ``rank.candidates`` on the target and write the reports."""
    from omegaconf import OmegaConf

    from tguide.runs import prepare_run

    rk, run_dir = prepare_run(cfg, "rank", "recipe=rank")
    target = rk.get("target")
    if target in (None, ""):
        data = OmegaConf.to_container(cfg.get("data") or {}, resolve=True) or {}
        target = data.get("root") if isinstance(data, dict) else None
        if target in (None, ""):
            raise RankError(
                "no target: pass rank.target=NAME (cifar10, office31_webcam, mnist_m, usps, mnist) or "
                "data=image_folder data.root=PATH"
            )
    candidates = rk.get("candidates") or []
    if isinstance(candidates, str):
        candidates = [candidates]
    output_root = Path(str(cfg.paths.output_root))
    cache_dir = rk.get("cache_dir") or (output_root / "feature_cache")
    if str(cache_dir).lower() in ("none", "false", "off"):
        cache_dir = None
    baselines = rk.get("baselines")
    with session():  # under torchrun: candidates sharded across ranks, errors reported by rank 0 only
        ranking = rank(
            candidates,
            target,
            layers=rk.get("layers", "auto"),
            metrics=rk.get("metrics") or DEFAULT_METRICS,
            baselines=baselines if baselines is not None else BASELINES,
            null=int(rk.get("null_perm") or 0),
            max_samples=rk.get("max_samples"),
            cache_dir=cache_dir,
            seed=int(rk.get("seed", cfg.get("seed", 0)) or 0),
            device=rk.get("device"),
            batch_size=int(rk.get("batch_size") or 64),
            num_workers=int(rk.get("num_workers") or 0),
            metric_kwargs=rk.get("metric_kwargs") or None,
            root=rk.get("root"),
            progress=rk.get("progress", "auto"),
            bootstrap=100 if (replicates := rk.get("bootstrap")) is None else int(replicates),
            contender_threshold=float(rk.get("contender_threshold") or 0.1),
        )
    if not is_rank_zero():
        return ranking  # every rank holds the same table; rank 0 writes the reports
    wandb_run = None
    logger_cfg = cfg.get("logger")
    if logger_cfg and "_target_" in logger_cfg and "Wandb" in str(logger_cfg.get("_target_")):
        from hydra.utils import instantiate

        logger = instantiate(logger_cfg)
        wandb_run = logger.experiment
    paths = ranking.write_report(run_dir, wandb_run=wandb_run)
    if wandb_run is not None:
        wandb_run.finish()
    print(paths["ranking.md"].read_text(), flush=True)
    print(
        f"tguide.fit: wrote {', '.join(paths)}; run folder {run_dir.resolve()}; peak memory {peak_rss_mb():.0f} MB",
        flush=True,
    )
    return ranking

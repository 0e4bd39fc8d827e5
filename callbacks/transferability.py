"""Watch transferability while training: per-layer scores of a probe set, logged every few epochs.

:class:`TransferabilityMonitor` is a thin Lightning shell around
:func:`transferability_scores`, which is usable without a Trainer. A run:

1. draws a fixed probe subset (seeded, the same every epoch) of the target loader and, for
   OTCE, of the source loader; under DDP every rank reads its share of it;
2. runs the model in eval mode under ``torch.no_grad()`` and captures the named layers with
   forward hooks (:mod:`tguide.features`); the previous train/eval mode of every submodule
   is restored;
3. gathers every rank's rows (``all_gather`` with padding, so unequal shares do not hang)
   and puts them back in the one-process order;
4. rank 0 calls the functions of :mod:`tguide.metrics` (no formula lives here) and
   broadcasts the scores, so that every rank logs the same numbers.

Keys: ``transfer/<metric>/<layer>`` and ``transfer/seconds`` (wall time of the run, the
slowest rank's under DDP). At the end of fit, W&B loggers
get a ``transfer/table`` (epoch × layer × metric, with the tracked validation metric) and
one ``transfer/scatter/<metric>/<layer>`` chart of score against that metric; loggers with
a ``log_dir`` (CSV, TensorBoard) get the same table as ``transferability.csv``.
"""

from __future__ import annotations

import csv
import importlib
import os
import time
import warnings
from contextlib import nullcontext
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import lightning as L
import torch
import torch.distributed as dist
from lightning.pytorch.callbacks import Callback
from torch import Tensor, nn
from torch.utils.data import DataLoader, IterableDataset, Subset

from tguide.features import FeatureSet, Unpack, extract_features, resolve_layers
from tguide.pixel_features import extract_pixel_features

__all__ = ["METRICS", "DEFAULT_METRIC_KWARGS", "MetricSpec", "resolve_metric", "transferability_scores",
           "TransferabilityMonitor"]

HOOKS = ("train_epoch_end", "validation_epoch_end")
LoaderSpec = DataLoader | str | Callable[[], DataLoader]


@dataclass(frozen=True)
class MetricSpec:
    """A registry entry: ``target`` is ``"module:function"`` in :mod:`tguide.metrics`, imported
    when first used; ``needs_source`` marks metrics called as ``f(src_f, src_y, tgt_f, tgt_y)``
    instead of ``f(tgt_f, tgt_y)``."""

    target: str
    needs_source: bool = False

    def function(self) -> Callable[..., Any]:
        module, name = self.target.split(":")
        return getattr(importlib.import_module(module), name)


METRICS: dict[str, MetricSpec] = {
    "otce_sim": MetricSpec("tguide.metrics.otce:otce_sim", needs_source=True),
    "hscore": MetricSpec("tguide.metrics.hscore:hscore"),
    "hscore_shrinkage": MetricSpec("tguide.metrics.hscore:hscore_shrinkage"),
    "transrate": MetricSpec("tguide.metrics.transrate:transrate"),
    "transrate_comparable": MetricSpec("tguide.metrics.transrate:transrate_comparable"),
    "logme": MetricSpec("tguide.metrics.logme:logme"),
}


# Exact OT is quadratic in the samples (5k × 5k: ~10 s on a CPU core): by default OTCE scores a
# seeded subsample of 1000 per side (otce_sim's own `max_samples`); override in `metric_kwargs`.
DEFAULT_METRIC_KWARGS: dict[str, dict[str, Any]] = {"otce_sim": {"max_samples": 1000}}


def resolve_metric(name: str) -> MetricSpec:
    """The registry entry for ``name``; ``ValueError`` listing the valid names otherwise."""
    if name not in METRICS:
        raise ValueError(f"`metrics`: unknown metric {name!r}; valid names: {', '.join(METRICS)}.")
    return METRICS[name]


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _probe_share(loader: DataLoader, max_samples: int | None, seed: int, rank: int, world: int,
                 what: str) -> tuple[DataLoader, Tensor]:
    """This rank's share of a fixed probe subset of ``loader.dataset``: ``(loader, dataset ids)``.

    The subset is ``max_samples`` indices drawn with a private seeded generator (all of them
    when ``None``), sorted; rank ``r`` of ``world`` reads positions ``r, r+world, ...``. The
    loader does not shuffle and owns its generator, so probing never draws from the global RNG
    (training with and without the monitor sees the same random numbers).
    """
    if not isinstance(loader, DataLoader):
        raise ValueError(f"`{what}` must give a torch DataLoader, got {type(loader).__name__}.")
    dataset = loader.dataset
    if isinstance(dataset, IterableDataset) or not hasattr(dataset, "__len__"):
        raise ValueError(f"`{what}`: the loader's dataset must be map-style (with __len__ and indexing), "
                         f"not {type(dataset).__name__}, so that a fixed probe subset can be drawn.")
    n = len(dataset)  # type: ignore[arg-type]
    if n == 0:
        raise ValueError(f"`{what}`: the loader's dataset is empty.")
    gen = torch.Generator().manual_seed(int(seed))
    if max_samples is None or max_samples >= n:
        ids = torch.arange(n)
    else:
        ids = torch.sort(torch.randperm(n, generator=gen)[:max_samples]).values
    ids = ids[rank::world]
    batch_size = loader.batch_size or getattr(loader.batch_sampler, "batch_size", None) or 64
    share = DataLoader(Subset(dataset, ids.tolist()), batch_size=batch_size, shuffle=False,
                       num_workers=loader.num_workers, collate_fn=loader.collate_fn,
                       pin_memory=loader.pin_memory, generator=torch.Generator().manual_seed(int(seed)))
    return share, ids


def _gather(fs: FeatureSet | None, layers: Sequence[str], world: int) -> FeatureSet | None:
    """Concatenate every rank's rows (empty shares allowed) and sort them by sample id (stable),
    which is the order one process would have read them in."""
    if world == 1:
        return fs
    from torchmetrics.utilities.distributed import gather_all_tensors

    def cat(local: Tensor) -> Tensor:
        parts = [p for p in gather_all_tensors(local) if p.numel() > 0]
        return torch.cat(parts) if parts else local

    device = next(iter(fs.features.values())).device if fs is not None else _device_for_backend()
    ids = cat(fs.ids.to(device) if fs is not None else torch.empty(0, dtype=torch.int64, device=device))
    labels = cat(fs.labels.to(device) if fs is not None else torch.empty(0, dtype=torch.int64, device=device))
    order = torch.sort(ids, stable=True).indices
    features = {}
    for name in layers:  # float64 on the wire: dtypes must match across ranks, empty ones included
        local = fs.features[name].double() if fs is not None else torch.empty(0, 0, dtype=torch.float64, device=device)
        features[name] = cat(local)[order]
    return FeatureSet(features=features, labels=labels[order], ids=ids[order])


def _device_for_backend() -> torch.device:
    if dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def _extract(model: nn.Module, share: DataLoader, ids: Tensor, layers: Sequence[str], pool: str,
             pixels_per_image: int | None, ignore_index: int | None, seed: int, device: Any,
             unpack: Unpack | None, pixel_sampling: Mapping[str, Any] | None = None) -> FeatureSet | None:
    if len(ids) == 0:  # this rank's share is empty (fewer probe samples than ranks)
        return None
    if pixels_per_image is not None:
        return extract_pixel_features(model, share, layers, pixels_per_image=pixels_per_image,
                                      ignore_index=ignore_index, seed=seed, ids=ids, device=device, unpack=unpack,
                                      **dict(pixel_sampling or {}))
    return extract_features(model, share, layers, pool=pool, ids=ids, device=device, unpack=unpack)


def _compute(target: FeatureSet, source: FeatureSet | None, layers: Sequence[str], metrics: Sequence[str],
             metric_kwargs: Mapping[str, Mapping[str, Any]], null: int | None = None,
             seed: int = 0) -> dict[str, float]:
    from tguide.metrics.null import label_shuffle_null

    scores: dict[str, float] = {}
    for metric in metrics:
        spec = resolve_metric(metric)
        fn, kwargs = spec.function(), {**DEFAULT_METRIC_KWARGS.get(metric, {}), **metric_kwargs.get(metric, {})}
        for layer in layers:
            if spec.needs_source:
                assert source is not None
                args = (source.features[layer], source.labels, target.features[layer], target.labels)
            else:
                args = (target.features[layer], target.labels)
            try:
                if null is None:
                    value = fn(*args, **kwargs)
                else:
                    calibrated = label_shuffle_null(fn, *args, n_perm=null, seed=seed, **kwargs)
                    value = calibrated.score
                    scores[f"transfer/{metric}_z/{layer}"] = float(calibrated.z)
            except ValueError as err:
                raise ValueError(f"TransferabilityMonitor: {metric} on layer {layer!r} failed: {err}") from err
            scores[f"transfer/{metric}/{layer}"] = float(getattr(value, "score", value))
    return scores


def transferability_scores(
    model: nn.Module,
    probe: DataLoader,
    layers: Sequence[str],
    metrics: Sequence[str] = ("otce_sim", "hscore", "transrate"),
    source: DataLoader | None = None,
    *,
    pool: str = "avg",
    max_samples: int | None = 1000,
    source_max_samples: int | None = 1000,
    seed: int = 0,
    metric_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
    pixels_per_image: int | None = None,
    ignore_index: int | None = None,
    pixel_sampling: Mapping[str, Any] | None = None,
    null: int | None = None,
    device: torch.device | str | None = None,
    unpack: Unpack | None = None,
    on_error: str = "raise",
) -> dict[str, float]:
    """Score every ``metric`` on every layer for a fixed probe subset; ``{"transfer/<metric>/<layer>": score}``.

    Works in one process or in every process of an initialised ``torch.distributed`` group
    (call it on all ranks): each rank extracts its share, the rows are gathered, rank 0
    computes and broadcasts, and all ranks return the same dict, equal to the one-process
    result. ``max_samples`` and ``source_max_samples`` cap the probe and source subsets (``None``
    = all), drawn with ``seed`` and ``seed + 1``; ``metric_kwargs`` go to the metric functions,
    over :data:`DEFAULT_METRIC_KWARGS`. ``pixels_per_image`` switches to per-pixel features of
    segmentation masks (:func:`tguide.features.extract_pixel_features`), with ``pixel_sampling``
    as its extra keyword arguments (e.g. ``{"sampling": "boundary", "band": 3}``). ``null=P``
    also scores ``P`` shuffles of the probe labels (:func:`tguide.metrics.null.label_shuffle_null`,
    seeded by ``seed``) and adds ``transfer/<metric>_z/<layer>``, the score's z against that null
    (comparable across layers, widths and metrics). With
    ``on_error="warn"`` a metric that raises ``ValueError`` gives NaN scores and a warning
    instead of an error (on every rank).
    """
    metrics = list(metrics)
    for metric in metrics:
        resolve_metric(metric)
    if on_error not in ("raise", "warn"):
        raise ValueError(f"`on_error` must be 'raise' or 'warn', got {on_error!r}.")
    if any(resolve_metric(m).needs_source for m in metrics) and source is None:
        needing = [m for m in metrics if resolve_metric(m).needs_source]
        raise ValueError(f"`source`: {needing} compare source and target features; pass source= "
                         "(a loader of source samples) or drop them from `metrics`.")
    layers = list(resolve_layers(model, layers))
    rank, world = _world()
    share, ids = _probe_share(probe, max_samples, seed, rank, world, "probe")
    target = _extract(model, share, ids, layers, pool, pixels_per_image, ignore_index, seed, device, unpack,
                      pixel_sampling)
    src = None
    if source is not None and any(resolve_metric(m).needs_source for m in metrics):
        share, ids = _probe_share(source, source_max_samples, seed + 1, rank, world, "source")
        src = _extract(model, share, ids, layers, pool, pixels_per_image, ignore_index, seed + 1, device, unpack,
                       pixel_sampling)
        src = _gather(src, layers, world)
    target = _gather(target, layers, world)
    payload: dict[str, Any] = {"scores": {}, "error": None}
    if rank == 0:
        assert target is not None
        try:
            payload["scores"] = _compute(target, src, layers, metrics, metric_kwargs or {}, null, seed)
        except ValueError as err:
            payload["error"] = str(err)
    if world > 1:
        box = [payload]
        dist.broadcast_object_list(box, src=0)
        payload = box[0]
    if payload["error"] is not None:
        if on_error == "raise":
            raise ValueError(payload["error"])
        warnings.warn(payload["error"], RuntimeWarning, stacklevel=2)
        keys = [f"transfer/{m}/{layer}" for m in metrics for layer in layers]
        if null is not None:
            keys += [f"transfer/{m}_z/{layer}" for m in metrics for layer in layers]
        return {key: float("nan") for key in keys}
    return payload["scores"]


class TransferabilityMonitor(Callback):
    """Log ``transfer/<metric>/<layer>`` for a probe set every ``every_n_epochs`` epochs.

    Args:
        probe: target samples: a DataLoader, the name of a datamodule (or LightningModule)
            method returning one (``"val_dataloader"``), or a zero-argument callable.
        layers: module names in the LightningModule's ``named_modules()`` (``"net.fc1"``).
        metrics: names in :data:`METRICS` (``otce_sim``, ``hscore``, ``hscore_shrinkage``,
            ``transrate``, ``transrate_comparable``, ``logme``).
        source: source samples, as ``probe``; needed by ``otce_sim``.
        every_n_epochs: run after epochs ``n-1, 2n-1, ...`` (0-based).
        max_samples: probe subset size, fixed for the whole fit; ``None`` = all.
        source_max_samples: source subset size (only OTCE reads it), likewise.
        on: ``"train_epoch_end"`` (after that epoch's validation, always runs) or
            ``"validation_epoch_end"`` (skipped during the sanity check).
        pool: ``"avg"`` (global average pooling of conv maps) or ``"flatten"``.
        metric_kwargs: extra arguments per metric, e.g. ``{"otce_sim": {"solver": "sinkhorn"}}``,
            over :data:`DEFAULT_METRIC_KWARGS` (OTCE on at most 1000 samples per side).
        track: logged metrics to pair the scores with in the end-of-fit table and scatter
            plots; the first one present is used for the scatter.
        pixels_per_image, ignore_index: per-pixel features for segmentation masks.
        pixel_sampling: extra keyword arguments of
            :func:`tguide.features.extract_pixel_features` (how pixels are drawn).
        null: number of probe-label shuffles; also logs ``transfer/<metric>_z/<layer>``, the
            score's z against its label-shuffle null (``None``: raw scores only).
        seed: draws the probe subsets (and the pixels).
        unpack: ``batch -> (x, y)`` for batches that are not ``(x, y)`` tuples or common dicts.
        on_error: ``"raise"`` or ``"warn"`` (log NaN) when a metric rejects the features.
    """

    def __init__(
        self,
        probe: LoaderSpec,
        layers: Sequence[str],
        metrics: Sequence[str] = ("otce_sim", "hscore", "transrate"),
        source: LoaderSpec | None = None,
        every_n_epochs: int = 1,
        max_samples: int | None = 1000,
        source_max_samples: int | None = 1000,
        on: str = "train_epoch_end",
        pool: str = "avg",
        metric_kwargs: Mapping[str, Mapping[str, Any]] | None = None,
        track: Sequence[str] = ("val/acc", "val/dice", "val/psnr"),
        pixels_per_image: int | None = None,
        ignore_index: int | None = None,
        pixel_sampling: Mapping[str, Any] | None = None,
        null: int | None = None,
        seed: int = 0,
        unpack: Unpack | None = None,
        on_error: str = "raise",
    ) -> None:
        super().__init__()
        self.metrics = [str(m) for m in metrics]
        if not self.metrics:
            raise ValueError("`metrics` is empty; name at least one of " + ", ".join(METRICS) + ".")
        needing = [m for m in self.metrics if resolve_metric(m).needs_source]
        if needing and source is None:
            raise ValueError(f"`source`: {needing} compare source and target features; pass source= "
                             "(e.g. source='train_dataloader') or drop them from `metrics`.")
        self.layers = [layers] if isinstance(layers, str) else list(layers)
        if not self.layers:
            raise ValueError("`layers` is empty; name at least one module, e.g. layers=['net.fc1'].")
        if not isinstance(every_n_epochs, int) or every_n_epochs < 1:
            raise ValueError(f"`every_n_epochs` must be an integer ≥ 1, got {every_n_epochs!r}.")
        for name, cap in (("max_samples", max_samples), ("source_max_samples", source_max_samples)):
            if cap is not None and (not isinstance(cap, int) or cap < 2):
                raise ValueError(f"`{name}` must be an integer ≥ 2 or None, got {cap!r}.")
        if on not in HOOKS:
            raise ValueError(f"`on` must be one of {list(HOOKS)}, got {on!r}.")
        if pool not in ("avg", "flatten"):
            raise ValueError(f"`pool` must be 'avg' or 'flatten', got {pool!r}.")
        if on_error not in ("raise", "warn"):
            raise ValueError(f"`on_error` must be 'raise' or 'warn', got {on_error!r}.")
        self.probe, self.source = probe, source if needing else None
        self.every_n_epochs, self.on, self.pool = every_n_epochs, on, pool
        self.max_samples, self.source_max_samples = max_samples, source_max_samples
        self.metric_kwargs = {k: dict(v) for k, v in (metric_kwargs or {}).items()}
        for name in self.metric_kwargs:
            resolve_metric(name)
        self.track = list(track)
        self.pixels_per_image, self.ignore_index = pixels_per_image, ignore_index
        self.pixel_sampling = dict(pixel_sampling or {})
        if null is not None and (isinstance(null, bool) or not isinstance(null, int) or null < 2):
            raise ValueError(f"`null` must be None or the number of label permutations (an integer ≥ 2), got {null!r}.")
        self.null = null
        self.seed, self.unpack, self.on_error = seed, unpack, on_error
        self.history: list[dict[str, Any]] = []  # one row per run: epoch, step, seconds, scores
        self.tracked: dict[int, dict[str, float]] = {}  # epoch -> tracked metric values
        self._loaders: tuple[DataLoader, DataLoader | None] | None = None

    # -- setup -------------------------------------------------------------------------
    def _loader(self, spec: LoaderSpec, trainer: L.Trainer, pl_module: L.LightningModule, what: str) -> DataLoader:
        if isinstance(spec, DataLoader):
            return spec
        if isinstance(spec, str):
            for owner in (trainer.datamodule, pl_module):
                method = getattr(owner, spec, None) if owner is not None else None
                if callable(method):
                    return method()
            raise ValueError(f"`{what}`={spec!r}: neither the datamodule nor the LightningModule has a method "
                             f"{spec!r}; pass a DataLoader or a method name such as 'val_dataloader'.")
        if callable(spec):
            return spec()
        raise ValueError(f"`{what}` must be a DataLoader, a method name or a callable, got {type(spec).__name__}.")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        resolve_layers(pl_module, self.layers)  # fail before training on a wrong name
        probe = self._loader(self.probe, trainer, pl_module, "probe")
        source = self._loader(self.source, trainer, pl_module, "source") if self.source is not None else None
        self._loaders = (probe, source)

    # -- the measurement -----------------------------------------------------------------
    def _due(self, trainer: L.Trainer) -> bool:
        return (not trainer.sanity_checking and trainer.state.fn == "fit"
                and (trainer.current_epoch + 1) % self.every_n_epochs == 0)

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        """Compute and log the scores now; returns ``{key: score}`` (the same on every rank)."""
        if self._loaders is None:
            self.setup(trainer, pl_module, "fit")
        assert self._loaders is not None
        probe, source = self._loaders
        start = time.perf_counter()
        plugin = getattr(trainer, "precision_plugin", None)
        context = plugin.forward_context() if plugin is not None else nullcontext()
        with context:
            scores = transferability_scores(
                pl_module, probe, self.layers, self.metrics, source, pool=self.pool,
                max_samples=self.max_samples, source_max_samples=self.source_max_samples, seed=self.seed,
                metric_kwargs=self.metric_kwargs,
                pixels_per_image=self.pixels_per_image, ignore_index=self.ignore_index,
                pixel_sampling=self.pixel_sampling, null=self.null, device=pl_module.device, unpack=self.unpack, on_error=self.on_error)
        seconds = time.perf_counter() - start
        # every rank holds the same scores; sync_dist only keeps Lightning's DDP bookkeeping quiet
        for key, value in scores.items():
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=True)
        pl_module.log("transfer/seconds", seconds, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")
        self.history.append({"epoch": trainer.current_epoch, "step": trainer.global_step,
                             "seconds": seconds, "scores": dict(scores)})
        return scores

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # this epoch's validation has run already: remember the tracked metrics for the table
        values = {k: float(trainer.callback_metrics[k]) for k in self.track if k in trainer.callback_metrics}
        if values:
            self.tracked[trainer.current_epoch] = values
        if self.on == "train_epoch_end" and self._due(trainer):
            self.measure(trainer, pl_module)

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self.on == "validation_epoch_end" and self._due(trainer):
            self.measure(trainer, pl_module)

    # -- end-of-fit report ---------------------------------------------------------------
    def table(self) -> tuple[list[str], list[list[Any]]]:
        """``(columns, rows)``: one row per epoch × layer × metric, with the tracked metrics."""
        tracked = [k for k in self.track if any(k in v for v in self.tracked.values())]
        columns = ["epoch", "step", "layer", "metric", "score", *tracked]
        rows = []
        for run in self.history:
            extra = [self.tracked.get(run["epoch"], {}).get(k, float("nan")) for k in tracked]
            for metric in self._reported():
                for layer in self.layers:
                    score = run["scores"].get(f"transfer/{metric}/{layer}", float("nan"))
                    rows.append([run["epoch"], run["step"], layer, metric, score, *extra])
        return columns, rows

    def _reported(self) -> list[str]:
        """The metric names in the table: each metric, and ``<metric>_z`` when a null is on."""
        if self.null is None:
            return list(self.metrics)
        return [name for m in self.metrics for name in (m, f"{m}_z")]

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.is_global_zero or not self.history:
            return
        columns, rows = self.table()
        for logger in trainer.loggers:
            if type(logger).__name__ == "WandbLogger":
                self._log_wandb(logger.experiment, columns, rows)
            log_dir = getattr(logger, "log_dir", None)
            if isinstance(log_dir, str) and os.path.isdir(log_dir):
                with open(os.path.join(log_dir, "transferability.csv"), "w", newline="") as fh:
                    writer = csv.writer(fh)
                    writer.writerow(columns)
                    writer.writerows(rows)

    def _log_wandb(self, run: Any, columns: list[str], rows: list[list[Any]]) -> None:
        import wandb

        payload: dict[str, Any] = {"transfer/table": wandb.Table(columns=columns, data=rows)}
        tracked = columns[5:]
        if tracked:
            x = tracked[0]
            for metric in self._reported():
                for layer in self.layers:
                    pairs = [[r[5], r[4]] for r in rows if r[2] == layer and r[3] == metric and r[5] == r[5]]
                    if pairs:
                        y = f"{metric}/{layer}"
                        data = wandb.Table(columns=[x, y], data=pairs)
                        payload[f"transfer/scatter/{metric}/{layer}"] = wandb.plot.scatter(
                            data, x, y, title=f"{metric} on {layer} vs {x}")
        run.log(payload)

    # -- checkpointing -------------------------------------------------------------------
    @property
    def state_key(self) -> str:  # several monitors may sit side by side, each with its own state
        return self._generate_state_key(layers=self.layers, metrics=self.metrics, on=self.on,
                                        every_n_epochs=self.every_n_epochs, seed=self.seed)

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "tracked": self.tracked}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.tracked = dict(state_dict.get("tracked", {}))

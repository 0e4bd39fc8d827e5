"""Watch transferability while training: per-layer scores of a probe set, logged every few epochs.

:class:`TransferabilityMonitor` is a thin Lightning shell around
:func:`tguide.probe.transferability_scores`, which is usable without a Trainer. A run:

1. draws a fixed probe subset (seeded, the same every epoch) of the target loader and, for
   OTCE, of the source loader (class-stratified when the dataset exposes its labels, see
   :func:`tguide.probe.transferability_scores`); under DDP every rank reads its share of it;
2. runs the model in eval mode under ``torch.no_grad()`` and captures the named layers with
   the one forward-hook capture (:mod:`tguide.features`); the previous train/eval mode of
   every submodule is restored;
3. merges every rank's sufficient statistics for the statistics-based scores (H-score, LogME,
   TransRate, GBC, NCE: :mod:`tguide.probe_statistics`, no feature gather) and gathers every
   rank's rows for the scores that need the samples (OTCE, SFDA, NCTI, kNN, LEEP, ...;
   ``all_gather`` with padding, so unequal shares do not hang, put back in the one-process order);
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
import os
import time
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from typing import Any

import lightning as L
from lightning.pytorch.callbacks import Callback
from torch.utils.data import DataLoader

from tguide.errors import ConfigError
from tguide.features.extract import Unpack
from tguide.features.layers import OUTPUT, resolve_layers
from tguide.features.pooling import PoolSpec, check_pool
from tguide.metrics.registry import METRICS
from tguide.probe import DEFAULT_METRIC_KWARGS, check_metric_kwargs, resolve_metric, transferability_scores

__all__ = ["DEFAULT_METRIC_KWARGS", "resolve_metric", "transferability_scores", "TransferabilityMonitor"]

HOOKS = ("train_epoch_end", "validation_epoch_end")
LoaderSpec = DataLoader | str | Callable[[], DataLoader]


class TransferabilityMonitor(Callback):
    """Log ``transfer/<metric>/<layer>`` for a probe set every ``every_n_epochs`` epochs.

    Args:
        probe: target samples: a DataLoader, the name of a datamodule (or LightningModule)
            method returning one (``"val_dataloader"``), or a zero-argument callable.
        layers: module names in the LightningModule's ``named_modules()`` (``"net.fc1"``).
        metrics: names in :data:`tguide.metrics.registry.METRICS` (the one registry:
            ``otce_sim``, ``hscore``, ``hscore_shrinkage``, ``transrate``, ``transrate_comparable``,
            ``logme``, ``leep``, ``nce``, ...). LEEP and NCE read the module's output as the source
            head's logits and are logged once per run as ``transfer/<metric>/@output``.
        source: source samples, as ``probe``; needed by ``otce_sim``.
        every_n_epochs: run after epochs ``n-1, 2n-1, ...`` (0-based).
        max_samples: probe subset size, fixed for the whole fit: a seeded, class-stratified
            random subset when the dataset exposes its labels (``targets``/``labels``, a
            ``TensorDataset``), else a uniform one (with a warning); ``None`` = all.
        source_max_samples: source subset size (only OTCE reads it), likewise.
        on: ``"train_epoch_end"`` (after that epoch's validation, always runs) or
            ``"validation_epoch_end"`` (skipped during the sanity check).
        pool: per-layer pooling (:func:`tguide.features.reduce_output`): ``"avg"`` (global average
            pooling of conv maps), ``"cls"`` / ``"mean"`` (tokens), ``"channels_last"``,
            ``"flatten"``, a callable, or a dict ``{layer: pool}``.
        metric_kwargs: extra arguments per metric, e.g. ``{"otce_sim": {"solver": "sinkhorn"}}``,
            over :data:`DEFAULT_METRIC_KWARGS` (OTCE on at most 1000 samples per side).
        track: logged metrics to pair the scores with in the end-of-fit table and scatter
            plots; the first one present is used for the scatter.
        pixels_per_image, ignore_index: per-pixel features for segmentation masks.
        pixel_sampling: extra keyword arguments of
            :func:`tguide.features.pixels.extract_pixel_features` (how pixels are drawn).
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
        pool: PoolSpec = "avg",
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
        needing = [m for m in self.metrics if resolve_metric(m).needs_source_samples]
        if needing and source is None:
            raise ValueError(
                f"`source`: {needing} compare source and target features; pass source= "
                "(e.g. source='train_dataloader') or drop them from `metrics`."
            )
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
        if pool == "none":
            raise ValueError("`pool` must reduce each layer to (B, D); 'none' is not allowed here.")
        check_pool(pool, self.layers)
        if on_error not in ("raise", "warn"):
            raise ValueError(f"`on_error` must be 'raise' or 'warn', got {on_error!r}.")
        self.probe, self.source = probe, source if needing else None
        self.every_n_epochs, self.on, self.pool = every_n_epochs, on, pool
        self.max_samples, self.source_max_samples = max_samples, source_max_samples
        self.metric_kwargs = {k: dict(v) for k, v in (metric_kwargs or {}).items()}
        for name in self.metric_kwargs:
            resolve_metric(name)
        check_metric_kwargs(self.metric_kwargs)  # a misspelt keyword fails here, not epochs later
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
            for owner in (getattr(trainer, "datamodule", None), pl_module):
                method = getattr(owner, spec, None) if owner is not None else None
                if callable(method):
                    return method()
            raise ValueError(
                f"`{what}`={spec!r}: neither the datamodule nor the LightningModule has a method "
                f"{spec!r}; pass a DataLoader or a method name such as 'val_dataloader'."
            )
        if callable(spec):
            return spec()
        raise ValueError(f"`{what}` must be a DataLoader, a method name or a callable, got {type(spec).__name__}.")

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        if stage != "fit":
            return
        try:  # fail before training on a wrong name; a user error (one line from tguide.fit)
            resolve_layers(pl_module, self.layers)
            probe = self._loader(self.probe, trainer, pl_module, "probe")
            source = self._loader(self.source, trainer, pl_module, "source") if self.source is not None else None
        except ValueError as err:
            if isinstance(err, ConfigError):
                raise
            raise ConfigError(f"TransferabilityMonitor: {err}") from err
        self._loaders = (probe, source)

    # -- the measurement -----------------------------------------------------------------
    def _due(self, trainer: L.Trainer) -> bool:
        return (
            not trainer.sanity_checking
            and trainer.state.fn == "fit"
            and (trainer.current_epoch + 1) % self.every_n_epochs == 0
        )

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
                pl_module,
                probe,
                self.layers,
                self.metrics,
                source,
                pool=self.pool,
                max_samples=self.max_samples,
                source_max_samples=self.source_max_samples,
                seed=self.seed,
                metric_kwargs=self.metric_kwargs,
                pixels_per_image=self.pixels_per_image,
                ignore_index=self.ignore_index,
                pixel_sampling=self.pixel_sampling,
                null=self.null,
                device=pl_module.device,
                unpack=self.unpack,
                on_error=self.on_error,
            )
        seconds = time.perf_counter() - start
        # every rank holds the same scores; sync_dist only keeps Lightning's DDP bookkeeping quiet
        for key, value in scores.items():
            pl_module.log(key, value, on_step=False, on_epoch=True, sync_dist=True)
        pl_module.log("transfer/seconds", seconds, on_step=False, on_epoch=True, sync_dist=True, reduce_fx="max")
        self.history.append(
            {"epoch": trainer.current_epoch, "step": trainer.global_step, "seconds": seconds, "scores": dict(scores)}
        )
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
                for layer in self._layers_of(metric):
                    score = run["scores"].get(f"transfer/{metric}/{layer}", float("nan"))
                    rows.append([run["epoch"], run["step"], layer, metric, score, *extra])
        return columns, rows

    def _layers_of(self, metric: str) -> list[str]:
        """The layers a metric is logged for: the output alone for scores of the source head."""
        base = metric[:-2] if metric.endswith("_z") and metric not in METRICS else metric
        return [OUTPUT] if base in METRICS and resolve_metric(base).needs_source_probs else self.layers

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
                self._log_wandb(logger.experiment, columns, rows)  # type: ignore[attr-defined]  # a WandbLogger's run; Lightning's Logger base does not declare it
            log_dir = getattr(logger, "log_dir", None)
            if isinstance(log_dir, str) and os.path.isdir(log_dir):
                with open(os.path.join(log_dir, "transferability.csv"), "w", newline="") as fh:
                    writer = csv.writer(fh)
                    writer.writerow(columns)
                    writer.writerows(rows)

    def _log_wandb(self, run: Any, columns: list[str], rows: list[list[Any]]) -> None:
        import wandb

        payload: dict[str, Any] = {"transfer/table": wandb.Table(columns=columns, data=rows)}  # type: ignore[arg-type]  # wandb types columns as an invariant list[str | int]
        tracked = columns[5:]
        if tracked:
            x = tracked[0]
            for metric in self._reported():
                for layer in self._layers_of(metric):
                    pairs = [[r[5], r[4]] for r in rows if r[2] == layer and r[3] == metric and r[5] == r[5]]
                    if pairs:
                        y = f"{metric}/{layer}"
                        data = wandb.Table(columns=[x, y], data=pairs)
                        payload[f"transfer/scatter/{metric}/{layer}"] = wandb.plot.scatter(
                            data, x, y, title=f"{metric} on {layer} vs {x}"
                        )
        run.log(payload)

    # -- checkpointing -------------------------------------------------------------------
    @property
    def state_key(self) -> str:  # several monitors may sit side by side, each with its own state
        return self._generate_state_key(
            layers=self.layers, metrics=self.metrics, on=self.on, every_n_epochs=self.every_n_epochs, seed=self.seed
        )

    def state_dict(self) -> dict[str, Any]:
        return {"history": self.history, "tracked": self.tracked}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.history = list(state_dict.get("history", []))
        self.tracked = dict(state_dict.get("tracked", {}))

"""Cost of the TransferabilityMonitor next to a training epoch.

Two settings, printed as tables:

1. The default recipe (LeNet-5 on MNIST, offline split 8k/1k/1k), with the monitor exactly as
   ``recipes/callbacks/transferability.yaml`` configures it, against the same fit without it
   (same seed; checkpointing and logging off in both so that only the monitor differs).
   Epoch time = wall time from one ``on_train_epoch_start`` to the next (training, validation
   and the monitor). Also the monitor at other ``max_samples`` to show how it scales.
2. A ResNet-18 feature layer (torchvision ``resnet18``, 3×32×32 inputs, ``layer4`` average-pooled
   to 512-d, metrics otce_sim, hscore, transrate) at the monitor's defaults with 1k and 5k probe
   samples (source capped at 1k, OTCE on ≤ 1k per side), and with 5k everywhere uncapped.
   The data are synthetic (class-dependent Gaussian images, 10 classes): the timing does not
   depend on the pixel values. The epoch it is compared with is a CIFAR-10-sized epoch (50k
   images) whose time is measured training throughput × 50k (a full epoch on 2 CPU cores would
   take many minutes); ``--resnet-epoch N`` changes the size. The monitor's cost there is that of
   :func:`tguide.callbacks.transferability_scores`, the whole of what it does apart from logging.

Usage: ``python bench/callback_overhead.py [--part lenet|resnet|all] [--epochs 4] [--threads 1]``.
Set ``TGUIDE_DATA`` to the shared data folder. Numbers depend on the machine and its load.
"""

from __future__ import annotations

import argparse
import inspect
import statistics
import time
import warnings
from typing import Any

import lightning as L
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tguide.callbacks import TransferabilityMonitor, transferability_scores

warnings.filterwarnings("ignore")
DEFAULT_SOURCE = inspect.signature(transferability_scores).parameters["source_max_samples"].default


class EpochTimer(L.Callback):
    """Wall and CPU seconds of every training epoch, validation and epoch-end callbacks included."""

    def __init__(self) -> None:
        self.seconds: list[float] = []
        self.cpu: list[float] = []
        self._start: tuple[float, float] | None = None

    def _lap(self) -> None:
        now = (time.perf_counter(), time.process_time())
        if self._start is not None:
            self.seconds.append(now[0] - self._start[0])
            self.cpu.append(now[1] - self._start[1])
        self._start = now

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._lap()

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._lap()


def _median(xs: list[float]) -> float:
    return statistics.median(xs) if xs else float("nan")


class TimedMonitor(TransferabilityMonitor):
    """The monitor, also recording the CPU seconds (all threads) of each measurement: on a shared
    machine wall time swings with other load, CPU time much less."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.cpu: list[float] = []

    def measure(self, trainer: L.Trainer, pl_module: L.LightningModule) -> dict[str, float]:
        start = time.process_time()
        scores = super().measure(trainer, pl_module)
        self.cpu.append(time.process_time() - start)
        return scores


def lenet_rows(epochs: int, sizes: list[int | None]) -> list[dict[str, Any]]:
    from hydra.utils import instantiate

    from tguide.fit import compose

    cfg = compose(["callbacks=transferability", "logger=none", f"trainer.max_epochs={epochs}"])
    monitor_cfg = cfg.callbacks.transferability

    def run(max_samples: int | None, with_monitor: bool) -> tuple[EpochTimer, TimedMonitor | None]:
        L.seed_everything(0, verbose=False)
        datamodule = instantiate(cfg.data)
        model = instantiate(cfg.model)
        timer = EpochTimer()
        monitor = None
        if with_monitor:
            kwargs = {k: v for k, v in monitor_cfg.items() if k not in ("_target_", "_convert_")}
            monitor = TimedMonitor(**{**kwargs, "max_samples": max_samples, "source_max_samples": max_samples})
        trainer = L.Trainer(max_epochs=epochs, accelerator="cpu", devices=1, logger=False,
                            enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False,
                            num_sanity_val_steps=0, callbacks=[*([monitor] if monitor else []), timer])
        trainer.fit(model, datamodule=datamodule)
        return timer, monitor

    def skip_first(xs: list[float]) -> list[float]:  # the first epoch warms up
        return xs[1:] or xs

    base, _ = run(None, False)
    base_wall, base_cpu = _median(skip_first(base.seconds)), _median(skip_first(base.cpu))
    rows = [dict(setting="LeNet-5/MNIST, no monitor", probe="-", epoch_s=base_wall, monitor_s=0.0, overhead=0.0,
                 epoch_cpu=base_cpu, monitor_cpu=0.0, overhead_cpu=0.0)]
    for size in sizes:
        timer, monitor = run(size, True)
        assert monitor is not None
        spent = _median(skip_first([h["seconds"] for h in monitor.history]))
        spent_cpu = _median(skip_first(monitor.cpu))
        label = "recipe default" if size == monitor_cfg.max_samples else "max_samples"
        rows.append(dict(setting=f"LeNet-5/MNIST, monitor ({label})", probe=f"{size}+{size}",
                         epoch_s=_median(skip_first(timer.seconds)), monitor_s=spent,
                         overhead=100 * spent / base_wall, epoch_cpu=_median(skip_first(timer.cpu)),
                         monitor_cpu=spent_cpu, overhead_cpu=100 * spent_cpu / base_cpu))
    return rows


def resnet_rows(probe_sizes: list[int], epoch_images: int, steps: int, batch: int) -> list[dict[str, Any]]:
    from torchvision.models import resnet18

    class Wrap(L.LightningModule):
        def __init__(self) -> None:
            super().__init__()
            self.net = resnet18(num_classes=10)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.net(x)

    def synthetic(n: int, seed: int) -> TensorDataset:
        g = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 10, (n,), generator=g)
        pattern = torch.randn(10, 3, 32, 32, generator=g)
        return TensorDataset(torch.randn(n, 3, 32, 32, generator=g) + 0.5 * pattern[y], y)

    torch.manual_seed(0)
    model = Wrap()
    # training throughput: forward + backward + SGD step, after a warm-up step
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    data = synthetic(batch * (steps + 1), 0)
    model.train()
    for i in range(steps + 1):
        if i == 1:
            start, start_cpu = time.perf_counter(), time.process_time()
        x, y = data.tensors[0][i * batch:(i + 1) * batch], data.tensors[1][i * batch:(i + 1) * batch]
        loss = nn.functional.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()
    per_image = (time.perf_counter() - start) / (steps * batch)
    per_image_cpu = (time.process_time() - start_cpu) / (steps * batch)
    epoch_s, epoch_cpu = per_image * epoch_images, per_image_cpu * epoch_images
    rows = [dict(setting=f"ResNet-18 training, {epoch_images // 1000}k-image epoch (measured {1 / per_image:.0f} img/s)",
                 probe="-", epoch_s=epoch_s, monitor_s=0.0, overhead=0.0, epoch_cpu=epoch_cpu, monitor_cpu=0.0,
                 overhead_cpu=0.0)]
    probe = DataLoader(synthetic(max(probe_sizes), 1), batch_size=256)
    source = DataLoader(synthetic(max(probe_sizes), 2), batch_size=256)
    configs = [(f"defaults, max_samples={n}", n, {}) for n in probe_sizes]
    n = max(probe_sizes)  # what the defaults avoid: every sample on both sides, exact OT on all of them
    configs.append((f"max_samples={n}, source and OTCE uncapped", n,
                    dict(source_max_samples=None, metric_kwargs={"otce_sim": {"max_samples": None}})))
    for label, size, kwargs in configs:  # the monitor's whole computation, without a Trainer around it
        start, start_cpu = time.perf_counter(), time.process_time()
        transferability_scores(model, probe, ["net.layer4"], source=source, max_samples=size, **kwargs)
        spent, spent_cpu = time.perf_counter() - start, time.process_time() - start_cpu
        n_source = kwargs.get("source_max_samples", DEFAULT_SOURCE) or size
        rows.append(dict(setting=f"ResNet-18 layer4, {label}", probe=f"{size}+{min(n_source, size)}",
                         epoch_s=epoch_s + spent, monitor_s=spent, overhead=100 * spent / epoch_s,
                         epoch_cpu=epoch_cpu + spent_cpu, monitor_cpu=spent_cpu,
                         overhead_cpu=100 * spent_cpu / epoch_cpu))
    return rows


def print_table(rows: list[dict[str, Any]]) -> None:
    print("overhead = monitor time / epoch time without the monitor (wall; and CPU seconds of all threads)")
    print(f"| {'setting':<64} | {'probe+source':>12} | {'epoch s':>8} | {'monitor s':>9} | {'overhead':>8} "
          f"| {'epoch cpu-s':>11} | {'monitor cpu-s':>13} | {'overhead cpu':>12} |")
    print(f"|{'-' * 66}|{'-' * 13}:|{'-' * 9}:|{'-' * 10}:|{'-' * 9}:|{'-' * 12}:|{'-' * 14}:|{'-' * 13}:|")
    for r in rows:
        print(f"| {r['setting']:<64} | {r['probe']:>12} | {r['epoch_s']:8.2f} | {r['monitor_s']:9.3f} | "
              f"{r['overhead']:7.1f}% | {r['epoch_cpu']:11.2f} | {r['monitor_cpu']:13.3f} | {r['overhead_cpu']:11.1f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--part", choices=["lenet", "resnet", "all"], default="all")
    parser.add_argument("--epochs", type=int, default=4, help="LeNet epochs per run (the first is dropped)")
    parser.add_argument("--sizes", type=int, nargs="*", default=[200, 500, 1000],
                        help="LeNet probe (and source) sizes; the recipe's value is marked")
    parser.add_argument("--resnet-probe", type=int, nargs="*", default=[1000, 5000])
    parser.add_argument("--resnet-epoch", type=int, default=50_000, help="images in the ResNet-18 epoch")
    parser.add_argument("--resnet-steps", type=int, default=5)
    parser.add_argument("--resnet-batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch intra-op threads (1 keeps timings stable on a shared machine; 0 = torch's default)")
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")
    rows: list[dict[str, Any]] = []
    if args.part in ("lenet", "all"):
        rows += lenet_rows(args.epochs, args.sizes)
    if args.part in ("resnet", "all"):
        rows += resnet_rows(args.resnet_probe, args.resnet_epoch, args.resnet_steps, args.resnet_batch)
    print_table(rows)


if __name__ == "__main__":
    main()

"""TransferabilityMonitor: logged keys, values, modes, RNG neutrality, W&B table, DDP == 1 process."""

from __future__ import annotations

import csv
import importlib.util
import json
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
from lightning.pytorch.loggers import CSVLogger
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tguide.callbacks import TransferabilityMonitor, resolve_metric, transferability_scores
from tguide.metrics._subset import stratified_subset
from tguide.metrics.registry import METRICS

REPO = Path(__file__).resolve().parents[2]
QUIET = dict(accelerator="cpu", enable_progress_bar=False, enable_model_summary=False, enable_checkpointing=False)


class TinyNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.pool = nn.MaxPool2d(2)
        self.fc = nn.Linear(4 * 4 * 4, 8)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.pool(torch.relu(self.conv(x))).flatten(1)
        return self.head(self.drop(torch.relu(self.fc(h))))


class TinyModule(L.LightningModule):
    def __init__(self, lr: float = 0.05) -> None:
        super().__init__()
        self.net = TinyNet()
        self.lr = lr

    def forward(self, x):
        return self.net(x)

    def training_step(self, batch, _):
        x, y = batch
        loss = nn.functional.cross_entropy(self(x), y - 10)  # labels are {10, 11, 12}
        self.log("train/loss", loss)
        return loss

    def validation_step(self, batch, _):
        x, y = batch
        self.log("val/acc", (self(x).argmax(1) == y - 10).float().mean())

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=self.lr)


def make_data(n: int, seed: int) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 3, (n,), generator=g)
    x = torch.randn(n, 1, 8, 8, generator=g) + y.view(-1, 1, 1, 1).float() * torch.linspace(-1, 1, 64).view(1, 1, 8, 8)
    return TensorDataset(x, y + 10)  # labels {10, 11, 12}


def loaders(batch: int = 16) -> tuple[DataLoader, DataLoader]:
    return (DataLoader(make_data(96, 0), batch_size=batch, shuffle=True),
            DataLoader(make_data(60, 1), batch_size=batch))


def numpy_hscore(f: np.ndarray, y: np.ndarray) -> float:
    """tr(cov(f)^+ cov(E[f|y])), population covariances (Bao et al. 2019)."""
    f = f.astype(np.float64) - f.mean(axis=0)
    cov = f.T @ f / len(f)
    between = np.zeros_like(cov)
    for c in np.unique(y):
        g = f[y == c].mean(axis=0)
        between += (y == c).mean() * np.outer(g, g)
    return float(np.trace(np.linalg.pinv(cov, rcond=1e-10) @ between))


def read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


# -- construction errors ----------------------------------------------------------------------

def test_registry_and_argument_errors():
    assert set(METRICS) >= {"otce_sim", "hscore", "hscore_shrinkage", "transrate", "transrate_comparable", "logme", "leep", "nce"}
    with pytest.raises(ValueError, match=r"unknown metric 'leap'; valid names: otce_sim, hscore, hscore_shrinkage"):
        resolve_metric("leap")
    _, val = loaders()
    with pytest.raises(ValueError, match=r"unknown metric 'hsc'"):
        TransferabilityMonitor(val, ["net.fc"], metrics=["hsc"])
    with pytest.raises(ValueError, match=r"`source`: \['otce_sim'\].*pass source="):
        TransferabilityMonitor(val, ["net.fc"])  # the default metrics include OTCE
    with pytest.raises(ValueError, match=r"`every_n_epochs` must be an integer ≥ 1"):
        TransferabilityMonitor(val, ["net.fc"], metrics=["hscore"], every_n_epochs=0)
    with pytest.raises(ValueError, match=r"`on` must be one of \['train_epoch_end', 'validation_epoch_end'\]"):
        TransferabilityMonitor(val, ["net.fc"], metrics=["hscore"], on="epoch_end")
    with pytest.raises(ValueError, match=r"`layers` is empty"):
        TransferabilityMonitor(val, [], metrics=["hscore"])
    with pytest.raises(ValueError, match=r"unknown metric 'otce'"):
        TransferabilityMonitor(val, ["net.fc"], metrics=["hscore"], metric_kwargs={"otce": {}})


def test_wrong_layer_or_probe_fails_before_training(tmp_path):
    train, val = loaders()
    for kwargs, pattern in [
        (dict(probe=val, layers=["net.fc2"]), r"no module named 'net.fc2'.*Did you mean"),
        (dict(probe="test_dataloader_x", layers=["net.fc"]), r"`probe`='test_dataloader_x': neither the datamodule"),
    ]:
        model = TinyModule()
        steps = []
        model.on_train_batch_start = lambda *a: steps.append(1)
        trainer = L.Trainer(max_epochs=1, logger=False, default_root_dir=tmp_path, **QUIET,
                            callbacks=[TransferabilityMonitor(metrics=["hscore"], **kwargs)])
        with pytest.raises(ValueError, match=pattern):
            trainer.fit(model, train, val)
        assert not steps


# -- a CPU fit with the CSV logger ------------------------------------------------------------

def test_logs_every_layer_and_metric_and_matches_numpy(tmp_path):
    L.seed_everything(0)
    train, val = loaders()
    monitor = TransferabilityMonitor(val, ["net.conv", "net.fc"], metrics=["hscore", "transrate"], max_samples=None)
    model = TinyModule()
    trainer = L.Trainer(max_epochs=2, logger=CSVLogger(tmp_path, name="csv", version=""), log_every_n_steps=1,
                        default_root_dir=tmp_path, callbacks=[monitor], **QUIET)
    trainer.fit(model, train, val)

    keys = [f"transfer/{m}/{layer}" for m in ("hscore", "transrate") for layer in ("net.conv", "net.fc")]
    rows = read_csv(tmp_path / "csv" / "metrics.csv")
    for key in [*keys, "transfer/seconds"]:
        logged = [(int(r["epoch"]), float(r[key])) for r in rows if r.get(key)]
        assert [e for e, _ in logged] == [0, 1], (key, logged)  # once per epoch
        if key != "transfer/seconds":
            assert [v for _, v in logged] == pytest.approx([h["scores"][key] for h in monitor.history], rel=1e-6)
    assert all(0 < h["seconds"] < 30 for h in monitor.history)

    # last epoch: the monitor ran after the last optimizer step, so the final weights give its features
    x, y = val.dataset.tensors
    with torch.no_grad():
        net = model.net.eval()
        conv = net.conv(x).mean(dim=(2, 3)).numpy()
        fc = net.fc(net.pool(torch.relu(net.conv(x))).flatten(1)).numpy()
    last = monitor.history[-1]["scores"]
    assert last["transfer/hscore/net.conv"] == pytest.approx(numpy_hscore(conv, y.numpy()), rel=1e-5)
    assert last["transfer/hscore/net.fc"] == pytest.approx(numpy_hscore(fc, y.numpy()), rel=1e-5)

    table = read_csv(tmp_path / "csv" / "transferability.csv")
    assert len(table) == 2 * 2 * 2 and set(table[0]) == {"epoch", "step", "layer", "metric", "score", "val/acc"}
    val_acc = {int(r["epoch"]): float(r["val/acc"]) for r in rows if r.get("val/acc")}
    assert all(float(r["val/acc"]) == pytest.approx(val_acc[int(r["epoch"])]) for r in table)


def test_modes_restored_and_training_rng_untouched(tmp_path):
    """The monitor runs the model in eval mode, leaves every submodule's mode as it was, and
    draws no global random numbers: training with and without it gives the same weights."""

    class ModeProbe(L.Callback):
        def __init__(self) -> None:
            self.after: list[tuple[bool, bool]] = []

        def on_train_epoch_end(self, trainer, pl_module):
            self.after.append((pl_module.training, pl_module.net.drop.training))

    def fit(with_monitor: bool):
        L.seed_everything(3)
        train, val = loaders()
        model = TinyModule()
        seen: list[bool] = []
        model.net.fc.register_forward_pre_hook(lambda m, a: seen.append(m.training))
        callbacks: list[L.Callback] = []
        if with_monitor:
            callbacks.append(TransferabilityMonitor(val, ["net.fc"], metrics=["hscore"], max_samples=40))
        probe = ModeProbe()
        trainer = L.Trainer(max_epochs=2, logger=False, default_root_dir=tmp_path, callbacks=[*callbacks, probe],
                            num_sanity_val_steps=0, **QUIET)
        trainer.fit(model, train, val)
        return model, probe.after, seen

    plain, _, _ = fit(False)
    monitored, after, seen = fit(True)
    assert after == [(True, True), (True, True)]
    assert seen.count(False) >= 2 * (40 // 16 + 1)  # its forward passes ran in eval mode
    for (name, a), (_, b) in zip(plain.state_dict().items(), monitored.state_dict().items()):
        assert torch.equal(a, b), name


def test_every_n_epochs_and_validation_hook(tmp_path):
    train, val = loaders()
    every2 = TransferabilityMonitor(val, ["net.fc"], metrics=["hscore"], every_n_epochs=2, max_samples=30)
    on_val = TransferabilityMonitor(val, ["net.conv"], metrics=["transrate"], on="validation_epoch_end",
                                    max_samples=30, seed=5)
    trainer = L.Trainer(max_epochs=4, logger=False, default_root_dir=tmp_path, callbacks=[every2, on_val],
                        num_sanity_val_steps=1, **QUIET)
    trainer.fit(TinyModule(), train, val)
    assert [h["epoch"] for h in every2.history] == [1, 3]
    assert [h["epoch"] for h in on_val.history] == [0, 1, 2, 3]  # not during the sanity check
    assert "transfer/transrate/net.conv" in trainer.callback_metrics


def test_functional_equals_callback_and_subset_is_fixed():
    torch.manual_seed(0)
    model = TinyModule()
    _, val = loaders()
    model.train()
    model.net.conv.eval()
    a = transferability_scores(model, val, ["net.conv", "net.fc"], ["hscore"], max_samples=33, seed=1)
    b = transferability_scores(model, val, ["net.conv", "net.fc"], ["hscore"], max_samples=33, seed=1)
    c = transferability_scores(model, val, ["net.conv", "net.fc"], ["hscore"], max_samples=33, seed=2)
    assert a == b and a != c
    assert model.training and model.net.fc.training and not model.net.conv.training
    # the subset rule: the seeded, class-stratified subset of max_samples (the one helper)
    x, y = val.dataset.tensors
    idx = stratified_subset(y, 33, seed=1)
    counts, share = torch.bincount(y[idx] - 10, minlength=3), torch.bincount(y - 10, minlength=3) * 33 / 60
    assert int(counts.sum()) == 33 and bool(((counts - share).abs() < 1).all())  # each class its share
    with torch.no_grad():
        fc = model.net.fc(model.net.pool(torch.relu(model.net.conv(x[idx]))).flatten(1)).numpy()
    assert a["transfer/hscore/net.fc"] == pytest.approx(numpy_hscore(fc, y[idx].numpy()), rel=1e-5)


def test_metric_failure_raises_or_warns():
    model = TinyModule()
    x = torch.randn(20, 1, 8, 8)
    one_class = DataLoader(TensorDataset(x, torch.zeros(20, dtype=torch.int64)), batch_size=8)
    with pytest.raises(ValueError, match=r"hscore on layer 'net.fc' failed: .*1 distinct class"):
        transferability_scores(model, one_class, ["net.fc"], ["hscore"])
    with pytest.warns(RuntimeWarning, match=r"hscore on layer 'net.fc' failed"):
        out = transferability_scores(model, one_class, ["net.fc"], ["hscore"], on_error="warn")
    assert np.isnan(out["transfer/hscore/net.fc"])


# -- W&B offline ------------------------------------------------------------------------------

def test_wandb_offline_run_has_curves_table_and_scatter(tmp_path, wandb_history):
    import wandb
    from lightning.pytorch.loggers import WandbLogger

    train, val = loaders()
    monitor = TransferabilityMonitor(val, ["net.conv", "net.fc"], metrics=["hscore", "transrate"], max_samples=40)
    logger = WandbLogger(save_dir=str(tmp_path), project="tguide-test", offline=True)
    trainer = L.Trainer(max_epochs=3, logger=logger, log_every_n_steps=1, default_root_dir=tmp_path,
                        callbacks=[monitor], **QUIET)
    trainer.fit(TinyModule(), train, val)
    wandb.finish()

    run_dir = next((tmp_path / "wandb").glob("offline-run-*"))
    # W&B's service may still be writing the run file when finish() returns (seen: an empty curve in
    # about 1 run of 4, complete when read a moment later): read until the rows are there, 30 s at most
    deadline = time.monotonic() + 30
    while True:
        history = wandb_history(next(run_dir.glob("run-*.wandb")))
        curve = [r["transfer/hscore/net.fc"] for r in history if "transfer/hscore/net.fc" in r]
        if len(curve) >= len(monitor.history) or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert curve == pytest.approx([h["scores"]["transfer/hscore/net.fc"] for h in monitor.history])
    tables = list((run_dir / "files" / "media" / "table" / "transfer").glob("table_*.table.json"))
    assert len(tables) == 1
    table = json.loads(tables[0].read_text())
    assert table["columns"] == ["epoch", "step", "layer", "metric", "score", "val/acc"]
    assert len(table["data"]) == 3 * 2 * 2
    assert {(r[0], r[2], r[3]) for r in table["data"]} == {
        (e, layer, m) for e in range(3) for layer in ("net.conv", "net.fc") for m in ("hscore", "transrate")}
    scatters = sorted(p.relative_to(run_dir / "files" / "media" / "table" / "transfer" / "scatter").parts[:2]
                      for p in (run_dir / "files" / "media" / "table" / "transfer" / "scatter").rglob("*.table.json"))
    assert len(scatters) == 4
    scatter = json.loads(next((run_dir / "files/media/table/transfer/scatter/hscore").glob("net.fc*")).read_text())
    assert scatter["columns"] == ["val/acc", "hscore/net.fc"] and len(scatter["data"]) == 3


# -- DDP: 2 CPU processes (gloo) against 1 process -------------------------------------------

DDP_SCRIPT = textwrap.dedent('''
    import json, os, sys
    import lightning as L, torch
    from lightning.pytorch.loggers import CSVLogger
    sys.path.insert(0, os.environ["TEST_DIR"])
    from test_transferability import TinyModule, make_data, METRICS_UNDER_TEST
    from tguide.callbacks import TransferabilityMonitor
    from tguide.probe_subset import probe_share
    from torch.utils.data import DataLoader

    out = os.environ["OUT_DIR"]
    L.seed_everything(0)
    model = TinyModule(lr=0.0)  # weights stay at their seeded values: 1 process can recompute them
    train = DataLoader(make_data(64, 0), batch_size=16, shuffle=True)
    probe = DataLoader(make_data(150, 1), batch_size=16)
    source = DataLoader(make_data(120, 2), batch_size=16)
    monitor = TransferabilityMonitor(probe, ["net.conv", "net.fc"], metrics=METRICS_UNDER_TEST, source=source,
                                     max_samples=101)
    trainer = L.Trainer(max_epochs=2, accelerator="cpu", devices=2, strategy="ddp", callbacks=[monitor],
                        logger=CSVLogger(out, name="csv", version=""), enable_progress_bar=False,
                        enable_model_summary=False, enable_checkpointing=False, num_sanity_val_steps=0)
    trainer.fit(model, train)
    rank = trainer.global_rank
    share = len(probe_share(probe, 101, 0, rank, 2, "probe")[1])
    with open(os.path.join(out, f"rank{rank}.json"), "w") as fh:
        json.dump({"share": share, "history": [h["scores"] for h in monitor.history]}, fh)
''')

METRICS_UNDER_TEST = ["hscore", "transrate", "logme", "gbc", "nce", "leep", "otce_sim"]


@pytest.mark.slow
def test_ddp_two_processes_equal_one_process(tmp_path):
    script = tmp_path / "ddp_monitor.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "TEST_DIR": str(Path(__file__).parent), "OUT_DIR": str(tmp_path), "PYTHONWARNINGS": "ignore"}
    proc = subprocess.run([sys.executable, str(script)], cwd=tmp_path, env=env, capture_output=True, text=True,
                          timeout=240)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert sorted(r["share"] for r in ranks) == [50, 51]  # unequal shards did not hang
    assert ranks[0]["history"] == ranks[1]["history"]  # identical on all ranks
    assert len(ranks[0]["history"]) == 2

    L.seed_everything(0)
    model = TinyModule(lr=0.0)
    probe = DataLoader(make_data(150, 1), batch_size=16)
    source = DataLoader(make_data(120, 2), batch_size=16)
    one = transferability_scores(model, probe, ["net.conv", "net.fc"], METRICS_UNDER_TEST, source, max_samples=101)
    assert set(one) == set(ranks[0]["history"][0])
    for key, value in one.items():
        assert ranks[0]["history"][0][key] == pytest.approx(value, rel=1e-9, abs=1e-12), key

    rows = read_csv(tmp_path / "csv" / "metrics.csv")
    logged = [r for r in rows if r.get("transfer/hscore/net.fc")]
    assert [int(r["epoch"]) for r in logged] == [0, 1]  # logged once per epoch, not once per rank


# -- OTCE through the monitor -----------------------------------------------------------------

def numpy_otce_sim(fs: np.ndarray, ys: np.ndarray, ft: np.ndarray, yt: np.ndarray) -> float:
    """-H(Y_t | Y_s) of the exact OT coupling; with equal sizes and uniform marginals that
    coupling is a permutation / n, found here by the Hungarian algorithm (Tan et al. 2021)."""
    from scipy.optimize import linear_sum_assignment

    cost = ((fs[:, None, :].astype(np.float64) - ft[None, :, :]) ** 2).sum(-1)
    rows, cols = linear_sum_assignment(cost)
    joint = {}
    for i, j in zip(rows, cols):
        joint[(ys[i], yt[j])] = joint.get((ys[i], yt[j]), 0) + 1 / len(rows)
    p_s = {a: sum(v for (s, _), v in joint.items() if s == a) for a in set(ys)}
    return float(sum(v * np.log(v / p_s[s]) for (s, _), v in joint.items()))


def test_otce_sim_matches_assignment_reference():
    torch.manual_seed(0)
    model = TinyModule()
    probe = DataLoader(make_data(40, 1), batch_size=16)
    source_set = make_data(40, 2)
    source = DataLoader(TensorDataset(source_set.tensors[0], source_set.tensors[1] % 2), batch_size=16)
    out = transferability_scores(model, probe, ["net.fc"], ["otce_sim", "hscore"], source, max_samples=None)
    with torch.no_grad():
        feats = [model.net.fc(model.net.pool(torch.relu(model.net.conv(d.tensors[0]))).flatten(1)).numpy()
                 for d in (source.dataset, probe.dataset)]
    expected = numpy_otce_sim(feats[0], source.dataset.tensors[1].numpy(), feats[1], probe.dataset.tensors[1].numpy())
    assert out["transfer/otce_sim/net.fc"] == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert out["transfer/otce_sim/net.fc"] < 0


# -- the spine: Classifier + MNIST, and the recipe ---------------------------------------------

def test_classifier_on_mnist_with_datamodule_hooks(tmp_path, data_root):
    import functools

    from tguide.data.mnist import MNISTDataModule
    from tguide.models.classifier import Classifier
    from tguide.nets.lenet import LeNet5

    L.seed_everything(0)
    model = Classifier(LeNet5(), 10, optimizer=functools.partial(torch.optim.Adam, lr=2e-3))
    monitor = TransferabilityMonitor("val_dataloader", ["net.conv2", "net.fc1", "net.fc2"],
                                     source="train_dataloader", max_samples=200)
    trainer = L.Trainer(max_epochs=2, limit_train_batches=6, limit_val_batches=2, logger=False,
                        default_root_dir=tmp_path, callbacks=[monitor], num_sanity_val_steps=0, **QUIET)
    trainer.fit(model, datamodule=MNISTDataModule(root=str(data_root), batch_size=64))
    expected = {f"transfer/{m}/{layer}" for m in ("otce_sim", "hscore", "transrate")
                for layer in ("net.conv2", "net.fc1", "net.fc2")} | {"transfer/seconds"}
    assert expected <= set(trainer.callback_metrics)
    assert len(monitor.history) == 2 and all(np.isfinite(list(h["scores"].values())).all() for h in monitor.history)
    assert monitor.history[0]["scores"] != monitor.history[1]["scores"]  # training moved the features
    assert set(monitor.tracked) == {0, 1} and "val/acc" in monitor.tracked[1]


def test_recipe_group_builds_the_monitor_for_the_lenet_layers():
    from hydra.utils import instantiate

    from tguide.features import resolve_layers
    from tguide.fit import compose

    cfg = compose(["callbacks=transferability"])
    assert {"model_checkpoint", "transferability"} <= set(cfg.callbacks)  # the default callbacks stay
    monitor = instantiate(cfg.callbacks.transferability)
    assert isinstance(monitor, TransferabilityMonitor) and monitor.on == "train_epoch_end"
    assert (monitor.probe, monitor.source) == ("val_dataloader", "train_dataloader")
    assert set(resolve_layers(instantiate(cfg.model), monitor.layers)) == set(monitor.layers)
    assert instantiate(compose(["callbacks=transferability", "callbacks.transferability.on=validation_epoch_end",
                                "callbacks.transferability.max_samples=300"]).callbacks.transferability).on \
        == "validation_epoch_end"


@pytest.mark.slow
def test_fit_cli_with_wandb_has_transfer_curves_and_table(tmp_path, wandb_history):
    env = {**os.environ, "WANDB_MODE": "offline", "PYTHONWARNINGS": "ignore"}
    args = ["callbacks=transferability", "logger=wandb", "trainer.max_epochs=2", "trainer.limit_train_batches=8",
            "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "trainer.enable_progress_bar=false",
            "callbacks.transferability.max_samples=200", f"hydra.run.dir={tmp_path / 'run'}"]
    proc = subprocess.run([sys.executable, "-m", "tguide.fit", *args], cwd=tmp_path, env=env, capture_output=True,
                          text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-4000:]
    run_dir = next((tmp_path / "run" / "wandb").glob("offline-run-*"))
    history = wandb_history(next(run_dir.glob("run-*.wandb")))
    for layer in ("net.conv2", "net.fc1", "net.fc2"):
        for metric in ("otce_sim", "hscore", "transrate"):
            curve = [r[f"transfer/{metric}/{layer}"] for r in history if f"transfer/{metric}/{layer}" in r]
            assert len(curve) == 2 and all(np.isfinite(curve)), (metric, layer, curve)
    table = json.loads(next(run_dir.glob("files/media/table/transfer/table_*.table.json")).read_text())
    assert len(table["data"]) == 2 * 3 * 3 and table["columns"][-1] == "val/acc"


def test_pixel_mode_for_segmentation_masks():
    class Seg(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.enc = nn.Conv2d(1, 4, 3, stride=2, padding=1)
            self.dec = nn.Conv2d(4, 2, 1)

        def forward(self, x):
            return self.dec(torch.relu(self.enc(x)))

    torch.manual_seed(0)
    x = torch.randn(12, 1, 16, 16)
    masks = (x[:, 0] > 0.3).long()  # pixel labels that the input explains
    loader = DataLoader(TensorDataset(x, masks), batch_size=4)
    model = Seg()
    out = transferability_scores(model, loader, ["enc", "dec"], ["hscore"], pixels_per_image=50, max_samples=10)
    again = transferability_scores(model, loader, ["enc", "dec"], ["hscore"], pixels_per_image=50, max_samples=10)
    assert out == again and set(out) == {"transfer/hscore/enc", "transfer/hscore/dec"}
    from tguide.features.pixels import extract_pixel_features

    idx = torch.sort(torch.randperm(12, generator=torch.Generator().manual_seed(0))[:10]).values
    fs = extract_pixel_features(model, DataLoader(TensorDataset(x[idx], masks[idx]), batch_size=3), ["enc"],
                                pixels_per_image=50, ids=idx)
    assert fs.features["enc"].shape == (500, 4)
    assert out["transfer/hscore/enc"] == pytest.approx(numpy_hscore(fs.features["enc"].numpy(), fs.labels.numpy()),
                                                       rel=1e-6)


def test_null_adds_z_scores_next_to_unchanged_raw_scores(tmp_path):
    from tguide.features import extract_features
    from tguide.metrics import label_shuffle_null, transrate_comparable

    model = TinyModule()
    _, val = loaders()
    layers = ["net.conv", "net.fc"]
    plain = transferability_scores(model, val, layers, ["hscore", "transrate_comparable"], max_samples=50, seed=3)
    with_null = transferability_scores(model, val, layers, ["hscore", "transrate_comparable"], max_samples=50,
                                       seed=3, null=15)
    for key, value in plain.items():
        assert with_null[key] == pytest.approx(value)
    # the z of one entry, recomputed by hand from the same probe subset and permutation seed
    ids = stratified_subset(val.dataset.tensors[1], 50, seed=3)
    fs = extract_features(model, DataLoader(torch.utils.data.Subset(val.dataset, ids.tolist()), batch_size=16),
                          ["net.fc"], ids=ids)
    ref = label_shuffle_null(transrate_comparable, fs.features["net.fc"], fs.labels, n_perm=15, seed=3)
    assert with_null["transfer/transrate_comparable_z/net.fc"] == pytest.approx(float(ref.z))
    assert set(with_null) == set(plain) | {k.replace("/net.", "_z/net.", 1) for k in plain}
    with pytest.raises(ValueError, match="null"):
        TransferabilityMonitor(probe=val, layers=["net.fc"], metrics=["hscore"], null=1)
    # the monitor logs the z keys and puts them in its end-of-fit table
    train, val = loaders()
    monitor = TransferabilityMonitor(probe=val, layers=["net.fc"], metrics=["hscore"], max_samples=40, null=10)
    trainer = L.Trainer(max_epochs=1, callbacks=[monitor], logger=CSVLogger(tmp_path), **QUIET)
    trainer.fit(model, train, val)
    assert "transfer/hscore_z/net.fc" in trainer.callback_metrics
    rows = read_csv(Path(trainer.loggers[0].log_dir) / "transferability.csv")
    assert {r["metric"] for r in rows} == {"hscore", "hscore_z"}


# -- the probe subset: class-stratified whenever the labels can be read -----------------------

class _NoLabels(torch.utils.data.Dataset):
    """A map-style dataset that does not expose its labels (only reading a sample gives one)."""

    def __init__(self, data: TensorDataset) -> None:
        self.data = data

    def __len__(self) -> int:
        return len(self.data)

    def __getitem__(self, i: int):
        return self.data[i]


def test_probe_subset_is_stratified_on_a_class_sorted_dataset_and_ranks_split_it():
    import tguide.probe_subset as probe

    y = torch.arange(4).repeat_interleave(25)  # sorted by class, 25 each
    data = TensorDataset(torch.randn(100, 3), y)
    loader = DataLoader(data, batch_size=16)
    _, ids = probe.probe_share(loader, 12, 7, 0, 1, "probe")
    assert torch.bincount(y[ids], minlength=4).tolist() == [3, 3, 3, 3]  # a uniform draw rarely is
    assert torch.equal(ids, stratified_subset(y, 12, seed=7))
    shares = [probe.probe_share(loader, 12, 7, r, 3, "probe")[1] for r in range(3)]
    assert torch.equal(torch.sort(torch.cat(shares)).values, ids)  # DDP shares partition the one subset
    # a Subset of a TensorDataset and a `targets` attribute expose their labels too
    sub = torch.utils.data.Subset(data, list(range(0, 100, 2)))
    _, ids_sub = probe.probe_share(DataLoader(sub, batch_size=8), 8, 0, 0, 1, "probe")
    assert torch.bincount(y[::2][ids_sub], minlength=4).tolist() == [2, 2, 2, 2]
    with pytest.raises(ValueError, match=r"`probe` max_samples: .*smaller than the 4 classes"):
        probe.probe_share(loader, 3, 0, 0, 1, "probe")


def test_probe_subset_falls_back_to_uniform_with_one_warning(recwarn):
    import tguide.probe_subset as probe

    probe._UNIFORM_WARNED.discard("_NoLabels")
    y = torch.arange(4).repeat_interleave(25)
    loader = DataLoader(_NoLabels(TensorDataset(torch.randn(100, 3), y)), batch_size=16)
    with pytest.warns(UserWarning, match=r"_NoLabels does not expose its labels.*drawn uniformly"):
        _, ids = probe.probe_share(loader, 12, 7, 0, 1, "probe")
    expected = torch.sort(torch.randperm(100, generator=torch.Generator().manual_seed(7))[:12]).values
    assert torch.equal(ids, expected)  # the documented uniform rule
    recwarn.clear()
    _, again = probe.probe_share(loader, 12, 7, 0, 1, "probe")
    assert torch.equal(again, ids) and not [w for w in recwarn if "expose its labels" in str(w.message)]  # once
    model = nn.Sequential(nn.Linear(3, 4))
    out = transferability_scores(model, loader, ["0"], ["hscore"], max_samples=12, seed=7)
    assert set(out) == {"transfer/hscore/0"}

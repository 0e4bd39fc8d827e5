"""InvarianceMonitor: per-class eKLD each epoch, CSV + PNG in the run folder, W&B table."""

import csv
import json

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from tguide.callbacks.invariance import InvarianceMonitor, per_class_ekld
from tguide.fit import compose, run


class _Linear(nn.Module):
    def __init__(self, w: torch.Tensor) -> None:
        super().__init__()
        self.w = nn.Parameter(w)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w


def test_per_class_ekld_zero_when_invariant_and_matches_formula():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(40, 1, 2, 3, generator=g)
    y = torch.arange(4).repeat(10)
    net = _Linear(torch.randn(6, 4, generator=g))
    same = DataLoader(TensorDataset(x, x.clone(), y), batch_size=7)
    assert torch.equal(per_class_ekld(net, same, 4), torch.zeros(4, dtype=torch.float64))
    x2 = x + 0.5 * torch.randn(x.shape, generator=g)
    per = per_class_ekld(net, DataLoader(TensorDataset(x, x2, y), batch_size=7), 4)
    with torch.no_grad():
        p, q = torch.softmax(net(x).double(), 1), torch.softmax(net(x2).double(), 1)
    kl = (p * (p / q).log()).sum(1)
    for c in range(4):
        assert float(per[c]) == pytest.approx(float(kl[y == c].mean()), rel=1e-8)
    assert net.training  # mode restored


def test_monitor_logs_every_epoch_writes_csv_png_and_wandb(tmp_path):
    cfg = compose(["recipe=invariance_lt", "git=false", "trainer.max_epochs=2", "trainer.limit_train_batches=3",
                   "logger=wandb", f"paths.run_dir={tmp_path}", "name=unit", "trainer.enable_progress_bar=false"])
    metrics = run(cfg)
    for key in ("invariance/ekld_head", "invariance/ekld_tail", "invariance/ekld_class_0", "test/ekld_tail"):
        assert key in metrics and metrics[key] >= 0
    with open(tmp_path / "invariance.csv") as fh:
        rows = list(csv.DictReader(fh))
    val = [r for r in rows if r["split"] == "val"]
    assert len(val) == 2 * 10 and {r["epoch"] for r in val} == {"0", "1"}
    assert len([r for r in rows if r["split"] == "test"]) == 10
    sizes = sorted(int(r["class_size"]) for r in val if r["epoch"] == "1")
    assert sizes == sorted([500, 125, 56, 31, 20, 14, 10, 8, 6, 5])
    assert all(r["bucket"] == ("head" if int(r["class_size"]) > 50 else "tail" if int(r["class_size"]) <= 10
                               else "mid") for r in rows)
    last = {r["class"]: float(r["ekld"]) for r in val if r["epoch"] == "1"}
    assert last["0"] == pytest.approx(metrics["invariance/ekld_class_0"], rel=1e-5)
    assert (tmp_path / "invariance.png").stat().st_size > 1000
    assert sorted(tmp_path.rglob("run-*.wandb")), f"no offline W&B run file under {tmp_path}"
    # the W&B table and scatter are written as media files of the offline run
    tables = {p.name.rsplit("_", 2)[0]: p for p in tmp_path.rglob("media/table/invariance/*.table.json")}
    assert {"val_table", "val_ekld_vs_size_table", "test_table"} <= set(tables)
    table = json.loads(tables["val_table"].read_text())
    assert table["columns"] == ["split", "epoch", "class", "class_size", "bucket", "ekld"]
    assert len(table["data"]) == 20
    assert json.loads((tmp_path / "metrics.json").read_text())["test/ekld"] >= 0


def test_bad_arguments():
    with pytest.raises(ValueError, match="every_n_epochs"):
        InvarianceMonitor(every_n_epochs=0)
    with pytest.raises(ValueError, match="tail_at_most"):
        InvarianceMonitor(head_above=10, tail_at_most=10)

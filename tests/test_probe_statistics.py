"""The probe's statistics path: same scores as the sample path, in 1 process and across 2 (gloo),
with no feature gather for the statistics-based scores."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import tguide.probe as probe
from tguide.metrics.registry import METRICS
from tguide.probe_statistics import local_statistics, merge_across_ranks, uses_statistics

REPO = Path(__file__).resolve().parents[1]
STATISTICS_METRICS = ["hscore", "hscore_shrinkage", "transrate", "transrate_comparable", "logme", "gbc", "nce"]


def _data(n: int = 90, seed: int = 0) -> TensorDataset:
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % 3 + 5  # labels {5, 6, 7}
    x = torch.randn(n, 6, generator=g, dtype=torch.float64) + (y - 6).double()[:, None]
    return TensorDataset(x, y)


def _model() -> nn.Module:
    torch.manual_seed(0)
    # float64: a float32 forward pass rounds differently for other batch compositions (1 vs 2
    # processes) by ~1e-7, which would hide the 1e-9 agreement of the two paths
    return nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 4)).double()


def test_which_metrics_take_the_statistics_path():
    assert all(uses_statistics(METRICS[m], {}, None) for m in STATISTICS_METRICS)
    for m in ("otce_sim", "leep", "sfda", "knn", "ncti"):
        assert not uses_statistics(METRICS[m], {}, None), m
    assert not uses_statistics(METRICS["hscore"], {}, 5)  # the null shuffles labels across all rows
    assert not uses_statistics(METRICS["gbc"], {"pca_dim": 3}, None)  # the PCA needs the samples
    assert not uses_statistics(METRICS["nce"], {"correction": "miller_madow"}, None)
    assert uses_statistics(METRICS["gbc"], {"gaussian": "diagonal"}, None)


def test_one_process_statistics_path_equals_sample_path(monkeypatch):
    loader = DataLoader(_data(), batch_size=16)
    layers = ["0", "2"]
    kwargs = {"gbc": {"gaussian": "diagonal"}, "transrate": {"eps": 0.5}}
    fast = probe.transferability_scores(
        _model(), loader, layers, STATISTICS_METRICS, max_samples=70, metric_kwargs=kwargs
    )
    monkeypatch.setattr(probe, "uses_statistics", lambda *a: False)
    slow = probe.transferability_scores(
        _model(), loader, layers, STATISTICS_METRICS, max_samples=70, metric_kwargs=kwargs
    )
    assert set(fast) == set(slow) and len(fast) == 6 * 2 + 1  # NCE reads the head: one key
    for key, value in slow.items():
        assert fast[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key


def test_merge_of_shares_with_different_label_sets_equals_the_whole():
    x, y = _data().tensors
    whole = probe.FeatureSet(features={"a": x}, labels=y, ids=torch.arange(len(y)))
    wanted = [("hscore", "a"), ("logme", "a"), ("transrate", "a")]  # the first two share one object
    stats, error = local_statistics(whole, wanted)
    assert error is None and len(stats) == 2
    # two shares whose label sets differ: {5, 6} and {6, 7}
    second = (y == 7) | ((y == 6) & (torch.arange(len(y)) % 2 == 0))
    parts = [~second, second]
    assert set(y[parts[0]].tolist()) == {5, 6} and set(y[parts[1]].tolist()) == {6, 7}
    merged = None
    for mask in parts:
        share = probe.FeatureSet(features={"a": x[mask]}, labels=y[mask], ids=torch.nonzero(mask)[:, 0])
        local, _ = local_statistics(share, wanted)
        merged = local if merged is None else {k: merged[k].merge(local[k]) for k in local}
    assert merged is not None and merge_across_ranks(merged, 1) == merged
    for metric, layer in wanted:
        info = METRICS[metric]
        expected = float(info(x, y))
        key = probe.statistics_key(info, layer)
        assert float(info.from_statistics(merged[key])) == pytest.approx(expected, rel=1e-9), metric


def test_bad_share_raises_the_wrapped_error():
    x, y = _data().tensors
    x[3, 0] = float("nan")
    bad = probe.FeatureSet(features={"a": x}, labels=y, ids=torch.arange(len(y)))
    stats, error = local_statistics(bad, [("hscore", "a")])
    assert stats[probe.statistics_key(METRICS["hscore"], "a")].n == 0  # empty: the exchange still runs
    assert error is not None and "hscore on layer 'a' failed" in str(error) and "NaN" in str(error)


DDP_SCRIPT = textwrap.dedent("""
    import json, sys, torch, torch.distributed as dist
    sys.path.insert(0, sys.argv[4])
    import tguide.probe as probe
    from test_probe_statistics import STATISTICS_METRICS, _data, _model
    from torch.utils.data import DataLoader

    rank, port, out = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    gathered = []
    real_gather = probe._gather
    probe._gather = lambda fs, layers, world: gathered.append(1) or real_gather(fs, layers, world)
    loader = DataLoader(_data(), batch_size=16)
    stats_only = probe.transferability_scores(_model(), loader, ["0", "2"], STATISTICS_METRICS, max_samples=71)
    n_stats = len(gathered)
    mixed = probe.transferability_scores(_model(), loader, ["0", "2"], ["hscore", "leep", "knn"], max_samples=71)
    with open(f"{out}/rank{rank}.json", "w") as fh:
        json.dump({"stats_only": stats_only, "mixed": mixed, "gathers": [n_stats, len(gathered)]}, fh)
    dist.destroy_process_group()
""")


def test_two_gloo_processes_merge_statistics_without_gathering_features(tmp_path):
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "PYTHONPATH": str(REPO), "PYTHONWARNINGS": "ignore", "OMP_NUM_THREADS": "1"}
    args = [str(tmp_path), str(Path(__file__).parent)]
    procs = [
        subprocess.Popen(
            [sys.executable, str(script), str(r), port, *args],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            cwd=tmp_path,
        )
        for r in (0, 1)
    ]
    try:
        errs = [p.communicate(timeout=180)[1] for p in procs]  # a hang fails here instead of blocking CI
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    assert all(p.returncode == 0 for p in procs), errs[0][-3000:] + errs[1][-3000:]
    ranks = [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert ranks[0]["stats_only"] == ranks[1]["stats_only"] and ranks[0]["mixed"] == ranks[1]["mixed"]
    assert ranks[0]["gathers"] == [0, 1]  # statistics-only: no feature gather; LEEP and kNN: one
    loader = DataLoader(_data(), batch_size=16)
    one = probe.transferability_scores(_model(), loader, ["0", "2"], STATISTICS_METRICS, max_samples=71)
    one_mixed = probe.transferability_scores(_model(), loader, ["0", "2"], ["hscore", "leep", "knn"], max_samples=71)
    for got, expected in ((ranks[0]["stats_only"], one), (ranks[0]["mixed"], one_mixed)):
        assert set(got) == set(expected)
        for key, value in expected.items():
            assert got[key] == pytest.approx(value, rel=1e-9, abs=1e-12), key

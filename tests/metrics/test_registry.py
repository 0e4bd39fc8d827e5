"""The one metric registry: entries, lookup errors, registration, calling conventions, probe.py on it."""

from __future__ import annotations

import pytest
import torch

from tguide.metrics.registry import METRICS, MetricInfo, get_metric, metric_names, register_metric


def test_core_entries_and_needs():
    for name in ("hscore", "hscore_shrinkage", "transrate", "transrate_comparable", "logme", "leep", "nce", "otce_sim"):
        info = get_metric(name)
        assert info.higher_is_better and callable(info.load())
    assert get_metric("leep").needs_source_probs and get_metric("nce").needs_source_probs
    assert get_metric("otce_sim").needs_source_samples and not get_metric("logme").needs_source_probs
    assert get_metric("hscore").load_statistics().__name__ == "GramStatistics"
    assert get_metric("otce_sim").statistics is None and get_metric("leep").statistics is None
    for name in ("knn", "linear_probe"):
        if name in METRICS:
            assert METRICS[name].baseline and name in metric_names() and name not in metric_names(baselines=False)


def test_unknown_name_lists_valid_ones():
    with pytest.raises(KeyError, match=r"unknown metric 'leap'; valid names: otce_sim, hscore, .*leep"):
        get_metric("leap")


def test_arguments_follow_the_calling_convention():
    g = torch.Generator().manual_seed(0)
    y = torch.arange(60) % 3
    f = torch.randn(60, 5, generator=g) + y[:, None]
    probs = torch.softmax(torch.randn(60, 4, generator=g), 1)
    args = get_metric("nce").arguments(labels=y, source_probs=probs)
    assert torch.equal(args[0], probs.argmax(1)) and args[1] is y
    assert get_metric("leep").arguments(labels=y, source_probs=probs)[0] is probs
    with pytest.raises(ValueError, match=r"leep needs `source_probs`.*head"):
        get_metric("leep").arguments(f, y)
    assert float(get_metric("hscore")(*get_metric("hscore").arguments(f, y))) > 0


def test_register_metric_is_seen_by_the_probe():
    from tguide.metrics.registry import METRICS as PROBE_METRICS
    from tguide.probe import resolve_metric

    try:
        info = register_metric("mean_norm", lambda features, labels: features.norm(dim=1).mean())
        assert isinstance(info, MetricInfo) and resolve_metric("mean_norm") is info and "mean_norm" in PROBE_METRICS
        with pytest.raises(ValueError, match=r"already registered"):
            register_metric("mean_norm", "x:y")
    finally:
        METRICS.pop("mean_norm", None)
    with pytest.raises(ValueError, match=r"unknown metric 'nope'"):
        resolve_metric("nope")


def test_probe_scores_leep_from_the_model_output():
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset

    from tguide.features import OUTPUT
    from tguide.metrics import leep
    from tguide.probe import transferability_scores

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.ReLU(), nn.Linear(8, 4))
    x, y = torch.randn(40, 6), torch.arange(40) % 2
    probe = DataLoader(TensorDataset(x, y), batch_size=16)
    scores = transferability_scores(model, probe, ["1"], ["hscore", "leep"], max_samples=None)
    assert set(scores) == {"transfer/hscore/1", f"transfer/leep/{OUTPUT}"}
    with torch.no_grad():
        expected = leep(torch.softmax(model(x).double(), 1), y)
    assert scores[f"transfer/leep/{OUTPUT}"] == pytest.approx(float(expected), rel=1e-6)

"""eKLD: zero for an invariant model, positive otherwise, stable from logits, per class, streaming."""

import math

import numpy as np
import pytest
import torch

from tguide.metrics.invariance import EKLD, ekld, ekld_per_class, kl_rows


def _kl_numpy(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Independent reference: softmax in numpy (float64, max-shifted), then Σ p log(p/q)."""
    p = np.exp(a - a.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    q = np.exp(b - b.max(1, keepdims=True))
    q /= q.sum(1, keepdims=True)
    return (p * (np.log(p) - np.log(q))).sum(1)


def test_zero_for_an_invariant_model_and_positive_otherwise():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(64, 8, generator=g)
    w = torch.randn(8, 5, generator=g)
    invariant = lambda v: v.abs() @ w  # noqa: E731  (invariant to the sign flip T(x) = -x)
    sensitive = lambda v: v @ w  # noqa: E731
    assert float(ekld(invariant(x), invariant(-x))) == 0.0
    assert float(ekld(sensitive(x), sensitive(-x))) > 0.1


def test_matches_numpy_reference_and_is_not_symmetric():
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(50, 7, generator=g) * 3, torch.randn(50, 7, generator=g) * 3
    ref = _kl_numpy(a.double().numpy(), b.double().numpy())
    np.testing.assert_allclose(kl_rows(a, b).numpy(), ref, rtol=1e-10, atol=1e-12)
    assert float(ekld(a, b)) == pytest.approx(ref.mean(), rel=1e-10)
    assert float(ekld(a, b)) != pytest.approx(float(ekld(b, a)), rel=1e-3)
    # invariant to a per-row shift of the logits (softmax is)
    assert float(ekld(a.double() + 100.0, b.double() - 50.0)) == pytest.approx(ref.mean(), rel=1e-9)


def test_stable_for_huge_logits():
    # a naive softmax overflows (exp(1000)); the log-softmax form stays exact. Analytically:
    # p = softmax(1000, 0) = (1, e^-1000) ≈ (1, 0) and q = softmax(1000, 1002), q_0 = 1 / (1 + e^2),
    # so KL(p || q) = -log q_0 = log(1 + e^2) (the e^-1000 term is far below float64 resolution).
    a = torch.tensor([[1000.0, 0.0]])
    b = torch.tensor([[1000.0, 1002.0]])
    expected = math.log(1 + math.exp(2))
    value = float(ekld(a, b))
    assert math.isfinite(value) and value == pytest.approx(expected, rel=1e-9)
    with np.errstate(over="ignore", invalid="ignore"):
        naive = np.exp(np.array([1000.0, 0.0]))
        assert not np.isfinite(naive / naive.sum()).all()  # what a probs-first version would hit


def test_per_class_is_mean_over_each_class_and_nan_for_missing():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(30, 4, generator=g), torch.randn(30, 4, generator=g)
    y = torch.tensor([0, 2] * 15)
    per = ekld_per_class(a, b, y, num_classes=4)
    kl = _kl_numpy(a.double().numpy(), b.double().numpy())
    assert float(per[0]) == pytest.approx(kl[0::2].mean(), rel=1e-10)
    assert float(per[2]) == pytest.approx(kl[1::2].mean(), rel=1e-10)
    assert torch.isnan(per[1]) and torch.isnan(per[3])


def test_stateful_matches_functional_over_batches():
    g = torch.Generator().manual_seed(3)
    a, b = torch.randn(100, 5, generator=g), torch.randn(100, 5, generator=g)
    y = torch.randint(0, 5, (100,), generator=g)
    micro, macro, none = EKLD(5), EKLD(5, average="macro"), EKLD(5, average="none")
    for i in range(0, 100, 17):
        for m in (micro, macro, none):
            m.update(a[i:i + 17], b[i:i + 17], y[i:i + 17])
    per = ekld_per_class(a, b, y, 5)
    assert float(micro.compute()) == pytest.approx(float(ekld(a, b)), rel=1e-10)
    assert float(macro.compute()) == pytest.approx(float(per.mean()), rel=1e-10)
    torch.testing.assert_close(none.compute(), per)
    # states are sums: merging two metrics = summing (what DDP's reduction does)
    m1, m2 = EKLD(5), EKLD(5)
    m1.update(a[:40], b[:40], y[:40])
    m2.update(a[40:], b[40:], y[40:])
    assert float((m1.kl_sum.sum() + m2.kl_sum.sum()) / (m1.count.sum() + m2.count.sum())) == pytest.approx(
        float(ekld(a, b)), rel=1e-10)
    from torchmetrics.utilities.data import dim_zero_sum

    assert micro._reductions["kl_sum"] is dim_zero_sum and micro._reductions["count"] is dim_zero_sum


@pytest.mark.parametrize("bad, match", [
    ((torch.zeros(3, 4), torch.zeros(3, 5)), "same shape"),
    ((torch.zeros(3), torch.zeros(3)), "2-D"),
    ((torch.full((2, 3), float("nan")), torch.zeros(2, 3)), "NaN"),
    ((torch.zeros(2, 1), torch.zeros(2, 1)), "at least 2"),
    ((torch.zeros(0, 3), torch.zeros(0, 3)), "empty"),
])
def test_bad_input_raises_clear_errors(bad, match):
    with pytest.raises(ValueError, match=match):
        ekld(*bad)


def test_bad_labels_and_options():
    a = torch.zeros(4, 3)
    with pytest.raises(ValueError, match="0..2"):
        ekld_per_class(a, a, torch.tensor([0, 1, 2, 3]), 3)
    with pytest.raises(ValueError, match="average"):
        EKLD(3, average="weighted")
    with pytest.raises(ValueError, match="labels"):
        EKLD(3, average="none").update(a, a)
    with pytest.raises(ValueError, match="before any update"), pytest.warns(UserWarning):
        EKLD(3).compute()


def _ddp_worker(rank: int, port: int, out_dir: str) -> None:
    import torch.distributed as dist

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        g = torch.Generator().manual_seed(11)
        a, b = torch.randn(100, 5, generator=g), torch.randn(100, 5, generator=g)
        y = torch.randint(0, 5, (100,), generator=g)
        part = slice(0, 37) if rank == 0 else slice(37, 100)  # uneven shards
        metrics = {avg: EKLD(5, average=avg) for avg in ("micro", "macro", "none")}
        for m in metrics.values():
            m.update(a[part], b[part], y[part])
        torch.save({k: m.compute() for k, m in metrics.items()}, f"{out_dir}/rank{rank}.pt")
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_ddp_two_processes_equal_one(tmp_path):
    import socket

    import torch.multiprocessing as mp

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    mp.spawn(_ddp_worker, args=(port, str(tmp_path)), nprocs=2, join=True)
    g = torch.Generator().manual_seed(11)
    a, b = torch.randn(100, 5, generator=g), torch.randn(100, 5, generator=g)
    y = torch.randint(0, 5, (100,), generator=g)
    per = ekld_per_class(a, b, y, 5)
    for rank in (0, 1):
        got = torch.load(tmp_path / f"rank{rank}.pt")
        assert float(got["micro"]) == pytest.approx(float(ekld(a, b)), rel=1e-10)
        assert float(got["macro"]) == pytest.approx(float(per.mean()), rel=1e-10)
        torch.testing.assert_close(got["none"], per)

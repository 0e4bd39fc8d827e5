"""Old argument names keep working for one release: same value, a DeprecationWarning at the caller."""

from __future__ import annotations

import warnings

import pytest
import torch

from tguide._deprecation import renamed_arguments
from tguide.metrics import OTCE, HScore, LogME, TransRate, TransRateComparable, fit_otce_weights, otce, otce_sim
from tguide.metrics.denoising import denoising_transferability, residual_distance, score_denoiser
from tguide.metrics.functional.task_distance import joint_labels, task_distance, task_distance_null
from tguide.metrics.invariance import EKLD, ekld, ekld_per_class, kl_rows

F64 = torch.float64


def _old_equals_new(fn, args, old, new, **common):
    """``fn(*args, **old, **common)`` warns once per old name, at this file, and equals the new call."""
    expected = fn(*args, **new, **common)
    with pytest.warns(DeprecationWarning) as record:
        got = fn(*args, **old, **common)
    ours = [w for w in record if "is deprecated" in str(w.message)]
    assert len(ours) == len(old)
    for w, name in zip(ours, old):
        assert f"`{name}`" in str(w.message) and w.filename == __file__  # points at the caller
    return expected, got


def _same(a, b):
    for name in ("score", "coupling", "task_distance", "domain_distance"):
        if hasattr(a, name):
            assert torch.equal(getattr(a, name), getattr(b, name))
    if isinstance(a, torch.Tensor):
        assert torch.equal(a, b)
    elif not hasattr(a, "score"):
        assert a == b


@pytest.fixture
def domains():
    g = torch.Generator().manual_seed(0)
    xs, xt = torch.randn(30, 3, generator=g, dtype=F64), torch.randn(24, 3, generator=g, dtype=F64) + 0.3
    return xs, torch.arange(30) % 3, xt, torch.arange(24) % 2


@pytest.mark.parametrize("fn", [otce, otce_sim])
def test_otce_old_names(fn, domains):
    xs, ys, xt, yt = domains
    old = dict(src_features=xs, src_labels=ys, tgt_features=xt, tgt_labels=yt)
    new = dict(source_features=xs, source_labels=ys, target_features=xt, target_labels=yt)
    _same(*_old_equals_new(fn, (), old, new, max_samples=20))
    _same(fn(xs, ys, xt, yt, max_samples=20), fn(**new, max_samples=20))


def test_old_and_new_name_together_is_an_error(domains):
    xs, ys, xt, yt = domains
    with pytest.raises(TypeError, match="both `src_features` .* and `source_features`"):
        otce(source_features=xs, src_features=xs, source_labels=ys, target_features=xt, target_labels=yt)
    with pytest.raises(TypeError, match="both `tgt_labels`"):
        otce(xs, ys, xt, yt, tgt_labels=yt)  # the new name given positionally
    with pytest.raises(TypeError, match="both `max_samples` .* and `max_stored`"):
        HScore(max_stored=3, max_samples=3)


def test_fit_otce_weights_old_names():
    wd, wt, acc = [1.0, 2, 3, 4], [0.5, 0.1, 0.9, 0.3], [0.9, 1.0, 0.5, 0.7]
    _same(*_old_equals_new(fit_otce_weights, (), dict(w_d=wd, w_t=wt, accuracy=acc),
                           dict(domain_distances=wd, task_distances=wt, accuracies=acc)))


@pytest.mark.parametrize("fn", [task_distance, joint_labels])
def test_task_distance_helpers_old_names(fn, domains):
    plan = torch.full((30, 24), 1 / 720, dtype=F64)
    ys, yt = domains[1], domains[3]
    _same(*_old_equals_new(fn, (plan,), dict(src_codes=ys, tgt_codes=yt), dict(source_codes=ys, target_codes=yt),
                           cs=3, ct=2))


def test_task_distance_null_old_names(domains):
    plan = torch.full((30, 24), 1 / 720, dtype=F64)
    ys, yt = domains[1], domains[3]
    perms = torch.stack([torch.randperm(24, generator=torch.Generator().manual_seed(k)) for k in range(3)])
    _same(*_old_equals_new(task_distance_null, (plan,), dict(src_codes=ys, tgt_codes=yt),
                           dict(source_codes=ys, target_codes=yt), cs=3, ct=2, perms=perms))


@pytest.mark.parametrize("fn", [kl_rows, ekld])
def test_invariance_old_names(fn):
    g = torch.Generator().manual_seed(1)
    a, b = torch.randn(10, 4, generator=g), torch.randn(10, 4, generator=g)
    _same(*_old_equals_new(fn, (), dict(logits_x=a, logits_tx=b), dict(logits=a, transformed_logits=b)))


def test_ekld_per_class_and_class_old_names():
    g = torch.Generator().manual_seed(2)
    a, b, y = torch.randn(12, 3, generator=g), torch.randn(12, 3, generator=g), torch.arange(12) % 3
    new, old = ekld_per_class(a, b, y, 3), None
    with pytest.warns(DeprecationWarning):
        old = ekld_per_class(logits_x=a, logits_tx=b, labels=y, num_classes=3)
    assert torch.equal(new, old)
    m_new, m_old = EKLD(3, average="macro"), EKLD(3, average="macro")
    m_new.update(logits=a, transformed_logits=b, labels=y)
    with pytest.warns(DeprecationWarning) as record:
        m_old.update(logits_x=a, logits_tx=b, labels=y)
    assert all(w.filename == __file__ for w in record if "is deprecated" in str(w.message))
    assert torch.equal(m_new.compute(), m_old.compute())


def test_denoising_old_names():
    g = torch.Generator().manual_seed(3)
    a, b = 0.1 * torch.randn(4, 1, 16, 16, generator=g), 0.2 * torch.randn(4, 1, 16, 16, generator=g)
    old = dict(res_a=a, res_b=b, max_samples=10)
    new = dict(source_residuals=a, target_residuals=b, max_patches=10)
    _same(*_old_equals_new(denoising_transferability, (), old, new, n_projections=16))
    _same(*_old_equals_new(residual_distance, (), old, new, n_projections=16))


def test_score_denoiser_old_names():
    model = torch.nn.Conv2d(1, 1, 3, padding=1, bias=False)
    g = torch.Generator().manual_seed(4)
    ya, yb = torch.rand(3, 1, 16, 16, generator=g), torch.rand(3, 1, 16, 16, generator=g)
    new = score_denoiser(model, source_images=ya, target_images=yb, n_projections=8)
    with pytest.warns(DeprecationWarning):
        old = score_denoiser(model, held_out_a=ya, noisy_b=yb, n_projections=8)
    assert torch.equal(new.score, old.score)


@pytest.mark.parametrize("cls", [HScore, TransRate, TransRateComparable, LogME, OTCE])
def test_stateful_max_samples_is_max_stored(cls):
    with pytest.warns(DeprecationWarning, match="`max_samples`") as record:
        m = cls(max_samples=7, seed=2)
    assert m.max_stored == 7 and record[0].filename == __file__
    assert cls(max_stored=7).max_stored == 7


def test_stateful_reservoir_same_with_either_name():
    x, y = torch.randn(50, 3, generator=torch.Generator().manual_seed(5), dtype=F64), torch.arange(50) % 4
    new = HScore(max_stored=20, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        old = HScore(max_samples=20, seed=1)
    for m in (new, old):
        m.update(x[:30], y[:30])
        m.update(x[30:], y[30:])
    assert torch.equal(new.compute(), old.compute())


def test_decorator_checks_its_mapping():
    with pytest.raises(ValueError, match="no argument"):
        renamed_arguments(a="b")(lambda c: c)
    f = renamed_arguments(old="new")(lambda new, other=0: (new, other))
    assert f(1) == (1, 0)
    with pytest.warns(DeprecationWarning):
        assert f(old=2, other=3) == (2, 3)
    assert f.__renamed_arguments__ == {"old": "new"}

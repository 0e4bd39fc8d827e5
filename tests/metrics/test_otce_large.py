"""Large-N OTCE (POT's lazy Sinkhorn, coupling never formed) == the dense Sinkhorn path.

Tolerance: both solvers stop once a marginal is within ``tol = 1e-9`` (dense: L2 error of the
target marginal; lazy: L1 error of the source marginal, both checked every 10 iterations), so
the two couplings are the same entropic plan up to O(tol) per marginal; W_D and W_T are smooth
in the plan, so they agree to ~1e-9 relative (measured 3e-10 .. 1.4e-9 at N = 1k, 2k). The test
asks for 1e-7 relative: 100× margin over what was measured, far below any ranking difference.
"""

from __future__ import annotations

import numpy as np
import pytest

from tguide.metrics.functional.otce import OTCEConvergenceWarning, otce
from tguide.metrics.functional.otce_large import mean_squared_distance, otce_large


def _domains(rng, n, d=8):
    ys = rng.integers(0, 5, n)
    xs = rng.normal(size=(n, d)) + rng.normal(size=(5, d))[ys]
    yt = rng.integers(0, 3, n) + 10
    xt = rng.normal(size=(n, d)) + rng.normal(size=(3, d))[yt - 10] + 0.3
    return xs, ys, xt, yt


@pytest.fixture(scope="module")
def pair():
    rng = np.random.default_rng(3)
    xs, ys, xt, yt = _domains(rng, 1000)  # 4 lazy blocks of 256 rows, the last one ragged
    weights = (0.2, -1.0, 0.3)
    dense = otce(xs, ys, xt, yt, solver="sinkhorn", reg=0.05, weights=weights)
    lazy = otce_large(xs, ys, xt, yt, reg=0.05, weights=weights, batch_size=256)
    return dense, lazy


def test_lazy_matches_dense_sinkhorn_at_1k(pair):
    dense, lazy = pair
    assert float(lazy.task_distance) == pytest.approx(float(dense.task_distance), rel=1e-7)
    assert float(lazy.domain_distance) == pytest.approx(float(dense.domain_distance), rel=1e-7)
    assert float(lazy.score) == pytest.approx(float(dense.score), rel=1e-7)
    assert lazy.coupling is None


def test_mean_cost_in_linear_time(rng):
    xs, xt = rng.normal(size=(30, 4)), rng.normal(size=(20, 4)) + 1
    full = ((xs[:, None, :] - xt[None, :, :]) ** 2).sum(-1).mean()
    import torch

    assert float(mean_squared_distance(torch.tensor(xs), torch.tensor(xt))) == pytest.approx(full, rel=1e-12)


def test_non_convergence_warns_and_bad_options_raise(rng):
    xs, ys, xt, yt = _domains(rng, 60)
    with pytest.warns(OTCEConvergenceWarning, match="lazy Sinkhorn did not reach"):
        otce_large(xs, ys, xt, yt, reg=0.01, max_iter=1)
    with pytest.raises(ValueError, match="`reg` must be"):
        otce_large(xs, ys, xt, yt, reg=0.0)
    with pytest.raises(ValueError, match="`batch_size`"):
        otce_large(xs, ys, xt, yt, batch_size=0)

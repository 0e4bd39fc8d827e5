"""Degeneracy checks: each fires at its analytic threshold (where the score saturates) and not below it."""

from __future__ import annotations

import math

import pytest
import torch

from tguide.metrics import degeneracy as deg
from tguide.metrics.functional.etran import etran_terms
from tguide.metrics.functional.gbc import gbc
from tguide.metrics.functional.hscore import hscore
from tguide.metrics.functional.ncti import ncti_terms
from tguide.metrics.functional.sfda import regularised_lda_log_proba, sfda
from tguide.metrics.registry import METRICS, get_metric

N, C = 60, 4


def _features(d: int, seed: int = 0, n: int = N, c: int = C, shift: float = 0.5) -> tuple[torch.Tensor, torch.Tensor]:
    """Gaussian noise in D dimensions with a weak class signal on the first C coordinates."""
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % c
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    x[:, :c] += shift * torch.nn.functional.one_hot(y, c).double()
    return x, y


def test_ranks_are_the_generic_min():
    for d in (10, N - C, N - 2, N - 1, 200):
        assert deg.ranks(*_features(d)) == (min(d, N - 1), min(d, N - C))


@pytest.mark.parametrize("d", [N - 1, N, 3 * N])
def test_hscore_saturated_from_n_minus_one(d: int):
    x, y = _features(d)
    reason = deg.hscore(x, y)
    assert reason.flag == "saturated" and f"D={d} ≥ N−1={N - 1}" in reason and f"C−1 = {C - 1}" in reason
    assert float(hscore(x, y)) == pytest.approx(C - 1, abs=1e-8)  # the analytic ceiling, whatever the features


def test_hscore_degenerate_between_n_minus_c_and_n_minus_one_and_fine_below():
    for d in range(N - C + 1, N - 1):
        x, y = _features(d)
        reason = deg.hscore(x, y)
        assert reason.flag == "degenerate" and f"D={d} > N−C={N - C}" in reason
        free = d - (N - C)  # directions of the class means without within-class variance
        assert f"{free} of the C−1={C - 1}" in reason
        assert free - 1e-8 <= float(hscore(x, y)) < C - 1 - 1e-6  # each such direction adds a full unit
    for d in (N - C, 20, 4):
        x, y = _features(d)
        assert deg.hscore(x, y) == ""
        assert float(hscore(x, y)) < C - 1 - 1e-6  # below the ceiling (inflated by the small N near D = N − C)


def test_hscore_rank_deficient_features_follow_the_rank_not_d():
    """Dead units (zero columns) do not add rank: 200 columns of which 40 live at N = 60 is fine."""
    x, y = _features(40)
    wide = torch.cat([x, torch.zeros(N, 160, dtype=x.dtype)], dim=1)
    assert deg.hscore(wide, y) == ""


def test_sfda_saturates_above_n_minus_c_and_the_check_reads_the_ceiling():
    x, y = _features(N - C + 1)
    reason = deg.sfda(x, y)
    assert reason.flag == "saturated" and f"D={N - C + 1} > N−C={N - C}" in reason and "singular" in reason
    assert "not comparable here" in reason and "posterior 1.000" in reason
    assert float(sfda(x, y)) > 0.999
    # below N − C the scatter is regular but nearly singular: the same ceiling, named as such
    x, y = _features(N - C)
    assert float(sfda(x, y)) > 0.999 and "fitted and scored on the same samples" in deg.sfda(x, y)
    # the check fires exactly where the LDA posterior (and so SFDA) sits at its ceiling 1
    for d in (4, 8, 16, 24, 32, 40, 48, N - C, N, 2 * N):
        x, y = _features(d, shift=1.0)
        reason = deg.sfda(x, y)
        log_p, _ = regularised_lda_log_proba(x, y, C)
        at_ceiling = float(log_p.gather(1, y[:, None]).exp().mean()) >= 0.999
        assert (reason != "") == at_ceiling, d
        if at_ceiling:
            assert float(sfda(x, y)) > 0.99, d
    assert deg.sfda(*_features(4, shift=1.0)) == "" and float(sfda(*_features(4, shift=1.0))) < 0.9


def test_sfda_not_flagged_when_the_shrinkage_fills_the_null_space():
    """Tiny features: σ_max(S_w) ≈ 0, λ ≈ 1, the LDA is no longer singular and does not saturate."""
    x, y = _features(2 * N)
    x = x * 1e-3
    assert deg.sfda(x, y) == ""
    assert float(sfda(x, y)) < 0.99


def test_etran_lda_term_saturates_like_sfda():
    x, y = _features(N - C + 1)
    reason = deg.etran(x, y)
    assert reason.flag == "saturated" and reason.startswith("ETran (LDA term) saturated")
    assert float(etran_terms(x, y).lda) > 0.999
    assert deg.etran(x, y, reference_code=True) == ""  # identity covariance: nothing singular
    x, y = _features(8)
    assert deg.etran(x, y) == "" and float(etran_terms(x, y).lda) < 0.99


def test_ncti_degenerate_when_its_pca_keeps_more_than_n_minus_c():
    x, y = _features(100)
    reason = deg.ncti(x, y)  # K = min(64, 100, 59) = 59 > 56
    assert reason.flag == "degenerate" and f"K=min(pca_dim=64, D=100, N−1={N - 1})={N - 1} > N−C={N - C}" in reason
    assert f"pca_dim ≤ {N - C}" in reason
    assert deg.ncti(x, y, pca_dim=N - C) == ""  # the remedy named in the reason
    assert deg.ncti(x, y, pca_dim=N - C + 1) != ""
    assert deg.ncti(*_features(200, n=300)) == ""  # K = 64 ≤ 296
    # the remedy changes the score (the LDA no longer sees more than the within-class span)
    assert float(ncti_terms(x, y, pca_dim=N - C).nearest_centre) != float(ncti_terms(x, y).nearest_centre)


def _unequal_spread(d: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Two overlapping classes whose spherical variances differ by 2×: D_B = (D/2)·ln(1.5/√2) + small."""
    g = torch.Generator().manual_seed(1)
    y = torch.arange(200) % 2
    x = torch.randn(200, d, generator=g, dtype=torch.float64) * torch.where(y == 0, 1.0, math.sqrt(2.0))[:, None]
    return x, y


def test_gbc_saturates_when_every_coefficient_underflows_and_pca_is_the_remedy():
    # D_B ≈ (D/2)·0.0589: e^{−D_B} < 1e−12 (|GBC| = 2 e^{−D_B}) from D ≈ 960 on
    x, y = _unequal_spread(1280)
    reason = deg.gbc(x, y)
    assert reason.flag == "saturated" and "D=1280" in reason and "pca_dim=64" in reason
    assert "Pándy et al., CVPR 2022" in reason
    assert abs(float(gbc(x, y))) < 1e-12
    # the authors' PCA to 64 dimensions: the coefficients no longer underflow and the check is quiet
    assert deg.gbc(x, y, pca_dim=64) == ""
    assert abs(float(gbc(x, y, pca_dim=64))) > 1e-12
    x, y = _unequal_spread(256)
    assert deg.gbc(x, y) == "" and abs(float(gbc(x, y))) > 1e-12


def test_gbc_check_threshold_is_the_score_floor():
    for d in (256, 512, 768, 1024, 1280, 1536):
        x, y = _unequal_spread(d)
        fired = deg.gbc(x, y) != ""
        assert fired == (abs(float(gbc(x, y))) < 1e-12), d


def test_width_reason():
    assert deg.width_reason("transrate", [64, 64, 0]) == ""
    reason = deg.width_reason("transrate", [64, 1280, 64], remedy="transrate_comparable")
    assert reason.flag == "not_comparable" and "D = 64, 1280" in reason and "transrate_comparable" in reason


def test_finding_and_flag_of():
    assert deg.flag_of("") == "" and deg.flag_of("something odd") == "degenerate"
    assert deg.flag_of(deg.Finding("saturated", "x")) == "saturated"
    with pytest.raises(ValueError, match="flag must be one of"):
        deg.Finding("broken", "x")


def test_registry_declares_the_checks():
    checked = {n for n, m in METRICS.items() if m.degeneracy}
    assert checked == {"hscore", "sfda", "etran", "ncti", "gbc"}
    assert {n for n, m in METRICS.items() if m.width_dependent} == {"transrate"}
    x, y = _features(N)
    assert get_metric("hscore").check_degeneracy(x, y).flag == "saturated"
    assert get_metric("logme").check_degeneracy(x, y) == ""  # no condition declared
    # the metric's kwargs reach the check (GBC's remedy)
    x, y = _unequal_spread(1280)
    assert get_metric("gbc").check_degeneracy(x, y) != ""
    assert get_metric("gbc").check_degeneracy(x, y, pca_dim=64) == ""

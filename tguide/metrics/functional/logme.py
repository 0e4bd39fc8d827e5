"""LogME: the maximum log evidence of a Bayesian linear model on the features.

References:
    [1] K. You, Y. Liu, J. Wang, M. Long, "LogME: Practical Assessment of Pre-trained
        Models for Transfer Learning", ICML 2021.
    [2] D. J. C. MacKay, "Bayesian Interpolation", Neural Computation 4(3), 1992
        (the fixed-point updates of α and β).
"""

from __future__ import annotations

import math
import numbers
import warnings
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor

from tguide._warnings import stacklevel_outside
from tguide.metrics._validate import check_features, check_labels
from tguide.metrics.statistics import GramStatistics

__all__ = ["logme", "logme_from_statistics", "LogMEConvergenceWarning", "LogMEUnboundedWarning"]

_LOG2PI = math.log(2 * math.pi)
_GRID = 32  # log ρ grid points of the start search
_BISECT = 42  # bisections of the bracket (two grid steps) around the best grid point


class LogMEConvergenceWarning(RuntimeWarning):
    """The evidence fixed point stopped at ``max_iter`` before reaching ``tol``."""


class LogMEUnboundedWarning(RuntimeWarning):
    """A class's labels are an exact linear function of the features: the evidence has no maximum."""


def _check_options(tol: float, max_iter: int) -> None:
    if isinstance(tol, bool) or not isinstance(tol, numbers.Real) or not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"`tol` must be a positive finite float (relative change of α and β), got {tol!r}.")
    if isinstance(max_iter, bool) or not isinstance(max_iter, numbers.Integral) or max_iter < 1:
        raise ValueError(f"`max_iter` must be a positive integer, got {max_iter!r}.")


@dataclass
class _Spectrum:
    """F's squared singular values and the class targets in its singular basis.

    ``lam (r, 1)``: σ_i² / σ²_max (r = min(N, D); the evidence's maximum is unchanged by
    a rescaling of F, which only moves α). ``w2 (r, C)``: (σ_i u_iᵀy)² in the same
    units. ``z2 (r, C)``: (u_iᵀy)² when U is a complete basis of R^N (N ≤ D), else None.
    ``y2 (C,)``: ‖y‖². ``floor (C,)``: lower bound put on ‖Fm − y‖² (0 when β = ∞ is an
    ordinary edge). ``noise_free``: FFᵀ is invertible, so β = ∞ has a finite supremum.
    """

    lam: Tensor
    w2: Tensor
    z2: Tensor | None
    y2: Tensor
    floor: Tensor
    noise_free: bool
    n: int
    d: int

    def residual(self, alpha: Tensor, beta: Tensor, den: Tensor) -> Tensor:
        """‖Fm − y‖² at (α, β), ``den = α + βλ``."""
        if self.z2 is not None:
            res2 = (alpha**2 * self.z2 / den**2).sum(dim=0)
        else:  # ‖y‖² − Σ λz² β(2α + βλ)/den², without dividing by λ
            res2 = self.y2 - (self.w2 * beta * (2 * alpha + beta * self.lam) / den**2).sum(dim=0)
        return torch.maximum(res2, self.floor)

    def evidence(self, alpha: Tensor, beta: Tensor) -> Tensor:
        """L(α, β) of every class ``(C,)``; log det(αI_D + βFᵀF) includes (D − r) log α."""
        den = alpha + beta * self.lam  # (r, C)
        m2 = (beta**2 * self.w2 / den**2).sum(dim=0)
        logdet = torch.log(den).sum(dim=0) + (self.d - self.lam.shape[0]) * torch.log(alpha)
        return (
            0.5 * self.n * torch.log(beta)
            + 0.5 * self.d * torch.log(alpha)
            - 0.5 * self.n * _LOG2PI
            - 0.5 * beta * self.residual(alpha, beta, den)
            - 0.5 * alpha * m2
            - 0.5 * logdet
        )

    def _ns(self, rho: Tensor, one: Tensor) -> Tensor:
        """N/β at the best β for fixed ρ: ``Σ_i z_i²/(1 + ρλ_i)`` (+ energy outside the span)."""
        if self.z2 is not None:
            ns = (self.z2 / one).sum(dim=0)
        else:
            ns = self.y2 - (rho * self.w2 / one).sum(dim=0)
        return torch.maximum(ns, self.floor)

    def profile(self, rho: Tensor) -> tuple[Tensor, Tensor]:
        """Evidence maximised over β at fixed ρ = β/α ``(C,)``, and that β.

        With ``s = 1/β`` the evidence is ``log N(y; 0, s(I + ρFFᵀ))``, maximised by
        ``N s = Σ_i z_i²/(1 + ρλ_i)``: ``−N/2 (log 2π + log s + 1) − ½ Σ_i log(1 + ρλ_i)``.
        """
        one = 1.0 + rho * self.lam  # (r, C)
        ns = self._ns(rho, one)
        value = -0.5 * self.n * (_LOG2PI + torch.log(ns / self.n) + 1.0) - 0.5 * torch.log(one).sum(dim=0)
        return value, self.n / ns

    def profile_slope(self, rho: Tensor) -> Tensor:
        """d profile / d log ρ = ½ (N Σ_i ρ w_i²/(1 + ρλ_i)² / (N s) − Σ_i ρλ_i/(1 + ρλ_i))."""
        one = 1.0 + rho * self.lam
        return 0.5 * (self.n * (rho * self.w2 / one**2).sum(dim=0) / self._ns(rho, one) - (1.0 - 1.0 / one).sum(dim=0))

    def edges(self) -> Tensor:
        r"""Supremum of the evidence on the edges α = ∞ and (if finite) β = ∞, per class.

        α = ∞ (weights pinned at 0), best ``β = N/‖y‖²``: ``−N/2 (log 2π + log(‖y‖²/N) + 1)``.
        β = ∞ (no noise; finite only when FFᵀ is invertible), best ``1/α = t = (1/N) Σ z_i²/λ_i``:
        ``−½ (N log 2π + Σ log λ_i + N log t + N)``.
        """
        edge = -0.5 * self.n * (_LOG2PI + torch.log(self.y2 / self.n) + 1.0)
        if self.noise_free:
            assert self.z2 is not None, "noise_free is only set with the kept rows' z2"
            lam = self.lam[:, 0]
            t = (self.z2 / lam[:, None]).sum(dim=0) / self.n
            noise_free = -0.5 * (self.n * _LOG2PI + torch.log(lam).sum() + self.n * torch.log(t) + self.n)
            edge = torch.maximum(edge, noise_free)
        return edge


def _spectrum(stats: GramStatistics) -> _Spectrum:
    """One eigendecomposition of the smaller Gram matrix of F (cached on the statistics).

    N > D: ``FᵀF = Σaaᵀ + N·mean meanᵀ`` (D×D) and ``FᵀY = (n_c mean_c)ᵀ``, ``‖y_c‖² = n_c``.
    Kept rows (N ≤ D): ``FFᵀ`` (N×N) and the one-hot targets projected on its eigenvectors.
    """
    n = stats.n
    eig = stats.feature_cache.get("logme_eigen")
    if stats.rows is not None:
        f = stats.rows[0]
        if eig is None:
            gram = f @ f.T  # (N, N)
            eig = stats.feature_cache["logme_eigen"] = torch.linalg.eigh(0.5 * (gram + gram.T))
        lam, u = eig
        codes, counts, c = stats.labels_codes()
        y = torch.nn.functional.one_hot(codes, c).to(f.dtype)  # (N, C)
        return _finish(lam, None, (u.T @ y) ** 2, counts, n, f.shape[1])
    glob, cls = stats.part("g"), stats.part("c")
    if eig is None:
        mu = glob["mean"][0]
        gram = glob["m2"][0] + n * mu[:, None] * mu[None, :]
        eig = stats.feature_cache["logme_eigen"] = torch.linalg.eigh(0.5 * (gram + gram.T))
    lam, v = eig
    fty = (cls["n"][:, None] * cls["mean"]).T  # (D, C)
    w2 = (v.T @ fty) ** 2  # (D, C) = (σ_i u_iᵀy)²
    return _finish(lam, w2, None, cls["n"].clone(), n, v.shape[0])


def _finish(lam: Tensor, w2: Tensor | None, z2: Tensor | None, y2: Tensor, n: int, d: int) -> _Spectrum:
    lam = lam.clamp_min(0)[:, None]
    scale = lam.max()
    if float(scale) > 0:
        lam = lam / scale
    if w2 is None:
        assert z2 is not None, "_spectrum passes z2 (kept rows) or w2 (statistics)"
        w2 = lam * z2
    elif float(scale) > 0:
        w2 = w2 / scale
    eps = torch.finfo(lam.dtype).eps
    noise_free = z2 is not None and float(lam.min()) > float(lam.max()) * max(n, d) * eps
    # Unless β = ∞ is an ordinary edge, ‖Fm − y‖² is floored at ε₆₄·max(N, D)·‖y‖²: below
    # it the value is cancellation noise, and reaching it means y is an exact linear fit.
    floor = torch.zeros_like(y2) if noise_free else y2 * (eps * max(n, d))
    return _Spectrum(lam, w2, z2, y2, floor, noise_free, n, d)


def _start(sp: _Spectrum, tol: float) -> tuple[Tensor, Tensor]:
    """(α, β) at the maximum of the evidence profiled over β, per class.

    A grid over log ρ from the α = ∞ side (ρσ²_max = tol/e) to the β = ∞ side
    (ρσ²_min = e/tol) brackets the best ρ; bisections on the slope refine it to ~1e-12.
    """
    lam_min = max(float(sp.lam.min()), float(torch.finfo(sp.lam.dtype).eps) * max(sp.n, sp.d))
    lo_end = max(math.log(tol) - 1.0, -700.0)  # exp stays finite for absurdly small tol
    hi_end = min(-math.log(tol * lam_min) + 1.0, 700.0)
    grid = torch.linspace(lo_end, hi_end, _GRID, dtype=sp.lam.dtype, device=sp.lam.device)
    c = sp.y2.shape[0]
    values = torch.stack([sp.profile(torch.exp(g).expand(c))[0] for g in grid])  # (G, C)
    best = values.argmax(dim=0)
    step = grid[1] - grid[0]
    lo = (grid[best] - step).clamp_min(lo_end)
    hi = (grid[best] + step).clamp_max(hi_end)
    for _ in range(_BISECT):
        mid = 0.5 * (lo + hi)
        rising = sp.profile_slope(torch.exp(mid)) > 0
        lo = torch.where(rising, mid, lo)
        hi = torch.where(rising, hi, mid)
    rho = torch.exp(0.5 * (lo + hi))
    beta = sp.profile(rho)[1]
    return beta / rho, beta


def logme(features: Any, labels: Any, tol: float = 1e-7, max_iter: int = 10_000) -> Tensor:
    r"""LogME (You et al., ICML 2021 [1]): mean over classes of the maximum evidence per sample.

    For each class ``c`` the target is its one-hot column ``y ∈ {0,1}^N`` and the model
    ``y = F w + noise`` with prior ``w ~ N(0, α⁻¹ I_D)`` and noise precision β. The log
    evidence is

    .. math::
        \mathcal L(\alpha, \beta) = \tfrac N2 \log\beta + \tfrac D2 \log\alpha
        - \tfrac N2 \log 2\pi - \tfrac\beta2 \lVert F m - y\rVert^2 - \tfrac\alpha2 m^\top m
        - \tfrac12 \log\det(\alpha I_D + \beta F^\top F),
        \qquad m = \beta(\alpha I_D + \beta F^\top F)^{-1} F^\top y

    and the score is :math:`\frac1C \sum_c \max_{\alpha,\beta>0} \mathcal L_c / N`.

    The maximum is a fixed point of MacKay's updates [2]
    :math:`\gamma = \sum_i \frac{\beta\sigma_i^2}{\alpha + \beta\sigma_i^2}`,
    :math:`\alpha \leftarrow \gamma / m^\top m`,
    :math:`\beta \leftarrow (N - \gamma) / \lVert F m - y\rVert^2`, iterated for all
    classes at once until the relative change of both α and β is below ``tol`` (a
    :class:`LogMEConvergenceWarning` is issued if ``max_iter`` is reached first; the
    last iterate is scored). Started at α = β = 1 the iteration can need thousands of
    steps, so it starts from the maximum of the evidence profiled over β at fixed
    ρ = β/α (closed form in β; a log-ρ grid and bisection on the slope, ~100 cheap
    vector passes), where it typically stops after one or two updates.

    The supremum can lie on an edge of the (α, β) quadrant, where the fixed point runs
    off to infinity: α → ∞ when the features do not help to predict the class (w = 0),
    and, when N ≤ D and ``FFᵀ`` is invertible, β → ∞ when they fit it without noise.
    Both edge suprema have closed forms; a class stops once its iterate moves towards
    an edge and is on it to within ``tol`` (``βσ²_max < tol·α``, or ``α < tol·βσ²_min``,
    σ² in units of σ²_max), and each class is scored by the larger of its last
    iterate's evidence and the edge suprema. When ``rank(F) < N`` and a class's labels
    are an exact linear function of the features the evidence is unbounded (β → ∞);
    ``‖Fm − y‖²`` is then floored at ``ε₆₄·max(N, D)·‖y‖²`` and a
    :class:`LogMEUnboundedWarning` is issued.

    One eigendecomposition serves every class and iteration: of ``FᵀF`` (D×D) when
    N > D, otherwise of ``FFᵀ`` (N×N); its eigenvalues are the squared singular values
    ``σ_i²`` of F (those of one thin SVD), and ``mᵀm``, ``‖Fm − y‖²`` and γ are closed
    forms in them and in the projections of ``y``. For D > N,
    ``log det(αI + βFᵀF) = Σ_{i≤N} log(α + βσ_i²) + (D − N) log α``: the widely used
    reference code drops the ``(D − N) log α`` term, which changes the value and leaves
    an objective that grows without bound in α (see the tests). The score does not
    depend on the scale of the features.

    Args:
        features: ``(N, D)`` float tensor or array.
        labels: ``(N,)`` integer class ids, any label set, at least 2 classes.
        tol: stopping threshold on the relative change of α and β.
        max_iter: cap on the fixed-point iterations.

    Returns:
        0-d float64 tensor on the features' device; higher = more transferable.

    Example:
        >>> import torch
        >>> g = torch.Generator().manual_seed(0)
        >>> y = torch.arange(60) % 3
        >>> f = torch.randn(60, 5, generator=g, dtype=torch.float64)
        >>> good = f.clone()
        >>> good[:, :3] += 2 * torch.nn.functional.one_hot(y)  # a class signal
        >>> bool(logme(good, y) > logme(f, y))
        True
    """
    _check_options(tol, max_iter)
    f = check_features(features, "features")
    check_labels(labels, f.shape[0], "labels", min_classes=2)
    return logme_from_statistics(GramStatistics.from_samples(f, labels), tol, max_iter)


def logme_from_statistics(stats: GramStatistics, tol: float = 1e-7, max_iter: int = 10_000) -> Tensor:
    r"""LogME (:func:`logme`) from :class:`~tguide.metrics.statistics.GramStatistics`.

    From sufficient statistics only: for N > D the evidence of every class needs ``FᵀF``
    (``= Σaaᵀ + N·mean meanᵀ``), ``Fᵀy_c = n_c mean_c`` and ``‖y_c‖² = n_c``; for N ≤ D the
    statistics keep the rows (the N×N route). One eigendecomposition (cached on the
    statistics), then the fixed point of :func:`maximise_evidence` for all classes at once;
    the mean over classes.
    """
    _check_options(tol, max_iter)
    c = stats.num_classes()
    if c < 2:
        raise ValueError(
            f"`labels` has {c} distinct class(es) but this metric needs at least 2; "
            "a transferability score is undefined for a single class. Add samples of other classes."
        )
    return maximise_evidence(_spectrum(stats), tol, max_iter).mean()


def maximise_evidence(sp: _Spectrum, tol: float = 1e-7, max_iter: int = 10_000) -> Tensor:
    """The evidence fixed point of every class on a spectrum: maximum log evidence per sample ``(C,)``."""
    c = sp.y2.shape[0]
    n, lam = sp.n, sp.lam
    lam_max, lam_min = float(lam.max()), float(lam.min())

    alpha, beta = _start(sp, tol)
    done = torch.zeros(c, dtype=torch.bool, device=lam.device)
    change = math.inf
    for _ in range(int(max_iter)):
        den = alpha + beta * lam
        gamma = (beta * lam / den).sum(dim=0)
        m2 = (beta**2 * sp.w2 / den**2).sum(dim=0)
        alpha_new = gamma / m2
        beta_new = (n - gamma) / sp.residual(alpha, beta, den)
        ok = torch.isfinite(alpha_new) & torch.isfinite(beta_new) & (alpha_new > 0) & (beta_new > 0)
        alpha_new = torch.where(ok, alpha_new, alpha)
        beta_new = torch.where(ok, beta_new, beta)
        rel = torch.maximum((alpha_new - alpha).abs() / alpha_new, (beta_new - beta).abs() / beta_new)
        # an edge supremum is never reached by the relative criterion: stop a class once
        # it runs towards an edge and sits on it to within tol (`edges()` has its value)
        rho, rho_new = beta / alpha, beta_new / alpha_new
        at_edge = (rho_new < rho) & (rho_new * lam_max < tol)
        if sp.noise_free:
            at_edge |= (rho_new > rho) & (rho_new * lam_min * tol > 1)
        alpha = torch.where(done, alpha, alpha_new)
        beta = torch.where(done, beta, beta_new)
        done = done | (rel < tol) | at_edge | ~ok
        if bool(done.all()):
            break
        change = float(rel[~done].max())
    else:
        warnings.warn(
            f"logme: the evidence fixed point did not converge in max_iter={max_iter} iterations "
            f"for {int((~done).sum())} of {c} classes (largest relative change of α or β "
            f"{change:.3g} > tol={tol:g}); those classes are scored at their last iterate. "
            "Raise `max_iter` or `tol`.",
            LogMEConvergenceWarning,
            stacklevel=stacklevel_outside("tguide.metrics"),
        )

    unbounded = (sp.residual(alpha, beta, alpha + beta * lam) <= sp.floor) & (sp.floor > 0)
    if bool(unbounded.any()):
        warnings.warn(
            f"logme: for {int(unbounded.sum())} of {c} classes the one-hot labels are a numerically "
            "exact linear function of the features (least-squares residual at float64 rounding level "
            "while rank(F) < N), so the evidence grows without bound as β → ∞. Those classes are scored "
            "with the residual floored at the rounding level, which inflates the score; check the "
            "features for label leakage or duplicated label columns.",
            LogMEUnboundedWarning,
            stacklevel=stacklevel_outside("tguide.metrics"),
        )
    best = torch.maximum(sp.evidence(alpha, beta), sp.edges())  # (C,)
    return best / n

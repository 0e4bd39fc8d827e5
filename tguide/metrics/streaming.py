"""Exact sufficient statistics of a feature stream, their merges, and the scores computed from them.

The streaming classes of :mod:`tguide.metrics.stateful` keep, instead of the samples, the
statistics below (float64 whatever the input's dtype), per *group* of rows: the whole stream
(one group) or one group per label value (per class):

=========  ==================  ===========================================================
field      shape               meaning (``a_i = x_i − mean`` of the group)
=========  ==================  ===========================================================
``key``    ``(K, k)`` int64    the group's label value(s) (``k = 1``; NCE: ``(z, y)`` pairs)
``n``      ``(K,)``            rows in the group
``mean``   ``(K, D)``          the group's mean
``m2``     ``(K, D, D)``       centred Gram ``Σ a aᵀ``
``m2d``    ``(K, D)``          its diagonal only ``Σ a∘a`` (GBC)
``t3``     ``(K, D)``          ``Σ ‖a‖² a`` (third moment, Ledoit–Wolf)
``q4``     ``(K,)``            ``Σ ‖a‖⁴`` (fourth moment, Ledoit–Wolf)
=========  ==================  ===========================================================

Two records are merged by the pairwise update of Chan, Golub and LeVeque [1] (centred
statistics, never raw uncentred sums): with ``δ = mean_b − mean_a``,
``mean = mean_a + (n_b/n) δ``, ``m2 = m2_a + m2_b + (n_a n_b / n) δδᵀ``; the third and fourth
moments are shifted exactly to the merged mean before they are added (``e = mean_g − mean``,
``Σa_g = 0``): ``t3 ← t3 + 2 m2 e + tr(m2) e + n‖e‖² e`` and
``q4 ← q4 + 4 eᵀm2 e + 4 eᵀt3 + 2‖e‖² tr(m2) + n‖e‖⁴``. Records with different key sets
(classes seen by one batch or one process only) are merged key by key, so every label set
works, in any batch order. Nothing here imports torchmetrics.

References:
    [1] T. F. Chan, G. H. Golub, R. J. LeVeque, "Updating formulae and a pairwise algorithm for
        computing sample variances", COMPSTAT 1982 (and Stanford STAN-CS-79-773, 1979).
"""

from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor

from tguide.metrics._validate import check_min_per_class

__all__ = [
    "FIELD_NDIM",
    "batch_record",
    "merge",
    "merge_all",
    "hscore_from_stats",
    "hscore_shrinkage_from_stats",
    "transrate_from_stats",
    "transrate_comparable_from_stats",
    "logme_from_stats",
    "gbc_from_stats",
    "nce_from_counts",
    "record_nbytes",
]

Record = dict[str, Tensor]

#: number of dimensions of each field (for the empty placeholders of a process without data)
FIELD_NDIM = {"key": 2, "n": 1, "mean": 2, "m2": 3, "m2d": 2, "t3": 2, "q4": 1}
_MOMENT_ORDER = ("mean", "m2d", "m2", "t3", "q4")


def batch_record(x: Tensor | None, keys: Tensor, fields: Iterable[str]) -> Record:
    """The statistics ``fields`` of the rows ``x (B, D)`` (float64) grouped by ``keys (B, k)`` int64.

    ``x`` may be ``None`` when only counts are kept. Groups come out sorted by key.
    """
    fields = set(fields)
    uniq, inv = torch.unique(keys, dim=0, return_inverse=True)
    k = uniq.shape[0]
    dtype = torch.float64
    device = keys.device
    counts = torch.bincount(inv, minlength=k)
    rec: Record = {"key": uniq, "n": counts.to(dtype)}
    if x is None or not (fields & set(_MOMENT_ORDER)):
        return rec
    d = x.shape[1]
    if k == 1:
        mean = x.mean(dim=0, keepdim=True)
    else:
        mean = torch.zeros(k, d, dtype=dtype, device=device).index_add_(0, inv, x) / rec["n"][:, None]
    rec["mean"] = mean
    if not (fields & {"m2", "m2d", "t3", "q4"}):
        return rec
    a = x - mean if k == 1 else x - mean[inv]  # rows centred on their own group's mean
    if "m2d" in fields:
        rec["m2d"] = torch.zeros(k, d, dtype=dtype, device=device).index_add_(0, inv, a * a)
    if "m2" in fields:
        if k == 1:
            rec["m2"] = _gram(a)[None]
        else:
            order = torch.argsort(inv, stable=True)
            blocks = torch.split(a[order], counts.tolist())
            rec["m2"] = torch.stack([_gram(blk) for blk in blocks])
    if "t3" in fields or "q4" in fields:
        sq = (a * a).sum(dim=1)
        rec["t3"] = torch.zeros(k, d, dtype=dtype, device=device).index_add_(0, inv, sq[:, None] * a)
        rec["q4"] = torch.zeros(k, dtype=dtype, device=device).index_add_(0, inv, sq * sq)
    return rec


def _gram(a: Tensor) -> Tensor:
    """``aᵀa`` (float64). On the CPU through numpy, whose ``a.T @ a`` is a symmetric rank-k
    update (BLAS ``syrk``, half the flops of the general product torch runs): the Gram is the
    dominant cost of every update."""
    if a.device.type == "cpu" and not a.requires_grad:
        an = a.numpy()
        return torch.from_numpy(an.T @ an)
    return a.T @ a


def _empty_like(rec: Record, k: int) -> Record:
    """``k`` zero groups with the fields and shapes of ``rec`` (keys to be filled in)."""
    return {f: torch.zeros((k, *v.shape[1:]), dtype=v.dtype, device=v.device) for f, v in rec.items()}


def _combine_(a: Record, b: Record) -> None:
    """Merge aligned records (same keys, row by row) into ``a``, in place: Chan et al.'s pairwise
    update. ``a`` may hold empty groups (``n = 0``); every merged group must have ``n > 0``."""
    n = a["n"] + b["n"]
    if "mean" in a:
        wb = b["n"] / n
        delta = b["mean"] - a["mean"]
        mean = a["mean"] + wb[:, None] * delta
        if "t3" in a:  # shift each side's moments to the merged mean (with the old m2), then add
            t3 = torch.zeros_like(a["t3"])
            q4 = torch.zeros_like(a["q4"])
            for r in (a, b):
                e = r["mean"] - mean  # (K, D)
                m2e = torch.bmm(r["m2"], e[:, :, None])[:, :, 0]  # (K, D)
                tr = r["m2"].diagonal(dim1=1, dim2=2).sum(dim=1)  # (K,)
                ee = (e * e).sum(dim=1)  # (K,)
                t3 += r["t3"] + 2 * m2e + (tr + r["n"] * ee)[:, None] * e
                q4 += r["q4"] + 4 * (e * m2e).sum(dim=1) + 4 * (e * r["t3"]).sum(dim=1) + 2 * ee * tr + r["n"] * ee * ee
            a["t3"].copy_(t3)
            a["q4"].copy_(q4)
        w = a["n"] * wb  # n_a n_b / n
        if "m2d" in a:
            a["m2d"].add_(b["m2d"]).add_(w[:, None] * delta * delta)
        if "m2" in a:
            a["m2"].add_(b["m2"]).baddbmm_((w[:, None] * delta)[:, :, None], delta[:, None, :])
        a["mean"].copy_(mean)
    a["n"].copy_(n)


def merge(state: Record | None, new: Record) -> Record:
    """``state`` and ``new`` merged group by group (keys of either side; new keys appended).

    ``state`` is updated in place (its touched groups only, or all of it when ``new`` has the
    same keys in the same order, the usual case after the first batches)."""
    if state is None or state["key"].shape[0] == 0:
        return {f: v.clone() for f, v in new.items()}
    if new["key"].shape[0] == 0:
        return state
    ks = state["key"].shape[0]
    if new["key"].shape == state["key"].shape and torch.equal(new["key"], state["key"]):
        _combine_(state, new)
        return state
    _, inv = torch.unique(torch.cat([state["key"], new["key"]]), dim=0, return_inverse=True)
    inv_state, inv_new = inv[:ks], inv[ks:]
    slot_of = torch.full((int(inv.max()) + 1,), -1, dtype=torch.long, device=inv.device)
    slot_of[inv_state] = torch.arange(ks, device=inv.device)
    fresh = slot_of[inv_new] < 0
    n_fresh = int(fresh.sum())
    if n_fresh:
        grow = _empty_like(state, n_fresh)
        grow["key"] = new["key"][fresh]
        state = {f: torch.cat([state[f], grow[f]]) for f in state}
        slot_of[inv_new[fresh]] = torch.arange(ks, ks + n_fresh, device=inv.device)
    idx = slot_of[inv_new]
    sub = {f: v[idx] for f, v in state.items()}
    _combine_(sub, new)
    for f, v in sub.items():
        state[f][idx] = v
    return state


def merge_all(records: Iterable[Record]) -> Record | None:
    """Fold records (e.g. one per process) into one, sorted by key; ``None`` if all are empty."""
    out: Record | None = None
    for rec in records:
        if rec["key"].shape[0] == 0:  # a placeholder of a process without data
            continue
        out = merge(out, rec)
    if out is None:
        return None
    order = _key_order(out["key"])
    return {f: v[order] for f, v in out.items()}


def _key_order(key: Tensor) -> Tensor:
    uniq, inv = torch.unique(key, dim=0, return_inverse=True)
    order = torch.empty_like(inv)
    order[inv] = torch.arange(inv.shape[0], device=inv.device)
    return order


# ----------------------------------------------------------------------------- scores


def _need_classes(c: int, name: str = "labels") -> None:
    if c < 2:
        raise ValueError(f"`{name}` has {c} distinct class(es); the score needs at least 2.")


def _global_from_classes(cls: Record) -> tuple[Tensor, Tensor, Tensor]:
    """``n``, global mean and the per-class offsets ``e_c = mean_c − mean`` from per-class records."""
    n = cls["n"].sum()
    mean = (cls["n"][:, None] * cls["mean"]).sum(dim=0) / n
    return n, mean, cls["mean"] - mean


def _energy(glob: Record, cls: Record) -> tuple[Tensor, Tensor, int, int]:
    """Eigenvalues of ``S = ZᵀZ/N`` and the between-class energy along each eigenvector
    (the N ≥ D route of :func:`tguide.metrics.functional.hscore._spectrum`)."""
    n = glob["n"][0]
    d = glob["mean"].shape[1]
    gram = glob["m2"][0]
    lam, v = torch.linalg.eigh(0.5 * (gram + gram.T) / n)
    e = cls["mean"] - glob["mean"]  # (C, D) centred class means d_c
    m = e * torch.sqrt(cls["n"] / n)[:, None]  # rows sqrt(n_c/N) d_c: B = MᵀM
    energy = ((m @ v) ** 2).sum(dim=0)
    return lam.clamp_min(0), energy, int(n), d


def hscore_from_stats(glob: Record, cls: Record) -> Tensor:
    """:func:`~tguide.metrics.functional.hscore.hscore` from the global ``(n, mean, m2)`` and the
    per-class ``(n, mean)``: ``Σ_{λ_k > t} v_kᵀBv_k / λ_k`` (same eigenvalue cutoff)."""
    from tguide.metrics.functional.hscore import _rank_cut

    _need_classes(cls["key"].shape[0])
    lam, energy, n, d = _energy(glob, cls)
    keep = lam > _rank_cut(lam, n, d)
    return torch.where(keep, energy / torch.where(keep, lam, torch.ones_like(lam)), torch.zeros_like(lam)).sum()


def hscore_shrinkage_from_stats(glob: Record, cls: Record) -> Tensor:
    """:func:`~tguide.metrics.functional.hscore.hscore_shrinkage` from the global
    ``(n, mean, m2, q4)`` and the per-class ``(n, mean)``. The Ledoit–Wolf intensity needs
    ``Σ‖z_i‖⁴`` about the final mean: ``q4``, kept exact by the shifts of :func:`merge`
    (``Σ‖z‖² = tr m2``, ``‖S‖_F² = ‖m2‖_F²/N²``)."""
    from tguide.metrics.functional.hscore import _rank_cut

    _need_classes(cls["key"].shape[0])
    lam, energy, n, d = _energy(glob, cls)
    gram = glob["m2"][0]
    gram = 0.5 * (gram + gram.T)
    trace = gram.diagonal().sum() / n
    s_fro2 = (gram * gram).sum() / n**2
    mu = trace / d
    delta = (s_fro2 - 2 * mu * trace + d * mu**2) / d
    beta = (glob["q4"][0] / n - s_fro2) / (d * n)
    if float(delta) <= 0.0:
        alpha = torch.zeros((), dtype=gram.dtype, device=gram.device)
    else:
        alpha = (torch.minimum(beta, delta) / delta).clamp(0.0, 1.0)
    mu_lam = lam.sum() / d
    shrunk = (1 - alpha) * lam + alpha * mu_lam
    keep = shrunk > _rank_cut(shrunk, n, d)
    denom = torch.where(keep, shrunk, torch.ones_like(shrunk))
    return ((1 - alpha) * torch.where(keep, energy / denom, torch.zeros_like(shrunk))).sum()


def _class_grams(cls: Record) -> tuple[Tensor, Tensor]:
    """``n`` and the per-class Gram matrices about the *global* mean ``G_c = m2_c + n_c e_c e_cᵀ``."""
    n, _, e = _global_from_classes(cls)
    grams = cls["m2"] + cls["n"][:, None, None] * e[:, :, None] * e[:, None, :]
    return n, grams


def _transrate_grams(n: Tensor, counts: Tensor, grams: Tensor, eps: float) -> Tensor:
    from tguide.metrics.functional.transrate import _half_logdet_eye_plus

    nf = float(n)
    whole = _half_logdet_eye_plus(grams.sum(dim=0), 1.0 / (nf * eps))
    conditional = torch.zeros((), dtype=grams.dtype, device=grams.device)
    for g, nc in zip(grams, counts.tolist()):
        conditional = conditional + (nc / nf) * _half_logdet_eye_plus(g, 1.0 / (nc * eps))
    return whole - conditional


def transrate_from_stats(cls: Record, eps: float = 1e-4) -> Tensor:
    """:func:`~tguide.metrics.functional.transrate.transrate` from per-class ``(n, mean, m2)``:
    ``R(Z) − Σ (n_c/n) R(Z_c)`` with ``ZᵀZ = Σ_c G_c`` and ``Z_cᵀZ_c = G_c`` (D×D route)."""
    _need_classes(cls["key"].shape[0])
    n, grams = _class_grams(cls)
    return _transrate_grams(n, cls["n"], grams, eps)


def transrate_comparable_from_stats(cls: Record, rank: int = 32, eps: float = 0.1) -> Tensor:
    """:func:`~tguide.metrics.functional.transrate.transrate_comparable` from per-class
    ``(n, mean, m2)``: the top-``r`` principal axes ``V_r`` of ``ZᵀZ`` and the projected
    class Grams ``V_rᵀ G_c V_r / λ̄_r`` (the projected features have mean 0)."""
    _need_classes(cls["key"].shape[0])
    n, grams = _class_grams(cls)
    nf = float(n)
    d = grams.shape[1]
    total = grams.sum(dim=0)
    r = max(1, min(int(rank), int(nf) - 1, d))
    lam, v = torch.linalg.eigh(0.5 * (total + total.T))
    lam, v = lam.flip(0)[:r].clamp_min(0), v.flip(1)[:, :r]
    mean_var = lam.sum() / (nf * r)
    if float(mean_var) <= float(torch.finfo(total.dtype).eps) * float(total.diagonal().sum() / nf + 1e-300):
        raise ValueError("`features` have no variance (every row is the same); no class structure to score.")
    proj = v.T @ grams @ v / mean_var  # (C, r, r)
    return _transrate_grams(n, cls["n"], proj, float(eps))


def logme_from_stats(glob: Record, cls: Record, tol: float = 1e-7, max_iter: int = 10_000) -> Tensor:
    """:func:`~tguide.metrics.functional.logme.logme` for N > D from ``FᵀF = m2 + n·mean meanᵀ``,
    ``FᵀY = (n_c mean_c)ᵀ`` and ``‖y_c‖² = n_c``: the functional's own spectrum and fixed point
    (:func:`~tguide.metrics.functional.logme.maximise_evidence`) run on them."""
    from tguide.metrics.functional.logme import _check_options, maximise_evidence, spectrum_from_gram

    _check_options(tol, max_iter)
    _need_classes(cls["key"].shape[0])
    n = glob["n"][0]
    mu = glob["mean"][0]
    gram = glob["m2"][0] + n * mu[:, None] * mu[None, :]
    fty = (cls["n"][:, None] * cls["mean"]).T  # (D, C)
    sp = spectrum_from_gram(gram, fty, cls["n"].clone(), int(n))
    return maximise_evidence(sp, tol, max_iter, stacklevel=4).mean()


def gbc_from_stats(cls: Record, **kwargs: Any) -> Tensor:
    """:func:`~tguide.metrics.functional.gbc.gbc` (``pca_dim=None``) from per-class
    ``(n, mean, m2d)``: GBC depends on the data only through the class means and per-dimension
    variances, so it is evaluated on a two-row surrogate per class (``mean_c ± sd_c``, whose
    mean and 1/n variance are exactly those), after removing the global mean."""
    from tguide.metrics.functional.gbc import gbc

    check_min_per_class(cls["n"].to(torch.long), 2, "labels", why="GBC fits a Gaussian to each class")
    _need_classes(cls["key"].shape[0])
    _, _, e = _global_from_classes(cls)
    sd = torch.sqrt((cls["m2d"] / cls["n"][:, None]).clamp_min(0))
    rows = torch.cat([e + sd, e - sd])
    labels = torch.arange(e.shape[0], device=e.device).repeat(2)
    return gbc(rows, labels, **kwargs)


def nce_from_counts(table: Record) -> Tensor:
    """:func:`~tguide.metrics.functional.leep.nce` from the joint counts of ``(source label, label)``
    pairs (keys ``(K, 2)``): ``Σ P̂(z, y) log(P̂(z, y)/P̂(z))``."""
    key, counts = table["key"], table["n"]
    _need_classes(int(torch.unique(key[:, 1]).numel()))
    n = counts.sum()
    joint = counts / n
    _, z = torch.unique(key[:, 0], return_inverse=True)
    marginal = torch.zeros(int(z.max()) + 1, dtype=joint.dtype, device=joint.device).index_add_(0, z, joint)
    return (joint * torch.log(joint / marginal[z])).sum()


def record_nbytes(rec: Record) -> int:
    """Bytes held by a record (what a process sends when the statistics are gathered)."""
    return int(sum(v.numel() * v.element_size() for v in rec.values()))


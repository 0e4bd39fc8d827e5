"""Keyed centred moments of a stream of rows and their exact merges (torch only).

The statistics types of :mod:`tguide.metrics.statistics` are built on these *records*: the
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
works, in any batch order. No score is computed here (each score's one formula lives in its
functional module); nothing here imports torchmetrics.

References:
    [1] T. F. Chan, G. H. Golub, R. J. LeVeque, "Updating formulae and a pairwise algorithm for
        computing sample variances", COMPSTAT 1982 (and Stanford STAN-CS-79-773, 1979).
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor

__all__ = ["FIELD_NDIM", "Record", "batch_record", "clone", "merge", "merge_all", "record_nbytes"]

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


def clone(rec: Record) -> Record:
    """A copy of ``rec`` that shares no memory with it."""
    return {f: v.clone() for f, v in rec.items()}


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


def record_nbytes(rec: Record) -> int:
    """Bytes held by a record (what a process sends when the statistics are gathered)."""
    return int(sum(v.numel() * v.element_size() for v in rec.values()))

"""One episode of the few-shot regime grid (:mod:`tguide.studies.fewshot.regimes`): the methods
(vanilla fine-tune, OTCE pre-fine-tune and its variants, prototypes, linear probe) and the
task properties (W_D, W_T, H(joint)) of an episode (:func:`run_episode`), and the step diagnosis.
"""

from __future__ import annotations

import copy
import time
import warnings
from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tguide.features import eval_mode
from tguide.metrics.functional.otce import OTCEConvergenceWarning, otce_coupling, squared_euclidean
from tguide.metrics.functional.task_distance import joint_labels, task_distance
from tguide.models.tensor_fit import fit_tensors
from tguide.select.pretune import feature_extractor, otce_pretune, trainable_parameters
from tguide.studies.fewshot.episodes import Episode
from tguide.studies.fewshot.regime_data import PairData
from tguide.studies.fewshot.regime_grid import FIXED


def _seed(episode: Episode) -> int:
    return 1_000_003 * int(episode.seed) + int(episode.index)


def step2(
    net: nn.Module,
    x: Tensor,
    y: Tensor,
    n_way: int,
    *,
    head: str,
    steps: int,
    lr: float,
    seed: int,
    new_head: bool = True,
) -> nn.Module:
    """Full-batch Adam fine-tune of a copy of ``net`` (eval mode: BatchNorm statistics frozen), new head."""
    model = copy.deepcopy(net)
    if new_head:
        torch.manual_seed(int(seed))
        old = getattr(model, head)
        setattr(model, head, nn.Linear(old.in_features, int(n_way)))
    fit_tensors(model, x, y, lr=lr, steps=int(steps), optimizer="adam", seed=seed, train_mode=False)
    return model


@torch.no_grad()
def _acc(net: nn.Module, x: Tensor, y: Tensor) -> float:
    net.eval()
    return float((net(x).argmax(1) == y).double().mean())


def _coupling(
    fs: Tensor, ys: Tensor, ft: Tensor, yt: Tensor, reg: float, max_iter: int
) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor]:
    """(plan, cost, W_D, W_T, H(Y_s, Y_t)) on L2-normalised float64 features."""
    fs = nn.functional.normalize(fs.double(), dim=1)
    ft = nn.functional.normalize(ft.double(), dim=1)
    cost = squared_euclidean(fs, ft)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", OTCEConvergenceWarning)
        plan = otce_coupling(cost, solver="sinkhorn", reg=reg, max_iter=max_iter, tol=1e-6)
    _, cs_codes = torch.unique(ys, return_inverse=True)
    _, ct_codes = torch.unique(yt, return_inverse=True)
    cs, ct = int(cs_codes.max()) + 1, int(ct_codes.max()) + 1
    wd = (plan * cost).sum()
    wt = task_distance(plan, cs_codes, cs, ct_codes, ct)
    joint = joint_labels(plan, cs_codes, cs, ct_codes, ct)
    pj = joint[joint > 0]
    hj = -(pj * pj.log()).sum()
    return plan, cost, wd, wt, hj


@torch.no_grad()
def properties(
    net: nn.Module,
    src_x: Tensor,
    src_y: Tensor,
    xs: Tensor,
    ys: Tensor,
    *,
    batch: int,
    reg: float,
    max_iter: int,
    seed: int,
) -> dict[str, float]:
    """W_D, W_T and H(Y_s, Y_t) before step 1, on the first source batch step 1 would draw."""
    gen = torch.Generator().manual_seed(int(seed))
    idx = torch.randperm(src_x.shape[0], generator=gen)[: min(batch, src_x.shape[0])]
    ext = feature_extractor(net)
    with eval_mode(ext):
        fs, ft = ext(src_x[idx]), ext(xs)
    _, _, wd, wt, hj = _coupling(fs, src_y[idx], ft, ys, reg, max_iter)
    return {"w_d": float(wd), "w_t": float(wt), "h_joint": float(hj)}


def pretune_wd(
    net: nn.Module,
    src_x: Tensor,
    src_y: Tensor,
    xs: Tensor,
    ys: Tensor,
    *,
    steps: int,
    lr: float,
    batch: int,
    reg: float,
    max_iter: int,
    lam: float,
    seed: int,
    **_: Any,
) -> list[float]:
    """Variant b: Adam on W_T + lam·W_D/W_D⁰ (same batches as :func:`otce_pretune` with that seed)."""
    ext = feature_extractor(net)
    params = [p for _, p in trainable_parameters(ext, "all")]
    opt = torch.optim.Adam(params, lr=lr)
    gen = torch.Generator().manual_seed(int(seed))
    wd0 = None
    hist = []
    with eval_mode(ext):
        for step in range(steps + 1):
            idx = torch.randperm(src_x.shape[0], generator=gen)[: min(batch, src_x.shape[0])]
            _plan, _cost, wd, wt, _h = _coupling(ext(src_x[idx]), src_y[idx], ext(xs), ys, reg, max_iter)
            if wd0 is None:
                wd0 = float(wd.detach()) or 1.0
            loss = wt + lam * wd / wd0
            hist.append(float(loss.detach()))
            if step == steps:
                break
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    return hist


def run_episode(
    data: PairData,
    split: str,
    episode: Episode,
    methods: Sequence[str],
    hp: dict[str, Any],
    fixed: dict[str, Any] = FIXED,
) -> dict[str, Any]:
    """Query accuracy of each method on one episode (+ properties and seconds)."""
    x, _, _ = data.pools[split]
    xs, ys = x[episode.support], episode.support_labels
    xq, yq = x[episode.query], episode.query_labels
    n_way = int(episode.classes.numel())
    seed = _seed(episode)
    s1 = dict(fixed["step1"])
    s2 = {"head": data.head, "steps": fixed["step2"]["steps"], "lr": hp["step2_lr"], "seed": seed}
    out: dict[str, Any] = {}
    for m in methods:
        t0 = time.perf_counter()
        if m == "vanilla":
            out[m] = _acc(step2(data.net, xs, ys, n_way, **s2), xq, yq)
        elif m in ("otce", "otce_last", "otce_wd"):
            if m == "otce" and "w_t" not in out:
                out.update(
                    properties(
                        data.net,
                        data.src_x,
                        data.src_y,
                        xs,
                        ys,
                        batch=s1["batch"],
                        reg=s1["reg"],
                        max_iter=s1["max_iter"],
                        seed=seed,
                    )
                )
            pre = copy.deepcopy(data.net)
            if m == "otce_wd":
                pretune_wd(
                    pre, data.src_x, data.src_y, xs, ys, lr=hp["step1_lr"], lam=fixed["lambda_wd"], seed=seed, **s1
                )
            else:
                otce_pretune(
                    pre,
                    data.src_x,
                    data.src_y,
                    xs,
                    ys,
                    lr=hp["step1_lr"],
                    seed=seed,
                    trainable="all" if m == "otce" else data.last_block,
                    **s1,
                )
            out[m] = _acc(step2(pre, xs, ys, n_way, **s2), xq, yq)
        elif m in ("proto", "probe"):
            ext = feature_extractor(data.net)
            with eval_mode(ext), torch.no_grad():
                fs, fq = ext(xs), ext(xq)
            if m == "proto":
                fsn, fqn = nn.functional.normalize(fs, dim=1), nn.functional.normalize(fq, dim=1)
                means = torch.stack([fsn[ys == c].mean(0) for c in range(n_way)])
                out[m] = float((torch.cdist(fqn, means).argmin(1) == yq).double().mean())
            else:
                torch.manual_seed(seed)
                lin = nn.Linear(fs.shape[1], n_way)
                fit_tensors(lin, fs, ys, lr=fixed["probe"]["lr"], steps=int(fixed["probe"]["steps"]), optimizer="adam")
                with torch.no_grad():
                    out[m] = float((lin(fq).argmax(1) == yq).double().mean())
        elif m == "scratch":
            if data.scratch is None:
                continue
            torch.manual_seed(seed)
            out[m] = _acc(step2(data.scratch(), xs, ys, n_way, new_head=True, **s2), xq, yq)
        else:
            raise ValueError(f"unknown method {m!r}")
        out[f"{m}_s"] = time.perf_counter() - t0
    return out


# ----------------------------------------------------------------------------- statistics

r"""When does the OTCE pre-fine-tune pay? Real pretrained sources, 1- and 5-shot, growing domain gaps.

The grid below was fixed **before any test episode was run** (it is the constant :data:`GRID`).

Sources (real pretrained zoo checkpoints, :func:`tguide.select.zoo.load_zoo_model`):

- ``lenet5_mnist`` (advertorch LeNet5, trained on MNIST *train*). Source data for step 1: the
  offline MNIST 10k *test* set — all the MNIST we have — minus the 3,000 images that MNIST-M's
  offline files were made from (7,000 images, the same for every LeNet cell). Input 28 px grey
  in [0, 1] (the zoo's input spec).
- ``resnet20_cifar10`` (CIFAR ResNet-20, trained on CIFAR-10 train). Source data: the offline
  CIFAR-10 JPEG test folder (3,000 images, 10 classes), ImageNet mean/std, 32 px.

Targets, by growing domain gap (all 5-way; shots 1 and 5; 15 queries per class, 10 on
Office-31 whose smallest classes have 11–21 images):

========================  =================  ================================  ============================
cell pair                 target             validation classes                test classes
========================  =================  ================================  ============================
lenet5_mnist → usps       USPS 28 px (pad)   digits 0–4, USPS *train* file      digits 5–9, USPS *test* file
lenet5_mnist → mnist_m    MNIST-M, grey      digits 0–4                          digits 5–9
lenet5_mnist → omniglot   Omniglot chars     alphabets Japanese (katakana),     the 6 other alphabets
                                             Tagalog
resnet20 → mnist_m        MNIST-M RGB 32 px  digits 0–4                          digits 5–9
resnet20 → office31_webcam  webcam 32 px     classes 0, 3, 6, …, 30 (sorted)     the other 20 classes
========================  =================  ================================  ============================

MNIST-M for LeNet goes through :func:`~tguide.select.zoo.zoo_transform` of the LeNet entry with
``resize="stretch"`` (RGB → ITU-R 601 grey, 32 → 28 px; the entry's default ``"pad"`` policy is
meant for 16-px USPS digits and would shrink the already-framed MNIST-M digit to 12 px).
A "CIFAR classes unseen by the source" cell is impossible here: ``resnet20_cifar10`` was trained
on all 10 CIFAR-10 classes, so every CIFAR class is seen; such a cell needs a source fine-tuned
on a class split, which is not a real pretrained checkpoint, so MNIST-M and Office-31 webcam are
the larger-gap targets for ResNet-20.

Methods, all on the *same* episodes, all with the same new-head initialisation per episode:

- ``vanilla``: step 2 only (full-batch Adam on the support set, cross-entropy, new head).
- ``otce`` (variant a, the paper): step 1 = :func:`~tguide.select.pretune.otce_pretune` minimising
  W_T alone, every fine-tuned parameter trainable, then the same step 2.
- ``otce_wd`` (variant b): step 1 minimises W_T + λ·W_D/W_D⁰ (W_D = ⟨π, C⟩ of the same
  coupling, divided by its detached value at the first step so λ is scale-free), λ = 1 fixed
  a priori.
- ``otce_last`` (variant c): step 1 moves only the last block (LeNet: ``linear1``, the last
  trunk layer; ResNet-20: ``layer3.2``, the last BasicBlock).
- ``proto``: nearest class mean of L2-normalised frozen source features; ``probe``: a linear
  head on the frozen features (same init, 50 full-batch Adam steps, lr 0.01, fixed a priori).
- ``scratch`` (LeNet only): random-init LeNet5 trained by step 2.
- Variant (d), class-balanced vs proportional source batches, is **not run**: both source sets
  are (near) class-balanced (CIFAR 300 per class; MNIST 892–1,135 per class), so the two
  samplers differ only in per-batch variance; the time went to episodes instead.

Cost cuts, fixed before the test episodes: for ResNet-20 every method fine-tunes only
``layer3`` (+ the head): the stem, ``layer1`` and ``layer2`` are frozen and their output is
precomputed once (a 5-image support set cannot sensibly retrain BatchNorm nets end to end,
and it makes ResNet episodes 3× cheaper). Step 2 and step 1 run in eval mode (BatchNorm
uses its running statistics). Step 1: 10 Adam steps, 40 source samples per step, Sinkhorn
``reg`` = 0.1 (relative to the mean cost), 30 iterations, L2-normalised features. Step 2:
20 full-batch Adam steps. (Timed on one validation episode per cell before launch: with 25
step-2 steps and 50 Sinkhorn iterations the 100 main episodes alone would take ~60 min.)

Hyper-parameters chosen on validation episodes only (5 per shot per target pair, 10 per pair, sampler seed
1000, classes disjoint from the test classes), per target pair, pooled over the two shots:
step-2 lr ∈ {1e-3, 3e-3, 1e-2} by mean vanilla accuracy, then step-1 lr ∈ {3e-4, 3e-3} by mean
``otce`` accuracy with that step-2 lr (ties → the smaller lr). The step-1 lr is reused for
variants b and c.

Test: 100 episodes per cell (sampler seed 0) for ``vanilla``, ``otce``, ``proto``, ``probe``;
the variant methods (``otce_wd``, ``otce_last``, ``scratch``) run afterwards, round-robin over
the cells, until the wall-time budget is spent; their episode count is reported per cell.
Paired differences (method − vanilla) get a 95% Student-t interval (:func:`tguide.stats.mean_ci`).

Per cell properties (means over the test episodes, measured before step 1 on the first
source batch): W_D = ⟨π, C⟩ (L2-normalised features), W_T = H(Y_t|Y_s), and the
source–target joint label entropy H(Y_s, Y_t) of the coupling's label table P̂(y_s, y_t).
"""

from __future__ import annotations

import copy
import json
import os
import time
import warnings
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from tguide.features import eval_mode
from tguide.metrics.functional.otce import OTCEConvergenceWarning, otce_coupling, squared_euclidean
from tguide.metrics.functional.task_distance import joint_labels, task_distance
from tguide.models.tensor_fit import fit_tensors
from tguide.select.pretune import feature_extractor, otce_pretune, trainable_parameters
from tguide.stats import mean_ci
from tguide.studies.fewshot.episodes import Episode, EpisodeSampler

__all__ = [
    "GRID",
    "PAIRS",
    "SHOTS",
    "MAIN_METHODS",
    "VARIANT_METHODS",
    "FIXED",
    "HP_GRID",
    "Cell",
    "cells",
    "paired_stats",
    "summarise_cells",
    "loo_rule",
    "loo_pays_rule",
    "diagnose_steps",
    "run_grid",
    "CSV_COLUMNS",
]

SHOTS = (1, 5)
N_WAY = 5
PAIRS: tuple[dict[str, Any], ...] = (
    {
        "source": "lenet5_mnist",
        "target": "usps",
        "n_query": 15,
        "val": "USPS train file, digits 0-4",
        "test": "USPS test file, digits 5-9",
    },
    {"source": "lenet5_mnist", "target": "mnist_m", "n_query": 15, "val": "digits 0-4", "test": "digits 5-9"},
    {
        "source": "lenet5_mnist",
        "target": "omniglot",
        "n_query": 15,
        "val": "alphabets Japanese_(katakana), Tagalog",
        "test": "the other 6 alphabets",
    },
    {"source": "resnet20_cifar10", "target": "mnist_m", "n_query": 15, "val": "digits 0-4", "test": "digits 5-9"},
    {
        "source": "resnet20_cifar10",
        "target": "office31_webcam",
        "n_query": 10,
        "val": "classes 0,3,...,30 (sorted names)",
        "test": "the other 20 classes",
    },
)
VAL_ALPHABETS = ("Japanese_(katakana)", "Tagalog")
VAL_DIGITS = (0, 1, 2, 3, 4)
TEST_DIGITS = (5, 6, 7, 8, 9)
OFFICE_VAL = tuple(range(0, 31, 3))
IMPOSSIBLE = (
    "resnet20_cifar10 → CIFAR-10 classes unseen by the source: impossible, the checkpoint was "
    "trained on all 10 CIFAR-10 classes"
)
MAIN_METHODS = ("vanilla", "otce", "proto", "probe")
VARIANT_METHODS = ("otce_wd", "otce_last", "scratch")
FIXED: dict[str, Any] = {
    "step1": {"steps": 10, "batch": 40, "reg": 0.1, "max_iter": 30, "normalise": "l2"},
    "step2": {"steps": 20},
    "lambda_wd": 1.0,
    "probe": {"steps": 50, "lr": 0.01},
    "val_episodes_per_shot": 5,
    "test_episodes": 100,
    "val_seed": 1000,
    "test_seed": 0,
}
HP_GRID = {"step2_lr": (1e-3, 3e-3, 1e-2), "step1_lr": (3e-4, 3e-3)}
GRID = {
    "pairs": PAIRS,
    "shots": SHOTS,
    "n_way": N_WAY,
    "main": MAIN_METHODS,
    "variants": VARIANT_METHODS,
    "fixed": FIXED,
    "hp_grid": HP_GRID,
    "impossible": IMPOSSIBLE,
}
CSV_COLUMNS = (
    "cell",
    "source",
    "target",
    "shot",
    "n_test",
    "n_variant",
    "vanilla",
    "vanilla_ci",
    "otce",
    "otce_ci",
    "proto",
    "proto_ci",
    "probe",
    "probe_ci",
    "gain_otce",
    "gain_otce_ci",
    "gain_otce_wd",
    "gain_otce_wd_ci",
    "gain_otce_last",
    "gain_otce_last_ci",
    "scratch",
    "scratch_ci",
    "w_d",
    "w_t",
    "h_joint",
    "step1_lr",
    "step2_lr",
    "sec_per_episode",
)


@dataclass(frozen=True)
class Cell:
    source: str
    target: str
    shot: int
    n_query: int

    @property
    def pair(self) -> str:
        return f"{self.source}->{self.target}"

    @property
    def id(self) -> str:
        return f"{self.pair}:{self.shot}shot"


def cells() -> list[Cell]:
    """The fixed grid: every (source, target) pair × shot."""
    return [Cell(p["source"], p["target"], s, p["n_query"]) for p in PAIRS for s in SHOTS]


# ----------------------------------------------------------------------------- data


@dataclass
class PairData:
    """Precomputed input tensors of one (source, target) pair."""

    net: nn.Module  # the module step 1/2 start from (LeNet, or ResNet-20 tail)
    head: str  # attribute name of the linear head
    src_x: Tensor
    src_y: Tensor
    pools: dict[str, tuple[Tensor, Tensor, list[int]]] = field(default_factory=dict)  # split -> (x, y, classes)
    last_block: Any = None  # `trainable` argument for variant c
    scratch: Callable[[], nn.Module] | None = None


class ResNetTail(nn.Module):
    """``layer3`` + pooling + head of a CIFAR ResNet, fed with precomputed ``layer2`` outputs."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.layer3 = net.layer3
        self.avgpool = net.avgpool
        self.linear = net.linear

    def embed(self, x: Tensor) -> Tensor:
        return torch.flatten(self.avgpool(self.layer3(x)), 1)

    def forward(self, x: Tensor) -> Tensor:
        return self.linear(self.embed(x))


@torch.no_grad()
def _resnet_trunk(net: nn.Module, x: Tensor, chunk: int = 250) -> Tensor:
    out = []
    for i in range(0, x.shape[0], chunk):
        h = torch.relu(net.bn1(net.conv1(x[i : i + chunk])))
        out.append(net.layer2(net.layer1(h)))
    return torch.cat(out) if out else x.new_zeros((0, 32, 16, 16))


def _via_transform(images_uint8: Tensor, transform: Callable) -> Tensor:
    from PIL import Image

    arr = images_uint8.numpy()
    if arr.ndim == 4:
        arr = arr.transpose(0, 2, 3, 1)
    return torch.stack([transform(Image.fromarray(a)) for a in arr])


def _subsample(y: Tensor, per_class: int | None, classes: Iterable[int] | None = None) -> Tensor:
    """Indices: the first ``per_class`` samples of each class (all if None), restricted to ``classes``."""
    keep = []
    cls = torch.unique(y).tolist() if classes is None else list(classes)
    for c in cls:
        idx = torch.nonzero(y == c).flatten()
        keep.append(idx if per_class is None else idx[:per_class])
    return torch.sort(torch.cat(keep)).values


def load_pair(source: str, target: str, *, root: str | None = None, quick: bool = False) -> PairData:
    """Source model, source data and the validation/test target pools of one pair (input tensors ready)."""
    from tguide.select.zoo import load_zoo_model, zoo_transform

    net, entry = load_zoo_model(source)
    per_class = 8 if quick else None
    n_src = 10 if quick else None
    if source == "lenet5_mnist":
        from tguide.data.mnist import load_mnist_test
        from tguide.data.mnist_m import load_mnist_m, mnist_indices_disjoint_from

        imgs, labels = load_mnist_test(root)
        _, _, used = load_mnist_m(root)
        keep = mnist_indices_disjoint_from(used, imgs.shape[0])
        sx = imgs[keep].float().div(255).unsqueeze(1)
        sy = labels[keep]
        sub = _subsample(sy, n_src)
        sx, sy = sx[sub], sy[sub]
        prep: Callable[[Tensor], Tensor] = lambda x: x
        head, last = "linear2", ["net.linear1"]
        scratch = lambda: type(net)(num_classes=10)
    else:
        from tguide.data.cifar10 import load_cifar10

        imgs, labels, _ = load_cifar10(root)
        sub = _subsample(labels, n_src)
        tf = zoo_transform(entry)
        trunk = net
        prep = lambda x: _resnet_trunk(trunk, x)
        sx, sy = prep(_via_transform(imgs[sub], tf)), labels[sub]
        net = ResNetTail(net)
        head, last = "linear", ["net.layer3.2"]
        scratch = None
    data = PairData(net=net.eval(), head=head, src_x=sx, src_y=sy, last_block=last, scratch=scratch)
    for split in ("val", "test"):
        if target == "usps":
            from tguide.data.usps import load_usps

            x, y = load_usps(root, train=(split == "val"), mode="pad")
            cls = list(VAL_DIGITS if split == "val" else TEST_DIGITS)
            idx = _subsample(y, per_class, cls)
            tx, ty = x[idx].float().div(255).unsqueeze(1), y[idx]
        elif target == "mnist_m":
            from tguide.data.mnist_m import load_mnist_m

            x, y, _ = load_mnist_m(root)
            cls = list(VAL_DIGITS if split == "val" else TEST_DIGITS)
            idx = _subsample(y, per_class, cls)
            tf = zoo_transform(entry, resize="stretch")
            tx, ty = _via_transform(x[idx], tf), y[idx]
        elif target == "omniglot":
            from tguide.data.omniglot import load_omniglot

            d = load_omniglot(root)
            val = set(d.classes_of(list(VAL_ALPHABETS)))
            cls = sorted(val) if split == "val" else [c for c in range(len(d.characters)) if c not in val]
            if quick:
                cls = cls[:6]
            idx = _subsample(d.labels, per_class, cls)
            tx, ty = d.images[idx].float().div(255).unsqueeze(1), d.labels[idx]
        elif target == "office31_webcam":
            from tguide.data.office31 import load_office31

            x, y, _ = load_office31("webcam", root, size=32)
            cls = list(OFFICE_VAL) if split == "val" else [c for c in range(31) if c not in OFFICE_VAL]
            idx = _subsample(y, per_class, cls)
            tx, ty = _via_transform(x[idx], zoo_transform(entry)), y[idx]
        else:
            raise ValueError(f"unknown target {target!r}")
        data.pools[split] = (prep(tx), ty, cls)
    return data


# ----------------------------------------------------------------------------- pieces


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
            _, _, wd, wt, _ = _coupling(ext(src_x[idx]), src_y[idx], ext(xs), ys, reg, max_iter)
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


def paired_stats(a: Sequence[float], b: Sequence[float]) -> dict[str, float]:
    """Paired difference a − b: mean, 95% Student-t half-width, n, wins, losses."""
    d = np.asarray(a, dtype=float) - np.asarray(b, dtype=float)
    mean, ci = mean_ci(d)
    return {"mean": mean, "ci": ci, "n": int(d.size), "wins": int((d > 0).sum()), "losses": int((d < 0).sum())}


def summarise_cells(rows: list[dict[str, Any]], hps: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """One dict per cell (CSV_COLUMNS) from the test rows (``phase`` main / var)."""
    out = []
    for cell in cells():
        main = {r["episode"]: r for r in rows if r["cell"] == cell.id and r["phase"] == "main"}
        var = {r["episode"]: r for r in rows if r["cell"] == cell.id and r["phase"] == "var"}
        rec: dict[str, Any] = {
            "cell": cell.id,
            "source": cell.source,
            "target": cell.target,
            "shot": cell.shot,
            "n_test": len(main),
            "n_variant": len(var),
        }
        hp = hps.get(cell.pair, {})
        rec["step1_lr"], rec["step2_lr"] = hp.get("step1_lr", float("nan")), hp.get("step2_lr", float("nan"))
        for k in CSV_COLUMNS:
            rec.setdefault(k, float("nan"))
        if main:
            eps = sorted(main)
            for m in MAIN_METHODS:
                rec[m], rec[f"{m}_ci"] = mean_ci([main[e][m] for e in eps])
            p = paired_stats([main[e]["otce"] for e in eps], [main[e]["vanilla"] for e in eps])
            rec["gain_otce"], rec["gain_otce_ci"] = p["mean"], p["ci"]
            for k in ("w_d", "w_t", "h_joint"):
                rec[k] = float(np.mean([main[e][k] for e in eps]))
            rec["sec_per_episode"] = (
                float(np.mean([sum(v for kk, v in main[e]["result"].items() if kk.endswith("_s")) for e in eps]))
                if "result" in main[eps[0]]
                else float("nan")
            )
        ve = [e for e in sorted(var) if e in main]
        if ve:
            for m in ("otce_wd", "otce_last"):
                p = paired_stats([var[e][m] for e in ve], [main[e]["vanilla"] for e in ve])
                rec[f"gain_{m}"], rec[f"gain_{m}_ci"] = p["mean"], p["ci"]
            if "scratch" in var[ve[0]]:
                rec["scratch"], rec["scratch_ci"] = mean_ci([var[e]["scratch"] for e in ve])
        out.append(rec)
    return out


def loo_rule(cells_: list[dict[str, Any]], prop: str, gain: str = "gain_otce") -> dict[str, Any]:
    """Leave-one-cell-out threshold rule "switch step 1 on when prop < x" (or > x), fitted on the other cells.

    For each held-out cell, pick the direction and threshold (midpoints of the others' values) that
    maximise the summed gain of the switched-on cells among the others; predict on the held-out cell.
    Returns the held-out decisions and the realised mean gain of the rule vs always-off (0).
    """
    vals = [(c[prop], c[gain]) for c in cells_ if np.isfinite(c[prop]) and np.isfinite(c[gain])]
    held = []
    for i, (v, g) in enumerate(vals):
        others = [vals[j] for j in range(len(vals)) if j != i]
        xs = sorted(o[0] for o in others)
        cands = [xs[0] - 1] + [(a + b) / 2 for a, b in zip(xs, xs[1:])] + [xs[-1] + 1]
        best = (0.0, None, None)
        for t in cands:
            for d in ("<", ">"):
                on = [o[1] for o in others if (o[0] < t if d == "<" else o[0] > t)]
                s = float(sum(on))
                if s > best[0]:
                    best = (s, t, d)
        _, t, d = best
        switch = t is not None and (v < t if d == "<" else v > t)
        held.append(
            {
                "value": v,
                "gain": g,
                "threshold": t,
                "direction": d,
                "switch_on": bool(switch),
                "realised": g if switch else 0.0,
            }
        )
    return {
        "prop": prop,
        "held_out": held,
        "mean_realised": float(np.mean([h["realised"] for h in held])) if held else 0.0,
    }


def loo_pays_rule(cells_: list[dict[str, Any]], prop: str, gain: str = "gain_otce") -> dict[str, Any]:
    """Leave-one-cell-out classifier "the cell pays (gain CI entirely above 0) when prop < x (or > x)".

    Fitted on the other cells by the fewest misclassified cells (ties: the rule that switches on
    fewest cells, i.e. "never" when the others hold no paying cell); applied to the held-out one.
    """
    vals = [
        (c[prop], bool(c[gain] - c[f"{gain}_ci"] > 0))
        for c in cells_
        if np.isfinite(c[prop]) and np.isfinite(c[gain]) and np.isfinite(c[f"{gain}_ci"])
    ]
    held = []
    for i, (v, pays) in enumerate(vals):
        others = [vals[j] for j in range(len(vals)) if j != i]
        xs = sorted(o[0] for o in others)
        cands = [xs[0] - 1] + [(a + b) / 2 for a, b in zip(xs, xs[1:])] + [xs[-1] + 1]
        best: tuple = (len(others) + 1, len(others) + 1, None, None)
        for t in cands:
            for d in ("<", ">"):
                on = [(o[0] < t if d == "<" else o[0] > t) for o in others]
                err = sum(a != o[1] for a, o in zip(on, others))
                key = (err, sum(on), t, d)
                if key[:2] < best[:2]:
                    best = key
        _, _, t, d = best
        pred = v < t if d == "<" else v > t
        held.append({"value": v, "pays": pays, "threshold": t, "direction": d, "predicted": bool(pred)})
    return {
        "prop": prop,
        "held_out": held,
        "correct": int(sum(h["pays"] == h["predicted"] for h in held)),
        "paying_caught": int(sum(h["pays"] and h["predicted"] for h in held)),
        "paying": int(sum(h["pays"] for h in held)),
        "false_on": int(sum(h["predicted"] and not h["pays"] for h in held)),
    }


# ----------------------------------------------------------------------------- runner


def _read_jsonl(path: Path) -> list[dict[str, Any]]:
    rows = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:  # a cut-off last line of a killed run
                continue
    return rows


def _key(r: dict[str, Any]) -> tuple:
    return (r["phase"], r["cell"], r.get("hp", ""), int(r["episode"]))


def run_grid(
    jsonl: str | Path,
    *,
    quick: bool = False,
    budget_s: float = 70 * 60,
    root: str | None = None,
    log: Callable[[str], None] = print,
) -> tuple[list[dict[str, Any]], dict[str, dict[str, float]]]:
    """Validation, then the 100 main test episodes of every cell, then variant rounds until ``budget_s``.

    Every finished episode is appended to ``jsonl`` at once; rows already there are skipped.
    Returns (all rows, chosen hyper-parameters per pair).
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        return _run_grid(Path(jsonl), quick, budget_s, root, log)
    finally:
        torch.set_num_threads(threads)


def _run_grid(jsonl: Path, quick: bool, budget_s: float, root: str | None, log: Callable[[str], None]):
    t_start = time.perf_counter()
    fixed = copy.deepcopy(FIXED)
    n_val, n_test = fixed["val_episodes_per_shot"], fixed["test_episodes"]
    grid2, grid1 = HP_GRID["step2_lr"], HP_GRID["step1_lr"]
    if quick:
        n_val, n_test = 1, 2
        grid2, grid1 = grid2[:2], grid1[:1]
        fixed["step1"].update(steps=1, batch=10, max_iter=10)
        fixed["step2"]["steps"] = 2
        fixed["probe"]["steps"] = 2
    jsonl.parent.mkdir(parents=True, exist_ok=True)
    rows = _read_jsonl(jsonl)
    done = {_key(r) for r in rows}
    if rows:
        log(f"resuming: {len(rows)} finished episodes in {jsonl}")
    with jsonl.open("w") as fh:  # rewrite: complete lines only
        fh.writelines(json.dumps(r) + "\n" for r in rows)

    def record(row: dict[str, Any]) -> None:
        rows.append(row)
        done.add(_key(row))
        with jsonl.open("a") as fh:
            fh.write(json.dumps(row) + "\n")
            fh.flush()
            os.fsync(fh.fileno())

    cache: dict[str, PairData] = {}

    def pair_data(c: Cell) -> PairData:
        if c.pair not in cache:
            t0 = time.perf_counter()
            cache[c.pair] = load_pair(c.source, c.target, root=root, quick=quick)
            log(f"loaded {c.pair} in {time.perf_counter() - t0:.1f}s")
        return cache[c.pair]

    samplers: dict[tuple[str, str], EpisodeSampler] = {}

    def sampler(c: Cell, split: str) -> EpisodeSampler:
        if (c.id, split) not in samplers:
            samplers[(c.id, split)] = _sampler(c, split)
        return samplers[(c.id, split)]

    def _sampler(c: Cell, split: str) -> EpisodeSampler:
        _, y, cls = pair_data(c).pools[split]
        q = 2 if quick else c.n_query
        return EpisodeSampler(
            y, N_WAY, c.shot, q, classes=cls, seed=fixed["val_seed"] if split == "val" else fixed["test_seed"]
        )

    def flat(phase: str, c: Cell, ep: Episode, res: dict[str, Any], hp_tag: str = "") -> dict[str, Any]:
        row = {
            "phase": phase,
            "cell": c.id,
            "pair": c.pair,
            "shot": c.shot,
            "episode": ep.index,
            "hp": hp_tag,
            "classes": ep.classes.tolist(),
            "result": res,
        }
        row.update({k: v for k, v in res.items() if not k.endswith("_s")})
        return row

    # ---- validation (per pair, pooled over shots)
    hps: dict[str, dict[str, float]] = {}
    for pair in dict.fromkeys(c.pair for c in cells()):
        pcells = [c for c in cells() if c.pair == pair]
        score2 = {}
        for lr2 in grid2:
            accs = []
            for c in pcells:
                for i in range(n_val):
                    tag = f"s2={lr2:g}"
                    if ("val", c.id, tag, i) not in done:
                        s = sampler(c, "val")
                        res = run_episode(pair_data(c), "val", s.episode(i), ["vanilla"], {"step2_lr": lr2}, fixed)
                        record(flat("val", c, s.episode(i), res, tag))
                    accs += [r["vanilla"] for r in rows if _key(r) == ("val", c.id, tag, i)]
            score2[lr2] = float(np.mean(accs))
        lr2 = max(grid2, key=lambda v: (score2[v], -v))
        score1 = {}
        for lr1 in grid1:
            accs = []
            for c in pcells:
                for i in range(n_val):
                    tag = f"s2={lr2:g},s1={lr1:g}"
                    if ("val", c.id, tag, i) not in done:
                        s = sampler(c, "val")
                        res = run_episode(
                            pair_data(c), "val", s.episode(i), ["otce"], {"step2_lr": lr2, "step1_lr": lr1}, fixed
                        )
                        record(flat("val", c, s.episode(i), res, tag))
                    accs += [r["otce"] for r in rows if _key(r) == ("val", c.id, tag, i)]
            score1[lr1] = float(np.mean(accs))
        lr1 = max(grid1, key=lambda v: (score1[v], -v))
        hps[pair] = {"step2_lr": lr2, "step1_lr": lr1, "val_vanilla": score2, "val_otce": score1}
        log(
            f"validation {pair}: step-2 lr {lr2:g} (vanilla {score2}), step-1 lr {lr1:g} (otce {score1}) "
            f"[{time.perf_counter() - t_start:.0f}s]"
        )

    # ---- main test episodes
    for c in cells():
        t0 = time.perf_counter()
        n_new = 0
        for i in range(n_test):
            if ("main", c.id, "", i) in done:
                continue
            s = sampler(c, "test")
            res = run_episode(pair_data(c), "test", s.episode(i), MAIN_METHODS, hps[c.pair], fixed)
            record(flat("main", c, s.episode(i), res))
            n_new += 1
            if i == 0 or (i + 1) % 25 == 0:
                log(
                    f"main {c.id} episode {i + 1}/{n_test} ({(time.perf_counter() - t0) / n_new:.2f}s/ep) "
                    f"[{time.perf_counter() - t_start:.0f}s]"
                )
    # ---- variant rounds until the budget is spent
    n_rounds = 2 if quick else n_test
    for i in range(n_rounds):
        if not quick and time.perf_counter() - t_start > budget_s:
            log(f"budget spent after {i} variant rounds [{time.perf_counter() - t_start:.0f}s]")
            break
        for c in cells():
            if ("var", c.id, "", i) in done:
                continue
            s = sampler(c, "test")
            res = run_episode(pair_data(c), "test", s.episode(i), VARIANT_METHODS, hps[c.pair], fixed)
            record(flat("var", c, s.episode(i), res))
        log(f"variant round {i + 1} done [{time.perf_counter() - t_start:.0f}s]")
    return rows, hps


def diagnose_steps(
    jsonl: str | Path,
    cell_ids: Sequence[str],
    *,
    hps: dict[str, dict[str, float]],
    root: str | None = None,
    n: int | None = None,
    log: Callable[[str], None] = print,
) -> None:
    """Post-hoc diagnostic (not part of the fixed grid): ``vanilla`` with as many gradient steps as
    ``otce`` spends (step-1 steps + step-2 steps) on the same test episodes, as phase ``diag`` rows.

    Tells whether a gain of step 1 comes from the transport objective or just from more steps.
    """
    jsonl = Path(jsonl)
    rows = _read_jsonl(jsonl)
    done = {_key(r) for r in rows}
    fixed = copy.deepcopy(FIXED)
    fixed["step2"]["steps"] = FIXED["step2"]["steps"] + FIXED["step1"]["steps"]
    n = FIXED["test_episodes"] if n is None else int(n)
    torch.set_num_threads(1)
    for c in cells():
        if c.id not in cell_ids:
            continue
        data = None
        for i in range(n):
            if ("diag", c.id, "", i) in done:
                continue
            if data is None:
                data = load_pair(c.source, c.target, root=root)
                _, y, cls = data.pools["test"]
                s = EpisodeSampler(y, N_WAY, c.shot, c.n_query, classes=cls, seed=FIXED["test_seed"])
            ep = s.episode(i)
            res = run_episode(data, "test", ep, ["vanilla"], hps[c.pair], fixed)
            row = {
                "phase": "diag",
                "cell": c.id,
                "pair": c.pair,
                "shot": c.shot,
                "episode": i,
                "hp": "",
                "classes": ep.classes.tolist(),
                "result": res,
                "vanilla_long": res["vanilla"],
            }
            with jsonl.open("a") as fh:
                fh.write(json.dumps(row) + "\n")
        log(f"diagnostic {c.id}: done")

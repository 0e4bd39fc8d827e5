r"""Generative Invariance Transfer (GIT, Zhou, Tajwar & Finn, ICLR 2022): model and batch rule.

GIT learns an input-conditioned generative model :math:`\tilde T(\cdot\mid x)` of the nuisance
transformation from the whole training set, and, during classifier training, replaces every
example ``(x, y)`` of a class with at most ``threshold`` training images by
``(x̃, y)``, :math:`\tilde x \sim \tilde T(\cdot\mid x)` (:func:`git_batch`). The paper's
generator is MUNIT, an image-to-image translation GAN trained for hours on a GPU.

**What we use instead, and why.** :class:`TransformationCVAE` is a conditional VAE whose
decoder outputs the *parameter* of a transformation in a known family (rotation angle, log
scale, background intensity or dilation radius, :mod:`tguide.studies.invariance.transforms`) rather than
pixels; the image is then produced by the family's differentiable ``apply``:

.. math::
    z \sim q_\phi(z\mid x, x') = \mathcal N(\mu_\phi(x,x'), \sigma^2_\phi(x,x')),\quad
    \theta = g_\psi(x, z),\quad \tilde x = T_\theta(x),

    \mathcal L = \big\| B * T_{\theta}(x) - B * x' \big\|_2^2
    + \beta\,\mathrm{KL}\big(q_\phi(z\mid x,x')\,\|\,\mathcal N(0, I)\big),

with :math:`B` a Gaussian blur (σ = 1.5 px: two handwritings of the same digit only align
coarsely) and ``(x, x')`` two *different* training images of the *same* class. It is trained only
on the classes with more than ``threshold`` images (the head), then sampled with
:math:`z \sim \mathcal N(0, I)` on the tail. So the model **knows the family** (which group
of transformations) but **learns from the head-class data** how far and in which direction to
move a given input to land on another plausible nuisance of the same class, i.e. the
input-conditioned distribution of the nuisance parameter (for rotation: an image that is
already tilted right should mostly be turned left). This is the part of :math:`T(\cdot\mid x)`
that GIT must transfer across classes; learning the family itself in pixel space (MUNIT) is out
of reach of a CPU budget of minutes, and a pixel CVAE of this size produces blurry class
averages instead of nuisance changes. The true nuisance parameters of the data set are never
used for training; :func:`diagnose` compares them with the generated ones afterwards.

Inputs of :class:`GITGenerator` are MNIST-standardised images; the transformation is applied in
pixel space (``x * std + mean``) and the result standardised again.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from tguide.data.mnist import MEAN, STD
from tguide.studies.invariance.transforms import Family, family

__all__ = ["TransformationCVAE", "GITGenerator", "fit_git", "git_batch", "small_class_mask", "diagnose"]


def _gauss_kernel(sigma: float, radius: int) -> Tensor:
    r = torch.arange(-radius, radius + 1, dtype=torch.float32)
    g = torch.exp(-0.5 * (r / sigma) ** 2)
    g = g / g.sum()
    return (g[:, None] * g[None, :])[None, None]  # (1, 1, k, k)


def _conv_trunk(in_channels: int, hidden: int) -> nn.Sequential:
    """28×28 → ``hidden`` features: two stride-2 convs and a linear layer."""
    return nn.Sequential(
        nn.Conv2d(in_channels, 16, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Conv2d(16, 32, 5, stride=2, padding=2),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(32 * 7 * 7, hidden),
        nn.ReLU(),
    )


class TransformationCVAE(nn.Module):
    """Conditional VAE over the parameter of a transformation family (see the module docstring).

    Shapes: ``x, x2 (B, 1, 28, 28)`` pixel-space images in ``[0, 1]``; ``z (B, z_dim)``;
    parameters ``θ (B,)``, bounded by ``±family.span`` (the largest relative change).
    """

    blur: Tensor  # buffer: the (1, 1, 7, 7) Gaussian kernel B of the reconstruction loss

    def __init__(self, fam: str | Family, z_dim: int = 2, hidden: int = 64, blur_sigma: float = 1.5) -> None:
        super().__init__()
        self.family = family(fam)
        self.z_dim = int(z_dim)
        self.encoder = nn.Sequential(_conv_trunk(2, hidden), nn.Linear(hidden, 2 * self.z_dim))
        self.condition = _conv_trunk(1, hidden)
        self.decoder = nn.Sequential(nn.Linear(hidden + self.z_dim, hidden), nn.ReLU(), nn.Linear(hidden, 1))
        self.register_buffer("blur", _gauss_kernel(blur_sigma, 3), persistent=False)

    def params(self, x: Tensor, z: Tensor) -> Tensor:
        """θ = g(x, z), ``(B,)``."""
        h = torch.cat([self.condition(x), z], dim=1)
        return torch.tanh(self.decoder(h).squeeze(1)) * self.family.span

    def transform(self, x: Tensor, theta: Tensor) -> Tensor:
        return self.family.apply(x, theta).clamp(0.0, 1.0)

    def loss(self, x: Tensor, x2: Tensor, beta: float = 1.0) -> tuple[Tensor, Tensor, Tensor]:
        """``(loss, reconstruction, kl)``, each the batch mean of per-image sums."""
        mu, logvar = self.encoder(torch.cat([x, x2], dim=1)).chunk(2, dim=1)
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        out = self.transform(x, self.params(x, z))
        diff = F.conv2d(out, self.blur, padding=3) - F.conv2d(x2, self.blur, padding=3)
        rec = diff.pow(2).flatten(1).sum(1).mean()
        kl = 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()
        return rec + beta * kl, rec, kl

    @torch.no_grad()
    def sample_params(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """θ for each image with ``z ~ N(0, I)`` drawn by ``generator``."""
        z = torch.randn(x.shape[0], self.z_dim, generator=generator).to(x.device, x.dtype)
        return self.params(x, z)


def _to_pixels(x: Tensor) -> Tensor:
    return (x * STD + MEAN).clamp(0.0, 1.0)


def _to_standard(x: Tensor) -> Tensor:
    return (x - MEAN) / STD


@dataclass
class GITGenerator:
    r"""A trained :class:`TransformationCVAE` used as :math:`\tilde T(\cdot\mid x)` on standardised images."""

    model: TransformationCVAE
    info: dict[str, Any] = field(default_factory=dict)

    @torch.no_grad()
    def __call__(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """``x̃ ~ T̃(·|x)`` for standardised ``x (B, 1, 28, 28)``, standardised too."""
        was = self.model.training
        self.model.eval()
        try:
            px = _to_pixels(x)
            theta = self.model.sample_params(px, generator)
            return _to_standard(self.model.transform(px, theta))
        finally:
            self.model.train(was)

    def to(self, device: torch.device | str) -> GITGenerator:
        self.model.to(device)
        return self


def small_class_mask(class_counts: Tensor, threshold: int) -> Tensor:
    """``(C,)`` bool: the classes with at most ``threshold`` training images (those GIT replaces)."""
    counts = torch.as_tensor(class_counts)
    if counts.ndim != 1:
        raise ValueError(f"`class_counts` must be 1-D (C,), got shape {tuple(counts.shape)}.")
    return counts <= int(threshold)


def fit_git(
    x: Tensor,
    y: Tensor,
    class_counts: Tensor,
    threshold: int,
    fam: str | Family,
    *,
    steps: int = 600,
    batch: int = 64,
    lr: float = 2e-3,
    z_dim: int = 2,
    hidden: int = 64,
    beta: float = 1.0,
    seed: int = 0,
    log_every: int = 0,
) -> GITGenerator:
    """Train :class:`TransformationCVAE` on same-class pairs of the classes with **more than**
    ``threshold`` images (standardised ``x (N, 1, 28, 28)``, labels ``y (N,)``).

    Each step draws ``batch`` anchors uniformly among those images and, for each, a different
    image of its class as the target. Returns the generator and its training info (steps,
    seconds, the last reconstruction and KL, the classes it saw).
    """
    counts = torch.as_tensor(class_counts)
    big = ~small_class_mask(counts, threshold)
    keep = big[y]
    if int(big.sum()) == 0:
        raise ValueError(
            f"no class has more than threshold={threshold} images: nothing to learn the "
            "transformation from; lower the threshold."
        )
    xs, ys = _to_pixels(x[keep]), y[keep]
    by_class = {int(c): torch.nonzero(ys == c).flatten() for c in torch.unique(ys)}
    if any(v.numel() < 2 for v in by_class.values()):
        raise ValueError("every class used to train GIT needs at least 2 images (pairs of the same class).")
    gen = torch.Generator().manual_seed(int(seed))
    torch.manual_seed(int(seed))
    model = TransformationCVAE(fam, z_dim=z_dim, hidden=hidden)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    # per-image: its class's member list, to draw a partner of the same class
    members = [by_class[int(c)] for c in ys.tolist()]
    start, rec, kl = time.perf_counter(), torch.tensor(0.0), torch.tensor(0.0)
    model.train()
    for step in range(int(steps)):
        a = torch.randint(xs.shape[0], (batch,), generator=gen)
        partner = []
        for i in a.tolist():
            pool = members[i]
            j = int(pool[torch.randint(pool.numel() - 1, (1,), generator=gen)])
            partner.append(j if j != i else int(pool[-1]))  # uniform over the other members
        b = torch.tensor(partner)
        loss, rec, kl = model.loss(xs[a], xs[b], beta)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        if log_every and (step + 1) % log_every == 0:
            print(f"git step {step + 1}: rec {float(rec.detach()):.2f} kl {float(kl.detach()):.3f}", flush=True)
    model.eval()
    info = {
        "family": model.family.name,
        "steps": int(steps),
        "seconds": time.perf_counter() - start,
        "reconstruction": float(rec.detach()),
        "kl": float(kl.detach()),
        "trained_on_classes": sorted(by_class),
        "trained_on_images": int(xs.shape[0]),
        "threshold": int(threshold),
    }
    return GITGenerator(model, info)


def git_batch(
    x: Tensor,
    y: Tensor,
    small: Tensor,
    generate: Callable[[Tensor], Tensor],
    prob: float = 1.0,
    generator: torch.Generator | None = None,
) -> tuple[Tensor, Tensor, Tensor]:
    r"""The GIT batch rule: rows whose class is ``small`` are replaced by ``generate(x[rows])``.

    Args:
        x: ``(B, ...)`` inputs; y: ``(B,)`` labels; small: ``(C,)`` bool (:func:`small_class_mask`).
        generate: :math:`\tilde T(\cdot\mid x)` applied to a sub-batch.
        prob: each eligible row is replaced with this probability (1 = the seed's rule).

    Returns ``(x_new, y, replaced)``; ``replaced (B,)`` bool marks the generated rows. Rows of
    other classes are returned unchanged (the same values).
    """
    if x.shape[0] != y.shape[0]:
        raise ValueError(f"`x` has {x.shape[0]} rows but `y` has {y.shape[0]}.")
    if not 0.0 <= prob <= 1.0:
        raise ValueError(f"`prob` must be in [0, 1], got {prob}.")
    replaced = small.to(y.device)[y]
    if prob < 1.0:
        draw = torch.rand(y.shape[0], generator=generator).to(y.device)
        replaced = replaced & (draw < prob)
    if not bool(replaced.any()):
        return x, y, replaced
    out = x.clone()
    out[replaced] = generate(x[replaced]).to(out.dtype)
    return out, y, replaced


@torch.no_grad()
def diagnose(gen: GITGenerator, x: Tensor, true_params: Tensor, samples: int = 4, seed: int = 0) -> dict[str, float]:
    r"""How well the sampled relative parameters θ complete the true nuisance of ``x``.

    For standardised ``x`` whose true nuisance parameters are ``true_params`` ``t (N,)``, the
    generated images have (to first order) parameter ``t + θ``. A model of the full nuisance
    :math:`T(\cdot\mid x)` makes ``t + θ`` independent of ``t`` and spread like the data's
    nuisance; the identity (no GIT) has ``θ = 0`` and correlation 1. Returns the correlation
    ``corr(t, t + θ)``, the standard deviations of ``θ``, ``t + θ`` and ``t``, and ``corr(t, θ)``.
    """
    px = _to_pixels(x)
    g = torch.Generator().manual_seed(int(seed))
    theta = torch.cat([gen.model.sample_params(px, g) for _ in range(samples)]).double()
    t = true_params.double().repeat(samples)
    after = t + theta

    def corr(a: Tensor, b: Tensor) -> float:
        a, b = a - a.mean(), b - b.mean()
        return float((a * b).sum() / (a.norm() * b.norm()).clamp_min(1e-12))

    return {
        "corr_t_after": corr(t, after),
        "corr_t_theta": corr(t, theta),
        "std_theta": float(theta.std()),
        "std_after": float(after.std()),
        "std_t": float(t.std()),
    }

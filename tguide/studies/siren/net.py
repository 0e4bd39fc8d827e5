r"""SIREN: sinusoidal representation networks (Sitzmann et al., NeurIPS 2020, "Implicit Neural
Representations with Periodic Activation Functions", arXiv:2006.09661).

A SIREN maps coordinates ``(P, in_features)`` in :math:`[-1, 1]` to values ``(P, out_features)``:

.. math::
    h_0 = \sin(\omega_0 (W_0 x + b_0)),\quad h_{l} = \sin(\omega_0 (W_l h_{l-1} + b_l)),\quad
    y = W_{L+1} h_L + b_{L+1}

with :math:`L` = ``hidden_layers`` hidden sine layers after the first one (the reference code's
convention: ``hidden_layers=2`` means 3 sine layers and one linear output), :math:`\omega_0 = 30`.
Initialisation (the paper, Sec. 3.2): first layer :math:`W_0 \sim U(-1/n, 1/n)`, every later layer
(the linear output included) :math:`W \sim U(-\sqrt{6/n}/\omega_0, \sqrt{6/n}/\omega_0)`, with
:math:`n` the layer's fan-in; biases keep PyTorch's ``nn.Linear`` default :math:`U(\pm 1/\sqrt n)`.

:class:`BatchedSiren` holds ``M`` independent SIRENs of one shape as stacked weights
``(M, out, in)`` and evaluates them with one ``torch.baddbmm`` per layer. Summing the members'
losses gives each member exactly its own gradient, and Adam is element-wise, so one Adam over
the stacked parameters is ``M`` independent Adams: a batched fit equals ``M`` separate fits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor, nn

__all__ = ["SineLayer", "Siren", "BatchedSiren", "siren_init_bounds"]


def siren_init_bounds(fan_in: int, first: bool, omega0: float = 30.0) -> float:
    """Half-width ``a`` of the uniform weight init ``U(-a, a)``: ``1/n`` first, ``sqrt(6/n)/ω0`` later."""
    if fan_in < 1:
        raise ValueError(f"fan_in must be >= 1, got {fan_in}")
    return 1.0 / fan_in if first else math.sqrt(6.0 / fan_in) / omega0


def _check_shape(in_features: int, hidden_features: int, hidden_layers: int, out_features: int, omega0: float) -> None:
    for name, v in (("in_features", in_features), ("hidden_features", hidden_features), ("out_features", out_features)):
        if int(v) < 1:
            raise ValueError(f"{name} must be >= 1, got {v}")
    if int(hidden_layers) < 0:
        raise ValueError(f"hidden_layers must be >= 0, got {hidden_layers}")
    if not omega0 > 0:
        raise ValueError(f"omega0 must be > 0, got {omega0}")


class SineLayer(nn.Module):
    """``sin(ω0 (W x + b))`` with the SIREN initialisation (``first`` selects ``U(-1/n, 1/n)``)."""

    def __init__(self, in_features: int, out_features: int, *, first: bool = False, omega0: float = 30.0) -> None:
        super().__init__()
        self.omega0 = float(omega0)
        self.linear = nn.Linear(in_features, out_features)
        a = siren_init_bounds(in_features, first, omega0)
        with torch.no_grad():
            self.linear.weight.uniform_(-a, a)

    def forward(self, x: Tensor) -> Tensor:  # (..., in) -> (..., out)
        return torch.sin(self.omega0 * self.linear(x))


class Siren(nn.Module):
    """Coordinates ``(P, in_features)`` → values ``(P, out_features)``; layers ``net.0`` … ``net.{L+1}``.

    Args:
        in_features: coordinate dimension (2 for images).
        hidden_features: width of every sine layer.
        hidden_layers: sine layers after the first one (total sine layers = ``hidden_layers + 1``).
        out_features: output channels (3 for RGB).
        omega0: frequency factor ω0 (30 in the paper).
    """

    def __init__(
        self,
        in_features: int = 2,
        hidden_features: int = 256,
        hidden_layers: int = 3,
        out_features: int = 3,
        omega0: float = 30.0,
    ) -> None:
        super().__init__()
        _check_shape(in_features, hidden_features, hidden_layers, out_features, omega0)
        self.omega0 = float(omega0)
        layers: list[nn.Module] = [SineLayer(in_features, hidden_features, first=True, omega0=omega0)]
        layers += [SineLayer(hidden_features, hidden_features, omega0=omega0) for _ in range(hidden_layers)]
        out = nn.Linear(hidden_features, out_features)
        with torch.no_grad():
            a = siren_init_bounds(hidden_features, False, omega0)
            out.weight.uniform_(-a, a)
        layers.append(out)
        self.net = nn.Sequential(*layers)

    def forward(self, coords: Tensor) -> Tensor:  # (P, in) -> (P, out)
        return self.net(coords)

    def hidden(self, coords: Tensor) -> Tensor:
        """Last sine layer's activations ``(P, hidden_features)`` (the features a linear head reads)."""
        return self.net[:-1](coords)

    def linear_layers(self) -> list[nn.Linear]:
        """The affine maps of ``net.0`` … ``net.{L+1}`` (each sine layer's, then the output layer's)."""
        out = []
        for m in self.net:
            lay = m.linear if isinstance(m, SineLayer) else m
            if not isinstance(lay, nn.Linear):
                raise ValueError(f"Siren layer {type(m).__name__} is neither a SineLayer nor a Linear")
            out.append(lay)
        return out


class BatchedSiren(nn.Module):
    """``M`` independent SIRENs of one shape, evaluated at once: ``(M, P, in)`` → ``(M, P, out)``.

    Parameters are ``weights[l]`` ``(M, out_l, in_l)`` and ``biases[l]`` ``(M, 1, out_l)``; member
    ``m`` is initialised exactly like a fresh :class:`Siren`. :meth:`from_sirens` stacks existing
    networks, :meth:`member` extracts one back as a :class:`Siren`.
    """

    def __init__(
        self,
        members: int,
        in_features: int = 2,
        hidden_features: int = 256,
        hidden_layers: int = 3,
        out_features: int = 3,
        omega0: float = 30.0,
    ) -> None:
        super().__init__()
        _check_shape(in_features, hidden_features, hidden_layers, out_features, omega0)
        if int(members) < 1:
            raise ValueError(f"members must be >= 1, got {members}")
        self.members, self.omega0 = int(members), float(omega0)
        self.shape = (int(in_features), int(hidden_features), int(hidden_layers), int(out_features))
        dims = [in_features] + [hidden_features] * (hidden_layers + 1) + [out_features]
        self.weights = nn.ParameterList()
        self.biases = nn.ParameterList()
        for i, (n_in, n_out) in enumerate(zip(dims[:-1], dims[1:])):
            a = siren_init_bounds(n_in, i == 0, omega0)
            self.weights.append(nn.Parameter(torch.empty(members, n_out, n_in).uniform_(-a, a)))
            bb = 1.0 / math.sqrt(n_in)  # nn.Linear's default bias init
            self.biases.append(nn.Parameter(torch.empty(members, 1, n_out).uniform_(-bb, bb)))

    @classmethod
    def from_sirens(cls, nets: Sequence[Siren]) -> BatchedSiren:
        """Stack the parameters of ``nets`` (all of one shape) into one batched module (copies)."""
        if not nets:
            raise ValueError("nets is empty; pass at least one Siren")
        first = nets[0]
        lin = first.linear_layers()
        shape = (lin[0].in_features, lin[0].out_features, len(lin) - 2, lin[-1].out_features)
        out = cls(len(nets), *shape, omega0=first.omega0)
        for m, net in enumerate(nets):
            out.load_member(m, net)
        return out

    def _layers(self, net: Siren) -> list[nn.Linear]:
        lin = net.linear_layers()
        if len(lin) != len(self.weights) or any(lay.weight.shape != w.shape[1:] for lay, w in zip(lin, self.weights)):
            raise ValueError(f"Siren shape does not match this BatchedSiren {self.shape}")
        return lin

    @torch.no_grad()
    def load_member(self, m: int, net: Siren) -> None:
        """Copy ``net``'s parameters into member ``m``."""
        for lay, w, b in zip(self._layers(net), self.weights, self.biases):
            w[m].copy_(lay.weight)
            b[m, 0].copy_(lay.bias)

    @torch.no_grad()
    def member(self, m: int) -> Siren:
        """Member ``m`` as a stand-alone :class:`Siren` (a copy)."""
        net = Siren(*self.shape, omega0=self.omega0)
        for lay, w, b in zip(self._layers(net), self.weights, self.biases):
            lay.weight.copy_(w[m])
            lay.bias.copy_(b[m, 0])
        return net

    @torch.no_grad()
    def select(self, index: Sequence[int] | Tensor) -> BatchedSiren:
        """A new batched module holding copies of the members ``index`` (in that order, repeats allowed)."""
        idx = torch.as_tensor(index, dtype=torch.long)
        out = BatchedSiren(int(idx.numel()), *self.shape, omega0=self.omega0)
        for dst, src in zip(list(out.weights) + list(out.biases), list(self.weights) + list(self.biases)):
            dst.copy_(src[idx])
        return out

    def forward(self, coords: Tensor, *, hidden: bool = False) -> Tensor:
        """``coords`` ``(P, in)`` (shared) or ``(M, P, in)`` → ``(M, P, out)``; ``hidden`` stops at the last sine."""
        if coords.dim() == 2:
            coords = coords.unsqueeze(0).expand(self.members, -1, -1)
        if coords.dim() != 3 or coords.shape[0] != self.members or coords.shape[2] != self.shape[0]:
            raise ValueError(
                f"coords must be (P, {self.shape[0]}) or ({self.members}, P, {self.shape[0]}), "
                f"got {tuple(coords.shape)}"
            )
        h = coords
        last = len(self.weights) - 1
        for i, (w, b) in enumerate(zip(self.weights, self.biases)):
            z = torch.baddbmm(b, h, w.transpose(1, 2))  # (M, P, out)
            if i == last:
                return z
            h = torch.sin(self.omega0 * z)
            if hidden and i == last - 1:
                return h
        return h  # pragma: no cover

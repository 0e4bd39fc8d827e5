r"""A network cut at a named layer: the feature extractor of fine-tuning and of the OTCE pre-fine-tune.

:class:`Backbone` runs ``network`` only up to ``layer`` (a name from ``network.named_modules()``):
the one forward-hook capture (:class:`tguide.features.capture.LayerCapture` with
``stop=True``) records that module's output and ends the forward pass there, so the layers
after the cut are never run (they cost nothing, and under DDP they hold no parameter that
waits for a gradient). The stored output
is reduced to ``(B, D)`` by :func:`tguide.features.reduce_output`: global average pooling
for a map ``(B, C, *spatial)`` (``pool="avg"``), flattening (``pool="flatten"``); ``(B, D)``
passes through. Pooling per layout is that function's, so that the features fine-tuned here
are the features that :mod:`tguide.select.rank` scored.

.. math::
    \mathrm{Backbone}(x) = \mathrm{pool}\big(\mathrm{network}_{\le \mathrm{layer}}(x)\big) \in \mathbb{R}^{B \times D}

A dummy forward at construction (eval mode, no gradient, BatchNorm statistics untouched)
gives :attr:`Backbone.feature_dim` and finds the modules that run before the cut; parameters of
modules that never run are frozen (``requires_grad=False``) and listed in
:attr:`Backbone.unused_parameters`. The network is held as ``self.network``, so parameter
names are ``network.<name>``.

>>> import torch
>>> from torch import nn
>>> net = nn.Sequential(nn.Conv2d(3, 8, 3), nn.ReLU(), nn.Conv2d(8, 16, 3), nn.Flatten(), nn.Linear(2304, 10))
>>> bb = Backbone(net, "1", input_shape=(3, 16, 16))
>>> bb.feature_dim, tuple(bb(torch.zeros(2, 3, 16, 16)).shape)
(8, (2, 8))
>>> sorted(bb.unused_parameters)
['network.2.bias', 'network.2.weight', 'network.4.bias', 'network.4.weight']
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from tguide.features.capture import LayerCapture, modules_entered
from tguide.features.layers import resolve_layers
from tguide.features.modes import eval_mode
from tguide.features.pooling import check_pool, reduce_output

__all__ = ["Backbone", "guess_input_shape"]

_PROBE_SIZES = (32, 28, 64, 224)


def guess_input_shape(network: nn.Module) -> tuple[int, ...]:
    """``(channels, 32, 32)`` with ``channels`` the ``in_channels`` of the first ``Conv2d`` (3 if none).

    A starting guess only: :class:`Backbone` also tries 28, 64 and 224 pixels when 32 fails.
    """
    for m in network.modules():
        if isinstance(m, nn.Conv2d):
            return (int(m.in_channels), 32, 32)
        if isinstance(m, nn.Linear):
            return (int(m.in_features),)
    return (3, 32, 32)


class Backbone(nn.Module):
    """``network`` cut at ``layer``: ``x (B, ...) -> features (B, feature_dim)``.

    Args:
        network: any ``nn.Module`` (kept as ``self.network``; not copied).
        layer: a module name from ``network.named_modules()`` (``"layer3"``, ``"net.fc2"``), or
            ``None`` for the network's own output (a headless trunk).
        pool: how the layer's output becomes ``(B, D)``: ``"avg"`` (mean over the spatial axes
            of ``(B, C, H, W)``), ``"cls"``/``"mean"`` (tokens), ``"channels_last"``, ``"flatten"``,
            ``"none"`` (output already ``(B, D)``) or a callable; see :func:`tguide.features.reduce_output`.
        input_shape: one sample's shape ``(C, H, W)`` for the dummy forward. Default: the first
            conv's channels at 32 px, then 28, 64 and 224 px until one runs.
        freeze_unused: set ``requires_grad=False`` on the parameters of modules after the cut.

    Attributes:
        feature_dim: ``D``.
        layer: the cut.
        unused_parameters: names (``network.…``) of the parameters of modules that never run.

    Raises:
        ValueError: unknown ``layer`` (the message lists close names), a bad ``pool``, a layer
            that does not run during the forward pass, or an output that cannot be pooled.
    """

    def __init__(
        self,
        network: nn.Module,
        layer: str | None,
        pool: Any = "avg",
        *,
        input_shape: Sequence[int] | None = None,
        freeze_unused: bool = True,
    ) -> None:
        super().__init__()
        check_pool(pool)
        self.network = network
        self.layer = None if layer in (None, "", "output") else str(layer)
        self.pool = pool
        if self.layer is not None:
            resolve_layers(network, [self.layer])  # ValueError with close names if unknown
        ran = self._probe(input_shape)
        used = {id(p) for m in ran for p in m.parameters(recurse=False)}
        self.unused_parameters: tuple[str, ...] = tuple(
            f"network.{n}" for n, p in network.named_parameters() if id(p) not in used
        )
        if freeze_unused:
            for p in network.parameters():
                if id(p) not in used and not isinstance(p, nn.parameter.UninitializedParameter):
                    p.requires_grad_(False)

    # ------------------------------------------------------------------ forward

    def forward(self, x: Tensor) -> Tensor:
        """Pooled features ``(B, feature_dim)`` of ``layer``; later layers are not run."""
        if self.layer is None:
            return reduce_output(self.network(x), self.pool, "output")
        with LayerCapture(self.network, [self.layer], pool=self.pool, detach=False, stop=True) as cap:
            cap.run(x)
        if self.layer not in cap.outputs:
            raise ValueError(
                f"layer {self.layer!r} did not run in {type(self.network).__name__}'s forward pass; "
                "cut at a module that the forward pass calls."
            )
        return cap.outputs[self.layer]

    # ------------------------------------------------------------------ construction

    def _probe(self, input_shape: Sequence[int] | None) -> list[nn.Module]:
        """Dummy forward: set ``feature_dim``, return the modules entered before the cut."""
        shapes: list[tuple[int, ...]]
        if input_shape is not None:
            shapes = [tuple(int(s) for s in input_shape)]
        else:
            first = guess_input_shape(self.network)
            shapes = [first] if len(first) != 3 else [(first[0], s, s) for s in _PROBE_SIZES]
        try:
            param = next(self.network.parameters())
            device, dtype = param.device, param.dtype
        except StopIteration:
            device, dtype = torch.device("cpu"), torch.float32
        errors: list[str] = []
        for shape in shapes:
            try:
                with modules_entered(self.network) as ran, eval_mode(self.network), torch.no_grad():
                    out = self(torch.zeros(2, *shape, device=device, dtype=dtype))
            except RuntimeError as err:  # shape mismatch at this input size: try the next one
                errors.append(f"{shape}: {str(err).splitlines()[0]}")
                continue
            if out.ndim != 2:
                raise ValueError(
                    f"layer {self.layer!r} gives features of shape {tuple(out.shape)} with pool={self.pool!r}; "
                    "use pool='avg' or 'flatten' for maps."
                )
            self.feature_dim = int(out.shape[1])
            self.input_shape: tuple[int, ...] = shape
            return ran
        raise ValueError(
            f"Backbone: a dummy forward of {type(self.network).__name__} failed for every input shape tried "
            f"({'; '.join(errors)}); pass input_shape=(C, H, W)."
        )

    def extra_repr(self) -> str:
        return f"layer={self.layer!r}, pool={self.pool!r}, feature_dim={self.feature_dim}"

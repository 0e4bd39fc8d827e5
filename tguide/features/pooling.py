"""How a layer's output becomes one feature row per sample: pool specs and :func:`reduce_output`.

The pool is chosen per layer by ``pool`` (a name, a callable, or a dict ``{layer: pool}``), and an
ambiguous layout is an error that names the option to pass:

====================  ============================  ======================================
``pool``              output layout                 row
====================  ============================  ======================================
``"avg"``             ``(B, C, *spatial)``, ≥ 4-D   mean over the spatial axes → ``(B, C)``
``"cls"``             ``(B, T, C)`` tokens          the first (class) token → ``(B, C)``
``"mean"``            ``(B, T, C)`` tokens          mean over the tokens → ``(B, C)``
``"channels_last"``   ``(B, *spatial, C)``          mean over the spatial axes → ``(B, C)``
``"flatten"``         any                           ``vec`` of everything after B
``"none"``            any                           unchanged (the caller reduces it)
callable              any                           ``pool(output)`` must be ``(B, D)``
====================  ============================  ======================================

``(B, D)`` outputs pass through every pool. A 3-D output with ``pool="avg"`` is refused:
``(B, T, C)`` tokens and ``(B, C, L)`` sequences look alike, so the caller must say which.

.. math::

    \\text{avg}: \\; f_c = \\frac{1}{HW} \\sum_{h,w} x_{c,h,w} \\in \\mathbb{R}^{C},
    \\qquad \\text{flatten}: \\; f = \\operatorname{vec}(x) \\in \\mathbb{R}^{CHW}.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any, Literal

from torch import Tensor

from tguide.features.layers import suggest_names

__all__ = [
    "POOLS",
    "PoolFn",
    "PoolName",
    "PoolSpec",
    "check_pool",
    "check_pool_name",
    "describe_pool",
    "pool_for",
    "reduce_output",
]

PoolName = Literal["avg", "cls", "mean", "channels_last", "flatten", "none"]
POOLS: tuple[str, ...] = ("avg", "cls", "mean", "channels_last", "flatten", "none")
PoolFn = Callable[[Tensor], Tensor]
PoolSpec = str | PoolFn | Mapping[str, "str | PoolFn"]


def check_pool_name(pool: Any, where: str = "`pool`") -> None:
    """``ValueError`` unless ``pool`` is one layer's pool: a name of :data:`POOLS` or a callable."""
    if callable(pool):
        return
    if pool not in POOLS:
        raise ValueError(f"{where} must be one of {list(POOLS)} or a callable output -> (B, D), got {pool!r}.")


def check_pool(pool: PoolSpec, layers: Sequence[str] | None = None) -> None:
    """Validate ``pool``: a name of :data:`POOLS`, a callable, or a dict ``{layer: pool}``
    (key ``"*"`` = the default for unlisted layers, else ``"avg"``) whose keys are in ``layers``."""
    if isinstance(pool, Mapping):
        for key, value in pool.items():
            check_pool_name(value, f"`pool[{key!r}]`")
            if layers is not None and key != "*" and key not in layers:
                raise ValueError(
                    f"`pool` names layer {key!r}, which is not among the layers "
                    f"{list(layers)}.{suggest_names(key, list(layers))}"
                )
        return
    check_pool_name(pool)


def pool_for(pool: PoolSpec, layer: str) -> str | PoolFn:
    """The pool of one layer under a pool spec (see :func:`check_pool`)."""
    if isinstance(pool, Mapping):
        return pool.get(layer, pool.get("*", "avg"))
    return pool


def describe_pool(pool: PoolSpec, layer: str) -> str:
    """A stable text for a layer's pool (cache keys, reports); callables by qualified name."""
    p = pool_for(pool, layer)
    if isinstance(p, str):
        return p
    return getattr(p, "__qualname__", None) or repr(p)


def reduce_output(output: Any, pool: str | PoolFn = "avg", name: str = "layer") -> Tensor:
    """Turn one layer's output ``(B, ...)`` into features ``(B, D)`` (or keep it, ``pool="none"``).

    ``(B, D)`` passes through. ``pool="avg"``: ``(B, C, *spatial)`` (≥ 4-D) → ``(B, C)``;
    ``"cls"`` / ``"mean"``: ``(B, T, C)`` tokens → first token / token mean; ``"channels_last"``:
    ``(B, *spatial, C)`` → ``(B, C)``; ``"flatten"``: ``(B, Π rest)``; a callable maps the output
    to ``(B, D)``. An ambiguous layout (3-D with ``"avg"``) raises ``ValueError`` naming the
    options.
    """
    check_pool_name(pool)
    if not isinstance(output, Tensor):
        raise ValueError(
            f"layer {name!r} returned {type(output).__name__}, not a tensor; hook a submodule "
            "whose output is a single tensor (e.g. the conv or linear inside it), or pass a callable "
            f"pool for it (pool={{{name!r}: lambda out: out[0].mean(1)}})."
        )
    if callable(pool):
        out = pool(output)
        if not isinstance(out, Tensor) or out.ndim != 2 or out.shape[0] != output.shape[0]:
            shape = tuple(out.shape) if isinstance(out, Tensor) else type(out).__name__
            raise ValueError(
                f"the pool callable of layer {name!r} returned {shape}; it must return "
                f"(B, D) with B = {output.shape[0]}."
            )
        return out
    if pool == "none":
        return output
    if output.ndim < 2:
        raise ValueError(
            f"layer {name!r} returned shape {tuple(output.shape)}; a feature layer must keep the "
            "batch axis and at least one feature axis (B, D)."
        )
    if output.ndim == 2:
        return output
    shape = tuple(output.shape)
    if pool == "flatten":
        return output.flatten(1)  # (B, prod(rest))
    if pool == "avg":
        if output.ndim == 3:
            raise ValueError(
                f"layer {name!r} returned a 3-D output {shape}: (B, T, C) tokens or (B, C, L)? 3-D outputs "
                f"require pool='cls' | 'mean' (tokens) | 'flatten', or a callable, for this layer "
                f"(e.g. pool={{{name!r}: 'mean'}})."
            )
        return output.flatten(2).mean(dim=2)  # (B, C, *S) -> (B, C)
    if pool in ("cls", "mean"):
        if output.ndim != 3:
            raise ValueError(
                f"layer {name!r}: pool={pool!r} reads (B, T, C) tokens but the output has shape {shape}; "
                "use pool='avg' for (B, C, H, W) maps or 'channels_last' for (B, H, W, C)."
            )
        return output[:, 0] if pool == "cls" else output.mean(dim=1)
    # channels_last: (B, *S, C) -> (B, C)
    return output.flatten(1, -2).mean(dim=1)

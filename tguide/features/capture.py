"""The one forward-hook capture of tguide: :class:`LayerCapture`.

A forward hook on each named module (names as in ``model.named_modules()``, see
:func:`tguide.features.layers.resolve_layers`) copies the module's output, reduced per layer by
its pool (:func:`tguide.features.pooling.reduce_output`), while the model runs; the hooks are
removed on exit, also when the forward pass raises. With ``stop=True`` the forward pass ends as
soon as every captured layer has run, so the layers after them never run (the cut of
:class:`tguide.select.backbone.Backbone`). :func:`modules_entered` records which modules a
forward pass enters; :func:`eval_mode` (from :mod:`tguide.features.modes`) switches a network to
eval mode and restores every submodule's mode.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from torch import Tensor, nn
from torch.utils.hooks import RemovableHandle

from tguide.features.layers import resolve_layers
from tguide.features.modes import eval_mode
from tguide.features.pooling import PoolSpec, check_pool, pool_for, reduce_output

__all__ = ["LayerCapture", "eval_mode", "modules_entered"]


class _StopForward(Exception):
    """Raised by a capture's hook to end the forward pass (``stop=True``); caught by :meth:`LayerCapture.run`."""

    def __init__(self, capture: LayerCapture) -> None:
        super().__init__("forward pass stopped after the captured layers")
        self.capture = capture


class LayerCapture:
    """Forward hooks that record named layers' outputs; a context manager.

    >>> import torch
    >>> model = nn.Sequential(nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2))
    >>> with LayerCapture(model, ["0", "2"]) as cap:
    ...     _ = model(torch.zeros(5, 4))
    >>> {k: tuple(v.shape) for k, v in cap.outputs.items()}
    {'0': (5, 3), '2': (5, 2)}
    >>> len(model[0]._forward_hooks)  # removed on exit
    0

    ``outputs`` holds, per layer, the (reduced, detached unless ``detach=False``) output of the
    last call; ``calls`` counts calls since the last :meth:`clear`, so that a module run twice in
    one forward pass (a shared block) is noticed rather than silently mismatched with the labels.
    ``pool`` is a name, a callable, or a dict ``{layer: pool}`` (see
    :func:`tguide.features.pooling.check_pool`).

    ``stop=True`` ends the forward pass once every captured layer has run (the later modules do
    not run and cost nothing); run the model through :meth:`run`, which catches that stop:

    >>> with LayerCapture(model, ["0"], stop=True) as cap:
    ...     cap.run(torch.zeros(5, 4)) is None, tuple(cap.outputs["0"].shape)
    (True, (5, 3))
    """

    def __init__(
        self,
        model: nn.Module,
        layers: Sequence[str] | str,
        pool: PoolSpec = "avg",
        detach: bool = True,
        *,
        stop: bool = False,
    ) -> None:
        check_pool(pool)
        self.model = model
        self.modules = resolve_layers(model, layers)
        check_pool(pool, list(self.modules))
        self.pool = pool
        self.detach = detach
        self.stop = stop
        self.outputs: dict[str, Tensor] = {}
        self.calls: dict[str, int] = {name: 0 for name in self.modules}
        self._handles: list[RemovableHandle] = []

    def _hook(self, name: str) -> Callable[[nn.Module, Any, Any], None]:
        layer_pool = pool_for(self.pool, name)

        def hook(module: nn.Module, args: Any, output: Any) -> None:
            out = reduce_output(output, layer_pool, name)
            self.outputs[name] = out.detach() if self.detach else out
            self.calls[name] += 1
            if self.stop and all(self.calls.values()):
                raise _StopForward(self)

        return hook

    def clear(self) -> None:
        """Forget the recorded outputs and call counts (between batches)."""
        self.outputs = {}
        self.calls = {name: 0 for name in self.modules}

    def run(self, x: Any, forward: Callable[[nn.Module, Any], Any] | None = None) -> Any:
        """Clear, then run the model on ``x`` (``forward(model, x)`` if given, else ``model(x)``).

        Returns the model's output, or ``None`` when ``stop=True`` ended the pass early. The
        hooks must be attached (inside ``with``).
        """
        self.clear()
        try:
            return forward(self.model, x) if forward is not None else self.model(x)
        except _StopForward as stopped:
            if stopped.capture is not self:  # another capture's stop: not ours to catch
                raise
            return None

    def check_ran_once(self) -> None:
        """``ValueError`` unless every captured layer ran exactly once since :meth:`clear`."""
        wrong = {n: c for n, c in self.calls.items() if c != 1}
        if wrong:
            raise ValueError(
                f"`layers`: {wrong} ran a number of times other than once in one forward pass; "
                "hook modules that run exactly once per batch (not shared or skipped blocks)."
            )

    def attach(self) -> LayerCapture:
        if not self._handles:
            self._handles = [m.register_forward_hook(self._hook(n)) for n, m in self.modules.items()]
        return self

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles = []

    def __enter__(self) -> LayerCapture:
        return self.attach()

    def __exit__(self, *exc: Any) -> None:
        self.remove()


@contextmanager
def modules_entered(model: nn.Module) -> Iterator[list[nn.Module]]:
    """Record, in call order, every submodule of ``model`` whose forward is entered in the block.

    >>> import torch
    >>> net = nn.Sequential(nn.Linear(2, 2), nn.ReLU())
    >>> with modules_entered(net) as ran:
    ...     _ = net(torch.zeros(1, 2))
    >>> [type(m).__name__ for m in ran]
    ['Sequential', 'Linear', 'ReLU']
    """
    ran: list[nn.Module] = []
    handles = [m.register_forward_pre_hook(lambda m, _args: ran.append(m)) for m in model.modules()]
    try:
        yield ran
    finally:
        for handle in handles:
            handle.remove()

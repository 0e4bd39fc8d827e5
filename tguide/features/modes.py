"""Train/eval mode of a network, restored per submodule: :func:`eval_mode`.

The one place where tguide switches a network to eval mode for a measurement (feature capture,
the "auto" layer probe, the cut of :class:`tguide.select.backbone.Backbone`) and puts it back.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from torch import nn

__all__ = ["eval_mode"]


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode and restore every submodule's own previous mode on exit.

    Restoring per module (not ``model.train(previous)``) keeps submodules that were
    deliberately left in eval mode, such as frozen batch-norm layers, as they were.
    """
    previous = [(m, m.training) for m in model.modules()]
    model.eval()
    try:
        yield model
    finally:
        for module, was_training in previous:
            module.training = was_training

"""Warnings that name the user's line: the ``stacklevel`` for a ``warnings.warn`` deep in the library.

A score warns from inside a private helper, often under a torchmetrics wrapper; the default
``stacklevel`` would point at that helper. :func:`stacklevel_outside` walks up the stack past the
library's own frames so that the warning names the first line outside them.
"""

from __future__ import annotations

import sys

__all__ = ["stacklevel_outside"]

# torchmetrics wraps ``Metric.update``/``compute``: its frames sit between a user and a metric's
# method, and a warning skips them so that it names the user's line
_PASS_THROUGH = ("torchmetrics",)


def stacklevel_outside(*packages: str) -> int:
    """``stacklevel`` for a ``warnings.warn`` call that names the first caller outside ``packages``.

    Called from the function that warns; frames of modules in ``packages`` (dotted prefixes,
    e.g. ``"tguide.metrics"``) and of torchmetrics are skipped, so the warning points at the
    user's line however deep the library called itself.
    """
    skip = packages + _PASS_THROUGH
    level = 2  # 1 = the function that warns, 2 = its caller
    frame = sys._getframe(2)  # 0 = here, 1 = the function that warns, 2 = its caller
    while frame is not None and frame.f_back is not None:
        name = str(frame.f_globals.get("__name__", ""))
        if not any(name == p or name.startswith(p + ".") for p in skip):
            break
        frame = frame.f_back
        level += 1
    return level

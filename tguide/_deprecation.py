"""Keep old argument names working for one release while they move to the one vocabulary.

Usage::

    @renamed_arguments(src_features="source_features", src_labels="source_labels")
    def otce(source_features, source_labels, ...): ...

``otce(src_features=x, ...)`` then runs as ``otce(source_features=x, ...)`` and emits a
``DeprecationWarning`` that points at the caller's line; giving both the old and the new
name raises ``TypeError``. The wrapper keeps the wrapped function's name, docstring and
signature (``functools.wraps``), so help and ``inspect.signature`` show the new names only.
Works on functions and on methods (``__init__``, ``update``) alike.
"""

from __future__ import annotations

import functools
import inspect
import sys
import warnings
from collections.abc import Callable
from typing import Any, TypeVar

__all__ = ["renamed_arguments", "stacklevel_outside"]

F = TypeVar("F", bound=Callable[..., Any])


# torchmetrics wraps ``Metric.update``/``compute``: its frames sit between a user and a decorated
# method, and a warning skips them so that it names the user's line
_PASS_THROUGH = ("torchmetrics", __name__)


def stacklevel_outside(*packages: str) -> int:
    """``stacklevel`` for a ``warnings.warn`` call that names the first caller outside ``packages``.

    Called from the function that warns; frames of modules in ``packages`` (dotted prefixes,
    e.g. ``"tguide.metrics"``), of torchmetrics and of this module's wrappers are skipped, so
    the warning points at the user's line however deep the library called itself.
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


def renamed_arguments(**renames: str) -> Callable[[F], F]:
    """Decorator: map each deprecated keyword ``old`` to its new name ``renames[old]``.

    Raises ``TypeError`` at call time when both the old and the new name are given (as
    keywords, or the new one positionally). The old names are listed on the wrapper as
    ``__renamed_arguments__`` (``{old: new}``).
    """
    for old, new in renames.items():
        if not isinstance(new, str) or not new.isidentifier() or old == new:
            raise ValueError(f"renamed_arguments: {old}={new!r} must map an old name to a different new name.")

    def decorate(fn: F) -> F:
        params = list(inspect.signature(fn).parameters.values())
        named = {p.name for p in params}
        missing = [new for new in renames.values() if new not in named]
        if missing and not any(p.kind is p.VAR_KEYWORD for p in params):  # **kwargs may pass it on
            raise ValueError(f"renamed_arguments: {fn.__qualname__} has no argument(s) {missing}.")
        positional = {p.name: i for i, p in enumerate(params) if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)}

        @functools.wraps(fn)
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            for old, new in renames.items():
                if old not in kwargs:
                    continue
                if new in kwargs or positional.get(new, len(args)) < len(args):
                    raise TypeError(
                        f"{fn.__qualname__}() got both `{old}` (deprecated) and `{new}`; pass only `{new}`."
                    )
                warnings.warn(
                    f"{fn.__qualname__}(): the argument `{old}` is deprecated and will be removed in the next "
                    f"release; use `{new}`.",
                    DeprecationWarning,
                    stacklevel=stacklevel_outside(),
                )
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)

        wrapper.__renamed_arguments__ = dict(renames)  # type: ignore[attr-defined]
        return wrapper  # type: ignore[return-value]

    return decorate

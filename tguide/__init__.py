"""tguide: transferability-guided fine-tuning on PyTorch Lightning.

The public face, resolved lazily (PEP 562), so that ``import tguide`` loads neither torch nor
Lightning until a name is used:

- :func:`tguide.rank` (``candidates, target, ...`` → :class:`tguide.Ranking`): score source
  models and their layers on a target and pick one;
- :func:`tguide.finetune` and :func:`tguide.guided`: fine-tune a candidate; rank, fine-tune the
  picks and compare with the baselines;
- :func:`tguide.list_candidates`, :func:`tguide.create_candidate`, :func:`tguide.register_source`
  and :class:`tguide.Candidate`: what can be ranked, and how a spec becomes a model;
- :class:`tguide.Ranking` and :class:`tguide.Pick`: what ``rank`` returns.

Scores themselves live in :mod:`tguide.metrics`.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

# public name -> "module:attribute"; imported on first use
_LAZY: dict[str, str] = {
    "rank": "tguide.select.rank:rank",
    "finetune": "tguide.select.finetune:finetune",
    "guided": "tguide.select.guided:guided",
    "list_candidates": "tguide.select.candidates:list_candidates",
    "create_candidate": "tguide.select.candidates:create_candidate",
    "register_source": "tguide.select.candidates:register_source",
    "Candidate": "tguide.select.candidates:Candidate",
    "Ranking": "tguide.select.ranking_result:Ranking",
    "Pick": "tguide.select.ranking_result:Pick",
}

__all__ = [
    "Candidate",
    "Pick",
    "Ranking",
    "__version__",
    "create_candidate",
    "finetune",
    "guided",
    "list_candidates",
    "rank",
    "register_source",
]


def __getattr__(name: str) -> Any:
    target = _LAZY.get(name)
    if target is None:
        raise AttributeError(f"module 'tguide' has no attribute {name!r}")
    module_name, _, attr = target.partition(":")
    module = importlib.import_module(module_name)
    try:
        value = getattr(module, attr)
    except AttributeError:
        raise AttributeError(f"tguide.{name} is not available: {module_name} defines no {attr!r}") from None
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

"""The start of a recipe runner (``runner: {_target_: ..., _partial_: true}``): its config block and run folder."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tguide.errors import TGuideError

__all__ = ["prepare_run"]


def prepare_run(cfg: Any, block: str, recipes: str) -> tuple[dict[str, Any], Path]:
    """Return ``(cfg.<block> as a resolved dict, run folder)``; the folder is created and the
    composed config written to ``<run folder>/config.yaml``.

    Raises :class:`~tguide.errors.TGuideError` naming ``recipes`` when the config has no ``block``.
    """
    from omegaconf import OmegaConf

    if cfg.get(block) is None:
        raise TGuideError(f"the config has no `{block}:` block; use {recipes}")
    values = OmegaConf.to_container(cfg[block], resolve=True)
    run_dir = Path(cfg.paths.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    return values, run_dir  # type: ignore[return-value]

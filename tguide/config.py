"""The run configuration: the typed schema Hydra checks, and composing a recipe without running it.

The recipes (``tguide.recipes``: ``config.yaml`` and the groups ``data/ model/ trainer/ logger/
callbacks/ recipe/``) are YAML; the parts whose types are fixed are described here as dataclasses
and registered in Hydra's ConfigStore (:func:`register_schemas`), so Hydra itself refuses a wrong
type or an unknown key while composing (``trainer.max_epochs=abc``, ``seed=x``,
``trainer.max_epoch=3``):

- :class:`RunConfig` types the top-level run options (``config.yaml`` lists it first in its
  defaults). Its node is open (not struct) while composing, so a recipe may add its own block
  (``rank:``, ``fewshot:``, ...); Hydra closes the root afterwards, so ``nope=1`` on the command
  line is an unknown key and ``+nope=1`` adds one.
- :class:`TrainerConfig` (and :class:`DDPTrainerConfig`) type the ``trainer`` group; ``+trainer.X=``
  still passes any other ``lightning.pytorch.Trainer`` argument.

Schema fields default to ``???`` (MISSING) so that merging a schema never overwrites a value a
YAML file set before it; the YAML files give every value.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from omegaconf import MISSING

__all__ = [
    "RECIPES_MODULE",
    "RunConfig",
    "PathsConfig",
    "TrainerConfig",
    "DDPTrainerConfig",
    "register_schemas",
    "compose",
    "available",
    "GROUPS",
]

RECIPES_MODULE = "tguide.recipes"
GROUPS = ("recipe", "data", "model", "trainer", "logger", "callbacks")
SCHEMA_GROUP = "tguide_schema"


@dataclass
class PathsConfig:
    """Where runs write: ``output_root/<name>/<time>/`` unless ``hydra.run.dir`` says otherwise."""

    output_root: str = MISSING
    run_dir: str = MISSING


@dataclass
class RunConfig:
    """The top-level options of every run (see ``recipes/config.yaml`` for their meaning)."""

    name: str = MISSING
    seed: int = MISSING
    test_after_fit: bool = MISSING
    threads: int | None = MISSING
    runner: Any = MISSING
    resume: str | None = MISSING
    checkpoint_every_n_steps: int | None = MISSING
    paths: PathsConfig = field(default_factory=PathsConfig)


# `Any` where Lightning takes an int or a float (limit_*_batches: a count or a fraction) or a
# string or a number (precision): OmegaConf checks no unions of primitives.
@dataclass
class TrainerConfig:
    """The ``trainer`` group: keyword arguments of ``lightning.pytorch.Trainer``."""

    _target_: str = MISSING
    max_epochs: int | None = MISSING
    accelerator: str = MISSING
    devices: Any = MISSING
    precision: Any = MISSING
    deterministic: bool | None = MISSING
    log_every_n_steps: int | None = MISSING
    check_val_every_n_epoch: int | None = MISSING
    enable_progress_bar: bool | None = MISSING
    enable_model_summary: bool | None = MISSING
    limit_train_batches: Any = MISSING
    limit_val_batches: Any = MISSING
    limit_test_batches: Any = MISSING
    fast_dev_run: Any = MISSING


@dataclass
class DDPTrainerConfig(TrainerConfig):
    """``trainer=ddp``: the data-parallel options on top of :class:`TrainerConfig`."""

    strategy: str = MISSING
    num_nodes: int = MISSING
    sync_batchnorm: bool = MISSING


_REGISTERED = False


def register_schemas() -> None:
    """Store the schemas in Hydra's ConfigStore (idempotent): ``tguide_run`` (referenced by
    ``config.yaml``) and ``tguide_schema/trainer``, ``tguide_schema/trainer_ddp`` (by ``trainer/*.yaml``)."""
    global _REGISTERED
    if _REGISTERED:
        return
    from hydra.core.config_store import ConfigStore
    from omegaconf import OmegaConf

    run = OmegaConf.structured(RunConfig)
    OmegaConf.set_struct(run, False)  # recipes add their own top-level blocks; Hydra closes the root after
    store = ConfigStore.instance()
    store.store(name="tguide_run", node=run)
    store.store(group=SCHEMA_GROUP, name="trainer", node=TrainerConfig)
    store.store(group=SCHEMA_GROUP, name="trainer_ddp", node=DDPTrainerConfig)
    _REGISTERED = True


def available(group: str) -> list[str]:
    """The options of a config group (``available("recipe")`` lists the recipes)."""
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=RECIPES_MODULE, version_base="1.3"):
            return sorted(GlobalHydra.instance().config_loader().get_group_options(group))
    finally:
        GlobalHydra.instance().clear()


def compose(overrides: Sequence[str] = ()) -> Any:
    """Compose the config for ``overrides`` without running (Hydra runtime keys stay unresolved).

    Raises Hydra's own exceptions (an unknown recipe, key or a wrong type); :func:`tguide.cli.explain`
    turns them into one line.
    """
    from hydra import compose as hydra_compose
    from hydra import initialize_config_module
    from hydra.core.global_hydra import GlobalHydra

    register_schemas()
    GlobalHydra.instance().clear()
    try:
        with initialize_config_module(config_module=RECIPES_MODULE, version_base="1.3"):
            return hydra_compose(config_name="config", overrides=list(overrides))
    finally:
        GlobalHydra.instance().clear()

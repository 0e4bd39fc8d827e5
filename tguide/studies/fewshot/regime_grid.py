"""The few-shot regime grid of :mod:`tguide.studies.fewshot.regimes`: the (source, target) pairs,
shots, methods, fixed settings, hyper-parameter grid, the validation/test class splits and the CSV columns.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

SHOTS = (1, 5)
N_WAY = 5
PAIRS: tuple[dict[str, Any], ...] = (
    {
        "source": "lenet5_mnist",
        "target": "usps",
        "n_query": 15,
        "val": "USPS train file, digits 0-4",
        "test": "USPS test file, digits 5-9",
    },
    {"source": "lenet5_mnist", "target": "mnist_m", "n_query": 15, "val": "digits 0-4", "test": "digits 5-9"},
    {
        "source": "lenet5_mnist",
        "target": "omniglot",
        "n_query": 15,
        "val": "alphabets Japanese_(katakana), Tagalog",
        "test": "the other 6 alphabets",
    },
    {"source": "resnet20_cifar10", "target": "mnist_m", "n_query": 15, "val": "digits 0-4", "test": "digits 5-9"},
    {
        "source": "resnet20_cifar10",
        "target": "office31_webcam",
        "n_query": 10,
        "val": "classes 0,3,...,30 (sorted names)",
        "test": "the other 20 classes",
    },
)
VAL_ALPHABETS = ("Japanese_(katakana)", "Tagalog")
VAL_DIGITS = (0, 1, 2, 3, 4)
TEST_DIGITS = (5, 6, 7, 8, 9)
OFFICE_VAL = tuple(range(0, 31, 3))
IMPOSSIBLE = (
    "resnet20_cifar10 → CIFAR-10 classes unseen by the source: impossible, the checkpoint was "
    "trained on all 10 CIFAR-10 classes"
)
MAIN_METHODS = ("vanilla", "otce", "proto", "probe")
VARIANT_METHODS = ("otce_wd", "otce_last", "scratch")
FIXED: dict[str, Any] = {
    "step1": {"steps": 10, "batch": 40, "reg": 0.1, "max_iter": 30, "normalise": "l2"},
    "step2": {"steps": 20},
    "lambda_wd": 1.0,
    "probe": {"steps": 50, "lr": 0.01},
    "val_episodes_per_shot": 5,
    "test_episodes": 100,
    "val_seed": 1000,
    "test_seed": 0,
}
HP_GRID = {"step2_lr": (1e-3, 3e-3, 1e-2), "step1_lr": (3e-4, 3e-3)}
GRID = {
    "pairs": PAIRS,
    "shots": SHOTS,
    "n_way": N_WAY,
    "main": MAIN_METHODS,
    "variants": VARIANT_METHODS,
    "fixed": FIXED,
    "hp_grid": HP_GRID,
    "impossible": IMPOSSIBLE,
}
CSV_COLUMNS = (
    "cell",
    "source",
    "target",
    "shot",
    "n_test",
    "n_variant",
    "vanilla",
    "vanilla_ci",
    "otce",
    "otce_ci",
    "proto",
    "proto_ci",
    "probe",
    "probe_ci",
    "gain_otce",
    "gain_otce_ci",
    "gain_otce_wd",
    "gain_otce_wd_ci",
    "gain_otce_last",
    "gain_otce_last_ci",
    "scratch",
    "scratch_ci",
    "w_d",
    "w_t",
    "h_joint",
    "step1_lr",
    "step2_lr",
    "sec_per_episode",
)


@dataclass(frozen=True)
class Cell:
    source: str
    target: str
    shot: int
    n_query: int

    @property
    def pair(self) -> str:
        return f"{self.source}->{self.target}"

    @property
    def id(self) -> str:
        return f"{self.pair}:{self.shot}shot"


def cells() -> list[Cell]:
    """The fixed grid: every (source, target) pair × shot."""
    return [Cell(p["source"], p["target"], s, p["n_query"]) for p in PAIRS for s in SHOTS]


# ----------------------------------------------------------------------------- data

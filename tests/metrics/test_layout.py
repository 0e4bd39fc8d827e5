"""The package's shape: every submodule importable as a module, a small public surface."""

from __future__ import annotations

import importlib
import pkgutil
import re
import sys
import types
from pathlib import Path

import pytest

import tguide.metrics as M


def _submodules() -> list[str]:
    return sorted(m.name for m in pkgutil.walk_packages(M.__path__, prefix="tguide.metrics."))


def test_walk_finds_the_functional_modules():
    names = set(_submodules())
    for mod in ("hscore", "transrate", "leep", "logme", "otce", "task_distance", "permutation"):
        assert f"tguide.metrics.functional.{mod}" in names
    assert {"tguide.metrics.null", "tguide.metrics.stateful", "tguide.metrics.invariance",
            "tguide.metrics.denoising", "tguide.metrics.functional"} <= names


@pytest.mark.parametrize("name", _submodules())
def test_every_submodule_is_a_module_under_its_dotted_name(name):
    mod = importlib.import_module(name)
    assert isinstance(mod, types.ModuleType) and mod.__name__ == name
    # `import tguide.metrics.a.b as m` resolves attributes from the top package: nothing may
    # shadow a submodule there (e.g. a function re-exported under the module's own name)
    obj = sys.modules["tguide"]
    for part in name.split(".")[1:]:
        obj = getattr(obj, part)
    assert obj is mod, f"tguide.{'.'.join(name.split('.')[1:])} is {obj!r}, not the module"


def test_import_as_gives_modules():
    import tguide.metrics.functional.hscore as h
    import tguide.metrics.functional.otce as m
    import tguide.metrics.null as n

    assert all(isinstance(x, types.ModuleType) for x in (m, h, n))
    assert callable(m.otce) and callable(h.hscore) and callable(n.label_shuffle_null)


SCORES = {"hscore", "hscore_shrinkage", "transrate", "transrate_comparable", "transrate_layers", "leep", "nce",
          "logme", "otce", "otce_sim", "fit_otce_weights"}
CLASSES = {"FeatureMetric", "HScore", "HScoreShrinkage", "TransRate", "TransRateComparable", "LEEP", "NCE", "LogME",
           "OTCE"}
OTHERS = {"label_shuffle_null", "NullCalibrated", "OTCEResult", "OTCEConvergenceWarning", "LogMEConvergenceWarning",
          "LogMEUnboundedWarning"}
HELPERS = {"kl_rows", "coding_rate", "calibrate", "label_permutations", "residual_patches", "task_distance",
           "otce_coupling", "comparable_features", "ledoit_wolf_shrinkage", "denoiser_residuals", "residual_distance",
           "score_denoiser", "squared_euclidean", "joint_labels", "task_distance_null", "miller_madow_correction",
           "CORRECTIONS", "stratified_subset"}
OTHER_FAMILIES = {"ekld", "ekld_per_class", "EKLD", "denoising_transferability", "DenoisingTransferResult"}


def test_public_surface():
    public = set(M.__all__)
    assert SCORES | CLASSES | OTHERS <= public
    assert not public & (HELPERS | OTHER_FAMILIES)
    for name in HELPERS | OTHER_FAMILIES:
        assert not hasattr(M, name), f"tguide.metrics.{name} should live in its module only"
    for name in public:
        assert not isinstance(getattr(M, name), types.ModuleType)


def test_other_families_live_in_their_modules():
    from tguide.metrics.denoising import denoising_transferability
    from tguide.metrics.invariance import EKLD, ekld

    assert EKLD.higher_is_better is False  # lower = more invariant: not a transferability score
    assert callable(ekld) and callable(denoising_transferability)


def test_one_corrections_tuple():
    root = Path(M.__file__).parent
    hits = [p for p in root.rglob("*.py") if re.search(r"^CORRECTIONS\s*[:=]", p.read_text(), re.MULTILINE)]
    assert [p.relative_to(root).as_posix() for p in hits] == ["functional/permutation.py"]
    from tguide.metrics.functional import leep, otce, permutation

    assert otce.check_correction is permutation.check_correction is leep.check_correction

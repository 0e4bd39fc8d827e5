"""`import tguide` and `import tguide.metrics` stay light: no Lightning, torchmetrics, POT, torchvision,
plotting or W&B (and `import tguide` no torch at all).

Checked in a fresh interpreter (this test process has imported everything already).
"""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

HEAVY = ("lightning", "pytorch_lightning", "torchvision", "torchmetrics", "ot", "segmentation_models_pytorch",
         "wandb", "matplotlib", "scipy", "sklearn", "timm", "hydra")


def _modules_after(code: str) -> set[str]:
    out = subprocess.run(
        [sys.executable, "-c", code + "\nimport sys, json; print(json.dumps(sorted(sys.modules)))"],
        capture_output=True, text=True, timeout=120, check=True,
    )
    return set(json.loads(out.stdout.strip().splitlines()[-1]))


def _heavy(mods: set[str]) -> list[str]:
    return sorted(m for m in mods if m.split(".")[0] in HEAVY)


def test_import_tguide_metrics_is_light():
    mods = _modules_after("import tguide.metrics")
    assert _heavy(mods) == []


def test_functional_scores_do_not_load_torchmetrics_or_pot():
    # the functions resolve lazily; using one loads torch and numpy only
    mods = _modules_after(
        "import torch\nfrom tguide.metrics import hscore, transrate, logme, otce, nce\n"
        "x = torch.randn(20, 3); y = torch.arange(20) % 2\nhscore(x, y); transrate(x, y); logme(x, y)"
    )
    assert _heavy(mods) == []


def test_lazy_names_resolve_and_all_is_complete():
    import tguide.metrics as tm

    for name in tm.__all__:
        assert getattr(tm, name) is not None, name
    assert set(tm.__all__) <= set(dir(tm))


def test_import_tguide_is_light():
    """The public API resolves lazily (PEP 562): importing the package loads no torch at all."""
    mods = _modules_after("import tguide\nassert 'rank' in dir(tguide) and 'Ranking' in tguide.__all__")
    assert _heavy(mods) == [] and "torch" not in mods and "tguide.select" not in mods


def test_public_api_is_the_library_objects():
    import tguide
    import tguide.select.candidates as candidates
    import tguide.select.rank
    import tguide.select.ranking_result as result

    assert tguide.rank is tguide.select.rank.rank
    assert tguide.Ranking is result.Ranking and tguide.Pick is result.Pick
    assert tguide.create_candidate is candidates.create_candidate and tguide.Candidate is candidates.Candidate
    assert tguide.list_candidates is candidates.list_candidates
    assert tguide.register_source is candidates.register_source
    assert tguide.list_candidates("zoo:resnet20*") == ["zoo:resnet20_cifar10"]
    with pytest.raises(AttributeError, match="no attribute 'rnak'"):
        tguide.rnak  # noqa: B018


@pytest.mark.parametrize("name", ["finetune", "guided"])
def test_finetune_and_guided_resolve_lazily(name: str):
    """``tguide.finetune`` / ``tguide.guided`` are the plain functions of tguide.select.finetune / .guided."""
    import importlib

    import tguide

    module = importlib.import_module(f"tguide.select.{name}")
    if not hasattr(module, name):  # the function is written on another branch; the name must still fail cleanly
        with pytest.raises(AttributeError, match=rf"tguide.{name} is not available: tguide.select.{name} defines no"):
            getattr(tguide, name)
        pytest.skip(f"tguide.select.{name}.{name} is not defined yet")
    assert getattr(tguide, name) is getattr(module, name) and callable(getattr(tguide, name))

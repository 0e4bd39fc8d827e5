"""`import tguide.metrics` stays light: no Lightning, torchmetrics, POT, torchvision, plotting or W&B.

Checked in a fresh interpreter (this test process has imported everything already).
"""

from __future__ import annotations

import json
import subprocess
import sys

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

import pytest
from omegaconf import OmegaConf

from tguide.errors import TGuideError
from tguide.runs import prepare_run


def test_prepare_run_returns_block_and_writes_config(tmp_path):
    cfg = OmegaConf.create({"paths": {"run_dir": str(tmp_path / "run")}, "a": 3, "block": {"x": "${a}", "y": [1, 2]}})
    values, run_dir = prepare_run(cfg, "block", "recipe=demo")
    assert values == {"x": 3, "y": [1, 2]} and run_dir == tmp_path / "run"
    assert OmegaConf.load(run_dir / "config.yaml").block.x == 3  # written resolved
    with pytest.raises(TGuideError, match=r"no `other:` block; use recipe=demo"):
        prepare_run(cfg, "other", "recipe=demo")

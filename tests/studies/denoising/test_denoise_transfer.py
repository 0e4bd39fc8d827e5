import json

import pytest
import torch

from tguide.errors import TGuideError
from tguide.fit import compose, run
from tguide.studies.denoising.transfer import load_checkpoint, load_or_train, markdown, noisy_copies

TINY_TRANSFER = ["recipe=denoise_transfer", "transfer.train.steps=2", "transfer.train.width=4",
                 "transfer.train.batch=2", "transfer.train.patch=32", "transfer.crop=32", "transfer.n_images=8",
                 "transfer.n_projections=16", "transfer.targets=[gaussian:25,gaussian:50,impulse:0.2]",
                 "logger=none", "name=unit"]


def test_load_or_train_caches_by_settings(tmp_path, data_root):
    hp = dict(mode="n2n", steps=2, width=4, patch=32, batch=2, lr=1e-3, seed=0)
    net, info = load_or_train("gaussian:15", tmp_path, **hp)
    assert not info["reused"] and info["loss"] == "l2" and info["steps"] == 2
    again, info2 = load_or_train("gaussian:15", tmp_path, **hp)
    assert info2["reused"] and all(torch.equal(a, b) for a, b in zip(net.state_dict().values(),
                                                                     again.state_dict().values()))
    _, info3 = load_or_train("impulse:0.2", tmp_path, **hp)
    assert not info3["reused"] and info3["loss"] == "l0"
    assert len(list(tmp_path.glob("*.pt"))) == 2
    assert isinstance(load_checkpoint(info["path"]), torch.nn.Module)
    with pytest.raises(TGuideError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.ckpt")


def test_noisy_copies_are_fixed_by_seed():
    clean = torch.rand(3, 1, 16, 16)
    assert torch.equal(noisy_copies(clean, "gaussian:25", 1), noisy_copies(clean, "gaussian:25", 1))
    assert not torch.equal(noisy_copies(clean, "gaussian:25", 1), noisy_copies(clean, "gaussian:25", 2))


def test_denoise_transfer_recipe_smoke(tmp_path, data_root):
    cfg = compose([*TINY_TRANSFER, f"transfer.cache_dir={tmp_path / 'cache'}", f"paths.run_dir={tmp_path / 'run'}"])
    res = run(cfg)
    saved = json.loads((tmp_path / "run" / "results.json").read_text())
    assert [r["target"] for r in saved["rows"]] == ["gaussian:25", "gaussian:50", "impulse:0.2"]
    assert all(0 <= r["score"] <= 1 and r["score_seconds"] > 0 for r in saved["rows"])
    assert res["source"] == "gaussian:25" and not saved["model"]["reused"]
    assert (tmp_path / "run" / "results.md").read_text().startswith("### Denoising transferability")
    assert "| gaussian:25 | impulse:0.2 |" in markdown(saved["rows"], "t")


@pytest.mark.slow
def test_denoise_n2n_recipe_then_transfer_from_its_checkpoint(tmp_path, data_root):
    run_dir = tmp_path / "n2n"
    cfg = compose(["recipe=denoise_n2n", "model.net.width=4", "trainer.max_epochs=1", "data.patches_per_epoch=8",
                   "data.batch_size=4", "data.patch_size=32", "data.max_eval_images=1", "data.test_sets=[Set12]",
                   "trainer.enable_progress_bar=false", "trainer.enable_model_summary=false", "logger=csv",
                   f"paths.run_dir={run_dir}", "name=unit", "threads=1"])
    metrics = run(cfg)
    assert {"val/psnr", "test/psnr/Set12", "test/ssim/Set12"} <= set(metrics)
    saved = json.loads((run_dir / "metrics.json").read_text())
    assert saved["test/psnr/Set12"] == pytest.approx(metrics["test/psnr/Set12"])
    assert (run_dir / "checkpoints" / "best.ckpt").exists() and list((run_dir / "images").glob("*.png"))
    cfg2 = compose([*TINY_TRANSFER, f"transfer.checkpoint={run_dir / 'checkpoints' / 'best.ckpt'}",
                    "transfer.targets=[gaussian:25]", f"paths.run_dir={tmp_path / 'tr'}"])
    res = run(cfg2)
    assert res["model"]["checkpoint"].endswith("best.ckpt") and 0 <= res["rows"][0]["score"] <= 1

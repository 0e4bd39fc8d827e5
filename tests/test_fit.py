"""The CLI and the spine: composition, overrides, user errors, run folder, W&B offline, DDP, wheel."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from omegaconf import OmegaConf

from tguide.fit import available, check_overrides, compose, fit

REPO = Path(__file__).resolve().parents[1]
QUICK = ["trainer.max_epochs=1", "trainer.limit_train_batches=4", "trainer.limit_val_batches=2",
         "trainer.limit_test_batches=2", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false"]


def run_cli(*args: str, cwd: Path | None = None, python: str = sys.executable,
            env: dict[str, str] | None = None, timeout: int = 300) -> subprocess.CompletedProcess:
    return subprocess.run([python, "-m", "tguide.fit", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def test_compose_defaults_and_overrides():
    cfg = compose()
    assert cfg.data._target_.endswith("MNISTDataModule")
    assert cfg.model.net._target_.endswith("LeNet5")
    assert cfg.logger._target_.endswith("make_wandb_logger")
    cfg = compose(["trainer.max_epochs=3", "logger=csv", "seed=7", "data.batch_size=64"])
    assert (cfg.trainer.max_epochs, cfg.seed, cfg.data.batch_size) == (3, 7, 64)
    assert cfg.model.scheduler.T_max == 3  # interpolation follows the override
    assert cfg.logger._target_.endswith("make_csv_logger")
    assert compose(["trainer=ddp"]).trainer.strategy == "ddp"
    assert "default" in available("recipe") and {"csv", "none", "wandb"} <= set(available("logger"))


@pytest.mark.parametrize(
    ("overrides", "pattern"),
    [
        (["recipe=nope"], r"unknown recipe 'nope'; available: .*default"),
        (["logger=tensorboardx"], r"unknown option for `logger` 'tensorboardx'; available: csv, none, wandb"),
        (["trainer.max_epoch=3"], r"unknown key 'trainer.max_epoch'.*\+trainer.max_epoch="),
        (["trainer.max_epochs=abc"], r"trainer.max_epochs expects int"),
        (["seed=[1"], r"cannot parse the overrides"),
    ],
)
def test_bad_overrides_one_line(overrides, pattern):
    import re

    message = check_overrides(overrides)
    assert message is not None and re.search(pattern, message), message
    assert "\n" not in message


def test_good_overrides_pass():
    assert check_overrides(["trainer.max_epochs=2", "logger=csv", "+trainer.num_sanity_val_steps=0",
                            "model.optimizer.lr=1", "hydra.run.dir=/tmp/x", "--cfg", "job"]) is None


@pytest.mark.parametrize(
    ("args", "env", "pattern"),
    [
        (["recipe=nope"], {}, "unknown recipe 'nope'; available: "),
        (["trainer.max_epoch=1"], {}, "unknown key 'trainer.max_epoch'"),
        (["logger=none"], {"TGUIDE_DATA": "/definitely/not/here"},
         "data root '/definitely/not/here' does not exist .*TGUIDE_DATA"),
        (["logger=none"], {"TGUIDE_DATA": "EMPTY"}, "dataset 'mnist' not found"),
    ],
)
def test_cli_errors_exit_2_without_traceback(tmp_path, args, env, pattern):
    import re

    if env.get("TGUIDE_DATA") == "EMPTY":
        env = {"TGUIDE_DATA": str(tmp_path)}
    proc = run_cli(*args, f"hydra.run.dir={tmp_path / 'run'}", env=env, timeout=120)
    assert proc.returncode == 2, proc.stderr[-2000:]
    lines = [line for line in proc.stderr.splitlines() if line.startswith("tguide.fit: error:")]
    assert len(lines) == 1 and re.search(pattern, lines[0]), proc.stderr[-2000:]
    assert "Traceback" not in proc.stderr and "HYDRA_FULL_ERROR" not in proc.stderr


def test_help_lists_recipes():
    proc = run_cli("--help", timeout=60)
    assert proc.returncode == 0
    assert "recipe: default" in proc.stdout and "TGUIDE_DATA" in proc.stdout


def test_fit_in_process_writes_run_folder(tmp_path):
    cfg = compose([*QUICK, "logger=csv", f"paths.run_dir={tmp_path}", "name=unit"])
    metrics = fit(cfg)
    assert {"val/acc", "test/acc"} <= set(metrics)
    assert (tmp_path / "config.yaml").read_text().count("max_epochs: 1") == 1
    assert (tmp_path / "checkpoints" / "best.ckpt").is_file()
    assert json.loads((tmp_path / "metrics.json").read_text())["test/acc"] == metrics["test/acc"]
    assert "val/acc" in (tmp_path / "csv" / "metrics.csv").read_text()
    assert "max_epochs: 1" in (tmp_path / "csv" / "hparams.yaml").read_text()  # composed config logged


def test_wandb_offline_run_written(tmp_path):
    env = {"WANDB_MODE": "", "WANDB_API_KEY": "", "HOME": str(tmp_path)}  # no account configured
    proc = run_cli(*QUICK, f"hydra.run.dir={tmp_path / 'run'}", "logger=wandb", env=env)
    assert proc.returncode == 0, proc.stderr[-3000:]
    runs = list((tmp_path / "run" / "wandb").glob("offline-run-*/run-*.wandb"))
    assert len(runs) == 1, list((tmp_path / "run").rglob("*"))
    blob = runs[0].read_bytes()
    for needle in (b"val/acc", b"test/acc", b"max_epochs", b"MNISTDataModule"):  # metrics + composed config
        assert needle in blob, needle


@pytest.mark.slow
def test_ddp_two_cpu_processes(tmp_path):
    run = tmp_path / "run"
    proc = run_cli(*QUICK, "trainer=ddp", "trainer.accelerator=cpu", "trainer.devices=2", "logger=csv",
                   f"hydra.run.dir={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "Starting with 2 processes" in proc.stdout + proc.stderr
    assert proc.stdout.count("tguide.fit: run folder") == 1  # rank 0 alone reports
    assert proc.stdout.count("_target_: tguide.data.mnist.MNISTDataModule") == 1  # config printed once
    rows = (run / "csv" / "metrics.csv").read_text().splitlines()
    assert rows[0].count("val/acc") == 1 and len([r for r in rows if r.startswith("0,")]) >= 1
    assert json.loads((run / "metrics.json").read_text())["test/acc"] > 0.0


@pytest.mark.slow
def test_default_recipe_reaches_97_percent(tmp_path):
    proc = run_cli("logger=none", "trainer.enable_progress_bar=false", f"hydra.run.dir={tmp_path}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert json.loads((tmp_path / "metrics.json").read_text())["test/acc"] >= 0.97


@pytest.mark.slow
def test_wheel_install_runs_from_root(tmp_path):
    """`pip install .` (not editable) ships tguide.callbacks and the recipes; run from `/`."""
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
    py = venv / "bin" / "python"
    site = subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                          capture_output=True, text=True, check=True).stdout.strip()
    # reuse this environment's dependencies (torch & co.) without its editable tguide
    deps = [p for p in sys.path if p.endswith("site-packages")]
    Path(site, "deps.pth").write_text("\n".join(deps) + "\n")
    build = subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-build-isolation",
                            "--target", site, str(REPO)], capture_output=True, text=True)
    assert build.returncode == 0, build.stderr[-3000:]
    assert not Path(site, "__editable___tguide_0_1_0_finder.py").exists()
    where = subprocess.run([str(py), "-c", "import tguide, tguide.callbacks, tguide.recipes; print(tguide.__file__)"],
                           capture_output=True, text=True, cwd="/")
    assert where.returncode == 0 and where.stdout.startswith(site), where.stderr + where.stdout
    run = tmp_path / "run"
    proc = run_cli("trainer.max_epochs=1", "logger=csv", "trainer.enable_progress_bar=false",
                   f"hydra.run.dir={run}", cwd=Path("/"), python=str(py))
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert (run / "csv" / "metrics.csv").is_file() and (run / "metrics.json").is_file()


def test_multirun_sweeps_are_checked_with_their_first_value():
    assert check_overrides(["-m", "seed=0,1,2", "trainer.max_epochs=range(1,3)"]) is None
    assert "unknown key 'trainer.nope'" in check_overrides(["-m", "seed=0,1", "trainer.nope=1,2"])
    assert "expects int" in check_overrides(["-m", "trainer.max_epochs=a,b"])
    assert "Ambiguous value" in check_overrides(["seed=0,1"])  # without -m a comma list is not a sweep


@pytest.mark.parametrize("group", ["recipe", "data", "model", "trainer", "logger", "callbacks"])
def test_every_option_of_every_group_composes(group):
    """Every recipe and group option composes with the defaults (a YAML or interpolation error
    in any one of them fails here, not in a user's terminal)."""
    from tguide.fit import available

    options = available(group)
    assert options
    for option in options:
        cfg = compose([f"{group}={option}"])
        OmegaConf.to_yaml(cfg)  # interpolations parse

"""Runs that survive: SIGKILL then resume=, one-line user errors, fail-safe DDP scoring."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf

from tguide.errors import ResumeError
from tguide.runs import RESUMABLE_KEYS, check_resumable, find_resume

REPO = Path(__file__).resolve().parents[1]
SMALL = ["trainer=cpu", "logger=csv", "seed=3", "threads=1", "trainer.max_epochs=3", "trainer.limit_train_batches=12",
         "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "trainer.enable_progress_bar=false",
         "trainer.enable_model_summary=false", "callbacks.transferability.max_samples=60",
         "callbacks.transferability.source_max_samples=60"]
FEWSHOT = ["recipe=fewshot_mnist_usps", "logger=none", "fewshot.episodes=6", "fewshot.source.epochs=1",
           "fewshot.finetune.steps=40", "fewshot.pretune.steps=2", "fewshot.n_query=5"]


def _env(tmp_path: Path) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TGUIDE_OUTPUT": str(tmp_path / "outputs"),
            "PYTHONWARNINGS": "ignore::DeprecationWarning"}


def _cli(tmp_path: Path, *args: str, timeout: int = 240, extra_env: dict | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tguide.fit", *args], cwd=tmp_path, capture_output=True, text=True,
                          timeout=timeout, env={**_env(tmp_path), **(extra_env or {})})


def _kill_when(tmp_path: Path, args: list[str], ready, timeout: float = 240) -> None:
    """Start ``tguide.fit args``, SIGKILL its process group as soon as ``ready()`` holds."""
    proc = subprocess.Popen([sys.executable, "-m", "tguide.fit", *args], cwd=tmp_path, env=_env(tmp_path),
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, f"the run ended before the kill point: {proc.stderr.read()[-2000:]}"
            assert time.monotonic() < deadline, "no kill point within the timeout"
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    assert proc.returncode == -signal.SIGKILL


def _rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def _weights(ckpt: Path) -> dict[str, torch.Tensor]:
    return torch.load(ckpt, map_location="cpu", weights_only=False)["state_dict"]


def test_killed_fit_resumes_in_its_folder_like_an_uninterrupted_run(tmp_path):
    ref = tmp_path / "ref"
    proc = _cli(tmp_path, *SMALL, f"hydra.run.dir={ref}")
    assert proc.returncode == 0, proc.stderr[-3000:]

    run = tmp_path / "run"
    _kill_when(tmp_path, [*SMALL, f"hydra.run.dir={run}"],
               lambda: (run / "checkpoints" / "last-epoch.ckpt").is_file())  # killed in epoch 1 (or later)
    assert not (run / "metrics.json").exists()
    proc = _cli(tmp_path, *SMALL, f"resume={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "tguide.fit: resuming" in proc.stdout
    assert not (tmp_path / "outputs").exists()  # one run folder: the old one
    assert json.loads((run / "metrics.json").read_text())["test/acc"] > 0

    rows = _rows(run / "csv" / "metrics.csv")
    for key in ("val/acc", "train/loss_epoch", "transfer/hscore/net.fc1"):
        epochs = [r["epoch"] for r in rows if r.get(key)]
        assert epochs == ["0", "1", "2"], (key, epochs)
    assert len([r for r in rows if r.get("test/acc")]) == 1
    assert len([r for r in rows if r.get("lr-Adam")]) == 3
    # the monitor's history came back from the checkpoint: the end-of-fit table has every epoch
    table = _rows(run / "csv" / "transferability.csv")
    assert sorted({r["epoch"] for r in table}) == ["0", "1", "2"]

    a, b = _weights(ref / "checkpoints" / "last.ckpt"), _weights(run / "checkpoints" / "last.ckpt")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.equal(a[name], b[name]), name
    def timeless(rs):
        return [{k: v for k, v in r.items() if k != "transfer/seconds"} for r in rs]

    assert timeless(_rows(ref / "csv" / "metrics.csv")) == timeless(rows)  # the same log, row for row


def test_resume_refuses_a_changed_config_and_allows_the_listed_keys(tmp_path):
    from tguide.fit import compose

    cfg = compose(["trainer.max_epochs=3", f"paths.run_dir={tmp_path}", "name=t", "logger=csv"])
    stored = OmegaConf.to_container(cfg, resolve=True)
    longer = compose(["trainer.max_epochs=5", f"paths.run_dir={tmp_path}", "name=t", "logger=none", "threads=1"])
    check_resumable(longer, stored)  # scheduler T_max follows max_epochs: not a change of its own
    other = compose(["trainer.max_epochs=3", f"paths.run_dir={tmp_path}", "name=t", "model.optimizer.lr=0.5"])
    with pytest.raises(ResumeError, match=r"model.optimizer.lr was 0.002, now 0.5; only resume, paths"):
        check_resumable(other, stored)
    assert "trainer.max_epochs" in RESUMABLE_KEYS
    with pytest.raises(ResumeError, match="no such file or folder"):
        find_resume(tmp_path / "nope")


def test_user_errors_are_one_line_and_exit_2(tmp_path):
    layer = _cli(tmp_path, *SMALL, "trainer.max_epochs=1", "callbacks.transferability.layers=[net.nope]",
                 f"hydra.run.dir={tmp_path / 'a'}")
    assert layer.returncode == 2, layer.stderr[-3000:]
    lines = [ln for ln in layer.stderr.splitlines() if ln.startswith("tguide.fit: error")]
    assert len(lines) == 1 and "no module named 'net.nope'" in lines[0], layer.stderr[-3000:]
    assert "Traceback" not in layer.stderr

    debug = _cli(tmp_path, *SMALL, "trainer.max_epochs=1", "callbacks.transferability.layers=[net.nope]",
                 f"hydra.run.dir={tmp_path / 'b'}", extra_env={"TGUIDE_DEBUG": "1"})
    assert debug.returncode == 2 and "Traceback" in debug.stderr, debug.stderr[-3000:]

    ckpt = _cli(tmp_path, "+ckpt_path=x.ckpt", timeout=120)
    assert ckpt.returncode == 2 and "use resume=PATH" in ckpt.stderr.strip().splitlines()[-1]

    changed = tmp_path / "c"
    changed.mkdir()
    (changed / "config.yaml").write_text(OmegaConf.to_yaml({"seed": 99}))
    bad = _cli(tmp_path, *SMALL, f"resume={changed}", timeout=120)
    assert bad.returncode == 2 and "Traceback" not in bad.stderr, bad.stderr[-3000:]
    last = bad.stderr.strip().splitlines()[-1]
    assert last.startswith("tguide.fit: error: cannot resume") and "may change when resuming" in last


def test_hydra_flags_parsed_without_hydra_internals():
    from tguide.fit import check_overrides, parse_cli

    flags, overrides = parse_cli(["-m", "--cfg", "job", "--config-dir=/x", "-p", "trainer", "--info", "seed=1"])
    assert flags == {"multirun": True, "cfg": "job", "config_dir": "/x", "package": "trainer", "info": "all"}
    assert overrides == ["seed=1"]
    assert "unknown option '--nope'" in check_overrides(["--nope"])
    assert "resume= continues one run" in check_overrides(["-m", "resume=/x"])
    assert "hydra._internal" not in (REPO / "tguide" / "fit.py").read_text()


@pytest.mark.slow
def test_killed_fewshot_run_skips_finished_episodes(tmp_path):
    run = tmp_path / "run"
    done = run / "episodes.jsonl"
    _kill_when(tmp_path, [*FEWSHOT, f"hydra.run.dir={run}"],
               lambda: done.is_file() and done.read_text().count("\n") >= 2)
    before = [json.loads(line)["episode"] for line in done.read_text().splitlines()]
    assert 2 <= len(before) < 6
    proc = _cli(tmp_path, *FEWSHOT, f"resume={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"resuming: {len(before)} finished episodes" in proc.stdout
    ran = [line for line in proc.stdout.splitlines() if line.startswith("episode ")]
    assert len(ran) == 6 - len(before)  # the finished ones were not run again
    episodes = [json.loads(line)["episode"] for line in done.read_text().splitlines()]
    assert episodes == list(range(6))
    res = json.loads((run / "results.json").read_text())
    assert res["episodes"] == 6 and [r["episode"] for r in res["rows"]] == list(range(6))
    assert not (tmp_path / "outputs").exists()


DDP_SCRIPT = textwrap.dedent("""
    import os, sys, torch, torch.distributed as dist
    from torch import nn
    from torch.utils.data import DataLoader, TensorDataset
    import tguide.probe as probe

    rank, port, case = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    torch.manual_seed(0)
    x, y = torch.randn(40, 6), torch.arange(40) % 3
    model = nn.Sequential(nn.Linear(6, 5), nn.ReLU(), nn.Linear(5, 3))
    loader = DataLoader(TensorDataset(x, y), batch_size=8)
    kwargs = {}
    if case == "kwarg":
        kwargs = {"metric_kwargs": {"transrate": {"epss": 1.0}}}
    elif case == "raise":
        def boom(*a, **k):
            raise RuntimeError("boom on rank 0")
        probe._compute = boom   # only rank 0 computes
    elif case == "warn":
        probe._compute = lambda *a, **k: 1 / 0
        kwargs = {"on_error": "warn"}
    try:
        out = probe.transferability_scores(model, loader, ["0"], ["transrate"], max_samples=None, **kwargs)
        print(f"rank {rank} ok {sorted(out.items())}", flush=True)
    except Exception as err:
        print(f"rank {rank} raised {type(err).__name__}: {err}", flush=True)
    dist.destroy_process_group()
""")


@pytest.mark.parametrize("case", ["kwarg", "raise", "warn"])
def test_ddp_scoring_errors_reach_every_rank(tmp_path, case):
    import socket

    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**_env(tmp_path), "PYTHONPATH": str(REPO)}
    procs = [subprocess.Popen([sys.executable, str(script), str(r), port, case], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True, env=env, cwd=tmp_path) for r in (0, 1)]
    outs = []
    try:
        for p in procs:
            out, err = p.communicate(timeout=120)  # a hang fails here instead of blocking CI
            outs.append(out.strip().splitlines()[-1] if out.strip() else err[-2000:])
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
    tails = [o.split(" ", 2)[2] for o in outs]
    assert tails[0] == tails[1], outs  # the same outcome on both ranks
    if case == "kwarg":
        assert tails[0].startswith("raised ConfigError: `metric_kwargs['transrate']`: unknown keyword 'epss'"), outs
        assert "valid keywords: eps" in tails[0]
    elif case == "raise":
        assert tails[0] == "raised RuntimeError: boom on rank 0", outs
    else:
        assert tails[0].startswith("ok [") and "nan" in tails[0], outs


TINY = ["logger=csv", "seed=1", "threads=1", "trainer.max_epochs=3", "trainer.limit_train_batches=6",
        "trainer.limit_val_batches=2", "trainer.limit_test_batches=2", "trainer.enable_progress_bar=false",
        "trainer.enable_model_summary=false", "callbacks.transferability.max_samples=40",
        "callbacks.transferability.source_max_samples=40"]


def test_resume_alone_continues_the_stored_run(tmp_path):
    """``resume=RUN`` and nothing else: the stored config is the base (csv stays csv, not the
    default W&B), every epoch's row is written once, and config.yaml records the resumption."""
    run = tmp_path / "run"
    _kill_when(tmp_path, [*TINY, f"hydra.run.dir={run}"],
               lambda: (run / "checkpoints" / "last-epoch.ckpt").is_file())
    proc = _cli(tmp_path, f"resume={run}", extra_env={"WANDB_MODE": "offline"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not (run / "wandb").exists() and not (tmp_path / "outputs").exists()
    rows = _rows(run / "csv" / "metrics.csv")
    assert [r["epoch"] for r in rows if r.get("val/acc")] == ["0", "1", "2"]
    assert len([r for r in rows if r.get("test/acc")]) == 1
    stored = OmegaConf.load(run / "config.yaml")
    assert stored.logger._target_.endswith("make_csv_logger") and stored.trainer.max_epochs == 3
    assert len(stored.resumed) == 1 and stored.resumed[0].at
    assert dict(stored.resumed[0].changed) == {"resume": {"was": None, "now": str(run)}}

    # a second resumption with a resumable change is recorded beside the first; other keys are refused
    more = _cli(tmp_path, f"resume={run}", "trainer.max_epochs=4")
    assert more.returncode == 0, more.stderr[-3000:]
    stored = OmegaConf.load(run / "config.yaml")
    assert stored.trainer.max_epochs == 4 and len(stored.resumed) == 2
    assert stored.resumed[1].changed["trainer.max_epochs"] == {"was": 3, "now": 4}
    assert [r["epoch"] for r in _rows(run / "csv" / "metrics.csv") if r.get("val/acc")] == ["0", "1", "2", "3"]
    refused = _cli(tmp_path, f"resume={run}", "seed=2", timeout=120)
    assert refused.returncode == 2 and "seed was 1, now 2" in refused.stderr.strip().splitlines()[-1]
    assert len(OmegaConf.load(run / "config.yaml").resumed) == 2  # a refused resumption changes nothing


def test_step_checkpoints_and_resume_from_one(tmp_path):
    """``checkpoint_every_n_steps=N``: ``last-step.ckpt`` every N steps; a run killed after one
    (before its first epoch ended) continues from it."""
    run = tmp_path / "run"
    args = [*TINY, "trainer.max_epochs=1", "trainer.limit_train_batches=12", "checkpoint_every_n_steps=4",
            f"hydra.run.dir={run}"]
    step_ckpt = run / "checkpoints" / "last-step.ckpt"
    _kill_when(tmp_path, args, lambda: step_ckpt.is_file())
    assert not (run / "checkpoints" / "last-epoch.ckpt").exists()
    saved = torch.load(step_ckpt, map_location="cpu", weights_only=False)["global_step"]
    assert saved > 0 and saved % 4 == 0
    proc = _cli(tmp_path, f"resume={run}")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "from last-step.ckpt" in proc.stdout
    assert torch.load(step_ckpt, map_location="cpu", weights_only=False)["global_step"] == 12  # 4, 8, 12
    assert json.loads((run / "metrics.json").read_text())["test/acc"] > 0


def test_wandb_run_resumes_with_its_id(tmp_path):
    """W&B (offline): the resumed run continues the same W&B run id."""
    run = tmp_path / "run"
    args = [*TINY, "logger=wandb", f"hydra.run.dir={run}"]
    env = {**_env(tmp_path), "WANDB_MODE": "offline", "WANDB_SILENT": "true"}
    proc = subprocess.Popen([sys.executable, "-m", "tguide.fit", *args], cwd=tmp_path, env=env,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    try:
        deadline = time.monotonic() + 240
        while not (run / "checkpoints" / "last-epoch.ckpt").is_file():
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()[-2000:]
            time.sleep(0.02)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=30)
    run_id = (run / "wandb_id").read_text().strip()
    resumed = _cli(tmp_path, f"resume={run}", extra_env={"WANDB_MODE": "offline", "WANDB_SILENT": "true"})
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    folders = sorted((run / "wandb").glob("offline-run-*"))
    assert len(folders) == 2 and all(f.name.endswith(f"-{run_id}") for f in folders), folders
    assert b"test/acc" in next(folders[-1].glob("run-*.wandb")).read_bytes()


def test_failed_runs_leave_no_empty_folder(tmp_path):
    """A run that fails before doing any work leaves no run folder (a folder that had content
    stays); one that fails later keeps its folder and says so in fit.log."""
    bad_layer = [*TINY, "trainer.max_epochs=1", "callbacks.transferability.layers=[net.nope]"]
    new = tmp_path / "new"
    proc = _cli(tmp_path, *bad_layer, f"hydra.run.dir={new}")
    assert proc.returncode == 2 and "no module named 'net.nope'" in proc.stderr, proc.stderr[-3000:]
    assert not new.exists()
    proc = _cli(tmp_path, *bad_layer, timeout=120)  # the default folder, outputs/<recipe>/<time>
    assert proc.returncode == 2 and list((tmp_path / "outputs").rglob("*.yaml")) == []
    unknown = _cli(tmp_path, "trainer.nope=1", f"hydra.run.dir={new}", timeout=120)
    assert unknown.returncode == 2 and not new.exists()
    kept = tmp_path / "kept"
    kept.mkdir()
    (kept / "notes.txt").write_text("mine")
    proc = _cli(tmp_path, *bad_layer, f"hydra.run.dir={kept}")
    assert proc.returncode == 2 and (kept / "notes.txt").read_text() == "mine"

    # fails in its second epoch: the folder keeps the first epoch's checkpoint and fit.log says so
    (tmp_path / "boom.py").write_text(textwrap.dedent("""
        from lightning.pytorch.callbacks import Callback
        from tguide.errors import TGuideError

        class Boom(Callback):
            def on_train_epoch_start(self, trainer, pl_module):
                if trainer.current_epoch == 1:
                    raise TGuideError("boom in epoch 1")
    """))
    late = tmp_path / "late"
    proc = _cli(tmp_path, *TINY, "+callbacks.boom._target_=boom.Boom", f"hydra.run.dir={late}",
                extra_env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"})
    assert proc.returncode == 2 and "boom in epoch 1" in proc.stderr.strip().splitlines()[-1], proc.stderr[-3000:]
    assert any((late / "checkpoints").glob("*.ckpt"))
    log = (late / "fit.log").read_text()
    assert "the run failed after it had started work" in log and "boom in epoch 1" in log

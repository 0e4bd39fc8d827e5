"""Ranking on several processes: 2 gloo processes under torchrun give the one-process table exactly;
an error on rank 1 only is one line and exit code 2 through ``python -m tguide.fit recipe=rank``."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from pathlib import Path

import pandas as pd
import pytest
import torch

from tguide.select.distributed import shard_candidates
from tguide.select.rank import rank

REPO = Path(__file__).resolve().parents[2]
THREE = ["zoo:resnet20_cifar10", "zoo:simplecnn_cifar10", "zoo:resnet20_cifar10:random"]
METRICS = ["logme", "hscore_shrinkage", "ncti", "leep"]  # ncti: pool-normalised after the gather


@pytest.fixture(scope="module")
def cifar_folder(make_cifar_folder) -> Path:
    """A CIFAR-10 image folder, 8 JPEGs per class (copied from the shared data)."""
    return make_cifar_folder(8)


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "NODE_RANK")}
    return {**env, "OMP_NUM_THREADS": "1", "WANDB_MODE": "offline", "PYTHONPATH": str(REPO), **extra}


def _torchrun(nproc: int, *args: str, env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}", *args]
    return subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=240)


def test_shard_candidates_in_one_process_concatenates_in_order():
    """Pool indices count within each candidate's rows and are shifted to the concatenated table."""

    def work(name: str):
        rows = [{"candidate": name, "i": i} for i in range(len(name))]
        return rows, {"ncti": [(len(name) - 1, f"terms-{name}")]}, {f"extract/{name}": float(len(name))}

    rows, pooled, timings = shard_candidates(["ab", "cde", "f"], work)
    assert [r["candidate"] for r in rows] == ["ab", "ab", "cde", "cde", "cde", "f"]
    assert pooled == {"ncti": [(1, "terms-ab"), (4, "terms-cde"), (5, "terms-f")]}
    assert all(rows[i]["candidate"] == t.removeprefix("terms-") for i, t in pooled["ncti"])
    assert timings == {"extract/ab": 2.0, "extract/cde": 3.0, "extract/f": 1.0}


_RANK_SCRIPT = textwrap.dedent(
    """
    import pickle, sys
    import torch
    import torch.distributed as dist
    from tguide.select.rank import rank
    torch.set_num_threads(1)
    folder, cache, out = sys.argv[1:4]
    ranking = rank({cands!r}, folder, metrics={metrics!r}, cache_dir=cache, device="cpu", progress=False)
    me = dist.get_rank()
    done = sorted(k.split("/", 1)[1] for k in ranking.timings if k.startswith("extract/"))
    with open(f"{{out}}.{{me}}", "wb") as fh:
        pickle.dump((ranking.table, ranking.pick, dist.get_world_size(), done), fh)
    """
)


@pytest.mark.slow
def test_two_gloo_processes_give_the_one_process_table(cifar_folder: Path, tmp_path: Path):
    torch.set_num_threads(1)
    single = rank(THREE, cifar_folder, metrics=METRICS, cache_dir=tmp_path / "cache1", device="cpu", progress=False)
    script = tmp_path / "rank2.py"
    script.write_text(_RANK_SCRIPT.format(cands=THREE, metrics=METRICS))
    out = tmp_path / "ranking.pkl"
    res = _torchrun(2, str(script), str(cifar_folder), str(tmp_path / "cache2"), str(out), env=_env())
    assert res.returncode == 0, res.stderr[-3000:]
    # features were extracted where they were scored: each rank wrote its own cache entries (cold cache)
    assert len(list((tmp_path / "cache2").rglob("*.pt"))) == len(list((tmp_path / "cache1").rglob("*.pt"))) > 0
    for r in (0, 1):
        table, pick, world, _ = pickle.loads(Path(f"{out}.{r}").read_bytes())
        assert world == 2
        pd.testing.assert_frame_equal(table, single.table, check_exact=True)  # same rows, order, numbers
        assert pick == single.pick
    ncti = single.table[single.table.metric == "ncti"]
    assert ncti.candidate.nunique() == 3 and ncti.warning.str.contains(f"pool-normalised over {len(ncti)} ").all()


_FAILING_SOURCE = textwrap.dedent(
    """
    # registers a `failing:` candidate source whose network cannot run on the target
    import torch
    from torch import nn
    from tguide.select.candidates import Candidate, register_source

    class _Fails(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Flatten()
        def forward(self, x):
            raise ValueError("this network refuses every input")

    def _factory(rest):
        return Candidate(name=f"failing_{rest}", network=_Fails().eval(), transform=lambda im: torch.zeros(3, 8, 8),
                         layers=["body"], head=False, provenance="test", fingerprint=f"failing:{rest}",
                         spec=f"failing:{rest}")

    register_source("failing", _factory)
    """
)


@pytest.mark.slow
def test_error_on_rank_one_only_is_one_line_and_exit_2(cifar_folder: Path, tmp_path: Path):
    site = tmp_path / "site"
    site.mkdir()
    (site / "sitecustomize.py").write_text(_FAILING_SOURCE)
    env = _env(PYTHONPATH=f"{site}{os.pathsep}{REPO}", TGUIDE_OUTPUT=str(tmp_path / "out"))
    # candidate 1 goes to rank 1 (round-robin): only rank 1 meets the error
    res = _torchrun(
        2,
        "-m",
        "tguide.fit",
        "recipe=rank",
        "logger=none",
        f"rank.target={cifar_folder}",
        "rank.candidates=[zoo:simplecnn_cifar10,failing:x]",
        "rank.metrics=[logme]",
        "rank.baselines=[]",
        f"rank.cache_dir={tmp_path / 'cache'}",
        f"hydra.run.dir={tmp_path / 'run'}",
        env=env,
    )
    text = res.stdout + res.stderr
    errors = [line for line in text.splitlines() if "tguide.fit: error" in line]
    assert errors == ["tguide.fit: error: candidate failing_x: this network refuses every input"], text[-4000:]
    # no traceback through tguide on any rank (torchrun's own agent prints one for the failed workers)
    assert not [line for line in text.splitlines() if 'File "' in line and f"{os.sep}tguide{os.sep}" in line], text
    assert res.returncode != 0
    # torchrun's summary names each failed worker's own exit code: 2 (the usage error); once one worker has
    # failed, torchrun's agent may SIGTERM the other before it exits on its own (-15): that is torchrun's policy
    codes = {line.split(":", 1)[1].split()[0] for line in text.splitlines() if line.strip().startswith("exitcode")}
    assert "2" in codes and codes <= {"2", "-15"}, text[-4000:]
    assert not list((tmp_path / "run").rglob("ranking.csv"))

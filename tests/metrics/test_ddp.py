"""Two CPU processes (gloo) each updating a shard give the compute() of one process with all data.

The exact-streaming classes are also checked where the processes see different label sets, a
process sees no data at all, and each sends O(C·D²) bytes whatever N (``STREAM_*``).
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from tguide.metrics.functional.hscore import hscore
from tguide.metrics.functional.leep import leep
from tguide.metrics.functional.logme import logme
from tguide.metrics.functional.otce import otce
from tguide.metrics.functional.transrate import transrate

N = 100
SHARDINGS = {"half": (50, 50), "uneven": (37, 63)}  # rows of rank 0, rank 1
N_SRC = 70
SRC_SHARDS = (45, 25)
OTCE_CAP = 10
STREAM_N, STREAM_D = 1200, 8
TIMEOUT_S = 300  # hard limit on the two spawned processes


def _stream_data() -> dict[str, np.ndarray]:
    """Rank 0 gets classes {-1, 3, 5}, rank 1 {3, 5, 9}: different label sets."""
    rng = np.random.default_rng(11)
    y = np.array([-1, 3, 5, 9])[rng.integers(0, 4, STREAM_N)]
    x = 40.0 + rng.normal(size=(4, STREAM_D))[np.searchsorted([-1, 3, 5, 9], y)] + rng.normal(size=(STREAM_N, STREAM_D))
    z = rng.integers(0, 6, STREAM_N)
    rank = np.where(y == -1, 0, np.where(y == 9, 1, rng.integers(0, 2, STREAM_N)))
    return {"x": x, "y": y, "z": z, "rank": rank}


def _stream_checks(rank: int) -> dict[str, float]:
    from tguide.metrics.stateful import NCE, HScore, HScoreShrinkage, LogME, TransRate

    d = _stream_data()
    mine = np.flatnonzero(d["rank"] == rank)
    out: dict[str, float] = {}
    for key, cls in (("hscore", HScore), ("hscore_shrinkage", HScoreShrinkage), ("transrate", TransRate),
                     ("logme", LogME), ("nce", NCE)):
        m = cls()
        for part in np.array_split(mine, 3):
            first = d["z"][part] if key == "nce" else d["x"][part]
            m.update(torch.tensor(first), torch.tensor(d["y"][part]))
        out[f"bytes/{key}"] = float(m.state_nbytes())
        out[f"stream/{key}"] = float(m.compute())
    # a process without any data: it sends empty placeholders, nothing deadlocks
    m = HScore()
    if rank == 0:
        m.update(torch.tensor(d["x"]), torch.tensor(d["y"]))
    out["stream/empty_rank_hscore"] = float(m.compute())
    return out


def _data() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(7)
    y = rng.permutation(np.arange(N) % 4)
    x = rng.normal(size=(4, 6))[y] + rng.normal(size=(N, 6))
    logits = rng.normal(size=(N, 5)) + 2.0 * np.eye(5)[y]
    ys = np.arange(N_SRC) % 3
    xs = rng.normal(size=(N_SRC, 6)) + 0.5
    return {
        "x": x,
        "y": y,
        "probs": np.exp(logits) / np.exp(logits).sum(1, keepdims=True),
        "xs": xs,
        "ys": ys,
    }


def _worker(rank: int, port: int, out_dir: str) -> None:
    from tguide.metrics.stateful import LEEP, OTCE, HScore, LogME, TransRate

    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=2)
    try:
        d = _data()
        results: dict[str, float | tuple[int, int]] = {}
        for name, sizes in SHARDINGS.items():
            lo = sum(sizes[:rank])
            part = slice(lo, lo + sizes[rank])
            x, y, p = d["x"][part], d["y"][part], d["probs"][part]
            metrics = {"hscore": HScore(), "transrate": TransRate(), "logme": LogME(), "leep": LEEP()}
            for key, m in metrics.items():
                half = x.shape[0] // 2  # two batches per rank
                first = p if key == "leep" else x
                m.update(torch.tensor(first[:half]), torch.tensor(y[:half]))
                m.update(torch.tensor(first[half:]), torch.tensor(y[half:]))
                results[f"{name}/{key}"] = float(m.compute())
            # OTCE: the source shards are split differently from the target shards
            s_lo = sum(SRC_SHARDS[:rank])
            s_part = slice(s_lo, s_lo + SRC_SHARDS[rank])
            o = OTCE()
            o.update(torch.tensor(d["xs"][s_part]), torch.tensor(d["ys"][s_part]), domain="source")
            o.update(torch.tensor(x), torch.tensor(y), domain="target")
            results[f"{name}/otce"] = float(o.compute())
            r = o.compute_result()
            results[f"{name}/otce_wd"] = float(r.domain_distance)
        # a reservoir per process: compute() sees at most world_size × cap rows per domain
        capped = OTCE(max_stored=OTCE_CAP, seed=rank)
        lo = sum(SRC_SHARDS[:rank])
        src = slice(lo, lo + SRC_SHARDS[rank])
        capped.update(torch.tensor(d["xs"][src]), torch.tensor(d["ys"][src]), domain="source")
        lo = sum(SHARDINGS["uneven"][:rank])
        tgt = slice(lo, lo + SHARDINGS["uneven"][rank])
        capped.update(torch.tensor(d["x"][tgt]), torch.tensor(d["y"][tgt]), domain="target")
        results["capped_shape"] = tuple(capped.compute_result().coupling.shape)
        results.update(_stream_checks(rank))
        torch.save(results, Path(out_dir) / f"rank{rank}.pt")
    finally:
        dist.destroy_process_group()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@pytest.fixture(scope="module")
def ddp_results(tmp_path_factory) -> list[dict]:
    out = tmp_path_factory.mktemp("ddp")
    ctx = mp.start_processes(_worker, args=(_free_port(), str(out)), nprocs=2, join=False, start_method="spawn")
    deadline = time.monotonic() + TIMEOUT_S
    while not ctx.join(timeout=5):
        if time.monotonic() > deadline:
            for proc in ctx.processes:
                proc.kill()
            pytest.fail(f"the two DDP processes did not finish in {TIMEOUT_S} s (deadlock?)")
    return [torch.load(out / f"rank{r}.pt") for r in range(2)]


@pytest.mark.slow
@pytest.mark.parametrize("sharding", list(SHARDINGS))
def test_two_processes_match_one(ddp_results, sharding):
    d = _data()
    expected = {
        "hscore": hscore(d["x"], d["y"]),
        "transrate": transrate(d["x"], d["y"]),
        "logme": logme(d["x"], d["y"]),
        "leep": leep(d["probs"], d["y"]),
    }
    ref = otce(d["xs"], d["ys"], d["x"], d["y"])
    expected["otce"] = ref.score
    expected["otce_wd"] = ref.domain_distance
    for rank, res in enumerate(ddp_results):
        for key, value in expected.items():
            got = res[f"{sharding}/{key}"]
            assert got == pytest.approx(float(value), rel=1e-10, abs=1e-12), (rank, key)


@pytest.mark.slow
def test_reservoir_is_per_process(ddp_results):
    # source ranks hold 45 and 25 rows, target 37 and 63: each keeps at most 10 per domain
    for res in ddp_results:
        assert res["capped_shape"] == (2 * OTCE_CAP, 2 * OTCE_CAP)


@pytest.mark.slow
def test_streaming_two_processes_match_one(ddp_results):
    from tguide.metrics.functional.hscore import hscore_shrinkage
    from tguide.metrics.functional.leep import nce

    d = _stream_data()
    expected = {
        "hscore": hscore(d["x"], d["y"]),
        "hscore_shrinkage": hscore_shrinkage(d["x"], d["y"]),
        "transrate": transrate(d["x"], d["y"]),
        "logme": logme(d["x"], d["y"]),
        "nce": nce(d["z"], d["y"]),
        "empty_rank_hscore": hscore(d["x"], d["y"]),
    }
    for rank, res in enumerate(ddp_results):
        for key, value in expected.items():
            assert res[f"stream/{key}"] == pytest.approx(float(value), rel=1e-10), (rank, key)


@pytest.mark.slow
def test_streaming_bytes_per_process_are_o_c_d2(ddp_results):
    d, c = STREAM_D, 3  # each process sees 3 classes
    f8 = 8
    for res in ddp_results:
        # global (key, n, mean, Gram, Σ‖a‖²a, Σ‖a‖⁴: GramStatistics serves H-score, its shrinkage form
        # and LogME) + per class (key, n, mean)
        assert res["bytes/hscore"] == f8 * ((1 + 1 + d + d * d + d + 1) + c * (1 + 1 + d))
        # per class (key, n, mean, Gram)
        assert res["bytes/transrate"] == f8 * c * (1 + 1 + d + d * d)

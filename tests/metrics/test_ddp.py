"""Two CPU processes (gloo) each updating a shard give the compute() of one process with all data."""

from __future__ import annotations

import socket
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
    mp.spawn(_worker, args=(_free_port(), str(out)), nprocs=2, join=True)
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

"""Ranking on several processes: candidates sharded across ranks, rows gathered in candidate order.

Ranking a zoo is embarrassingly parallel across candidates: each candidate's features are
extracted and scored where it is assigned, independently of the others. Under a
``torch.distributed`` launch (``torchrun --nproc_per_node=K``, ``--nnodes``, or ``srun`` with the
``torchrun`` rendezvous) :func:`shard_candidates` gives candidate ``i`` to rank ``i mod W``
(round-robin), each rank extracts (through its own feature-cache entries; the cache writes
atomically) and scores its share, and ``all_gather_object`` brings every candidate's rows,
pool-normalisation terms and timings to every rank, where they are put back in candidate order.
The caller then normalises pools (NCTI, ETran) and picks on the whole table, exactly as on one
process: the single-process path runs the same per-candidate function and the same
concatenation, so the table is the same (same rows, order and numbers).

Errors: a rank that fails on a candidate stops its own share and still reaches the gather, so no
rank hangs; every rank then raises the first error in candidate order (the same error
everywhere). :func:`session` (used by the ``recipe=rank`` runner) turns that error into a silent
exit code 2 on ranks other than 0, so the command line reports it once.

The process group is started here when the environment says the process was launched
distributed (``WORLD_SIZE > 1``) and none exists yet: backend gloo (the gathered objects are small
rows on the CPU; the features never leave their rank), and ``torch.cuda.set_device(LOCAL_RANK)``
when CUDA is available, so ``device=None``/``"cuda"`` means each rank's own GPU.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Callable, Iterator, Sequence
from datetime import timedelta
from typing import Any, TypeVar

import torch
import torch.distributed as dist

__all__ = [
    "CandidateResult",
    "ensure_process_group",
    "is_rank_zero",
    "launched_world_size",
    "session",
    "shard_candidates",
]

T = TypeVar("T")

# what one candidate gives: its rows, its pool terms {metric: [(row index within these rows, terms)]},
# its timings {name: seconds}
CandidateResult = tuple[list[dict[str, Any]], dict[str, list[tuple[int, Any]]], dict[str, float]]


def launched_world_size() -> int:
    """The number of processes of a ``torchrun``/``srun`` launch (``WORLD_SIZE``; 1 when not launched)."""
    value = os.environ.get("WORLD_SIZE", "1")
    return int(value) if value.isdigit() else 1


def ensure_process_group(timeout_s: float = 1800.0) -> tuple[int, int]:
    """``(rank, world size)``; starts the gloo process group when launched distributed and none exists.

    Returns ``(0, 1)`` outside a distributed launch.
    """
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    if launched_world_size() <= 1 or not dist.is_available():
        return 0, 1
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")) % torch.cuda.device_count())
    dist.init_process_group(backend="gloo", timeout=timedelta(seconds=timeout_s))
    return dist.get_rank(), dist.get_world_size()


def _portable(err: BaseException) -> tuple[str, str, bytes | None]:
    from tguide.probe import _portable_error

    return _portable_error(err)


def _rebuild(payload: tuple[str, str, bytes | None]) -> BaseException:
    from tguide.probe import _rebuild_error

    return _rebuild_error(payload)


def shard_candidates(candidates: Sequence[T], work: Callable[[T], CandidateResult]) -> CandidateResult:
    """Run ``work`` on every candidate (on its rank when launched distributed) and concatenate.

    Args:
        candidates: in the order of the final table.
        work: one candidate's ``(rows, pooled, timings)``; row indices in ``pooled`` count within
            that candidate's rows.

    Returns:
        ``(rows, pooled, timings)`` of all candidates in candidate order, the pool indices shifted
        to the concatenated rows; the same on every rank.

    Raises:
        The first error (in candidate order) raised by ``work`` on any rank, on every rank.
    """
    rank, world = ensure_process_group()
    mine: list[tuple[int, bool, Any]] = []  # (candidate index, ok, result or portable error)
    for i, cand in enumerate(candidates):
        if i % world != rank:
            continue
        try:
            mine.append((i, True, work(cand)))
        except Exception as err:  # noqa: BLE001 (re-raised below on every rank, in candidate order)
            if world == 1:
                raise
            mine.append((i, False, _portable(err)))
            break  # this rank's share stops here; the others finish theirs and meet at the gather
    if world > 1:
        shares: list[Any] = [None] * world
        dist.all_gather_object(shares, mine)
        mine = sorted((entry for share in shares for entry in share), key=lambda e: e[0])
    for _, ok, payload in mine:
        if not ok:
            raise _rebuild(payload)
    rows: list[dict[str, Any]] = []
    pooled: dict[str, list[tuple[int, Any]]] = {}
    timings: dict[str, float] = {}
    for _, _, (cand_rows, cand_pooled, cand_timings) in mine:
        for name, entries in cand_pooled.items():
            pooled.setdefault(name, []).extend((len(rows) + j, terms) for j, terms in entries)
        rows.extend(cand_rows)
        timings.update(cand_timings)
    return rows, pooled, timings


def is_rank_zero() -> bool:
    """Whether this process reports (rank 0 of the process group, or of the launch's environment)."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank() == 0
    return all(int(os.environ.get(k, "0") or 0) == 0 for k in ("RANK", "LOCAL_RANK", "NODE_RANK"))


@contextlib.contextmanager
def session() -> Iterator[None]:
    """The distributed frame of a command-line ranking: errors are reported by rank 0 only.

    Inside, an exception on a rank other than 0 (every rank raises the same one, see
    :func:`shard_candidates`) becomes ``SystemExit(2)`` without a message, so the command line's
    one error line and exit code 2 come from rank 0 alone. The process group started for the
    ranking is destroyed on the way out.
    """
    started = not (dist.is_available() and dist.is_initialized())
    try:
        yield
    except Exception:
        if launched_world_size() > 1 and not is_rank_zero():
            raise SystemExit(2) from None
        raise
    finally:
        if started and dist.is_available() and dist.is_initialized():
            dist.destroy_process_group()

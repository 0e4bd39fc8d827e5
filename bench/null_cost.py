"""Cost of the label-shuffle null (``tguide.metrics.null``) next to one raw score.

Run by hand (one thread, a quiet machine)::

    python bench/null_cost.py              # N = 1000 target samples, D = 256, P = 100
    python bench/null_cost.py --n 2000 --d 512 --perm 100 --source-classes 300

For every metric: the time of the raw function, the time of ``label_shuffle_null`` with
``P`` permutations (which includes the raw score), and their ratio. For OTCE also the time
of the permutation part alone (:func:`tguide.metrics.functional.otce.task_distance_null`) as a share of
one ``otce`` call: the issue's target is < 10 % for 100 permutations. A brute-force null
(calling the metric ``P`` times) would cost ``P + 1`` raw calls. Best of ``--repeat`` runs.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable

os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch  # noqa: E402

from tguide.metrics import (  # noqa: E402
    hscore,
    hscore_shrinkage,
    label_shuffle_null,
    leep,
    logme,
    nce,
    otce,
    otce_sim,
    transrate,
    transrate_comparable,
)
from tguide.metrics.functional.otce import task_distance_null  # noqa: E402
from tguide.metrics.functional.permutation import label_permutations  # noqa: E402


def best_of(fn: Callable[[], object], repeat: int) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=1000, help="target samples (and source samples for OTCE)")
    parser.add_argument("--d", type=int, default=256, help="feature width")
    parser.add_argument("--classes", type=int, default=10, help="target classes")
    parser.add_argument("--source-classes", type=int, default=100, help="source classes (OTCE, LEEP, NCE)")
    parser.add_argument("--perm", type=int, default=100, help="label permutations")
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    torch.set_num_threads(1)
    g = torch.Generator().manual_seed(0)
    n, d, c, cs, p = args.n, args.d, args.classes, args.source_classes, args.perm
    y = torch.randint(0, c, (n,), generator=g)
    f = torch.randn(n, d, generator=g, dtype=torch.float64) + torch.nn.functional.one_hot(y, d).double()
    theta = torch.softmax(2 * torch.randn(n, cs, generator=g, dtype=torch.float64), dim=1)
    xs = torch.randn(n, d, generator=g, dtype=torch.float64)
    ys = torch.randint(0, cs, (n,), generator=g)

    cases: list[tuple[str, Callable[..., object], tuple[object, ...]]] = [
        ("hscore", hscore, (f, y)),
        ("hscore_shrinkage", hscore_shrinkage, (f, y)),
        ("transrate", transrate, (f, y)),
        ("transrate_comparable", transrate_comparable, (f, y)),
        ("logme", logme, (f, y)),
        ("leep", leep, (theta, y)),
        ("nce", nce, (theta.argmax(1), y)),
        ("otce_sim (emd)", otce_sim, (xs, ys, f, y)),
    ]
    print(f"N={n} D={d} C={c} Cs={cs} P={p}, 1 thread, best of {args.repeat}\n")
    print("| metric | raw (s) | raw + null P (s) | ratio | brute force would be |")
    print("|---|---:|---:|---:|---:|")
    for name, fn, fargs in cases:
        raw = best_of(lambda: fn(*fargs), args.repeat)
        calibrated = best_of(lambda: label_shuffle_null(fn, *fargs, n_perm=p), args.repeat)
        print(f"| {name} | {raw:.4f} | {calibrated:.4f} | {calibrated / raw:.1f}× | {p + 1}× |")

    res = otce(xs, ys, f, y)
    perms = label_permutations(n, p, seed=0)
    one = best_of(lambda: otce(xs, ys, f, y), args.repeat)
    part = best_of(lambda: task_distance_null(res.coupling, ys, cs, y, c, perms), args.repeat)
    print(f"\nOTCE: one otce() {one:.4f} s; the {p}-permutation part alone {part:.4f} s "
          f"= {100 * part / one:.1f} % of one call (target < 10 %)")


if __name__ == "__main__":
    main()

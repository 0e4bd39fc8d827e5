"""Scores at any N: time and peak memory of the streaming classes against in-memory scoring.

Run by hand (each measurement runs in a fresh subprocess, one BLAS thread)::

    python bench/scale.py                 # the cells that fit a loaded 2-core machine (FIT below)
    python bench/scale.py --cells default # more: every N at D=512, up to 100k at D=2048
    python bench/scale.py --cells all     # N ∈ {10k, 100k, 1M} × D ∈ {512, 2048} × C ∈ {10, 1000}
    python bench/scale.py --otce          # large-N OTCE (lazy Sinkhorn) at 10k / 50k / 100k
    python bench/scale.py --import-cost   # `import tguide.metrics` vs `import torch`
    python bench/scale.py --functional-vs-class   # functional vs class, 50k × 1024 × 10, 10 batches

Methods per metric (float32 features, as a network gives them; generated in chunks of 10k rows
with their own seeds, so every method sees the same data):

* ``floor64``: one ``X.T @ X`` in float64 on the whole matrix (the single-Gram floor);
  ``floor32``: float32 Grams of 10k-row blocks accumulated in float64.
* ``stream``: the tguide streaming class fed 10k-row chunks (at 1M the chunks are generated
  on the fly: only streaming and the chunked floor run there).
* ``inmem``: the tguide functional on the whole matrix.
* ``numpy``: the plain float64 numpy baselines of ``bench/metrics.py``.
* ``tr``: transformer-ranker 0.2.0's estimators (``HScore`` = the Ledoit–Wolf shrinkage
  H-score, compared with ``hscore_shrinkage``; ``LogME`` with its default 11 iterations, tol 1e-3),
  imported without the package's ``__init__`` (which pulls in transformers/datasets).

Peak RSS is the child process's ``ru_maxrss`` (data included; the data's size is printed apart).
Times exclude data generation. ``×floor`` = time / ``floor64`` of the same (N, D).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time

CHUNK = int(os.environ.get("SCALE_CHUNK", "10000"))  # rows per streamed batch
METHODS = {
    "gram": ("floor64", "floor32"),
    "hscore": ("stream", "inmem", "numpy"),
    "hscore_shrinkage": ("stream", "inmem", "numpy", "tr"),
    "logme": ("stream", "inmem", "tr"),
    "transrate": ("stream", "inmem", "numpy"),
    "nce": ("stream", "inmem", "numpy"),
}


# what fitted a loaded 2-core machine in ~25 min (``--cells fit``): N=10k everywhere, 100k and
# 1M (streaming) at D=512, 100k at D=2048 for the floor and H-score only, C=1000 for the
# count table and the per-class statistics that scale with C (means: HScoreShrinkage, LogME)
FIT = [
    *[(10_000, 512, 10, m, k) for m in ("gram", "hscore", "logme", "transrate") for k in METHODS[m]],
    *[(100_000, 512, 10, m, k) for m, k in (("gram", "floor64"), ("gram", "floor32"), ("hscore", "stream"),
                                            ("hscore", "inmem"), ("hscore", "numpy"), ("logme", "stream"),
                                            ("logme", "inmem"), ("logme", "tr"), ("transrate", "stream"),
                                            ("transrate", "inmem"))],
    *[(1_000_000, 512, 10, m, k) for m, k in (("gram", "floor32"), ("hscore", "stream"), ("logme", "stream"))],
    *[(100_000, 512, 1000, m, k) for m, k in (("hscore_shrinkage", "stream"), ("hscore_shrinkage", "inmem"),
                                              ("hscore_shrinkage", "tr"), ("logme", "stream"),
                                              ("logme", "inmem"), ("logme", "tr"))],
    *[(n, 512, 1000, "nce", k) for n in (100_000, 1_000_000) for k in ("stream", "inmem", "numpy")],
    *[(10_000, 2048, 10, m, k) for m, k in (("gram", "floor64"), ("gram", "floor32"), ("hscore", "stream"),
                                            ("hscore", "inmem"), ("hscore", "numpy"), ("logme", "stream"),
                                            ("logme", "inmem"), ("logme", "tr"))],
    *[(100_000, 2048, 10, m, k) for m, k in (("gram", "floor64"), ("hscore", "stream"), ("hscore", "inmem"))],
]


def default_cells(which: str) -> list[tuple[int, int, int, str, str]]:
    """(N, D, C, metric, method) to run."""
    if which == "fit":
        return list(FIT)
    out = []
    grid = [(n, d, c) for d in (512, 2048) for c in (10, 1000) for n in (10_000, 100_000, 1_000_000)]
    for n, d, c in grid:
        for metric, methods in METHODS.items():
            for method in methods:
                if which != "all":
                    if d == 2048 and n > 100_000:
                        continue
                    if d == 2048 and c == 1000:
                        continue
                    if metric == "transrate" and c == 1000:
                        continue  # C·D² statistics: 2 GB at D=512
                    if metric == "nce" and (d != 512 or c != 1000):
                        continue  # counts only: independent of D
                    if c == 1000 and metric in ("hscore", "gram"):
                        continue  # the same work as C=10 for these
                    if n == 1_000_000 and method not in ("stream", "floor32"):
                        continue
                    if n == 1_000_000 and metric not in ("hscore", "logme", "gram", "nce"):
                        continue
                    if method == "numpy" and n > 100_000:
                        continue
                    if d == 2048 and n == 100_000 and method in ("numpy", "tr"):
                        continue
                out.append((n, d, c, metric, method))
    return out


# ----------------------------------------------------------------------------- child side
def _chunk(i: int, d: int, c: int):
    import numpy as np

    rng = np.random.default_rng((7, i))
    centres = np.random.default_rng(99).standard_normal((c, d), dtype=np.float32)
    y = rng.integers(0, c, CHUNK)
    x = centres[y] + rng.standard_normal((CHUNK, d), dtype=np.float32) * 2.0
    return x, y


def _tr():
    import importlib.util
    import types

    spec = importlib.util.find_spec("transformer_ranker")
    if spec is None:
        raise ImportError("transformer-ranker is not installed")
    pkg = types.ModuleType("transformer_ranker")
    pkg.__path__ = list(spec.submodule_search_locations)
    sys.modules["transformer_ranker"] = pkg
    from transformer_ranker.estimators import HScore, LogME

    return HScore, LogME


def child(n: int, d: int, c: int, metric: str, method: str) -> dict:
    import resource

    import numpy as np
    import torch

    torch.set_num_threads(1)
    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    chunks = n // CHUNK
    in_memory = method not in ("stream", "floor32") or n <= 100_000
    data_mb = 0.0
    if metric == "nce":  # source labels (1000 source classes) instead of features
        rng = np.random.default_rng(1)
        y = rng.integers(0, c, n)
        z = (y * 7 + rng.integers(0, 3, n)) % 1000
    elif in_memory and method != "stream":
        parts = [_chunk(i, d, c) for i in range(chunks)]
        x = np.concatenate([p[0] for p in parts])
        y = np.concatenate([p[1] for p in parts])
        del parts
        data_mb = x.nbytes / 2**20
    value = float("nan")
    t0 = time.perf_counter()
    elapsed = 0.0
    if method == "floor64":
        x64 = x.astype(np.float64)
        t0 = time.perf_counter()
        g = x64.T @ x64
        elapsed = time.perf_counter() - t0
        value = float(g[0, 0])
    elif method == "floor32":
        g = np.zeros((d, d))
        for i in range(chunks):
            xb = _chunk(i, d, c)[0] if n > 100_000 else x[i * CHUNK:(i + 1) * CHUNK]
            t0 = time.perf_counter()
            g += (xb.T @ xb).astype(np.float64)
            elapsed += time.perf_counter() - t0
        value = float(g[0, 0])
    elif metric == "nce":
        from tguide.metrics.functional.leep import nce
        from tguide.metrics.stateful import NCE

        import metrics as bm

        t0 = time.perf_counter()
        if method == "stream":
            m = NCE()
            for lo in range(0, n, CHUNK):
                m.update(torch.from_numpy(z[lo:lo + CHUNK]), torch.from_numpy(y[lo:lo + CHUNK]))
            value = float(m.compute())
        elif method == "inmem":
            value = float(nce(torch.from_numpy(z), torch.from_numpy(y)))
        else:
            value = bm.np_nce(z, y)
        elapsed = time.perf_counter() - t0
    else:
        from tguide.metrics import stateful as S
        from tguide.metrics.functional.hscore import hscore, hscore_shrinkage
        from tguide.metrics.functional.logme import logme
        from tguide.metrics.functional.transrate import transrate

        classes = {"hscore": S.HScore, "hscore_shrinkage": S.HScoreShrinkage, "logme": S.LogME,
                   "transrate": S.TransRate}
        functions = {"hscore": hscore, "hscore_shrinkage": hscore_shrinkage, "logme": logme, "transrate": transrate}
        if method == "stream":
            m = classes[metric]()
            for i in range(chunks):
                xb, yb = _chunk(i, d, c)  # generated (not timed): the stream never holds all rows
                t0 = time.perf_counter()
                m.update(torch.from_numpy(xb), torch.from_numpy(yb))
                elapsed += time.perf_counter() - t0
            t0 = time.perf_counter()
            value = float(m.compute())
            elapsed += time.perf_counter() - t0
        elif method == "inmem":
            t0 = time.perf_counter()
            value = float(functions[metric](torch.from_numpy(x), torch.from_numpy(y)))
            elapsed = time.perf_counter() - t0
        elif method == "numpy":
            import metrics as bm

            fn = {"hscore": bm.np_hscore, "hscore_shrinkage": bm.np_hscore_shrinkage,
                  "transrate": bm.np_transrate}[metric]
            x64 = x.astype(np.float64)
            t0 = time.perf_counter()
            value = float(fn(x64, y))
            elapsed = time.perf_counter() - t0
        elif method == "tr":
            tr_hscore, tr_logme = _tr()
            est = tr_hscore() if metric == "hscore_shrinkage" else tr_logme()
            t0 = time.perf_counter()
            value = float(est.fit(embeddings=torch.from_numpy(x), labels=torch.from_numpy(y)))
            elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": elapsed, "value": value, "peak_mb": peak, "data_mb": data_mb}


# ----------------------------------------------------------------------------- parent side
def _run_child(args: list[str], timeout: float) -> dict:
    # glibc's mmap threshold pinned at 64 KiB: freed blocks leave the RSS, so ru_maxrss is live memory
    # (it slows code that allocates large temporaries in a loop: lazy OTCE; --no-pin for its timing)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}
    if "--no-pin" not in sys.argv:
        env["MALLOC_MMAP_THRESHOLD_"] = "65536"
    try:
        out = subprocess.run([sys.executable, __file__, "--child", *args], capture_output=True, text=True,
                             timeout=timeout, env=env)
    except subprocess.TimeoutExpired:
        return {"error": f"timeout {timeout:.0f}s"}
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["?"])[-1][:80]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def _load() -> str:
    return "load %.1f %.1f %.1f" % os.getloadavg()


def functional_vs_class(n: int, d: int, c: int, batches: int, timeout: float) -> None:
    """The functional (all rows at once) next to its class fed the same rows in ``batches`` batches."""
    os.environ["SCALE_CHUNK"] = str(n // batches)
    print(f"# functional vs class, N={n} D={d} C={c}, {batches} batches, 1 thread, {_load()} at start\n")
    print("| metric | functional s | class s | functional / class | same value | load |")
    print("|---|---|---|---|---|---|")
    for metric in ("hscore", "hscore_shrinkage", "transrate", "logme"):
        f = _run_child([str(n), str(d), str(c), metric, "inmem"], timeout)
        k = _run_child([str(n), str(d), str(c), metric, "stream"], timeout)
        if "error" in f or "error" in k:
            print(f"| {metric} | {f.get('error', '')} | {k.get('error', '')} | | | {os.getloadavg()[0]:.1f} |")
            continue
        same = abs(f["value"] - k["value"]) <= 1e-9 * max(1.0, abs(k["value"]))
        print(f"| {metric} | {f['seconds']:.2f} | {k['seconds']:.2f} | {f['seconds'] / k['seconds']:.2f} | "
              f"{'yes' if same else 'NO'} | {os.getloadavg()[0]:.1f} |", flush=True)
    print(f"\n{_load()} at end")


def grid(cells, timeout: float) -> None:
    print(f"# scale benchmark, 1 thread, {_load()} at start\n")
    print("| N | D | C | metric | method | s | ×floor | peak RSS MB | data MB | value | load |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    floors: dict[tuple[int, int], float] = {}
    for n, d, c, metric, method in cells:
        r = _run_child([str(n), str(d), str(c), metric, method], timeout)
        if "error" in r:
            print(f"| {n} | {d} | {c} | {metric} | {method} | {r['error']} | | | | | {os.getloadavg()[0]:.1f} |",
                  flush=True)
            continue
        if method == "floor64" or (method == "floor32" and (n, d) not in floors):
            floors[(n, d)] = r["seconds"]
        ratio = r["seconds"] / floors[(n, d)] if (n, d) in floors and metric != "nce" else float("nan")
        print(f"| {n} | {d} | {c} | {metric} | {method} | {r['seconds']:.2f} | {ratio:.1f} | {r['peak_mb']:.0f} | "
              f"{r['data_mb']:.0f} | {r['value']:.6g} | {os.getloadavg()[0]:.1f} |", flush=True)


def otce_rows(sizes, d: int, timeout: float, max_iter: int) -> None:
    print(f"\n# large-N OTCE (lazy Sinkhorn, reg=0.05, tol=1e-6, max_iter={max_iter}, D={d}), 1 thread, {_load()}\n")
    print("| N per side | s | iterations | s/iteration | peak RSS MB | W_T | load |")
    print("|---|---|---|---|---|---|---|")
    for n in sizes:
        r = _run_child(["otce", str(n), str(d), str(max_iter)], timeout)
        if "error" in r:
            print(f"| {n} | {r['error']} | | | | | {os.getloadavg()[0]:.1f} |", flush=True)
            continue
        print(f"| {n} | {r['seconds']:.1f} | {r['iters']} | {r['seconds'] / max(r['iters'], 1):.2f} | "
              f"{r['peak_mb']:.0f} | {r['value']:.6g} | {os.getloadavg()[0]:.1f} |", flush=True)


def otce_child(n: int, d: int, max_iter: int) -> dict:
    import resource
    import warnings

    import numpy as np
    import torch

    torch.set_num_threads(1)
    import ot

    from tguide.metrics.functional import otce_large as ol

    rng = np.random.default_rng(0)
    ys = rng.integers(0, 10, n)
    xs = rng.standard_normal((10, d))[ys] + rng.standard_normal((n, d))
    yt = rng.integers(0, 5, n)
    xt = rng.standard_normal((5, d))[yt] + rng.standard_normal((n, d)) + 0.3
    iters = {"n": 0}
    original = ot.bregman.empirical_sinkhorn

    def counting(*a, **k):
        out = original(*a, **k)
        iters["n"] = 10 * len(out[2]["err"]) or int(k.get("numIterMax", 0))
        return out

    ot.bregman.empirical_sinkhorn = counting
    t0 = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        r = ol.otce_large(xs, ys, xt, yt, reg=0.05, tol=1e-6, max_iter=max_iter)
    elapsed = time.perf_counter() - t0
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    return {"seconds": elapsed, "value": float(r.task_distance), "peak_mb": peak, "iters": iters["n"]}


def import_cost(repeats: int = 5) -> None:
    import statistics

    code = {
        "import torch": "import torch",
        "import tguide.metrics": "import tguide.metrics",
        "tguide.metrics + hscore (loads torch)": "import tguide.metrics as m; m.hscore",
        "tguide.metrics + HScore class (torchmetrics)": "import tguide.metrics as m; m.HScore",
    }
    probe = ("import time, resource; t = time.perf_counter(); {}; "
             "print(time.perf_counter() - t, resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)")
    res: dict[str, list[tuple[float, float]]] = {k: [] for k in code}
    for _ in range(repeats):  # side by side: one of each per round
        for k, c in code.items():
            out = subprocess.run([sys.executable, "-c", probe.format(c)], capture_output=True, text=True, check=True)
            t, rss = map(float, out.stdout.split())
            res[k].append((t, rss))
    print(f"\n# import cost, median of {repeats} fresh interpreters, {_load()}\n")
    print("| import | s | peak RSS MB |")
    print("|---|---|---|")
    for k, v in res.items():
        print(f"| {k} | {statistics.median(t for t, _ in v):.2f} | {statistics.median(r for _, r in v):.0f} |")


def main() -> None:
    if len(sys.argv) > 1 and sys.argv[1] == "--child":
        if sys.argv[2] == "otce":
            print(json.dumps(otce_child(int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5]))))
        else:
            n, d, c = map(int, sys.argv[2:5])
            print(json.dumps(child(n, d, c, sys.argv[5], sys.argv[6])))
        return
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--cells", choices=("fit", "default", "all"), default="fit")
    p.add_argument("--only", nargs="*", help="metrics to run (default: all)")
    p.add_argument("--max-n", type=int, default=None)
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per measurement")
    p.add_argument("--otce", nargs="*", type=int, help="run large-N OTCE at these N (default 10000 50000)")
    p.add_argument("--otce-dim", type=int, default=16)
    p.add_argument("--otce-max-iter", type=int, default=2000, help="cap (a few iterations: time per iteration)")
    p.add_argument("--import-cost", action="store_true")
    p.add_argument("--functional-vs-class", nargs="*", type=int, metavar="N D C BATCHES",
                   help="the functional next to its class (default 50000 1024 10 10)")
    p.add_argument("--no-pin", action="store_true", help="leave glibc's mmap threshold alone (RSS then "
                   "includes memory the allocator keeps after frees)")
    args = p.parse_args()
    if args.import_cost:
        import_cost()
        return
    if args.functional_vs_class is not None:
        functional_vs_class(*(args.functional_vs_class or [50_000, 1024, 10, 10]), timeout=args.timeout)
        return
    if args.otce is not None:
        otce_rows(args.otce or [10_000, 50_000], args.otce_dim, args.timeout, args.otce_max_iter)
        return
    cells = [cell for cell in default_cells(args.cells)
             if (not args.only or cell[3] in args.only + ["gram"]) and (args.max_n is None or cell[0] <= args.max_n)]
    grid(cells, args.timeout)


if __name__ == "__main__":
    main()

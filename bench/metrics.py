"""Speed and memory of the tguide metrics against plain float64 numpy implementations.

Run by hand::

    python bench/metrics.py            # full grid N ∈ {1k, 10k, 50k}, D ∈ {64, 512, 2048}, C ∈ {10, 100}
    python bench/metrics.py --quick    # the N=10k, D=512, C=10 row only

Prints a markdown table: time of the tguide function (torch, CPU), of its exact streaming
class (:mod:`tguide.metrics.stateful`, fed the same rows in 4 batches; ``bench/scale.py`` goes to
N = 1M), and of a
straightforward numpy version written below (np.cov, np.linalg.pinv, slogdet on D×D,
per-class loops, one SVD per class for LogME), the speed-up, both peak memories, and
the relative difference of the two values (a correctness check).

Memory: numpy peak = ``tracemalloc`` peak during the call (numpy reports its buffers to
tracemalloc). torch peak = peak resident-set growth during the call, sampled every
millisecond from ``/proc/self/statm`` by a thread, with glibc's mmap threshold pinned at
64 KiB so that freed tensors leave the RSS (Linux only; "n/a" elsewhere). Inputs are
allocated before the measurement and not counted. Timings are the best of ``--repeat``
plain runs after one instrumented run (which also warms up); above 1 s the instrumented run
is the only one (the 1 ms sampler and tracemalloc cost little next to such calls). Both
libraries run on ``--threads`` threads (default 1).

A numpy baseline whose estimate exceeds ``--budget`` seconds (default 30) is
extrapolated: LogME's per-class loop is timed on 5 evenly spaced classes (1 when one SVD
takes over ~2 s) and scaled to C (marked ``~``, no value check; rough, as the plain fixed
point, started at α = β = 1, takes from a few to 10⁴ steps depending on the class);
others are skipped (``skip``). LEEP and NCE do not depend on D: they run once per (N, C) with
Cs = 1000 source classes. OTCE (if ``tguide.metrics.functional.otce`` is present) runs at
N = 1000 only (the coupling is N×N).
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import math
import os
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable


def _threads_from_argv() -> None:
    """``--threads K`` (default 1) must reach the BLAS libraries before numpy and torch load."""
    k = "1"
    if "--threads" in sys.argv[1:-1]:
        k = sys.argv[sys.argv.index("--threads") + 1]
    for var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = k


if __name__ == "__main__":
    _threads_from_argv()

import numpy as np  # noqa: E402
import torch  # noqa: E402

from tguide.metrics.functional.hscore import hscore, hscore_shrinkage  # noqa: E402
from tguide.metrics.functional.leep import leep, nce  # noqa: E402
from tguide.metrics.functional.logme import logme  # noqa: E402
from tguide.metrics.functional.transrate import transrate  # noqa: E402

try:
    from tguide.metrics.functional.otce import otce
except ImportError:  # written by another part of the project; skipped when absent
    otce = None

MB = 2**20


# ---------------------------------------------------------------- numpy baselines
def np_class_means(f: np.ndarray, y: np.ndarray) -> np.ndarray:
    g = np.empty_like(f)
    for k in np.unique(y):
        g[y == k] = f[y == k].mean(axis=0)
    return g


def np_hscore(f: np.ndarray, y: np.ndarray) -> float:
    cov_f = np.cov(f, rowvar=False, bias=True)
    cov_g = np.cov(np_class_means(f, y), rowvar=False, bias=True)
    return float(np.trace(np.linalg.pinv(cov_f, rcond=1e-15) @ cov_g))


def np_hscore_shrinkage(f: np.ndarray, y: np.ndarray) -> float:
    n, d = f.shape
    x = f - f.mean(axis=0)
    s = x.T @ x / n
    mu = np.trace(s) / d
    delta = np.sum((s - mu * np.eye(d)) ** 2) / d
    x2 = x**2
    beta = (np.sum(x2.T @ x2) / n - np.sum(s**2)) / (d * n)
    alpha = min(beta, delta) / delta if delta > 0 else 0.0
    sigma = (1 - alpha) * s + alpha * mu * np.eye(d)
    cov_g = np.cov(np_class_means(f, y), rowvar=False)  # over N − 1: the published listing's convention
    return float(np.trace(np.linalg.pinv(sigma, rcond=1e-15) @ ((1 - alpha) * cov_g)))


def np_transrate(f: np.ndarray, y: np.ndarray, eps: float = 1e-4) -> float:
    def rate(z: np.ndarray) -> float:
        n, d = z.shape
        return 0.5 * np.linalg.slogdet(np.eye(d) + z.T @ z / (n * eps))[1]

    z = f - f.mean(axis=0)
    return rate(z) - sum((y == k).mean() * rate(z[y == k]) for k in np.unique(y))


def np_logme_class(f: np.ndarray, t: np.ndarray, tol: float = 1e-7, max_iter: int = 10_000) -> float:
    """One class: SVD of F, MacKay fixed point from α = β = 1, evidence at the end (per sample)."""
    n, d = f.shape
    u, s, _ = np.linalg.svd(f, full_matrices=False)
    lam = s**2
    z2 = (u.T @ t) ** 2
    out = max(float(t @ t - z2.sum()), 0.0)  # energy of t outside the column space of F

    def parts(a: float, b: float) -> tuple[float, float, float, np.ndarray]:
        den = a + b * lam
        gamma = np.sum(b * lam / den)
        m2 = np.sum((b / den) ** 2 * lam * z2)  # ratios first: no overflow when α or β diverge
        res2 = np.sum((a / den) ** 2 * z2) + out
        return gamma, m2, res2, den

    a, b = 1.0, 1.0
    with np.errstate(all="ignore"):
        for _ in range(max_iter):
            gamma, m2, res2, _ = parts(a, b)
            a_new, b_new = gamma / m2, (n - gamma) / res2
            if not (math.isfinite(a_new) and math.isfinite(b_new) and a_new > 0 and b_new > 0):
                break  # ran off to an edge: keep the last finite iterate
            done = abs(a_new - a) / a_new < tol and abs(b_new - b) / b_new < tol
            a, b = a_new, b_new
            if done:
                break
        _, m2, res2, den = parts(a, b)
    logdet = np.sum(np.log(den)) + (d - lam.size) * math.log(a)
    ev = n / 2 * math.log(b) + d / 2 * math.log(a) - n / 2 * math.log(2 * math.pi)
    return (ev - b / 2 * res2 - a / 2 * m2 - logdet / 2) / n


def np_logme(f: np.ndarray, y: np.ndarray, classes: int | None = None) -> float:
    """Mean over classes; ``classes`` limits the loop to that many evenly spaced classes."""
    labels = np.unique(y)
    if classes is not None:
        labels = labels[np.linspace(0, labels.size - 1, classes).round().astype(int)]
    return float(np.mean([np_logme_class(f, (y == k).astype(np.float64)) for k in labels]))


def np_leep(theta: np.ndarray, y: np.ndarray) -> float:
    labels = np.unique(y)
    joint = np.stack([theta[y == k].sum(axis=0) for k in labels]) / len(y)
    marg = joint.sum(axis=0)
    cond = np.divide(joint, marg, out=np.zeros_like(joint), where=marg > 0)
    return float(np.mean(np.log(np.sum(theta * cond[np.searchsorted(labels, y)], axis=1))))


def np_nce(z: np.ndarray, y: np.ndarray) -> float:
    total = 0.0
    for a in np.unique(z):
        ya = y[z == a]
        p_a = len(ya) / len(y)
        counts = np.unique(ya, return_counts=True)[1] / len(ya)
        total += p_a * np.sum(counts * np.log(counts))
    return float(total)


def np_otce_sim(xs, ys, xt, yt, solver: str, reg: float = 0.05) -> float:
    import ot

    cost = (xs**2).sum(1)[:, None] + (xt**2).sum(1)[None, :] - 2 * xs @ xt.T
    cost = np.maximum(cost, 0)
    a, b = np.full(len(xs), 1 / len(xs)), np.full(len(xt), 1 / len(xt))
    if solver == "emd":
        plan = ot.emd(a, b, cost, numItermax=10_000_000)
    else:
        plan = ot.sinkhorn(a, b, cost, reg * cost.mean(), method="sinkhorn_log", numItermax=10_000, stopThr=1e-9)
    joint = np.array([[plan[ys == p][:, yt == q].sum() for q in np.unique(yt)] for p in np.unique(ys)])
    ps = joint.sum(axis=1, keepdims=True)
    with np.errstate(divide="ignore", invalid="ignore"):
        terms = np.where(joint > 0, joint * np.log(joint / ps), 0.0)
    return float(terms.sum())  # −W_T


# ---------------------------------------------------------------- measurement
def _pin_mmap_threshold() -> None:
    try:
        ctypes.CDLL("libc.so.6").mallopt(-3, 64 * 1024)  # M_MMAP_THRESHOLD
    except OSError:
        pass


def _rss() -> int | None:
    try:
        with open("/proc/self/statm") as fh:
            return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except OSError:
        return None


def _timed(fn: Callable[[], object]) -> tuple[float, object]:
    t0 = time.perf_counter()
    value = fn()
    return time.perf_counter() - t0, value


def with_rss(fn: Callable[[], object]) -> tuple[float, object, float | None]:
    """(seconds, value, peak RSS growth in MB) of one call."""
    gc.collect()
    start = _rss()
    if start is None:
        return (*_timed(fn), None)
    peak, stop = [start], threading.Event()

    def sample() -> None:
        while not stop.is_set():
            peak[0] = max(peak[0], _rss() or 0)
            time.sleep(0.001)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    try:
        seconds, value = _timed(fn)
    finally:
        stop.set()
        thread.join()
    return seconds, value, (max(peak[0], _rss() or 0) - start) / MB


def with_tracemalloc(fn: Callable[[], object]) -> tuple[float, object, float]:
    """(seconds, value, tracemalloc peak in MB) of one call."""
    gc.collect()
    tracemalloc.start()
    try:
        seconds, value = _timed(fn)
        return seconds, value, tracemalloc.get_traced_memory()[1] / MB
    finally:
        tracemalloc.stop()


def measure(fn: Callable[[], object], repeat: int, memory: str | None) -> tuple[float, object, float | None]:
    """One instrumented call (memory; also the warm-up), then ``repeat`` plain timings if it
    took under 1 s. Returns the best time, the value and the peak memory."""
    if memory == "rss":
        first, value, mem = with_rss(fn)
    elif memory == "tracemalloc":
        first, value, mem = with_tracemalloc(fn)
    else:
        (first, value), mem = _timed(fn), None
    times = [first]
    if first < 1.0:
        times = [_timed(fn)[0] for _ in range(repeat)]
    return min(times), value, mem


def fmt_s(t: float | None, mark: str = "") -> str:
    if t is None:
        return "skip"
    return f"{mark}{t:.3f}" if t < 10 else f"{mark}{t:.1f}"


def fmt_mb(m: float | None) -> str:
    return "n/a" if m is None else f"{m:.0f}"


# ---------------------------------------------------------------- the grid
def _streamed(cls: type, first: torch.Tensor, y: torch.Tensor) -> Callable[[], object]:
    """A thunk: the streaming class fed ``(first, y)`` in 4 batches, then ``compute()``."""

    def go() -> object:
        m = cls()
        for part in torch.tensor_split(torch.arange(y.shape[0]), 4):
            m.update(first[part], y[part])
        return m.compute()

    return go


STREAMING = {"hscore": "HScore", "hscore_shrinkage": "HScoreShrinkage", "transrate": "TransRate", "logme": "LogME",
             "nce": "NCE"}


def cases(n: int, d: int, c: int, rng: np.random.Generator, first_d: bool, args) -> list[tuple]:
    """(name, D label, torch thunk, numpy thunk, estimated numpy seconds, extrapolation) rows."""
    f = rng.normal(size=(n, d))
    y = rng.permutation(np.arange(n) % c)
    f[:, : min(c, d)] += 0.5 * np.eye(c)[y][:, : min(c, d)]  # a class signal
    ft, yt = torch.from_numpy(f), torch.from_numpy(y)
    flop = 2.0 * n * d * d  # one Gram matrix; ~2 s per 100 GFLOP on 2 cores
    svd = (4.0 * n * d * min(n, d) + 8.0 * min(n, d) ** 3) / 2e10  # seconds, one thin SVD
    k = min(c, 5) if svd < 2.0 else 1  # classes timed for an extrapolated LogME baseline
    from tguide.metrics import stateful

    streams = {name: _streamed(getattr(stateful, cls), ft, yt) for name, cls in STREAMING.items() if name != "nce"}
    out = [
        ("hscore", d, lambda: hscore(ft, yt), lambda: np_hscore(f, y), 2 * flop / 5e10, None),
        ("hscore_shrinkage", d, lambda: hscore_shrinkage(ft, yt), lambda: np_hscore_shrinkage(f, y),
         3 * flop / 5e10, None),
        ("transrate", d, lambda: transrate(ft, yt), lambda: np_transrate(f, y), (2 * flop + c * d**3) / 5e10, None),
        ("logme", d, lambda: logme(ft, yt), lambda: np_logme(f, y),
         c * (svd + 0.3),  # C thin SVDs, plus up to 10⁴ scalar fixed-point steps per class
         (lambda: np_logme(f, y, classes=k), c / k)),
    ]
    if first_d:
        cs = 1000
        logits = rng.normal(size=(n, cs)) + 3.0 * np.eye(cs)[(y * 7) % cs]
        theta = np.exp(logits - logits.max(axis=1, keepdims=True))
        theta /= theta.sum(axis=1, keepdims=True)
        hard = theta.argmax(axis=1)
        tt, ht = torch.from_numpy(theta), torch.from_numpy(hard)
        out += [
            ("leep", "Cs=1000", lambda: leep(tt, yt), lambda: np_leep(theta, y), 1.0, None),
            ("nce", "Cs=1000", lambda: nce(ht, yt), lambda: np_nce(hard, y), 1.0, None),
        ]
        streams["nce"] = _streamed(stateful.NCE, ht, yt)
    if otce is not None and n <= 1000:
        g = np.random.default_rng(1)
        xs = g.normal(size=(n, d)) + np.eye(c, d)[g.permutation(np.arange(n) % c)] * 0.5
        ys = g.permutation(np.arange(n) % c)
        xst, yst = torch.from_numpy(xs), torch.from_numpy(ys)
        for solver in ("emd", "sinkhorn"):
            out.append((
                f"otce_sim ({solver})", d,
                lambda s=solver: otce(xst, yst, ft, yt, solver=s).score,
                lambda s=solver: np_otce_sim(xs, ys, f, y, s), 5.0, None,
            ))
    return [*out, streams]


def run(args) -> None:
    grid = [(10_000, 512, 10)] if args.quick else [
        (n, d, c) for n in (1_000, 10_000, 50_000) for d in (64, 512, 2048) for c in (10, 100)
    ]
    blas = os.environ.get("OPENBLAS_NUM_THREADS", "default")
    print(f"torch {torch.__version__} ({torch.get_num_threads()} threads), numpy {np.__version__} "
          f"(OpenBLAS threads: {blas}), {os.cpu_count()} CPUs; float64 on CPU; best of {args.repeat}; "
          f"load average at start {os.getloadavg()[0]:.2f}\n")
    print("| metric | N | D | C | tguide s | stream s | numpy s | speed-up | tguide peak MB (RSS) "
          "| numpy peak MB (tracemalloc) | rel. diff |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    rng = np.random.default_rng(0)
    t_start = time.perf_counter()
    for n, d, c in grid:
        first_d = args.quick or d == 64
        rows = cases(n, d, c, rng, first_d, args)
        streams = rows.pop()  # name -> streaming thunk
        for name, dlabel, torch_fn, np_fn, estimate, extrapolate in rows:
            if args.metrics and not any(name.startswith(m) for m in args.metrics):
                continue
            t_torch, v_torch, mem_torch = measure(torch_fn, args.repeat, None if args.no_memory else "rss")
            t_stream = None
            if name in STREAMING:
                t_stream = measure(streams[name], args.repeat, None)[0]
            mark, t_np, v_np, mem_np = "", None, None, None
            if estimate <= args.budget:
                t_np, v_np, mem_np = measure(np_fn, args.repeat, None if args.no_memory else "tracemalloc")
            elif extrapolate is not None:
                one, factor = extrapolate
                t_np, mark = _timed(one)[0] * factor, "~"
            speed = "" if t_np is None else f"{t_np / t_torch:.1f}×"
            diff = "" if v_np is None else f"{abs(float(v_torch) - v_np) / max(abs(v_np), 1e-300):.1e}"
            print(f"| {name} | {n} | {dlabel} | {c} | {fmt_s(t_torch)} | {fmt_s(t_stream)} | {fmt_s(t_np, mark)} | {speed} "
                  f"| {fmt_mb(mem_torch)} | {fmt_mb(mem_np)} | {diff} |", flush=True)
            gc.collect()
    print(f"\ntotal wall time {time.perf_counter() - t_start:.0f} s; load average at end {os.getloadavg()[0]:.2f}")


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="only the N=10k, D=512, C=10 row")
    parser.add_argument("--repeat", type=int, default=3, help="timing runs per entry (best is kept)")
    parser.add_argument("--budget", type=float, default=30.0,
                        help="numpy baselines estimated above this many seconds are extrapolated or skipped")
    parser.add_argument("--no-memory", action="store_true", help="skip the memory measurements")
    parser.add_argument("--metrics", nargs="*", help="only metrics whose name starts with one of these")
    parser.add_argument("--threads", type=int, default=1,
                        help="threads of torch and of numpy's BLAS (default 1: two thread pools that spin on "
                             "a small shared machine distort every timing; pass 2 for a quiet one)")
    args = parser.parse_args(argv)
    _pin_mmap_threshold()
    torch.set_grad_enabled(False)
    run(args)


if __name__ == "__main__":
    sys.exit(main())

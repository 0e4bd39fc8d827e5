"""Cost of rank()'s half-sample bootstrap against its scoring time, and the P(best) it gives.

Usage: python bench/rank_bootstrap.py [B] [cache_dir]  (4 zoo candidates × usps, 300 samples;
the first run fills the feature cache, later runs time scoring and bootstrap only).
"""

from __future__ import annotations

import sys
import time

from tguide.select.rank import rank

CANDIDATES = ["zoo:lenet5_mnist", "zoo:efficientnet_lite0", "zoo:resnet20_cifar10", "zoo:simplecnn_cifar10"]


def main() -> None:
    b = int(sys.argv[1]) if len(sys.argv) > 1 else 100
    cache = sys.argv[2] if len(sys.argv) > 2 else "/tmp/tguide_boot_cache"
    t0 = time.perf_counter()
    r = rank(CANDIDATES, "usps", max_samples=300, cache_dir=cache, bootstrap=b, progress=False)
    wall = time.perf_counter() - t0
    t = r.timings
    print(
        f"B={b}: score {t['score']:.2f} s, bootstrap {t['bootstrap']:.2f} s "
        f"(x{t['bootstrap'] / max(t['score'], 1e-9):.1f}), extract {t['extract']:.2f} s, wall {wall:.2f} s"
    )
    for k, v in sorted(t.items()):
        if k.startswith("bootstrap/"):
            print(f"  {k}: {v:.2f} s")
    full = r.table[r.table.layer != ""]
    for metric, probs in r.p_best.items():
        sub = full[full.metric == metric]
        order = sub.groupby("candidate").score.max().sort_values(ascending=False) if len(sub) else None
        best = order.index[0] if order is not None and len(order) else "-"
        print(
            f"{metric:22s} full-sample best {best:22s} P(best) "
            + ", ".join(f"{c}={p:.2f}" for c, p in sorted(probs.items(), key=lambda kv: -kv[1]))
        )
    if r.pick is not None:
        print("pick:", r.pick.candidate, r.pick.confidence)


if __name__ == "__main__":
    main()

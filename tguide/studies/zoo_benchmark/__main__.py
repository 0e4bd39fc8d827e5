"""``python -m tguide.studies.zoo_benchmark {groundtruth,quality,layers,default-selector} [options]``.

``groundtruth``: linear-probe and fine-tuning accuracy of every (target, candidate)
(:mod:`tguide.studies.zoo_benchmark.groundtruth_run`); ``quality``: every score against that
ground truth (:mod:`tguide.studies.zoo_benchmark.quality`); ``layers``: the linear probe and the
scores on every "auto" layer (:mod:`tguide.studies.zoo_benchmark.layers`); ``default-selector``: the
pre-registered choice of ``rank``'s default selector (:mod:`tguide.studies.zoo_benchmark.default_selector`);
``imagenet``: the ImageNet-only pool (:mod:`tguide.studies.zoo_benchmark.imagenet_run`).
``--help`` after any for its options.
"""

from __future__ import annotations

import sys

COMMANDS = ("groundtruth", "quality", "layers", "default-selector", "imagenet")


def main(argv: list[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    if not args or args[0] not in COMMANDS:
        print(
            f"usage: python -m tguide.studies.zoo_benchmark {{{','.join(COMMANDS)}}} [options]\n\n{__doc__}",
            file=sys.stderr,
        )
        return 2
    if args[0] == "groundtruth":
        from tguide.studies.zoo_benchmark.groundtruth_run import main as run
    elif args[0] == "imagenet":
        from tguide.studies.zoo_benchmark.imagenet_run import main as run
    elif args[0] == "quality":
        from tguide.studies.zoo_benchmark.quality import main as run
    elif args[0] == "layers":
        from tguide.studies.zoo_benchmark.layers import main as run
    else:
        from tguide.studies.zoo_benchmark.default_selector import main as run
    return run(args[1:])


if __name__ == "__main__":
    sys.exit(main())

"""Thin wrapper: ``python bench/fewshot_regimes.py ARGS`` = ``python -m tguide.studies.fewshot ARGS``."""

import os
import sys

os.environ.setdefault("OMP_NUM_THREADS", "1")

from tguide.studies.fewshot.regimes_run import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

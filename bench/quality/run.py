"""Thin wrapper: ``python bench/quality/run.py ARGS`` = ``python -m tguide.studies.metric_quality ARGS``."""

import sys

from tguide.studies.metric_quality.run import main

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

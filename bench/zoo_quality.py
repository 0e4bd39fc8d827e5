"""Thin wrapper: ``python bench/zoo_quality.py ARGS`` = ``python -m tguide.studies.zoo_benchmark quality ARGS``."""

import sys

from tguide.studies.zoo_benchmark.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["quality", *sys.argv[1:]]))

"""Thin wrapper: ``python bench/zoo_groundtruth.py ARGS`` = ``python -m tguide.studies.zoo_benchmark groundtruth ARGS``."""

import sys

from tguide.studies.zoo_benchmark.__main__ import main

if __name__ == "__main__":
    sys.exit(main(["groundtruth", *sys.argv[1:]]))

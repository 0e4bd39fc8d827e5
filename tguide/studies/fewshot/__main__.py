"""``python -m tguide.studies.fewshot [--quick] [--out DIR] [--report-only]``: the regime grid
(:mod:`tguide.studies.fewshot.regimes_run`)."""

import sys

from tguide.studies.fewshot.regimes_run import main

if __name__ == "__main__":
    sys.exit(main())

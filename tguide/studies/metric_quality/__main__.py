"""``python -m tguide.studies.metric_quality [--quick] [--out DIR] ...``.

See :mod:`tguide.studies.metric_quality.run`.
"""

import sys

from tguide.studies.metric_quality.run import main

if __name__ == "__main__":
    sys.exit(main())

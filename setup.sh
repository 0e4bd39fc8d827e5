#!/usr/bin/env bash
# Create .venv/ in the repo root (if missing) and install tguide with its dev tools into it.
# Idempotent: a second run only re-installs the project. Needs Python >= 3.10 as python3.
set -euo pipefail
cd "$(dirname "$0")"
PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  "$PYTHON" -m venv .venv
  .venv/bin/python -m pip install --quiet --upgrade pip
fi
if ! .venv/bin/python -m pip install --quiet -e '.[dev]' > .venv/install.log 2>&1; then
  grep -v "^WARNING: Location" .venv/install.log >&2
  echo "setup.sh: pip install failed (full log: .venv/install.log)" >&2
  exit 1
fi
.venv/bin/python -c "import tguide, tguide.callbacks, tguide.recipes" \
  || { echo "setup.sh: tguide did not import after install" >&2; exit 1; }

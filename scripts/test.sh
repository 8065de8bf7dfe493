#!/usr/bin/env bash
# The test suite, set-up included: ./scripts/test.sh [pytest args]
# Tests that need tiny shakespeare look in $CHARRNN_DATA_DIR (default: ../shared/data
# when it exists) and skip cleanly when it is absent.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
if [ -z "${CHARRNN_DATA_DIR:-}" ] && [ -f ../shared/data/tinyshakespeare.txt ]; then
  export CHARRNN_DATA_DIR="$(cd ../shared/data && pwd)"
fi
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# The test suite, set-up included: ./scripts/test.sh [pytest args]. The linter (ruff) runs first.
# Tests that need tiny shakespeare look in $CHARRNN_DATA_DIR (default: ../shared/data
# when it exists) and skip cleanly when it is absent.
# The `serve` extra (FastAPI, uvicorn), the `onnx` extra (onnx, onnxruntime) and the `tensorflow` extra (the tf and
# keras engines' tests; they skip where it is absent) are always installed. The browser tests of
# `charrnn serve` (tests/test_serve_browser.py) need Playwright and Debian's chromium: by default
# they are installed where that is possible (root with apt-get; never `playwright install`, which
# downloads a browser of its own); CHARRNN_BROWSER_TESTS=0 skips that, and so the tests.
set -euo pipefail
cd "$(dirname "$0")/.."
EXTRAS="test,serve,onnx,tensorflow"
if [ "${CHARRNN_BROWSER_TESTS:-1}" = 1 ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
  EXTRAS="$EXTRAS,browser-tests"
  if [ ! -x /usr/bin/chromium ]; then
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null; } \
      || echo "test.sh: could not install chromium; the browser tests will skip" >&2
  fi
fi
CHARRNN_EXTRAS=${CHARRNN_EXTRAS:-$EXTRAS} ./scripts/setup.sh
if [ -z "${CHARRNN_DATA_DIR:-}" ] && [ -f ../shared/data/tinyshakespeare.txt ]; then
  export CHARRNN_DATA_DIR="$(cd ../shared/data && pwd)"
fi
.venv/bin/ruff check --quiet . || { echo "test.sh: ruff found lint errors (above); fix them first" >&2; exit 1; }
# The whole suite (no arguments, as CI runs it) also builds the wheel and uses it from a fresh venv
# (scripts/wheel-check.sh; CHARRNN_WHEEL_CHECK=0 skips it), and runs on both cores (pytest-xdist).
if [ "${CHARRNN_WHEEL_CHECK:-$([ $# -eq 0 ] && echo 1 || echo 0)}" = 1 ]; then ./scripts/wheel-check.sh; fi
if [ $# -eq 0 ]; then set -- -n 2; fi
exec .venv/bin/python -m pytest "$@"

#!/usr/bin/env bash
# The main job, set-up included: train for about a minute on the CPU (--preset auto sizes the model
# to the text, the 75 s and this machine), then sample.
# Uses tiny shakespeare (downloaded once and checksum-verified); with no internet it falls
# back to `pystdlib`, a folder of the Python standard library's own modules, and says so.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/setup.sh
charrnn=".venv/bin/charrnn"
data=tinyshakespeare
if [ -z "${CHARRNN_DATA_DIR:-}" ] && [ -f ../shared/data/tinyshakespeare.txt ]; then
  export CHARRNN_DATA_DIR="$(cd ../shared/data && pwd)"
fi
model=(--preset auto --max-time 75)
if ! "$charrnn" info "$data" >/dev/null 2>/tmp/charrnn-quickstart.err; then
  echo "quickstart: $(cat /tmp/charrnn-quickstart.err)" >&2
  data=pystdlib
  "$charrnn" info "$data" >/dev/null  # builds it: a folder of this Python's own standard-library modules
  echo "quickstart: tiny shakespeare cannot be had here (no network?), so this trains offline on 'pystdlib':" \
       "modules of the Python standard library installed here, one document per module, chosen across the" \
       "whole library; validation holds out whole modules, so its loss is what the model does on unseen" \
       "Python." >&2
fi
out=${1:-runs/quickstart}
"$charrnn" train --data "$data" --out "$out" --overwrite "${model[@]}"
echo
echo "=== sample (temperature 0.8) ==="
"$charrnn" sample --checkpoint "$out" --which best --prime "${PRIME:-}" --length 600 --temperature 0.8 --seed 1

# next commands: charrnn lives in .venv; print what to try next on the run just made, with its real path
run=$(printf '%q' "$out")
prime="ROMEO:"; [ "$data" = tinyshakespeare ] || prime="def "
echo
echo "=== next: charrnn is installed in .venv; from $(pwd) ==="
echo "  source .venv/bin/activate     # puts charrnn on your PATH in this shell (or call $charrnn)"
echo "  charrnn sample --checkpoint $run --which best --prime \"$prime\" --length 300 --temperature 0.8"
echo "  charrnn eval --checkpoint $run --which best --data README.md --unknown skip   # loss on a text of yours"
if ! .venv/bin/python -c "import fastapi, uvicorn" 2>/dev/null; then
  echo "  pip install -e '.[serve]'     # once: FastAPI and uvicorn, for the playground"
fi
echo "  charrnn serve --checkpoint $run --which best   # the playground: open the URL it prints"
echo "  charrnn train --help          # every flag with its default; the README has presets"

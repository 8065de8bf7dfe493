#!/usr/bin/env bash
# Create .venv once and install charrnn into it, with the right PyTorch build:
# the CUDA build where an NVIDIA GPU is present, otherwise the CPU wheel
# (a bare `pip install torch` would pull a multi-GB CUDA build onto a CPU machine).
# Re-running is cheap: nothing is reinstalled unless pyproject.toml changed.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${CHARRNN_VENV:-.venv}
PYTHON=${PYTHON:-python3}
EXTRAS=${CHARRNN_EXTRAS:-test}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
pip() { "$VENV/bin/python" -m pip --disable-pip-version-check -q "$@"; }

stamp="$VENV/.charrnn-installed"
want="$(cat pyproject.toml scripts/setup.sh | sha256sum | cut -c1-16) $EXTRAS"
if [ "$(cat "$stamp" 2>/dev/null)" = "$want" ]; then exit 0; fi

if ! "$VENV/bin/python" -c "import torch" 2>/dev/null; then
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    echo "setup: NVIDIA GPU found: installing the CUDA build of torch" >&2
    pip install "torch>=2.1"
  else
    echo "setup: no GPU: installing the CPU build of torch" >&2
    # 1) the CPU wheel a local wheelhouse carries (offline), 2) PyTorch's CPU index, 3) PyPI's default.
    pip install "torch==2.13.0+cpu" 2>/dev/null \
      || pip install "torch==2.13.0" --only-binary=:all: --no-index 2>/dev/null \
      || pip install torch --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
      || pip install "torch>=2.1"
  fi
fi
# The tensorflow extra is TensorFlow's CPU build; with an NVIDIA GPU, its GPU build instead.
if [[ ",$EXTRAS," == *",tensorflow,"* ]] && command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  echo "setup: NVIDIA GPU found: installing the GPU build of TensorFlow" >&2
  EXTRAS=$(echo ",$EXTRAS," | sed 's/,tensorflow,/,tensorflow-gpu,/; s/^,//; s/,$//')
fi
pip install -e ".[$EXTRAS]"
echo "$want" > "$stamp"

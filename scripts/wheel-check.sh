#!/usr/bin/env bash
# The wheel check: build the wheel and sdist (`python -m build`, the wheel from the sdist, in a copy of the
# checkout's files), install the wheel into a fresh venv outside the clone, and from an empty folder run
# `charrnn --version`, a tiny `train`, `sample --quantize int8`, `export --format web`, `serve` with a request
# to /v1/completions (and its page), then `pip check`. Ends with one line: "wheel-check: ok ..." or
# "wheel-check: FAILED while <step> ..." after that step's last output.
#
# ./scripts/wheel-check.sh            (run by CI; ./scripts/setup.sh first, for .venv's `build`)
# Environment: PYTHON (the fresh venv's interpreter, default python3), CHARRNN_VENV (the clone's venv, whose
# `build` builds: default .venv), CHARRNN_KEEP=1 keeps the temporary folder and says where.
# Everything goes in one temporary folder, removed at the end, whatever happens; the clone is not written to.
set -euo pipefail
cd "$(dirname "$0")/.."
CLONE=$(pwd)
PYTHON=${PYTHON:-python3}
BUILD_PY=${CHARRNN_VENV:-.venv}/bin/python
TMP=$(mktemp -d "${TMPDIR:-/tmp}/charrnn-wheel-check.XXXXXX")
LOG=$TMP/step.log
STEP="setting up"
SERVER=""
started=$SECONDS

finish() {
  local code=$?
  if [ -n "$SERVER" ]; then kill "$SERVER" 2>/dev/null || true; wait "$SERVER" 2>/dev/null || true; fi
  if [ "$code" != 0 ]; then
    [ -s "$LOG" ] && tail -n 25 "$LOG" >&2
    echo "wheel-check: FAILED while $STEP (exit $code; its last output is above)" >&2
  fi
  if [ "${CHARRNN_KEEP:-0}" = 1 ]; then echo "wheel-check: kept $TMP" >&2; else rm -rf "$TMP"; fi
  exit "$code"
}
trap finish EXIT
trap 'exit 130' INT TERM

step() {  # step "what it is doing" command...: its output goes to $LOG, shown only if it fails
  STEP=$1
  shift
  "$@" >"$LOG" 2>&1
}

[ -x "$BUILD_PY" ] && "$BUILD_PY" -c "import build" 2>/dev/null || {
  STEP="looking for the build package"
  echo "$BUILD_PY has no 'build' package: run ./scripts/setup.sh (the test extra installs it)" >"$LOG"
  exit 2
}

# 1. the checkout's files (tracked, and new ones git does not ignore) copied, built there: no egg-info in the clone
copy_sources() {
  mkdir -p "$TMP/src"
  if git -C "$CLONE" rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git -C "$CLONE" ls-files -z --cached --others --exclude-standard \
      | (cd "$CLONE" && xargs -0 -r cp --parents -t "$TMP/src" 2>/dev/null || true)
  else
    tar -C "$CLONE" --exclude=./.venv --exclude=./runs -cf - . | tar -C "$TMP/src" -xf -
  fi
  [ -f "$TMP/src/pyproject.toml" ]
}
step "copying the sources" copy_sources
step "building the sdist and the wheel (python -m build)" "$BUILD_PY" -m build --outdir "$TMP/dist" "$TMP/src"
WHEEL=$(ls "$TMP"/dist/*.whl)
SDIST=$(ls "$TMP"/dist/*.tar.gz)
VERSION=$(basename "$WHEEL" | cut -d- -f2)
wheel_has_its_data() {  # the files that are not Python: the C step, the playground's page, the web export's page
  "$BUILD_PY" - "$WHEEL" <<'EOF'
import sys, zipfile
names = set(zipfile.ZipFile(sys.argv[1]).namelist())
need = ["charrnn/infer/native_step.c", "charrnn/serve/static/index.html", "charrnn/serve/static/app.js"]
missing = [n for n in need if n not in names]
if not any(n.startswith("charrnn/export/web_static/") for n in names):
    missing.append("charrnn/export/web_static/*")
print(len(names), "files in the wheel")
assert not missing, f"the wheel lacks {missing}"
EOF
}
step "looking for the package data in the wheel" wheel_has_its_data

# 2. a fresh venv outside the clone; torch's CPU build as scripts/setup.sh installs it where there is no GPU
#    (a GPU's CUDA build is not needed to check the package, and is gigabytes)
step "making a fresh venv" "$PYTHON" -m venv "$TMP/venv"
VPY=$TMP/venv/bin/python
pip() { "$VPY" -m pip --disable-pip-version-check -q "$@"; }
# --no-compile: no .pyc written at install (this venv lives for one check; torch alone has thousands of modules)
install_torch() {
  pip install --no-compile "torch==2.13.0+cpu" 2>/dev/null \
    || pip install --no-compile "torch==2.13.0" --only-binary=:all: --no-index 2>/dev/null \
    || pip install --no-compile torch --index-url https://download.pytorch.org/whl/cpu 2>/dev/null \
    || pip install --no-compile "torch>=2.1"
}
step "installing torch (CPU)" install_torch
step "installing the wheel with the serve extra" pip install --no-compile "$WHEEL[serve]"

# 3. from an empty folder, with no path back to the clone
mkdir -p "$TMP/work"
cd "$TMP/work"
unset PYTHONPATH VIRTUAL_ENV
export XDG_CACHE_HOME=$TMP/cache OMP_NUM_THREADS=${OMP_NUM_THREADS:-2}  # the C step's build cache lands here
CHARRNN=$TMP/venv/bin/charrnn

check_import() {
  "$VPY" -c "import charrnn, sys; assert charrnn.__file__.startswith(sys.prefix), charrnn.__file__; print(charrnn.__file__)"
  "$CHARRNN" --version | tee version.txt
  [ "$(cat version.txt)" = "charrnn $VERSION" ] || { echo "charrnn --version does not say $VERSION"; return 1; }
}
step "importing the installed charrnn (not the clone's)" check_import

make_text() {  # a small text, the same every time
  "$VPY" - <<'EOF'
import random
rng = random.Random(0)
words = "the king queen of and to thou art my lord hath love".split()
with open("text.txt", "w", encoding="utf-8") as f:
    f.write("\n".join(" ".join(rng.choice(words) for _ in range(8)) + "." for _ in range(400)))
EOF
}
step "writing a small text" make_text
step "charrnn train" "$CHARRNN" train --data text.txt --out run --impl library --hidden 32 --embed 8 \
  --batch-size 8 --seq-len 32 --max-iters 30 --eval-every 15 --log-every 5 --seed 1
sample_int8() {
  "$CHARRNN" sample --checkpoint run --quantize int8 --prime "the king" --length 200 --seed 1 | tee sample.txt
  [ "$(wc -m <sample.txt)" -ge 200 ]
}
step "charrnn sample --quantize int8" sample_int8
export_web() {
  "$CHARRNN" export --checkpoint run --format web --out site
  [ -s site/index.html ] && [ -s site/model.js ] && [ -s site/charrnn.js ]
}
step "charrnn export --format web" export_web

serve_one_request() {
  "$CHARRNN" serve --checkpoint run --port 0 >serve.out 2>&1 &
  SERVER=$!
  local url="" waited=0
  until url=$(grep -o 'http://[^ ]*/' serve.out); do
    kill -0 "$SERVER" 2>/dev/null || { cat serve.out; return 1; }
    [ $((waited += 1)) -lt 600 ] || { echo "charrnn serve printed no URL in 60 s"; return 1; }
    sleep 0.1
  done
  "$VPY" - "$url" <<'EOF'
import json, sys, urllib.request
body = json.dumps({"model": "run", "prompt": "the king", "max_tokens": 40, "seed": 1}).encode()
request = urllib.request.Request(sys.argv[1] + "v1/completions", body, {"Content-Type": "application/json"})
reply = json.load(urllib.request.urlopen(request, timeout=60))
text = reply["choices"][0]["text"]
assert len(text) == 40, reply
page = urllib.request.urlopen(sys.argv[1], timeout=60).read().decode()   # the playground's files came too
assert "<html" in page.lower() and urllib.request.urlopen(sys.argv[1] + "static/app.js", timeout=60).status == 200
print(repr(text))
EOF
  kill -INT "$SERVER"
  wait "$SERVER"
  SERVER=""
}
step "charrnn serve, one request" serve_one_request
step "pip check" pip check

echo "wheel-check: ok: $(basename "$WHEEL") and $(basename "$SDIST") built, installed in a fresh venv, and trained," \
     "sampled (int8), exported (web) and served from it; pip check clean ($((SECONDS - started)) s)"

"""Peak memory of training on a large corpus: the first run (encoding) and the second (cached, memory-mapped).

    python benchmarks/memory_large_corpus.py [--mb 200] [--impl naive] [--keep]

Writes tiny shakespeare repeated to about --mb MB into a temporary folder, then runs
`python -m charrnn train` on it twice, each in a fresh process: a 1x64 model,
20 iterations, validation on the last 0.1% only at the end. Peak RSS is the child's
ru_maxrss (the whole process: interpreter, NumPy, torch if imported, the data).
A run on a 1 MB copy of the text gives the fixed cost to subtract. The target is a
peak below 2x the file size. The temporary folder is removed at the end.
"""
from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, load_text, machine_line, print_table, scratch_folder


def train_once(data: Path, out: Path, impl: str, env: dict) -> tuple:
    """(peak RSS MB, seconds, exit code, last stderr line) of one training process."""
    cmd = [sys.executable, "-c", CHILD, "-m", "charrnn", "train", "--data", str(data), "--out", str(out),
           "--impl", impl, "--max-iters", "20", "--hidden", "64", "--layers", "1", "--embed", "16",
           "--batch-size", "32", "--seq-len", "64", "--eval-every", "1000", "--val-frac", "0.001",
           "--log-every", "10", "--overwrite"]
    start = time.perf_counter()
    done = subprocess.run(cmd, capture_output=True, text=True, env=env)
    seconds = time.perf_counter() - start
    peak_mb = float(done.stdout.strip().splitlines()[-1]) / 1024 if done.returncode == 0 else float("nan")
    last = (done.stderr.strip().splitlines() or [""])[-1][:100]
    return peak_mb, seconds, done.returncode, last


# The child runs charrnn's CLI, then prints its own peak RSS (KiB on Linux) as the last line:
# RUSAGE_SELF of the child itself, so nothing of this parent or earlier children is mixed in.
CHILD = """
import resource, runpy, sys
sys.argv = ["charrnn"] + sys.argv[3:]
try:
    runpy.run_module("charrnn", run_name="__main__")
except SystemExit as e:
    if e.code not in (0, None):
        raise
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mb", type=float, default=200.0, help="size of the big text in MB")
    parser.add_argument("--impl", default="naive", choices=("naive", "scratch", "library"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (prints its path)")
    args = parser.parse_args()

    text, source = load_text()
    block = text.encode("utf-8")
    with scratch_folder("charrnn-bigmem-", args.keep) as tmp:
        small, big = tmp / "small.txt", tmp / "big.txt"
        small.write_bytes(block)
        with open(big, "wb") as f:
            for _ in range(max(1, round(args.mb * 1e6 / len(block)))):
                f.write(block)
        size_mb = big.stat().st_size / 1e6
        env = dict(os.environ, XDG_CACHE_HOME=str(tmp / "xdg"), CHARRNN_DATA_DIR=str(tmp / "data"),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        runs = [("1 MB text, first run (fixed cost)", small), ("1 MB text, second run (cached)", small),
                (f"{size_mb:.0f} MB text, first run (encodes, writes the cache)", big),
                (f"{size_mb:.0f} MB text, second run (memory-mapped cache)", big)]
        rows = []
        for label, data in runs:
            peak, seconds, rc, last = train_once(data, tmp / "run", args.impl, env)
            note = "" if rc == 0 else f"exit {rc}: {last}"
            ratio = f"{peak / (data.stat().st_size / 1e6):.2f}x" if data is big and rc == 0 else "-"
            rows.append([label, f"{peak:,.0f}", ratio, f"{seconds:.1f}", note])
        print(f"# peak memory of `charrnn train --impl {args.impl}` on a large corpus (1x64 model, 20 iterations)")
        print(machine_line())
        print(f"data: {source} repeated to {size_mb:.0f} MB; each row a fresh process; peak RSS = ru_maxrss; "
              "target: peak < 2x file size")
        print()
        print_table(["run", "peak RSS MB", "peak / file size", "wall s", "note"], rows)
        print(f"(children's max over all runs, RUSAGE_CHILDREN: "
              f"{resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024:,.0f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

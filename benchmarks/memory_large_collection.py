"""Peak memory and encoding speed of training on a large collection: ~10,000 files, the first run
(scan, encode, write the cache) and the second (cached, memory-mapped).

    python benchmarks/memory_large_collection.py [--size-mb 1000] [--files 10000] [--impl naive] [--keep]

Writes --files text files totalling about --size-mb MB into a temporary folder (100 per sub-folder,
sizes spread from a tenth to twice the mean; each a slice of tiny shakespeare, or of synthetic text
without it, at a random place, every tenth with a line of accented characters), then runs
`python -m charrnn train --data FOLDER` on it twice, each in a fresh process: a 1x64 model,
20 iterations, validation on ~0.02% of the characters (whole documents) only at the end.

Each run is a grandchild of a measuring child that reports its peak RSS from
getrusage(RUSAGE_CHILDREN).ru_maxrss (the whole process: interpreter, NumPy, the data). "Data ready"
is the time from the process start until training prints its summary line (the data scanned,
encoded and memory-mapped); MB/s is the collection's size over that time. A run on a 1 MB
collection of 100 files gives the fixed cost. The target is a peak below 0.5x the collection's size.
The temporary folder is removed at the end (check `df -h` first: the cache needs about as much again).
"""
from __future__ import annotations

import argparse
import os
import random
import subprocess
import sys
import time
from pathlib import Path

from _common import ROOT, load_text, machine_line, print_table, scratch_folder

# The measuring child: runs the command, then prints the peak RSS (KiB on Linux) of its only child.
MEASURE = """
import resource, subprocess, sys
done = subprocess.run(sys.argv[1:])
print("PEAK", resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss, done.returncode, flush=True)
"""


def write_collection(folder: Path, size_mb: float, files: int, seed: int = 0) -> int:
    """`files` text files of about size_mb MB in all, 100 per sub-folder; returns the bytes written."""
    text, _ = load_text()
    source = text.encode("utf-8")
    source = source * (1 + 2 * int(size_mb * 1e6 / files) // len(source))
    accents = "Ça va? Naïve café, déjà vu, señor, Œuvre — ½ €\n".encode("utf-8")
    rng = random.Random(seed)
    mean, total = size_mb * 1e6 / files, 0
    for i in range(files):
        n = max(1, int(mean * rng.uniform(0.1, 1.9)))
        start = rng.randrange(0, max(1, len(source) - n))
        body = source[start:start + n]
        path = folder / f"part{i // 100:03d}" / f"doc{i:05d}.txt"
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as f:
            f.write(body + (accents if i % 10 == 0 else b""))
        total += len(body) + (len(accents) if i % 10 == 0 else 0)
    return total


def train_once(data: Path, out: Path, impl: str, env: dict) -> tuple:
    """(peak RSS MB, seconds until the data is ready, total seconds, exit code, last stderr line)."""
    cmd = [sys.executable, "-c", MEASURE, sys.executable, "-m", "charrnn", "train", "--data", str(data),
           "--out", str(out), "--impl", impl, "--max-iters", "20", "--hidden", "64", "--layers", "1",
           "--embed", "16", "--batch-size", "32", "--seq-len", "64", "--eval-every", "1000",
           "--val-frac", "0.0002", "--log-every", "10", "--overwrite"]
    start = time.perf_counter()
    ready, peak, code = float("nan"), float("nan"), -1
    with subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as child:
        for line in child.stdout:
            if line.startswith("Total ") and ready != ready:
                ready = time.perf_counter() - start
            if line.startswith("PEAK "):
                _, kib, rc = line.split()
                peak, code = int(kib) / 1024, int(rc)
        err = child.stderr.read()
    last = (err.strip().splitlines() or [""])[-1][:100]
    return peak, ready, time.perf_counter() - start, code, last


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size-mb", type=float, default=1000.0, help="total size of the collection in MB")
    parser.add_argument("--files", type=int, default=10_000, help="number of files")
    parser.add_argument("--impl", default="naive", choices=("naive", "scratch", "library"))
    parser.add_argument("--keep", action="store_true", help="keep the temporary folder (prints its path)")
    args = parser.parse_args()

    with scratch_folder("charrnn-bigcollection-", args.keep) as tmp:
        small, big = tmp / "small", tmp / "big"
        small_bytes = write_collection(small, 1.0, 100, seed=1)
        start = time.perf_counter()
        big_bytes = write_collection(big, args.size_mb, args.files)
        written = time.perf_counter() - start
        size_mb = big_bytes / 1e6
        env = dict(os.environ, XDG_CACHE_HOME=str(tmp / "xdg"), CHARRNN_DATA_DIR=str(tmp / "data"),
                   PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
        runs = [("1 MB, 100 files, first run (fixed cost)", small, small_bytes),
                ("1 MB, 100 files, second run (cached)", small, small_bytes),
                (f"{size_mb:,.0f} MB, {args.files:,} files, first run (scan, encode, cache)", big, big_bytes),
                (f"{size_mb:,.0f} MB, {args.files:,} files, second run (cached, memory-mapped)", big, big_bytes)]
        rows = []
        for label, data, nbytes in runs:
            peak, ready, seconds, rc, last = train_once(data, tmp / "run", args.impl, env)
            note = "" if rc == 0 else f"exit {rc}: {last}"
            ratio = f"{peak / (nbytes / 1e6):.2f}x" if data is big and rc == 0 else "-"
            rows.append([label, f"{peak:,.0f}", ratio, f"{ready:.1f}", f"{nbytes / 1e6 / ready:,.1f}",
                         f"{seconds:.1f}", note])
        cache = sum(p.stat().st_size for p in (tmp / "data").rglob("*") if p.is_file()) / 1e6
        print(f"# peak memory and encoding speed of `charrnn train --impl {args.impl}` on a large collection "
              "(1x64 model, 20 iterations)")
        print(machine_line())
        print(f"data: {args.files:,} generated files, {size_mb:,.0f} MB (written in {written:.0f} s); each row a fresh "
              "process; peak RSS = getrusage(RUSAGE_CHILDREN) of a measuring parent; target: peak <= 0.5x the size")
        print()
        print_table(["run", "peak RSS MB", "peak / size", "data ready s", "MB/s", "wall s", "note"], rows)
        print(f"(cache in the data directory: {cache:,.0f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

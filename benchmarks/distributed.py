"""Training throughput: one process against two torchrun processes on the CPU (gloo).

    python benchmarks/distributed.py [--data PATH] [--iters 30] [--rounds 3]

Each round trains the same model (2x256 LSTM, B32 T100, AdamW, library engine)
three ways, back to back:

    1 process, 1 thread     the reference
    1 process, N threads    the same cores, shared by one process's kernels
    2 processes, 1 thread   torchrun --standalone --nproc-per-node 2 (each rank half the batch)

Throughput is the median `chars_per_sec` of metrics.jsonl (already summed over
ranks), without the first logged row (warm-up: oneDNN builds its kernels).
On a machine with few cores expect little gain: two processes share the same
cores and add a gradient all-reduce per step. The table prints the median of
the per-round ratios to the reference, with the min-max. A benchmark: it
asserts nothing and exits 0.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

from _common import ROOT, machine_line, print_table, shakespeare_path, spread

MODEL = ["--impl", "library", "--cell", "lstm", "--layers", 2, "--hidden", 256, "--embed", 64,
         "--batch-size", 32, "--seq-len", 100, "--optimizer", "adamw", "--dropout", 0, "--device", "cpu"]


def train(data: str, out: Path, iters: int, nproc: int, threads: int) -> float:
    """Median chars/s of one run, warm-up row dropped."""
    env = dict(os.environ, OMP_NUM_THREADS=str(threads),
               PYTHONPATH=os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])))
    launcher = ["-m", "torch.distributed.run", "--standalone", "--nproc-per-node", str(nproc)] if nproc > 1 else []
    args = ["train", "--data", data, "--out", out, "--overwrite", *MODEL, "--max-iters", iters,
            "--log-every", 5, "--eval-every", 10 ** 9, "--val-frac", 0.01]
    r = subprocess.run([sys.executable, *launcher, "-m", "charrnn", *map(str, args)], env=env,
                       capture_output=True, text=True)
    if r.returncode:
        sys.exit(f"training failed ({nproc} process(es)):\n{r.stderr[-2000:]}")
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return statistics.median([row["chars_per_sec"] for row in rows if "chars_per_sec" in row][1:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(shakespeare_path() or "pystdlib"),
                        help="training text (default: tiny shakespeare when found, else pystdlib)")
    parser.add_argument("--iters", type=int, default=30, help="iterations per run")
    parser.add_argument("--rounds", type=int, default=3, help="rounds of the three runs")
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    setups = [("1 process, 1 thread", 1, 1), (f"1 process, {cores} threads", 1, cores),
              ("2 processes (torchrun), 1 thread each", 2, 1)]
    rates = {name: [] for name, _, _ in setups}
    with tempfile.TemporaryDirectory() as tmp:
        for round_ in range(args.rounds):
            for name, nproc, threads in setups:
                rates[name].append(train(args.data, Path(tmp) / "run", args.iters, nproc, threads))
                print(f"round {round_ + 1}: {name}: {rates[name][-1]:,.0f} chars/s", file=sys.stderr, flush=True)
    reference = rates[setups[0][0]]
    print(machine_line())
    print(f"2x256 LSTM, B32 T100 (the global batch), AdamW, library engine, {args.iters} iterations per run, "
          f"{args.rounds} rounds, data {args.data}")
    print_table(["setup", "chars/s, median (min-max)", "vs 1 process, 1 thread"],
                [(name, spread(rates[name]), spread(r / ref for r, ref in zip(rates[name], reference)))
                 for name, _, _ in setups])
    return 0


if __name__ == "__main__":
    sys.exit(main())

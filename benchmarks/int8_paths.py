"""Single-stream int8 generation from a 2x512 LSTM on each path of the compiled step this CPU can build.

    python benchmarks/int8_paths.py [--rounds 5] [--chars 4000]

native_step.c has three matrix kernels: AVX-512 VNNI (vpdpbusd), AVX2 (vpmaddubsw on |q_x| and the
sign-carried weights, which cannot saturate) and plain C. An AVX-512 machine builds all three, so the
AVX2 figure an AVX2-only CPU would get is measured here with the same compiler and memory (the kernels
differ, the rest of the step does not). A random 2x512 LSTM, E64, V65 (speed does not depend on the
weights), temperature-1 draws in C, at 1 and 2 threads; rounds alternate every path and thread count,
and the median round is reported with its range.
"""
from __future__ import annotations

import argparse
import statistics
import time

import numpy as np
from _common import machine_line, print_table

from charrnn.config import ModelConfig
from charrnn.infer import native
from charrnn.models import build_model


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--chars", type=int, default=4000, help="characters generated per measurement")
    args = parser.parse_args()
    print(machine_line(), flush=True)
    config = ModelConfig(vocab_size=65, cell="lstm", layers=2, hidden=512, embed=64)
    params = build_model("naive", config, seed=0).get_parameters()
    libraries = {}
    for path in native.PATHS:
        try:
            libraries[path] = native.build(path)
        except (native.PathUnavailable, RuntimeError) as e:
            print(f"{path}: not built here ({e})")
    steps = {(path, threads): native.NativeStep(config, params, 1, threads=threads, library=lib)
             for path, lib in libraries.items() for threads in (1, 2)}
    rng = np.random.default_rng(0)
    rates = {key: [] for key in steps}
    for _ in range(args.rounds):
        for key, step in steps.items():
            uniforms = rng.random((args.chars, 1))
            step.generate(np.zeros((1, 65), np.float32), 50, 1.0, rng.random((50, 1)))  # warm caches and threads
            started = time.perf_counter()
            step.generate(None, args.chars, 1.0, uniforms)
            rates[key].append(args.chars / (time.perf_counter() - started))
            time.sleep(0.3)  # let the other row's threads go to sleep
    rows = [[path, threads, f"{statistics.median(r):,.0f}", f"{min(r):,.0f}–{max(r):,.0f}"]
            for (path, threads), r in rates.items()]
    print_table(["path", "threads", "chars/s (median)", "range"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

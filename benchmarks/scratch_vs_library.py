"""Training throughput: the scratch engine (own LSTM equations, autograd) vs the library engine (nn.LSTM).

    python benchmarks/scratch_vs_library.py [--rounds 5] [--iters 2] [--compile]

2x512 LSTM, embedding 64, batch 32, windows of 100, Adam lr 2e-3, clip 5, on tiny
shakespeare, each driven through charrnn's real step (steppers.TorchLearner.train_step
with the state carried between windows). Modes: scratch eager, scratch with
TorchScript cells (build_model(..., script=True)) and the library engine; each round
times every mode back to back and reports scratch / library per round.

--compile also tries torch.compile on the scratch engine in a child process (the 100-step
time loop unrolls into a large graph); if compiling does not finish within
--compile-timeout seconds the row says so.
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

from _common import early_threads, load_text, machine_line, print_table, spread, training_loop

early_threads()

import torch  # noqa: E402

from charrnn.config import ModelConfig  # noqa: E402
from charrnn.data.batching import make_streams  # noqa: E402
from charrnn.data.vocab import Vocab  # noqa: E402
from charrnn.models import build_model  # noqa: E402
from charrnn.train.learners import TorchLearner  # noqa: E402

LAYERS, HIDDEN, EMBED, BATCH, SEQ_LEN = 2, 512, 64, 32, 100


def trainer(impl: str, streams, vocab_size: int, script: bool = False, compile: bool = False):
    """A function run(iters) -> characters trained, continuing through the windows with state carried."""
    cfg = ModelConfig(vocab_size=vocab_size, cell="lstm", layers=LAYERS, hidden=HIDDEN, embed=EMBED)
    model = build_model(impl, cfg, seed=0, script=script)
    stepper = TorchLearner(model, "adam", 2e-3, 0.0, 5.0, torch.device("cpu"), compile=compile)
    return training_loop(stepper, streams)


def measure(runs: dict, rounds: int, iters: int) -> dict:
    """{name: [chars/s per round]}, every name timed once per round, back to back."""
    results = {name: [] for name in runs}
    for _ in range(rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            chars = run(iters)
            results[name].append(chars / (time.perf_counter() - start))
    return results


def streams_from_corpus():
    text, source = load_text()
    vocab = Vocab.from_text(text)
    return make_streams(vocab.encode(text), BATCH, SEQ_LEN), len(vocab), source


def compile_child(rounds: int, iters: int) -> int:
    """In a child process: compile the scratch engine, then time it against the library engine."""
    streams, V, _ = streams_from_corpus()
    runs = {"library": trainer("library", streams, V), "compiled": trainer("scratch", streams, V, compile=True)}
    start = time.perf_counter()
    runs["compiled"](2)  # compiles on the first call; the second catches a recompile for the carried state
    compile_s = time.perf_counter() - start
    runs["library"](1)
    results = measure(runs, rounds, iters)
    print(json.dumps({"compile_s": compile_s, **results}))
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=2, help="training steps per mode per round")
    parser.add_argument("--threads", type=int, default=None, help="pin torch and BLAS threads")
    parser.add_argument("--compile", action="store_true", help="also try torch.compile on the scratch engine")
    parser.add_argument("--compile-timeout", type=float, default=300.0)
    parser.add_argument("--compile-child", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.compile_child:
        return compile_child(args.rounds, args.iters)

    streams, V, source = streams_from_corpus()
    runs = {"library (nn.LSTM)": trainer("library", streams, V),
            "scratch eager": trainer("scratch", streams, V),
            "scratch script=True": trainer("scratch", streams, V, script=True)}
    for run in runs.values():
        run(2)  # warm-up: oneDNN kernels, TorchScript profiling runs
    results = measure(runs, args.rounds, args.iters)

    print(f"# scratch vs library engine: training chars/s (2x{HIDDEN} LSTM, E{EMBED}, B{BATCH} T{SEQ_LEN}, Adam, clip "
          f"5)")
    print(machine_line())
    print(f"data: {source}; {args.rounds} rounds x {args.iters} steps per mode; median (min-max); "
          "ratio = mode / library in the same round")
    print()
    ref = results["library (nn.LSTM)"]
    rows = [[name, spread(r), spread([a / b for a, b in zip(r, ref)]) + "x"] for name, r in results.items()]
    if args.compile:
        rows.append(compile_row(args))
    print_table(["mode", "chars/s", "ratio vs library"], rows)
    return 0


def compile_row(args) -> list:
    cmd = [sys.executable, __file__, "--compile-child", "--rounds", str(args.rounds), "--iters", str(args.iters)]
    if args.threads:
        cmd += ["--threads", str(args.threads)]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=args.compile_timeout)
    except subprocess.TimeoutExpired:
        return ["scratch torch.compile", f"skipped: not compiled within {args.compile_timeout:.0f} s", "-"]
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["?"])[-1][:80]
        return ["scratch torch.compile", f"failed: {last}", "-"]
    out = json.loads(done.stdout.strip().splitlines()[-1])
    ratio = [a / b for a, b in zip(out["compiled"], out["library"])]
    return [f"scratch torch.compile (own process, compiled in {out['compile_s']:.0f} s)",
            spread(out["compiled"]), spread(ratio) + "x (vs library in that process)"]


if __name__ == "__main__":
    raise SystemExit(main())

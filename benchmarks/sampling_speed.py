"""Generation and evaluation speed of each engine, vs a plain per-step torch.nn.LSTM loop.

    python benchmarks/sampling_speed.py [--rounds 3] [--chars 300] [--eval-chars 100000]

A 2x512 LSTM, embedding 64, V = 65, random weights (speed does not depend on them).
Single stream (batch 1): each engine through charrnn's real path (Predictor +
sampling.generate_indices, temperature 1 sampling), steps.NumpyStep on its own (greedy
argmax), and the reference: the loop most people write, nn.Embedding + nn.LSTM +
nn.Linear called once per character under no_grad, softmax + torch.multinomial.
Every measurement runs at 1 and at 2 threads (torch.set_num_threads and OpenBLAS,
switched in-process), both sides alike; rounds alternate everything, and the ratio is
taken against the reference in the same round and thread setting.
The int8 rows (--quantize int8, any engine) keep the layer weights in int8 and run the
compiled step (native_step.c; with plain temperature or greedy it also draws the
characters, in C); --top-k draws in Python. The step's path is the best this CPU has
(AVX-512 VNNI, AVX2, plain C); CHARRNN_NATIVE_ISA=avx2 or portable measures a lesser one. Their cost in accuracy is what
`charrnn eval --quantize int8` reports on a trained run (README).
"float32 layer matmuls alone" is the floor of any float32 step: reading the weights once.
Rows are 0.3 s apart: right after a float32 row, OpenBLAS's threads still spinning on
both cores halved the next (int8, OpenMP) row's speed, a clash no single command meets.
Batched: 64 streams at once. Evaluation: charrnn.infer.evaluate.evaluate_indices over
--eval-chars characters of tiny shakespeare, one run per engine, 1 thread (at 2 threads
a busy machine made it many times slower and only noisier).
"""
from __future__ import annotations

import argparse
import contextlib
import os
import time

from _common import early_threads, load_text, machine_line, print_table, spread

early_threads()
# Let this script, not the Predictor's batch-1 default, decide OpenBLAS's threads (see blas_threads below).
os.environ.setdefault("OPENBLAS_NUM_THREADS", str(os.cpu_count() or 1))

import numpy as np  # noqa: E402
import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from charrnn.config import ModelConfig  # noqa: E402
from charrnn.data.vocab import Vocab  # noqa: E402
from charrnn.devices import blas_threads  # noqa: E402
from charrnn.errors import UserError  # noqa: E402
from charrnn.infer.evaluate import evaluate_indices  # noqa: E402
from charrnn.infer.native import NativeStep, compiled_path, kernel, kernel_problem  # noqa: E402
from charrnn.infer.predictor import Predictor  # noqa: E402
from charrnn.infer.sampling import generate_indices, sampling_options  # noqa: E402
from charrnn.infer.steps import NumpyStep  # noqa: E402
from charrnn.models import build_model  # noqa: E402

V, E, H, L = 65, 64, 512, 2
PRIME = np.array([0, 1, 2, 3, 4], dtype=np.int64)
INT8 = "charrnn --quantize int8 (Predictor + generate_indices)"
INT8_TOP_K = "charrnn --quantize int8 --top-k 40 (draws in Python)"


def charrnn_generate(predictor: Predictor, batch: int, top_k=None):
    rng = np.random.default_rng(0)
    options = sampling_options(top_k=top_k)

    def run(chars: int) -> int:
        for _ in generate_indices(predictor, PRIME, chars, options, num_samples=batch, rng=rng):
            pass
        return chars * batch

    return run


def fastgen_greedy(model, batch: int, quantize=None, native_threads=None):
    if native_threads:
        fused = NativeStep(model.config, model.get_parameters(), batch, threads=native_threads)
    else:
        fused = NumpyStep.from_model(model, batch, quantize)

    def run(chars: int) -> int:
        fused.set_state(model.initial_state(batch))
        nxt = np.zeros(batch, dtype=np.intp)
        for _ in range(chars):
            np.argmax(fused.step(nxt), axis=1, out=nxt)
        return chars * batch

    return run


def int8_runner(model, threads: int) -> Predictor:
    """A --quantize int8 Predictor whose compiled step runs on `threads` threads (it reads OMP_NUM_THREADS)."""
    before = os.environ.get("OMP_NUM_THREADS")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    try:
        return Predictor(model, quantize="int8")
    finally:
        if before is None:
            del os.environ["OMP_NUM_THREADS"]
        else:
            os.environ["OMP_NUM_THREADS"] = before


def per_setting(settings, build) -> dict:
    """A row whose runner depends on the thread setting: {threads: run}."""
    return {n: build(n) for n in settings}


def warm_up(rows: dict, chars: int) -> None:
    """Run every row once (each thread setting's runner of a per_setting row) before timing."""
    for run in rows.values():
        for each in (run.values() if isinstance(run, dict) else [run]):
            each(chars)


def weights_only(model):
    """The float32 floor: per step, only the layer matmuls of NumpyStep (no cell math, no sampling)."""
    fused = NumpyStep.from_model(model, 1)
    layers = [(layer, fused.h[:, max(k - 1, 0) * H:(k + 1) * H]) for k, layer in enumerate(fused.weights.xh)]

    def run(chars: int) -> int:
        for _ in range(chars):
            for layer, xh in layers:
                layer(xh, fused.a)
        return chars

    return run


class PlainLSTM(nn.Module):
    def __init__(self):
        super().__init__()
        self.embed, self.rnn, self.head = nn.Embedding(V, E), nn.LSTM(E, H, L, batch_first=True), nn.Linear(H, V)


def plain_torch(batch: int, onednn: bool = True):
    torch.manual_seed(0)
    m = PlainLSTM().eval()

    def run(chars: int) -> int:
        was = torch.backends.mkldnn.enabled
        torch.backends.mkldnn.enabled = onednn
        try:
            with torch.no_grad():
                x, hidden = torch.zeros(batch, 1, dtype=torch.long), None
                for _ in range(chars):
                    out, hidden = m.rnn(m.embed(x), hidden)
                    probs = F.softmax(m.head(out[:, -1]), dim=-1)
                    x = torch.multinomial(probs, 1)
        finally:
            torch.backends.mkldnn.enabled = was
        return chars * batch

    return run


def threads(n: int):
    """torch and OpenBLAS on n threads for the block."""
    stack = contextlib.ExitStack()
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    stack.callback(torch.set_num_threads, before)
    stack.enter_context(blas_threads(n))
    return stack


def measure(runs: dict, settings, rounds: int, chars: int) -> dict:
    results = {(n, name): [] for n in settings for name in runs}
    for _ in range(rounds):
        for n in settings:
            with threads(n):
                for name, run in runs.items():
                    run = run[n] if isinstance(run, dict) else run
                    time.sleep(0.3)  # let the last row's spinning OpenBLAS / OpenMP threads go idle first
                    start = time.perf_counter()
                    done = run(chars)
                    results[n, name].append(done / (time.perf_counter() - start))
    return results


def table(results: dict, settings, names, ref: str, label: str, ref_name: str = "plain torch loop") -> None:
    rows = []
    for n in settings:
        for name in names:
            ratio = [a / b for a, b in zip(results[n, name], results[n, ref])]
            rows.append([n, name, spread(results[n, name]), "1" if name == ref else spread(ratio) + "x"])
    print(label)
    print_table(["threads", "what", "chars/s", f"ratio vs {ref_name}"], rows)
    print()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chars", type=int, default=300, help="characters per stream per measurement")
    parser.add_argument("--eval-chars", type=int, default=100_000)
    parser.add_argument("--threads", type=int, default=None, help="ignored here: every row says its threads")
    args = parser.parse_args()

    try:
        if kernel() is None:
            parser.exit(2, f"sampling_speed.py: the compiled int8 step is unavailable ({kernel_problem()})\n")
    except UserError as exc:                                  # CHARRNN_NATIVE_ISA names no path this CPU has
        parser.exit(2, f"sampling_speed.py: {exc}\n")
    cfg = ModelConfig(vocab_size=V, cell="lstm", layers=L, hidden=H, embed=E)
    models = {impl: build_model(impl, cfg, seed=0) for impl in ("naive", "scratch", "library")}
    settings = (1, 2)
    ref = "plain torch loop (no_grad, oneDNN on)"

    single = {ref: plain_torch(1), "plain torch loop, oneDNN off": plain_torch(1, onednn=False)}
    single.update({f"charrnn {impl} (Predictor + generate_indices)": charrnn_generate(Predictor(m), 1)
                   for impl, m in models.items()})
    single[INT8] = per_setting(settings, lambda n: charrnn_generate(int8_runner(models["library"], n), 1))
    single[INT8_TOP_K] = per_setting(settings, lambda n: charrnn_generate(int8_runner(models["library"], n), 1,
                                                                          top_k=40))
    single["native.NativeStep alone, greedy (int8, compiled)"] = per_setting(
        settings, lambda n: fastgen_greedy(models["naive"], 1, native_threads=n))
    single["NumpyStep alone, greedy (float32)"] = fastgen_greedy(models["naive"], 1)
    single["NumpyStep alone, greedy (int8, NumPy reference)"] = fastgen_greedy(models["naive"], 1, "int8")
    single["float32 layer matmuls alone (no cell, no sampling)"] = weights_only(models["naive"])
    warm_up(single, 20)
    print(f"# generation speed: 2x{H} LSTM, E{E}, V{V}, random weights")
    print(machine_line())
    print(f"compiled int8 step: the {compiled_path()} path (CHARRNN_NATIVE_ISA picks another)")
    print(f"{args.rounds} rounds; median (min-max); ratio = row / plain loop, same round and threads")
    print()
    table(measure(single, settings, args.rounds, args.chars), settings, list(single), ref,
          f"single stream (batch 1), {args.chars} characters per measurement:")

    batched = {ref: plain_torch(64)}
    batched.update({f"charrnn {impl} (Predictor + generate_indices)": charrnn_generate(Predictor(m), 64)
                    for impl, m in models.items()})
    batched[INT8] = per_setting(settings, lambda n: charrnn_generate(int8_runner(models["library"], n), 64))
    batched["NumpyStep alone, greedy (float32)"] = fastgen_greedy(models["naive"], 64)
    warm_up(batched, 5)
    steps = max(args.chars // 10, 10)
    table(measure(batched, settings, args.rounds, steps), settings, list(batched), ref,
          f"batched: 64 streams at once, {steps} steps per measurement (chars/s counts all streams):")

    text, source = load_text()
    vocab = Vocab.from_text(text)
    data = vocab.encode(text)[: args.eval_chars + 1] % V
    rows = []
    runners = {impl: Predictor(model) for impl, model in models.items()}
    runners["any engine, --quantize int8 (compiled, 1 thread)"] = int8_runner(models["library"], 1)
    runners["any engine, --quantize int8 (compiled, 2 threads)"] = int8_runner(models["library"], 2)
    for name, runner in runners.items():
        with threads(1):
            start = time.perf_counter()
            evaluate_indices(runner, data)
            seconds = time.perf_counter() - start
        rows.append([name, f"{seconds:.1f}", f"{args.eval_chars / seconds:,.0f}"])
    print(f"evaluation: evaluate_indices over {args.eval_chars:,} characters of {os.path.basename(source)}, "
          f"one stream, chunks of 2048, 1 thread, one run each:")
    print_table(["engine", "seconds", "chars/s"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

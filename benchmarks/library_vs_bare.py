"""Training throughput: the library engine through charrnn's real step vs a bare torch.nn loop.

    python benchmarks/library_vs_bare.py [--rounds 5] [--iters 2] [--no-profile]

Both: nn.Embedding(V, 64) + nn.LSTM(64, 512, 2 layers) + nn.Linear, batch 32, windows of
100, Adam lr 2e-3, gradient norm clipped to 5, state carried between windows and
detached, on tiny shakespeare. charrnn: steppers.TorchLearner.train_step on windows
from batching.make_streams (NumPy int64 windows converted each step). Bare: the
pytorch/examples word_language_model way, the text as one tensor and windows sliced
from it. Each round times both back to back and reports charrnn / bare.

Then one step of each under torch.profiler (the ops where time differs most) and
cProfile (Python functions), to show where any extra time goes.
"""
from __future__ import annotations

import argparse
import cProfile
import io
import pstats
import time

from _common import early_threads, load_text, machine_line, print_table, spread, training_loop

early_threads()

import torch  # noqa: E402
import torch.nn.functional as F  # noqa: E402
from torch import nn  # noqa: E402

from charrnn.config import ModelConfig  # noqa: E402
from charrnn.data.batching import make_streams  # noqa: E402
from charrnn.data.vocab import Vocab  # noqa: E402
from charrnn.models import build_model  # noqa: E402
from charrnn.train.learners import TorchLearner  # noqa: E402

LAYERS, HIDDEN, EMBED, BATCH, SEQ_LEN, LR, CLIP = 2, 512, 64, 32, 100, 2e-3, 5.0


def charrnn_trainer(streams, vocab_size: int):
    cfg = ModelConfig(vocab_size=vocab_size, cell="lstm", layers=LAYERS, hidden=HIDDEN, embed=EMBED)
    stepper = TorchLearner(build_model("library", cfg, seed=0), "adam", LR, 0.0, CLIP, torch.device("cpu"))
    return training_loop(stepper, streams)


class Bare(nn.Module):
    def __init__(self, vocab_size: int):
        super().__init__()
        self.embed = nn.Embedding(vocab_size, EMBED)
        self.rnn = nn.LSTM(EMBED, HIDDEN, LAYERS, batch_first=True)
        self.head = nn.Linear(HIDDEN, vocab_size)

    def forward(self, x, hidden):
        out, hidden = self.rnn(self.embed(x), hidden)
        return self.head(out), hidden


def bare_trainer(data, vocab_size: int):
    torch.manual_seed(0)
    model = Bare(vocab_size)
    opt = torch.optim.Adam(model.parameters(), lr=LR)
    stream_len = (len(data) - 1) // BATCH
    text = torch.as_tensor(data[:BATCH * stream_len + 1].astype("int64"))
    inputs = text[:-1].view(BATCH, stream_len)                   # (B, L) batchify
    targets = text[1:].view(BATCH, stream_len)
    windows = stream_len // SEQ_LEN
    zero = lambda: tuple(torch.zeros(LAYERS, BATCH, HIDDEN) for _ in range(2))
    state = {"h": zero(), "k": 0}

    def run(iters: int) -> int:
        for _ in range(iters):
            if state["k"] == windows:
                state["h"], state["k"] = zero(), 0
            cols = slice(state["k"] * SEQ_LEN, (state["k"] + 1) * SEQ_LEN)
            x, y = inputs[:, cols], targets[:, cols]
            hidden = tuple(h.detach() for h in state["h"])      # truncated BPTT
            logits, state["h"] = model(x, hidden)
            loss = F.cross_entropy(logits.reshape(-1, vocab_size), y.reshape(-1))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(model.parameters(), CLIP)
            loss.item()
            opt.step()
            state["k"] += 1
        return iters * BATCH * SEQ_LEN

    return run


def op_table(run, steps: int = 2):
    """{op name: (self CPU ms, calls)} over `steps` steps of `run`."""
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        run(steps)
    return {e.key: (e.self_cpu_time_total / 1000 / steps, e.count / steps) for e in prof.key_averages()}


def python_profile(run, steps: int = 2, top: int = 10) -> str:
    profiler = cProfile.Profile()
    profiler.enable()
    run(steps)
    profiler.disable()
    out = io.StringIO()
    pstats.Stats(profiler, stream=out).sort_stats("tottime").print_stats(top)
    lines = [ln for ln in out.getvalue().splitlines() if ln.strip()]
    start = next(i for i, ln in enumerate(lines) if ln.lstrip().startswith("ncalls"))
    return "\n".join(lines[start:])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=2, help="training steps per side per round")
    parser.add_argument("--threads", type=int, default=None, help="pin torch and BLAS threads")
    parser.add_argument("--no-profile", action="store_true")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    text, source = load_text()
    vocab = Vocab.from_text(text)
    data = vocab.encode(text)
    runs = {"charrnn library engine (TorchLearner)": charrnn_trainer(make_streams(data, BATCH, SEQ_LEN), len(vocab)),
            "bare torch.nn loop": bare_trainer(data, len(vocab))}
    for run in runs.values():
        run(2)  # warm-up: oneDNN builds its kernels on first use
    results = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            start = time.perf_counter()
            chars = run(args.iters)
            results[name].append(chars / (time.perf_counter() - start))

    print(f"# library engine vs bare torch.nn: training chars/s (2x{HIDDEN} LSTM, E{EMBED}, B{BATCH} T{SEQ_LEN}, "
          f"Adam, clip 5)")
    print(machine_line())
    print(f"data: {source}; {args.rounds} rounds x {args.iters} steps per side; median (min-max); "
          "ratio = charrnn / bare in the same round")
    print()
    ref = results["bare torch.nn loop"]
    print_table(["loop", "chars/s", "ratio vs bare"],
                [[name, spread(r), spread([a / b for a, b in zip(r, ref)]) + "x"] for name, r in results.items()])
    if args.no_profile:
        return 0

    ours, bare = (op_table(run) for run in runs.values())
    names = sorted(set(ours) | set(bare), key=lambda k: -abs(ours.get(k, (0, 0))[0] - bare.get(k, (0, 0))[0]))
    print()
    print("torch.profiler, self CPU ms per step (2 steps each), the 12 ops whose time differs most:")
    print_table(["op", "charrnn ms", "bare ms", "charrnn - bare", "calls charrnn / bare"],
                [[k, f"{ours.get(k, (0, 0))[0]:.2f}", f"{bare.get(k, (0, 0))[0]:.2f}",
                  f"{ours.get(k, (0, 0))[0] - bare.get(k, (0, 0))[0]:+.2f}",
                  f"{ours.get(k, (0, 0))[1]:.0f} / {bare.get(k, (0, 0))[1]:.0f}"] for k in names[:12]])
    total = lambda table: sum(ms for ms, _ in table.values())
    print(f"total self CPU ms per step: charrnn {total(ours):.1f}, bare {total(bare):.1f}")
    print()
    print("cProfile of 2 charrnn steps, top 10 by own time:")
    print(python_profile(runs["charrnn library engine (TorchLearner)"]))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

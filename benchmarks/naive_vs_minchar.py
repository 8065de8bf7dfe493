"""Training throughput: charrnn's naive engine vs a min-char-rnn-style batch-1 NumPy loop.

    python benchmarks/naive_vs_minchar.py [--rounds 5] [--seconds 1.0]

Both train a vanilla RNN, hidden 100, windows of 25 characters, Adagrad lr 0.1, on
tiny shakespeare. charrnn: batch 64, the full step the trainer runs (forward_train +
losses.cross_entropy + backward + numpy_optim.clip_grad_norm(5) + Adagrad step), float32
as it trains by default (float64 shown too, min-char's dtype). The reference is written
here in min-char-rnn.py's style: batch 1, one-hot inputs, a Python loop over time for
forward and backward, gradients clipped to [-5, 5] elementwise, Adagrad on `mem`.

Rounds alternate the two (and OpenBLAS at its default thread count vs one thread,
switched in-process), so each round's ratio compares like conditions. A second table
splits the naive step into its phases.
"""
from __future__ import annotations

import argparse
import contextlib
import time

from _common import early_threads, load_text, machine_line, print_table, spread

early_threads()

import numpy as np  # noqa: E402

from charrnn.config import ModelConfig  # noqa: E402
from charrnn.data.batching import make_streams  # noqa: E402
from charrnn.data.vocab import Vocab  # noqa: E402
from charrnn.devices import blas_threads  # noqa: E402
from charrnn.losses import cross_entropy  # noqa: E402
from charrnn.models.naive import NaiveModel  # noqa: E402
from charrnn.train.numpy_optim import clip_grad_norm, make_optimizer  # noqa: E402

HIDDEN, SEQ_LEN, BATCH, LR = 100, 25, 64, 0.1


class MinCharRNN:
    """min-char-rnn.py's model and update, batch 1, column vectors, float64."""

    def __init__(self, vocab_size: int, hidden: int, seed: int = 0):
        rng = np.random.default_rng(seed)
        V, H = vocab_size, hidden
        self.Wxh = rng.standard_normal((H, V)) * 0.01
        self.Whh = rng.standard_normal((H, H)) * 0.01
        self.Why = rng.standard_normal((V, H)) * 0.01
        self.bh, self.by = np.zeros((H, 1)), np.zeros((V, 1))
        self.params = [self.Wxh, self.Whh, self.Why, self.bh, self.by]
        self.mem = [np.zeros_like(p) for p in self.params]

    def loss_fun(self, inputs, targets, hprev):
        xs, hs, ys, ps = {}, {-1: np.copy(hprev)}, {}, {}
        loss = 0.0
        V = self.Wxh.shape[1]
        for t in range(len(inputs)):                              # forward, one step at a time
            xs[t] = np.zeros((V, 1))
            xs[t][inputs[t]] = 1                                  # one-hot
            hs[t] = np.tanh(self.Wxh @ xs[t] + self.Whh @ hs[t - 1] + self.bh)
            ys[t] = self.Why @ hs[t] + self.by
            ps[t] = np.exp(ys[t]) / np.sum(np.exp(ys[t]))
            loss += -np.log(ps[t][targets[t], 0])
        dWxh, dWhh, dWhy = np.zeros_like(self.Wxh), np.zeros_like(self.Whh), np.zeros_like(self.Why)
        dbh, dby = np.zeros_like(self.bh), np.zeros_like(self.by)
        dhnext = np.zeros_like(hs[0])
        for t in reversed(range(len(inputs))):                    # backward, mirror image
            dy = np.copy(ps[t])
            dy[targets[t]] -= 1
            dWhy += dy @ hs[t].T
            dby += dy
            dh = self.Why.T @ dy + dhnext
            dhraw = (1 - hs[t] * hs[t]) * dh
            dbh += dhraw
            dWxh += dhraw @ xs[t].T
            dWhh += dhraw @ hs[t - 1].T
            dhnext = self.Whh.T @ dhraw
        grads = [dWxh, dWhh, dWhy, dbh, dby]
        for g in grads:
            np.clip(g, -5, 5, out=g)
        return loss, grads, hs[len(inputs) - 1]

    def train_window(self, inputs, targets, hprev):
        loss, grads, h = self.loss_fun(inputs, targets, hprev)
        for p, g, m in zip(self.params, grads, self.mem):         # Adagrad, as min-char-rnn
            m += g * g
            p += -LR * g / np.sqrt(m + 1e-8)
        return loss, h


def naive_trainer(data, vocab_size, dtype):
    cfg = ModelConfig(vocab_size=vocab_size, cell="rnn", layers=1, hidden=HIDDEN, embed=64)
    model = NaiveModel(cfg, dtype=dtype, seed=0).train()
    opt = make_optimizer("adagrad", model.params, LR)
    streams = make_streams(data, BATCH, SEQ_LEN)
    windows = [streams.window(k) for k in range(min(streams.num_windows, 200))]
    phases = {"forward_train": 0.0, "cross_entropy": 0.0, "backward": 0.0, "clip_grad_norm": 0.0, "adagrad step": 0.0}
    state = {"s": model.initial_state(BATCH), "k": 0}

    def run(iters: int, split: bool = False) -> int:
        for _ in range(iters):
            x, y = windows[state["k"] % len(windows)]
            state["k"] += 1
            t0 = time.perf_counter()
            logits, state["s"], cache = model.forward_train(x, state["s"])
            t1 = time.perf_counter()
            loss, dlogits = cross_entropy(logits, y)
            t2 = time.perf_counter()
            grads, _ = model.backward(cache, dlogits)
            t3 = time.perf_counter()
            clip_grad_norm(grads, 5.0)
            t4 = time.perf_counter()
            opt.step(grads)
            t5 = time.perf_counter()
            if split:
                for name, dt in zip(phases, (t1 - t0, t2 - t1, t3 - t2, t4 - t3, t5 - t4)):
                    phases[name] += dt
        return iters * BATCH * SEQ_LEN

    return run, phases


def minchar_trainer(data, vocab_size):
    rnn = MinCharRNN(vocab_size, HIDDEN)
    data = np.asarray(data, dtype=np.int64)
    state = {"p": 0, "h": np.zeros((HIDDEN, 1))}

    def run(iters: int) -> int:
        for _ in range(iters):
            p = state["p"]
            if p + SEQ_LEN + 1 >= len(data):
                p, state["h"] = 0, np.zeros((HIDDEN, 1))
            inputs, targets = data[p:p + SEQ_LEN].tolist(), data[p + 1:p + SEQ_LEN + 1].tolist()
            _, state["h"] = rnn.train_window(inputs, targets, state["h"])
            state["p"] = p + SEQ_LEN
        return iters * SEQ_LEN

    return run


def rate(run, seconds: float) -> float:
    """chars/s of `run`, calibrated to take about `seconds`."""
    iters, spent = 1, 0.0
    while True:
        start = time.perf_counter()
        chars = run(iters)
        spent = time.perf_counter() - start
        if spent >= seconds * 0.5:
            return chars / spent
        iters *= 2


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seconds", type=float, default=1.0, help="time per measurement")
    parser.add_argument("--threads", type=int, default=None, help="pin BLAS threads (set before NumPy loads)")
    args = parser.parse_args()

    text, source = load_text()
    vocab = Vocab.from_text(text)
    data = vocab.encode(text)
    contenders = {
        "charrnn naive, float32, B64": naive_trainer(data, len(vocab), np.float32)[0],
        "charrnn naive, float64, B64": naive_trainer(data, len(vocab), np.float64)[0],
        "min-char-rnn style, float64, B1": minchar_trainer(data, len(vocab)),
    }
    settings = {"OpenBLAS default threads": None, "OpenBLAS 1 thread": 1}
    for run in contenders.values():  # warm-up
        run(2)
    results = {(s, c): [] for s in settings for c in contenders}
    for _ in range(args.rounds):
        for setting, n in settings.items():
            with (blas_threads(n) if n else contextlib.nullcontext()):
                for name, run in contenders.items():
                    results[setting, name].append(rate(run, args.seconds))

    print("# naive engine vs min-char-rnn-style loop: training chars/s (vanilla RNN, H=100, T=25, Adagrad 0.1)")
    print(machine_line())
    print(f"data: {source}; {args.rounds} rounds of ~{args.seconds:.1f} s per measurement; median (min-max)")
    print()
    ref = "min-char-rnn style, float64, B1"
    rows = []
    for setting in settings:
        for name in contenders:
            ratio = [a / b for a, b in zip(results[setting, name], results[setting, ref])]
            rows.append([setting, name, spread(results[setting, name]),
                         "1" if name == ref else spread(ratio) + "x"])
    print_table(["BLAS", "what", "chars/s", "ratio vs min-char (per round)"], rows)

    run, phases = naive_trainer(data, len(vocab), np.float32)
    run(2)
    with blas_threads(1):
        run(200, split=True)
    total = sum(phases.values())
    print()
    print("naive float32 step, B64 T25 H100, 1 BLAS thread, 200 steps: where the time goes")
    print_table(["phase", "ms/step", "share"],
                [[name, f"{1000 * t / 200:.3f}", f"{100 * t / total:.0f}%"] for name, t in phases.items()])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

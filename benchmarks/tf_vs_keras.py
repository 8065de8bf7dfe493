"""Training throughput of the TensorFlow engines: keras vs a bare Keras loop, tf vs keras, both vs library.

    python benchmarks/tf_vs_keras.py [--rounds 5] [--iters 3] [--threads N] [--no-breakdown]

Every loop: embedding 64, a 2x512 LSTM, a dense head, batch 32, windows of 100, Adam lr 2e-3,
the global gradient norm clipped to 5, the state carried between windows (truncated BPTT),
on tiny shakespeare, in float32, the loss fetched every step.

- charrnn keras / tf: `TFLearner.train_step` (train/tf_step.py) on windows from
  `make_streams`, the way the trainer calls it.
- bare Keras: what a Keras user writes for truncated BPTT: a functional model with the states
  as inputs and outputs, `keras.optimizers.Adam(global_clipnorm=5)`, `tf.GradientTape` in a
  `tf.function`, windows sliced from the batchified text.
- charrnn library: `TorchLearner` on torch.nn.LSTM (oneDNN), for context.

Each round times every loop back to back; the ratios are per round, reported as the median
(min-max). TensorFlow's and torch's thread counts are printed; `--threads N` pins both.
Then, per loop, the forward alone (loss, no gradient) against the whole step: where the
time goes.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

from _common import early_threads, load_text, machine_line, print_table, spread, training_loop

THREADS = early_threads()
if THREADS:
    os.environ["CHARRNN_TF_THREADS"] = os.environ["CHARRNN_TF_INTER_THREADS"] = str(THREADS)

import numpy as np  # noqa: E402

from charrnn.config import ModelConfig  # noqa: E402
from charrnn.data.batching import make_streams  # noqa: E402
from charrnn.data.vocab import Vocab  # noqa: E402
from charrnn.models.tf_common import require_keras, require_tensorflow  # noqa: E402

LAYERS, HIDDEN, EMBED, BATCH, SEQ_LEN, LR, CLIP = 2, 512, 64, 32, 100, 2e-3, 5.0

tf = require_tensorflow("keras")   # charrnn's set-up (threads, quiet logs) serves every TF loop alike
keras = require_keras("keras")


def charrnn_learner(impl: str, vocab_size: int):
    from charrnn.models.keras_engine import KerasModel
    from charrnn.models.tf_engine import TFModel
    from charrnn.train.tf_step import TFLearner

    cfg = ModelConfig(vocab_size=vocab_size, cell="lstm", layers=LAYERS, hidden=HIDDEN, embed=EMBED)
    return TFLearner({"tf": TFModel, "keras": KerasModel}[impl](cfg, seed=0), "adam", LR, 0.0, CLIP)


def library_learner(vocab_size: int):
    import torch

    from charrnn.models import build_model
    from charrnn.train.learners import TorchLearner

    if THREADS:
        torch.set_num_threads(THREADS)
    cfg = ModelConfig(vocab_size=vocab_size, cell="lstm", layers=LAYERS, hidden=HIDDEN, embed=EMBED)
    return TorchLearner(build_model("library", cfg, seed=0), "adam", LR, 0.0, CLIP, torch.device("cpu"))


class BareKeras:
    """The Keras way: the states are model inputs and outputs; one compiled step per window."""

    def __init__(self, data: np.ndarray, vocab_size: int):
        keras.utils.set_random_seed(0)
        x_in = keras.Input((None,), dtype="int32")
        state_in = [keras.Input((HIDDEN,)) for _ in range(2 * LAYERS)]
        x, state_out = keras.layers.Embedding(vocab_size, EMBED)(x_in), []
        for k in range(LAYERS):
            x, h, c = keras.layers.LSTM(HIDDEN, return_sequences=True, return_state=True)(
                x, initial_state=state_in[2 * k:2 * k + 2])
            state_out += [h, c]
        self.model = keras.Model([x_in, *state_in], [keras.layers.Dense(vocab_size)(x), *state_out])
        self.optimizer = keras.optimizers.Adam(learning_rate=LR, global_clipnorm=CLIP)
        self.loss_fn = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
        stream_len = (len(data) - 1) // BATCH
        text = data[:BATCH * stream_len + 1].astype(np.int32)
        self.inputs = text[:-1].reshape(BATCH, stream_len)           # (B, L) batchify
        self.targets = text[1:].reshape(BATCH, stream_len)
        self.windows = stream_len // SEQ_LEN
        self.state, self.k = self.zero(), 0
        self.step = tf.function(self._step)
        self.forward = tf.function(self._forward)

    def zero(self):
        return [tf.zeros((BATCH, HIDDEN)) for _ in range(2 * LAYERS)]

    def _step(self, x, y, states):
        with tf.GradientTape() as tape:
            logits, *new_states = self.model([x, *states], training=True)
            loss = self.loss_fn(y, logits)
        variables = self.model.trainable_variables
        self.optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss, new_states

    def _forward(self, x, y, states):
        logits, *new_states = self.model([x, *states], training=False)
        return self.loss_fn(y, logits), new_states

    def window(self):
        if self.k == self.windows:
            self.state, self.k = self.zero(), 0
        cols = slice(self.k * SEQ_LEN, (self.k + 1) * SEQ_LEN)
        self.k += 1
        return tf.constant(self.inputs[:, cols]), tf.constant(self.targets[:, cols])

    def run(self, iters: int) -> int:
        for _ in range(iters):
            x, y = self.window()
            loss, self.state = self.step(x, y, self.state)
            float(loss)
        return iters * BATCH * SEQ_LEN

    def run_forward(self, iters: int) -> int:
        for _ in range(iters):
            x, y = self.window()
            loss, self.state = self.forward(x, y, self.state)
            float(loss)
        return iters * BATCH * SEQ_LEN


def forward_loop(learner, streams):
    """run(iters): the learner's eval_loss (forward and loss, no gradient) over the same windows."""
    state = {"s": learner.zero_state(streams.batch_size), "k": 0}

    def run(iters: int) -> int:
        for _ in range(iters):
            if state["k"] == streams.num_windows:
                state["s"], state["k"] = learner.zero_state(streams.batch_size), 0
            _, state["s"] = learner.eval_loss(*streams.window(state["k"]), state["s"])
            state["k"] += 1
        return iters * streams.batch_size * streams.seq_len

    return run


def rate(run, iters: int) -> float:
    start = time.perf_counter()
    chars = run(iters)
    return chars / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--iters", type=int, default=3, help="training steps per loop per round")
    parser.add_argument("--threads", type=int, default=None, help="pin TensorFlow's, torch's and BLAS threads")
    parser.add_argument("--no-breakdown", action="store_true", help="skip the forward-vs-step table")
    args = parser.parse_args()

    text, source = load_text()
    vocab = Vocab.from_text(text)
    data = vocab.encode(text)
    streams = make_streams(data, BATCH, SEQ_LEN)
    learners = {"charrnn keras": charrnn_learner("keras", len(vocab)), "charrnn tf": charrnn_learner("tf", len(vocab)),
                "charrnn library": library_learner(len(vocab))}
    bare = BareKeras(data, len(vocab))
    runs = {"bare Keras": bare.run, **{name: training_loop(s, streams) for name, s in learners.items()}}
    for run in runs.values():
        run(2)   # warm-up: tracing, oneDNN's kernels
    results = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, run in runs.items():
            results[name].append(rate(run, args.iters))

    import torch

    print(f"# TF engines: training chars/s (2x{HIDDEN} LSTM, E{EMBED}, B{BATCH} T{SEQ_LEN}, Adam, clip {CLIP:g})")
    print(machine_line())
    print(f"tensorflow {tf.__version__}, keras {keras.__version__}; TF threads intra "
          f"{tf.config.threading.get_intra_op_parallelism_threads()} inter "
          f"{tf.config.threading.get_inter_op_parallelism_threads()}; torch threads {torch.get_num_threads()}")
    print(f"data: {source}; {args.rounds} rounds x {args.iters} steps per loop; median (min-max); "
          "ratios per round")
    print()
    print_table(["loop", "chars/s"], [[name, spread(r)] for name, r in results.items()])
    print()
    pairs = [("charrnn keras", "bare Keras"), ("charrnn tf", "charrnn keras"), ("charrnn keras", "charrnn library"),
             ("charrnn tf", "charrnn library"), ("bare Keras", "charrnn library")]
    print_table(["ratio", "median (min-max)"],
                [[f"{a} / {b}", spread([x / y for x, y in zip(results[a], results[b])]) + "x"] for a, b in pairs])
    if args.no_breakdown:
        return 0

    forwards = {"bare Keras": bare.run_forward,
                **{name: forward_loop(s, streams) for name, s in learners.items()}}
    for run in forwards.values():
        run(1)
    rows = []
    for name in runs:
        fwd = [rate(forwards[name], args.iters) for _ in range(3)]
        step = [rate(runs[name], args.iters) for _ in range(3)]
        fwd_ms = BATCH * SEQ_LEN * 1000 / statistics.median(fwd)
        step_ms = BATCH * SEQ_LEN * 1000 / statistics.median(step)
        rows.append([name, f"{fwd_ms:.0f}", f"{step_ms:.0f}", f"{step_ms - fwd_ms:.0f}",
                     f"{100 * fwd_ms / step_ms:.0f}%"])
    print()
    print("where the time goes, ms per window (medians of 3): the forward and loss alone (eval, no tape) "
          "against the whole training step")
    print_table(["loop", "forward ms", "step ms", "backward + update ms", "forward share"], rows)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

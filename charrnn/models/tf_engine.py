"""The tf engine (`--impl tf`): the seed's section IV in TensorFlow 2, our own weights, no RNN classes.

The seed builds its char-RNN in TensorFlow from weights it makes itself
(`tf.get_variable`), a cell written with `tf.matmul` and `tf.tanh`, a softmax
layer on top, and Adagrad. This is that model in today's TensorFlow:

- the weights are `tf.Variable`s with the canonical names and torch.nn layouts of
  models/base.py (`rnn.weight_ih_l0` is (G*H, E), so the seed's `x @ W_input` is
  `x @ W_ih^T` here), so any engine reads what this one writes;
- `rnn_cell`, `gru_cell` and `lstm_cell` are the cell equations written out
  (GRU gates r, z, n; LSTM gates i, f, g, o, as every engine orders them);
- `rnn_logits` is the seed's softmax layer;
- the seed unrolls a Python loop over time into its graph; TF2's idiom is a loop
  inside the graph (`tf.scan` over the window), so one trace serves any window
  length and batch size. As in the scratch engine, each layer's input
  projection for the whole window is one matmul outside the loop: only
  `h @ W_hh^T` must go step by step;
- stacked layers with inverted dropout after each one (training only), the masks
  drawn from a `tf.random.Generator` whose state goes into resume.safetensors;
- a labelled model adds each position's `label.weight` row (`tf.gather`) to the first
  layer's input projection, as models/base.py defines it.

Inputs: with `--embed 0` the characters go in as `tf.one_hot` vectors, as section IV
feeds them (`--impl tf --embed 0 --cell rnn --layers 1` is its model exactly); with an
embedding table, `tf.nn.embedding_lookup`, as section V. Training (GradientTape inside
one `tf.function` per window, the optimizers) is train/tf_step.py's.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from charrnn.config import ModelConfig
from charrnn.models.base import check_parameters, init_parameters, parameter_shapes
from charrnn.models.tf_common import TFCharModel, require_tensorflow


def rnn_cell(tf, xp_t, state, w_hh, b_hh):
    """Vanilla tanh cell, the seed's `rnn_cell`: h' = tanh(W_ih x + b_ih + W_hh h + b_hh).
    xp_t (B, H) already holds W_ih x + b_ih + b_hh."""
    (h,) = state
    return (tf.tanh(xp_t + tf.matmul(h, w_hh, transpose_b=True)),)


def gru_cell(tf, xp_t, state, w_hh, b_hh):
    """GRU, gates r, z, n; xp_t (B, 3H) holds W_ih x + b_ih.
    n = tanh(W_in x + b_in + r * (W_hn h + b_hn)); h' = (1 - z) * n + z * h."""
    (h,) = state
    hp = tf.matmul(h, w_hh, transpose_b=True) + b_hh              # (B, 3H)
    x_r, x_z, x_n = tf.split(xp_t, 3, axis=1)                      # (B, H) each
    h_r, h_z, h_n = tf.split(hp, 3, axis=1)
    r = tf.sigmoid(x_r + h_r)
    z = tf.sigmoid(x_z + h_z)
    n = tf.tanh(x_n + r * h_n)
    return (n + z * (h - n),)


def lstm_cell(tf, xp_t, state, w_hh, b_hh):
    """LSTM, gates i, f, g, o; xp_t (B, 4H) holds W_ih x + b_ih + b_hh."""
    h, c = state
    gates = xp_t + tf.matmul(h, w_hh, transpose_b=True)           # (B, 4H)
    i, f, g, o = tf.split(gates, 4, axis=1)                        # (B, H) each
    c = tf.sigmoid(f) * c + tf.sigmoid(i) * tf.tanh(g)
    h = tf.sigmoid(o) * tf.tanh(c)
    return h, c


CELLS = {"rnn": rnn_cell, "gru": gru_cell, "lstm": lstm_cell}


def rnn_logits(tf, outputs, w_softmax, b_softmax):
    """The seed's softmax layer: outputs (..., H) -> logits (..., V) = outputs W^T + b."""
    flat = tf.reshape(outputs, [-1, tf.shape(outputs)[-1]])
    logits = tf.matmul(flat, w_softmax, transpose_b=True) + b_softmax
    return tf.reshape(logits, tf.concat([tf.shape(outputs)[:-1], [-1]], 0))


def run_layer(tf, cell, xp, state0, w_hh, b_hh):
    """Step `cell` through a window: xp (T, B, G*H), state0 tuple of (B, H) -> (outputs (T, B, H), final state).
    The truncated-BPTT loop of the seed, inside the graph: the final state is the last step's carry."""
    carried = tf.scan(lambda carry, xp_t: cell(tf, xp_t, carry, w_hh, b_hh), xp, initializer=tuple(state0))
    return carried[0], tuple(s[-1] for s in carried)


class TFModel(TFCharModel):
    """`--impl tf`: the CharModel interface (models/base.py) on TensorFlow variables."""

    impl = "tf"
    optimizer_layout = "canonical"   # the optimizer's slots carry canonical names, as the naive engine's do

    def __init__(self, config: ModelConfig, seed: int = 0, params=None, dtype="float32", device: str = "/CPU:0"):
        tf = self.tf = require_tensorflow("tf")
        self.config = config
        self.tf_dtype = tf.as_dtype(np.dtype(dtype).name)
        self.dtype = np.dtype(self.tf_dtype.as_numpy_dtype)
        self.device = device
        self.training = True
        values = init_parameters(config, seed) if params is None else params
        check_parameters(config, values, "weights")
        with tf.device(device):
            self.variables: Dict[str, object] = {
                name: tf.Variable(np.asarray(values[name], self.dtype), name=name.replace(".", "/"))
                for name in parameter_shapes(config)}
            self.rng = tf.random.Generator.from_seed(seed)
        self._compile_forward()

    # ---- the CharModel interface: train/eval, initial_state and forward come from TFCharModel ----
    def get_parameters(self) -> Dict[str, np.ndarray]:
        return {name: v.numpy().astype(np.float32) for name, v in self.variables.items()}

    def set_parameters(self, params: Dict[str, np.ndarray]) -> None:
        check_parameters(self.config, params, "weights")
        for name, v in self.variables.items():
            v.assign(np.asarray(params[name], self.dtype))

    # ---- what the trainer (train/tf_step.py) uses ---------------------------
    def call(self, x, state, training: bool, labels=None):
        """Traceable forward: x (B, T) int32, state tuple of (L, B, H), labels (B, T) int32 for a labelled model
        -> (logits (B, T, V), new state)."""
        tf, cfg, p = self.tf, self.config, self.variables
        if cfg.embed:   # section V's tf.nn.embedding_lookup
            inputs = tf.transpose(tf.nn.embedding_lookup(p["embed.weight"], x), [1, 0, 2])   # (T, B, E) time-major
        else:           # embed 0: section IV's tf.one_hot, straight into W_ih
            inputs = tf.transpose(tf.one_hot(x, cfg.vocab_size, dtype=self.tf_dtype), [1, 0, 2])  # (T, B, V)
        cell = CELLS[cfg.cell]
        finals = []
        for k in range(cfg.layers):
            w_ih, w_hh = p[f"rnn.weight_ih_l{k}"], p[f"rnn.weight_hh_l{k}"]
            b_ih, b_hh = p[f"rnn.bias_ih_l{k}"], p[f"rnn.bias_hh_l{k}"]
            # (T, B, in) @ W_ih^T for the whole window at once; both biases here except GRU's b_hn,
            # which r scales, so GRU keeps b_hh inside the step
            xp = tf.tensordot(inputs, w_ih, [[2], [1]])                                   # (T, B, G*H)
            if k == 0 and labels is not None:   # the label's row, on the input side
                xp = xp + tf.gather(p["label.weight"], tf.transpose(labels))             # (T, B, G*H)
            xp = xp + (b_ih if cfg.cell == "gru" else b_ih + b_hh)
            inputs, final = run_layer(tf, cell, xp, tuple(s[k] for s in state), w_hh, b_hh)   # (T, B, H)
            finals.append(final)
            if training and cfg.dropout > 0:
                inputs = self.dropout(inputs)
        logits = rnn_logits(tf, tf.transpose(inputs, [1, 0, 2]), p["head.weight"], p["head.bias"])  # (B, T, V)
        return logits, tuple(tf.stack(s) for s in zip(*finals))

    def dropout(self, x):
        """Inverted dropout: keep each unit with probability 1 - p and scale it by 1 / (1 - p)."""
        tf, rate = self.tf, self.config.dropout
        keep = self.rng.uniform(tf.shape(x), dtype=x.dtype) >= rate
        return x * tf.cast(keep, x.dtype) * (1.0 / (1.0 - rate))

    def training_variables(self):
        """[(canonical name, tf.Variable)] in the canonical order."""
        return list(self.variables.items())

    def rng_variables(self) -> Dict[str, object]:
        return {"tf_generator": self.rng.state}

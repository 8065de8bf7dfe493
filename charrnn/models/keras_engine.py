"""The keras engine (`--impl keras`): the seed's section V in Keras 3 on TensorFlow.

The seed's section V builds its model from TensorFlow's RNN library:
`tf.nn.embedding_lookup`, `BasicRNNCell`/`GRUCell`/`BasicLSTMCell` wrapped in
`DropoutWrapper` and stacked by `MultiRNNCell`, run over the window by
`dynamic_rnn` from an initial state it is given, and a softmax layer. In
today's TensorFlow those are Keras layers:

    seed (TF1)                          here (Keras 3)
    tf.nn.embedding_lookup              keras.layers.Embedding (--embed 0: one-hot inputs, none)
    BasicRNNCell / GRUCell /            keras.layers.SimpleRNN / GRU / LSTM, one per layer,
      BasicLSTMCell + MultiRNNCell        return_sequences=True, return_state=True
    DropoutWrapper(output_keep_prob)    keras.layers.Dropout after each recurrent layer
    dynamic_rnn(initial_state=...)      each layer called with initial_state=, its final state returned
    rnn_softmax (matmul + b)            keras.layers.Dense

The state goes in and comes out of every call, so truncated BPTT stays in the
training loop, as in every engine.

Keras keeps the same numbers in other layouts; the conversion to and from the
canonical names (models/base.py) is exact:

- kernels are transposes: `kernel` = W_ih^T (in, G*H), `recurrent_kernel` = W_hh^T (H, G*H);
  `Dense.kernel` = head.weight^T;
- LSTM gates: Keras orders them i, f, c, o: torch's i, f, g, o, unchanged;
- GRU (reset_after=True, torch's form of the cell) orders its gates z, r, h
  against torch's r, z, n, and keeps two bias rows, (2, 3H) = [input; recurrent]:
  b_ih and b_hh each reordered;
- SimpleRNN and LSTM have one bias, b_ih + b_hh. Reading weights back from Keras
  cannot split that sum: the whole bias goes into `bias_ih` and `bias_hh` is zeros
  (the same model: every engine adds the two). A run trained with this engine
  therefore saves `rnn.bias_hh_l*` as zeros;
- a labelled model: a Keras RNN layer has no place for a per-step bias, so the first
  layer reads one_hot(label, N) after the character's vector, and its kernel's last N
  rows are label.weight (N, G*H), gate blocks reordered like the rest of the kernel.
"""
from __future__ import annotations

from typing import Dict

import numpy as np

from charrnn.config import ModelConfig
from charrnn.models.base import check_parameters, init_parameters, parameter_shapes, state_size
from charrnn.models.tf_common import TFCharModel, require_keras, require_tensorflow

# Keras' GRU gate blocks z, r, h are torch's blocks 1, 0, 2 (r, z, n); the permutation is its own inverse.
GRU_ORDER = (1, 0, 2)


def _blocks(w: np.ndarray, cfg: ModelConfig) -> np.ndarray:
    """Reorder the gate blocks along axis 0 (torch's rows) between torch's order and Keras'."""
    if cfg.cell != "gru":
        return w
    H = cfg.hidden
    return np.concatenate([w[i * H:(i + 1) * H] for i in GRU_ORDER], axis=0)


def _first_inputs(cfg: ModelConfig) -> int:
    """The width of the first layer's character input: E, or V with one-hot characters (embed 0)."""
    return cfg.embed or cfg.vocab_size


def keras_keys(cfg: ModelConfig):
    """The Keras weights' keys (layer.weight), in the order `KerasModel.training_variables` gives them."""
    keys = ["embed.embeddings"] if cfg.embed else []      # embed 0: one-hot inputs, no Embedding layer
    for k in range(cfg.layers):
        keys += [f"rnn_l{k}.kernel", f"rnn_l{k}.recurrent_kernel", f"rnn_l{k}.bias"]
    return keys + ["head.kernel", "head.bias"]


def canonical_to_keras(cfg: ModelConfig, params: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Canonical parameters -> Keras weights (see the module docstring)."""
    out = {"embed.embeddings": np.asarray(params["embed.weight"])} if cfg.embed else {}
    for k in range(cfg.layers):
        w_ih, w_hh = np.asarray(params[f"rnn.weight_ih_l{k}"]), np.asarray(params[f"rnn.weight_hh_l{k}"])
        b_ih, b_hh = np.asarray(params[f"rnn.bias_ih_l{k}"]), np.asarray(params[f"rnn.bias_hh_l{k}"])
        if k == 0 and cfg.labels:                                          # the one-hot label's columns
            w_ih = np.concatenate([w_ih, np.asarray(params["label.weight"]).T], axis=1)   # (G*H, in + N)
        out[f"rnn_l{k}.kernel"] = _blocks(w_ih, cfg).T.copy()             # (in, G*H)
        out[f"rnn_l{k}.recurrent_kernel"] = _blocks(w_hh, cfg).T.copy()   # (H, G*H)
        if cfg.cell == "gru":
            out[f"rnn_l{k}.bias"] = np.stack([_blocks(b_ih, cfg), _blocks(b_hh, cfg)])   # (2, 3H)
        else:
            out[f"rnn_l{k}.bias"] = b_ih + b_hh                          # (G*H,)
    out["head.kernel"] = np.asarray(params["head.weight"]).T.copy()        # (H, V)
    out["head.bias"] = np.asarray(params["head.bias"])
    return out


def keras_to_canonical(cfg: ModelConfig, weights: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Keras weights -> canonical parameters; a single Keras bias goes whole into bias_ih, bias_hh is zeros."""
    out = {"embed.weight": np.asarray(weights["embed.embeddings"])} if cfg.embed else {}
    for k in range(cfg.layers):
        out[f"rnn.weight_ih_l{k}"] = _blocks(np.asarray(weights[f"rnn_l{k}.kernel"]).T, cfg).copy()
        if k == 0 and cfg.labels:                                          # (G*H, in + N): split the labels off
            joined, inputs = out["rnn.weight_ih_l0"], _first_inputs(cfg)
            out["rnn.weight_ih_l0"], out["label.weight"] = joined[:, :inputs].copy(), joined[:, inputs:].T.copy()
        out[f"rnn.weight_hh_l{k}"] = _blocks(np.asarray(weights[f"rnn_l{k}.recurrent_kernel"]).T, cfg).copy()
        bias = np.asarray(weights[f"rnn_l{k}.bias"])
        if cfg.cell == "gru":
            out[f"rnn.bias_ih_l{k}"], out[f"rnn.bias_hh_l{k}"] = _blocks(bias[0], cfg), _blocks(bias[1], cfg)
        else:
            out[f"rnn.bias_ih_l{k}"], out[f"rnn.bias_hh_l{k}"] = bias.copy(), np.zeros_like(bias)
    out["head.weight"] = np.asarray(weights["head.kernel"]).T.copy()
    out["head.bias"] = np.asarray(weights["head.bias"])
    return {name: out[name] for name in parameter_shapes(cfg)}


def keras_gradients_to_canonical(cfg: ModelConfig, grads: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
    """Gradients with respect to the Keras weights -> gradients with respect to the canonical parameters.

    The chain rule through `canonical_to_keras`: the same moves as `keras_to_canonical`, except that
    a summed bias (SimpleRNN, LSTM) passes its gradient to both bias_ih and bias_hh.
    """
    out = keras_to_canonical(cfg, grads)
    if cfg.cell != "gru":
        for k in range(cfg.layers):
            out[f"rnn.bias_hh_l{k}"] = out[f"rnn.bias_ih_l{k}"].copy()
    return out


def _network(keras, tf, cfg: ModelConfig, dtype: str, seed: int):
    """The Keras model: Embedding -> [RNN layer -> Dropout] x L -> Dense, state in and state out."""
    rnn_class = {"rnn": keras.layers.SimpleRNN, "gru": keras.layers.GRU, "lstm": keras.layers.LSTM}[cfg.cell]
    n_state = state_size(cfg.cell)

    class CharNet(keras.Model):
        def __init__(self):
            super().__init__(name="charrnn", dtype=dtype)
            self.embed = (keras.layers.Embedding(cfg.vocab_size, cfg.embed, dtype=dtype, name="embed")
                          if cfg.embed else None)                 # embed 0: one-hot characters instead
            extra = {"reset_after": True} if cfg.cell == "gru" else {}
            self.rnns = [rnn_class(cfg.hidden, return_sequences=True, return_state=True, dtype=dtype,
                                   name=f"rnn_l{k}", **extra) for k in range(cfg.layers)]
            # the seed's DropoutWrapper(output_keep_prob=1 - p): dropout on each layer's outputs
            self.drops = [keras.layers.Dropout(cfg.dropout, seed=seed * 1009 + k, dtype=dtype, name=f"drop_l{k}")
                          for k in range(cfg.layers)]
            self.head = keras.layers.Dense(cfg.vocab_size, dtype=dtype, name="head")

        def call(self, inputs, states, training=False, labels=None):
            if self.embed is not None:
                x = self.embed(inputs)                                   # (B, T, E)
            else:
                x = keras.ops.one_hot(inputs, cfg.vocab_size, dtype=dtype)   # (B, T, V)
            if labels is not None:                                       # the kernel's label rows pick its row
                x = keras.ops.concatenate([x, keras.ops.one_hot(labels, len(cfg.labels), dtype=dtype)], -1)
            finals = []
            for k in range(cfg.layers):
                x, *final = self.rnns[k](x, initial_state=[s[k] for s in states], training=training)  # (B, T, H)
                finals.append(final)
                x = self.drops[k](x, training=training)
            logits = self.head(x)                                        # (B, T, V)
            return logits, tuple(tf.stack([f[i] for f in finals]) for i in range(n_state))

    return CharNet()


class KerasModel(TFCharModel):
    """`--impl keras`: the CharModel interface (models/base.py) on a Keras model."""

    impl = "keras"
    optimizer_layout = "keras"   # the optimizer's slots follow Keras' weights (a summed bias has one slot)

    def __init__(self, config: ModelConfig, seed: int = 0, params=None, dtype="float32", device: str = "/CPU:0"):
        keras = require_keras("keras")
        tf = self.tf = require_tensorflow("keras")
        self.config = config
        self.tf_dtype = tf.as_dtype(np.dtype(dtype).name)
        self.dtype = np.dtype(self.tf_dtype.as_numpy_dtype)
        self.device = device
        self.training = True
        self.bias_hh: Dict[str, np.ndarray] = {}   # b_hh of each summed bias, as set_parameters last saw it
        with tf.device(device):
            self.net = _network(keras, tf, config, self.dtype.name, seed)
            labels = np.zeros((1, 1), np.int32) if config.labels else None
            self.net(np.zeros((1, 1), np.int32), self.initial_state(1), labels=labels)   # builds the weights
        layers = {"embed": self.net.embed, "head": self.net.head,
                  **{f"rnn_l{k}": layer.cell for k, layer in enumerate(self.net.rnns)}}
        self.weights = {key: getattr(layers[key.split(".")[0]], key.split(".")[1]) for key in keras_keys(config)}
        self.set_parameters(init_parameters(config, seed) if params is None else params)
        self._compile_forward()

    # ---- the CharModel interface: train/eval, initial_state and forward come from TFCharModel ----
    def get_keras_weights(self) -> Dict[str, np.ndarray]:
        return {key: np.asarray(w.numpy()) for key, w in self.weights.items()}

    def set_keras_weights(self, weights: Dict[str, np.ndarray]) -> None:
        for key, w in self.weights.items():
            value = np.asarray(weights[key], self.dtype)
            if tuple(value.shape) != tuple(w.shape):
                raise ValueError(f"Keras weight {key} has shape {list(value.shape)}, expected {list(w.shape)}")
            w.assign(value)

    def get_parameters(self) -> Dict[str, np.ndarray]:
        return {k: v.astype(np.float32) for k, v in keras_to_canonical(self.config, self.get_keras_weights()).items()}

    def set_parameters(self, params: Dict[str, np.ndarray]) -> None:
        check_parameters(self.config, params, "weights")
        cast = {k: np.asarray(v, self.dtype) for k, v in params.items()}
        self.set_keras_weights(canonical_to_keras(self.config, cast))
        if self.config.cell != "gru":   # one Keras bias holds the sum; a learner made now keeps b_hh apart
            self.bias_hh = {f"rnn_l{k}.bias": cast[f"rnn.bias_hh_l{k}"] for k in range(self.config.layers)}

    # ---- what the trainer (train/tf_step.py) uses ---------------------------
    def call(self, x, state, training: bool, labels=None):
        """Traceable forward: x (B, T) int32, state tuple of (L, B, H), labels (B, T) int32 for a labelled model
        -> (logits (B, T, V), new state)."""
        return self.net(x, state, training=training, labels=labels)

    def training_variables(self):
        """[(Keras key, tf.Variable, bias_hh)] in `keras_keys` order; bias_hh is b_hh's value (as last set) for a
        bias that holds b_ih + b_hh (SimpleRNN, LSTM), else None: the optimizer keeps the two halves apart and
        moves each as torch does (train/tf_step.py)."""
        return [(key, w.value, self.bias_hh.get(key)) for key, w in self.weights.items()]

    def rng_variables(self) -> Dict[str, object]:
        """The Dropout layers' seed generators (one per layer when dropout > 0)."""
        return {f"keras_dropout_l{k}": d.seed_generator.state.value
                for k, d in enumerate(self.net.drops) if getattr(d, "seed_generator", None) is not None}

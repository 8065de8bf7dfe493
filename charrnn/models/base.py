"""What every engine shares: the interface, the canonical parameters, and their initial values.

Shape letters, used in comments across charrnn:
    B batch (streams)   T time (window length)   V vocabulary   E embedding
    H hidden units      L layers                 G gates (rnn 1, gru 3, lstm 4)

Every engine implements `CharModel`:
    initial_state(batch_size) -> State
    forward(inputs (B, T) ints, state, labels=None) -> (logits (B, T, V), new State)
    get_parameters() -> {canonical name: NumPy array}; set_parameters(same)
State is a tuple of arrays (or tensors) of shape (L, B, H): `(h,)` for rnn and
gru, `(h, c)` for lstm, the layout torch.nn uses. Modules keep no state: it
goes in and comes out, so truncated BPTT is visible in the training loop.

Canonical parameter names and layouts are exactly torch.nn's (see
`parameter_shapes`), so the library engine loads them with no conversion.
GRU gates are ordered r, z, n with n = tanh(W_in x + b_in + r * (W_hn h + b_hn));
LSTM gates are ordered i, f, g, o.

A labelled model (config.labels, N names) conditions on a label per position: `labels` is
(B, T) ints (a stream may cross from one document into the next) or (B,) (one per stream).
`label.weight` (N, G*H) is each label's embedding already projected to the first layer's
gates, added on its input side at every step:
    layer 0's input pre-activation = W_ih_l0 x_t + b_ih_l0 + label.weight[label_t]
(GRU: n = tanh(W_in x + b_in + lab_n + r * (W_hn h + b_hn))). Fixing one label is thus
exactly a change of b_ih_l0 (`fold_label`), which gives an ordinary unlabelled model.

A tied model (config.tied, E = H) uses `embed.weight` as its head's weight too. Its canonical
parameters still hold `head.weight`, a copy of `embed.weight`, so every engine and runtime that
only runs a model (sampling, eval, int8, ONNX, the web page) reads it as any other; the engines that
train one (the PyTorch ones) keep a single weight for both (torch_common.TorchCharModel).
"""
from __future__ import annotations

import dataclasses
from typing import Any, Dict, Optional, Protocol, Tuple

import numpy as np

from charrnn.config import ModelConfig
from charrnn.errors import UserError

State = Tuple[Any, ...]


class CharModel(Protocol):
    """What every engine is: training, sampling and evaluation never ask which one they hold."""

    config: ModelConfig
    backend: str   # "numpy", "torch", "tensorflow" or "onnx": which array type its forward takes and returns

    def initial_state(self, batch_size: int) -> State: ...

    def forward(self, inputs: Any, state: State, labels: Any = None) -> Tuple[Any, State]: ...

    def get_parameters(self) -> Dict[str, np.ndarray]: ...

    def set_parameters(self, params: Dict[str, np.ndarray]) -> None: ...


def state_size(cell: str) -> int:
    """How many (L, B, H) arrays make up the state of this cell."""
    return 2 if cell == "lstm" else 1


def parameter_shapes(cfg: ModelConfig) -> Dict[str, Tuple[int, ...]]:
    """Canonical name -> shape, in a fixed order (the order engines and optimizers use).

    With embed 0 there is no embedding table: characters enter the first layer as one-hot
    vectors, so `rnn.weight_ih_l0` is (G*H, V) and `embed.weight` does not exist (torch.nn's
    nn.RNN/GRU/LSTM fed one-hot inputs has exactly these parameters).

    A labelled model adds `label.weight` (N, G*H) last, so every other parameter keeps its
    place and, from the same seed, its initial value.
    """
    V, E, H, G = cfg.vocab_size, cfg.embed, cfg.hidden, cfg.gates
    shapes: Dict[str, Tuple[int, ...]] = {"embed.weight": (V, E)} if E else {}
    for k in range(cfg.layers):
        inp = (E or V) if k == 0 else H
        shapes[f"rnn.weight_ih_l{k}"] = (G * H, inp)
        shapes[f"rnn.weight_hh_l{k}"] = (G * H, H)
        shapes[f"rnn.bias_ih_l{k}"] = (G * H,)
        shapes[f"rnn.bias_hh_l{k}"] = (G * H,)
    shapes["head.weight"] = (V, H)
    shapes["head.bias"] = (V,)
    if cfg.labels:
        shapes["label.weight"] = (len(cfg.labels), G * H)
    return shapes


def init_parameters(cfg: ModelConfig, seed: int, dtype=np.float32, char_counts: Optional[np.ndarray] = None
                    ) -> Dict[str, np.ndarray]:
    """Initial weights, the same for every engine given the same seed (and counts).

    torch.nn's scheme: recurrent weights and biases U(-1/sqrt(H), 1/sqrt(H)),
    the head U(-1/sqrt(H), 1/sqrt(H)), the embedding N(0, 1). Generated with
    NumPy so the naive engine needs no torch and all engines start equal. `label.weight`
    starts at zeros, drawing nothing: a labelled model starts as the unlabelled one with
    the same seed, and each row then learns from its label's documents.

    With `char_counts` (V,) (how often each character occurs in the training text) the head's
    bias starts at `unigram_bias(char_counts)` instead: the model's first prediction is then how
    common each character is, which the head otherwise learns a learning rate per step per row
    (thousands of rows, each several nats from zero, in a CJK text). Every other weight is drawn
    as before, so the same seed gives the same weights either way but for that bias.
    """
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(cfg.hidden)
    params = {}
    for name, shape in parameter_shapes(cfg).items():
        if name == "embed.weight":
            params[name] = rng.standard_normal(shape)
        elif name == "label.weight":
            params[name] = np.zeros(shape)
        else:
            params[name] = rng.uniform(-bound, bound, size=shape)
    if char_counts is not None:
        params["head.bias"] = unigram_bias(char_counts)
    if cfg.tied:   # drawn all the same, so that every other weight is what the untied model's seed gives
        params["head.weight"] = params["embed.weight"].copy()
    return {k: v.astype(dtype) for k, v in params.items()}


def unigram_bias(char_counts: np.ndarray) -> np.ndarray:
    """log P(c) of each character, from its count: (count + 1/2) / (total + V/2), so that a character the
    training text lacks (one only validation has, U+FFFD kept for eval) keeps a finite, small probability."""
    counts = np.asarray(char_counts, dtype=np.float64) + 0.5
    return np.log(counts / counts.sum())


def check_parameters(cfg: ModelConfig, params: Dict[str, np.ndarray], where: str) -> None:
    """Raise UserError unless `params` has exactly the canonical names and shapes for `cfg` (and, tied, one table
    under both names: every engine and runtime reads head.weight, so an edited copy is refused wherever it enters)."""
    expected = parameter_shapes(cfg)
    missing = sorted(set(expected) - set(params))
    extra = sorted(set(params) - set(expected))
    if missing or extra:
        detail = (f"missing {', '.join(missing[:4])}" if missing else "") + (
            f"{'; ' if missing else ''}unexpected {', '.join(extra[:4])}" if extra else "")
        raise UserError(f"{where} does not match config.json ({detail}); the run directory is damaged or mixed up")
    for name, shape in expected.items():
        got = tuple(params[name].shape)
        if got != shape:
            raise UserError(f"{where}: {name} has shape {list(got)}, config.json implies {list(shape)}; the run "
                            f"directory is mixed up")
        if params[name].dtype.kind != "f":
            raise UserError(f"{where}: {name} has dtype {params[name].dtype}, expected floating point; the file is "
                            f"damaged")
        if not np.all(np.isfinite(params[name])):
            raise UserError(f"{where}: {name} holds NaN or infinite values; use another checkpoint (e.g. "
                            f"best.safetensors)")
    if cfg.tied and not np.array_equal(params["head.weight"], params["embed.weight"]):
        raise UserError(f"{where}: this tied model's head.weight differs from its embed.weight (config.json says "
                        "--tied); the weights are damaged or belong to another run")


# ---- labels ---------------------------------------------------------------------------------------

def fold_label(cfg: ModelConfig, params: Dict[str, np.ndarray], index: int
               ) -> Tuple[ModelConfig, Dict[str, np.ndarray]]:
    """Fix label `index` for good: (the config without labels, parameters without label.weight).

    The label's row is a constant added to layer 0's input side at every step, so it goes into
    rnn.bias_ih_l0 exactly: the result is an ordinary unlabelled model (any runtime runs it) that
    computes what the labelled model computes with that label at every position.
    """
    if not cfg.labels:
        raise ValueError("fold_label needs a labelled model; this one has no labels")
    if not 0 <= index < len(cfg.labels):
        raise ValueError(f"label index {index} is outside 0..{len(cfg.labels) - 1}")
    folded = dataclasses.replace(cfg, labels=())
    out = {name: params[name] for name in parameter_shapes(folded)}
    bias = np.asarray(params["rnn.bias_ih_l0"])
    out["rnn.bias_ih_l0"] = (bias + np.asarray(params["label.weight"])[index]).astype(bias.dtype)  # (G*H,)
    return folded, out


def check_labels(cfg: ModelConfig, labels: Any, inputs_shape: Tuple[int, ...]) -> None:
    """ValueError unless `labels` fits a forward of inputs (B, T): None for an unlabelled model, (B, T) or (B,)
    ints for a labelled one. Shapes only (NumPy, torch or tf arrays), plus the values' range for a NumPy array:
    callers turn names into indices with infer/labels.check_label, so a wrong value here is a bug, not a user's
    mistake."""
    if not cfg.labels:
        if labels is not None:
            raise ValueError("this model has no labels; call forward without labels")
        return
    if labels is None:
        raise ValueError(f"this model is labelled ({len(cfg.labels)} labels); forward needs labels (B, T) or (B,)")
    shape = tuple(int(n) for n in labels.shape)
    if shape not in (tuple(inputs_shape), tuple(inputs_shape[:1])):
        raise ValueError(f"labels have shape {list(shape)}; expected (B, T) = {list(inputs_shape)} or (B,)")
    if isinstance(labels, np.ndarray) and labels.size:
        if labels.dtype.kind not in "iu" or labels.min() < 0 or labels.max() >= len(cfg.labels):
            raise ValueError(f"labels must be integers in 0..{len(cfg.labels) - 1}")

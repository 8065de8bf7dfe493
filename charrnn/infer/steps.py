"""Fast inference one character at a time: the fused step behind sampling with the naive engine.

Generating text feeds one character per step, so a step costs one read of every
weight (a matrix-vector product per layer at batch 1) plus Python's per-call
overhead. `NaiveModel.forward` is built for windows (time loops, arenas, stacked
states); `NumpyStep` is built once from the canonical parameters and then does,
per step, into preallocated buffers:

    layer 0:  a = h0 @ W_hh0^T + table[char]       table (V, G*H) = embed @ W_ih0^T + b_ih0 (+ b_hh0)
    layer k:  a = [h(k-1), hk] @ [W_ih; W_hh]^T + b  one matmul (rnn, lstm); gru needs two, as r
                                                   scales W_hn h + b_hn but not W_in x + b_in
    head:     logits = h(L-1) @ W_head^T + b_head

The hidden states of all layers sit side by side in one buffer (B, L*H), so layer
k's input [h(k-1) new, hk old] is a contiguous column range: no copies between
layers. Sigmoids are 0.5 * (1 + tanh(a / 2)) with the 1/2 folded into their
weight columns (exact: a power of two), so one tanh covers all of an LSTM's gates;
LSTM columns are reordered i, f, o, g so the sigmoid gates are contiguous.

At batch 1 a step is bound by memory bandwidth, not arithmetic: every character reads
every layer weight once (docs/performance.md has the figures). quantize="int8" keeps the
layer weights in int8 (linear.QuantLinear), a quarter of the bytes, at a cost in accuracy
that `charrnn eval --quantize int8` measures; the table and the head stay in float. That
NumPy int8 step is the reference (and the fallback) of native.NativeStep, the same numbers
in compiled C, which is what --quantize int8 runs where a C compiler is found.
`fused_weights` prepares the weights for both.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Dict, List, Optional, Protocol, Tuple

import numpy as np

from charrnn.config import ModelConfig
from charrnn.infer.linear import FloatLinear, QuantLinear, tanh_approx
from charrnn.models.base import State


@dataclass
class FusedWeights:
    """A model's weights in the fused step's layout, float64; one (w (n_in, n_out), b (1, n_out) or None)
    pair per matmul. xh: rnn and lstm, per layer ([h(k-1), hk] -> G*H; layer 0: h0 only, its input side
    and biases being in the table). gru keeps x (k > 0: h(k-1) -> 3H) and hh (hk -> 3H) apart."""

    table: np.ndarray                 # (V, G*H) embed @ W_ih0^T (W_ih0^T with embed 0) + biases, per character
    xh: List[Optional[Tuple[np.ndarray, Optional[np.ndarray]]]]
    x: List[Optional[Tuple[np.ndarray, Optional[np.ndarray]]]]
    hh: List[Optional[Tuple[np.ndarray, Optional[np.ndarray]]]]
    head: Tuple[np.ndarray, np.ndarray]  # (H, V), (1, V)


def fused_weights(config: ModelConfig, params: Dict[str, np.ndarray]) -> FusedWeights:
    """Canonical parameters -> FusedWeights: gate columns reordered, sigmoid columns halved, biases folded.

    An unlabelled model only: a labelled one is stepped under one label, folded in first (models.base.fold_label,
    as Predictor does), so that no step ever runs with label.weight left out."""
    cfg = config
    if cfg.labels:
        raise ValueError("fold the label in first (models.base.fold_label): this model was trained with labels")
    p = {name: np.asarray(value, dtype=np.float64) for name, value in params.items()}
    order, scale, fold_hh = _gate_layout(cfg.cell, cfg.hidden)

    def cols(w):  # (G*H, n) torch layout -> (n, G*H) fused column order, sigmoid columns halved
        return w[order].T * scale

    def bias(b):
        return (b[order] * scale)[None]                            # (1, G*H)

    b_ih0, b_hh0 = p["rnn.bias_ih_l0"], p["rnn.bias_hh_l0"]
    w_ih0_t = p["rnn.weight_ih_l0"].T                               # embed 0: one-hot inputs, W_ih0^T is the table
    inputs0 = p["embed.weight"] @ w_ih0_t if cfg.embed else w_ih0_t  # (V, G*H)
    table = inputs0 + b_ih0 + (b_hh0 if fold_hh else 0.0)
    weights = FusedWeights(table[:, order] * scale, [], [], [], (p["head.weight"].T, p["head.bias"][None]))
    for k in range(cfg.layers):
        w_ih, w_hh = p[f"rnn.weight_ih_l{k}"], p[f"rnn.weight_hh_l{k}"]
        b_ih, b_hh = p[f"rnn.bias_ih_l{k}"], p[f"rnn.bias_hh_l{k}"]
        if fold_hh:  # both sides add up before the nonlinearity: one matmul per layer
            weights.xh.append((cols(w_hh), None) if k == 0 else (np.vstack([cols(w_ih), cols(w_hh)]),
                                                                 bias(b_ih + b_hh)))
        else:        # gru: r scales W_hn h + b_hn but not W_in x + b_in
            weights.x.append(None if k == 0 else (cols(w_ih), bias(b_ih)))
            weights.hh.append((cols(w_hh), bias(b_hh)))
    return weights


class Step(Protocol):
    """One character at a time for B rows, the state held inside: what generation and evaluation drive.

    Implementations: NumpyStep (float or int8, NumPy), native.NativeStep (int8, compiled C) and
    predictor.ModelStep (any engine's own forward, e.g. torch.nn at T = 1).
    """

    batch_size: int

    def set_state(self, state: State) -> None:
        """Copy a state (tuple of (L, B, H) arrays) in."""

    def get_state(self) -> State:
        """A copy of the state held now, as NumPy arrays."""

    def step(self, chars: np.ndarray) -> np.ndarray:
        """chars (B,) ints -> logits (B, V), valid until the next call."""

    def feed(self, indices: np.ndarray) -> np.ndarray:
        """indices (B, T) -> logits (B, T, V) float64, the state carried inside."""


class StepState:
    """The state buffers of a one-character-at-a-time step, and moving states in and out of them.

    h (B, L*H): layer k's h in columns [kH, (k+1)H), so that layer k's input [h(k-1), hk]
    is one contiguous column range; c (L, B, H) for lstm.
    """

    def __init__(self, config: ModelConfig, batch_size: int, dtype):
        L, H, B = config.layers, config.hidden, batch_size
        self.config, self.batch_size, self.dtype = config, batch_size, np.dtype(dtype)
        self.h = np.zeros((B, L * H), self.dtype)
        self.c = np.zeros((L, B, H), self.dtype) if config.cell == "lstm" else None

    def set_state(self, state: State) -> None:
        """Copy a state (tuple of (L, B, H) arrays) in."""
        L, B, H = self.config.layers, self.batch_size, self.config.hidden
        np.copyto(self.h.reshape(B, L, H), np.asarray(state[0]).transpose(1, 0, 2), casting="unsafe")
        if self.c is not None:
            np.copyto(self.c, state[1], casting="unsafe")

    def get_state(self) -> State:
        """A copy of the state, as a tuple of new (L, B, H) arrays."""
        L, B, H = self.config.layers, self.batch_size, self.config.hidden
        h = self.h.reshape(B, L, H).transpose(1, 0, 2).copy()  # not ascontiguousarray: a view when B == 1
        return (h,) if self.c is None else (h, self.c.copy())

    @classmethod
    def sharing(cls, weights, batch_size: int):
        """A step over weights prepared once (NumpyWeights, native.NativeWeights), with buffers of its own."""
        step = cls.__new__(cls)
        step._setup(weights, batch_size)
        return step

    def _setup(self, weights, batch_size: int) -> None:
        raise NotImplementedError

    def step(self, chars) -> np.ndarray:
        raise NotImplementedError

    def feed(self, indices: np.ndarray) -> np.ndarray:
        """indices (B, T) -> logits (B, T, V) float64, one step at a time, the state carried inside."""
        B, T = np.shape(indices)
        logits = np.empty((B, T, self.config.vocab_size))
        for t in range(T):
            logits[:, t] = self.step(indices[:, t])
        return logits


class NumpyWeights:
    """A model's weights prepared once for NumpyStep: read-only, shared by every step made from them."""

    @classmethod
    def from_model(cls, model, quantize: Optional[str] = None) -> "NumpyWeights":
        return cls(model.config, model.get_parameters(), cls.model_dtype(model), quantize)

    @staticmethod
    def model_dtype(model) -> np.dtype:
        """The NumPy engine's dtype (float32 or float64); float32 for every other engine."""
        dtype = getattr(model, "dtype", np.float32)
        return dtype if isinstance(dtype, np.dtype) else np.dtype(np.float32)

    def __init__(self, config: ModelConfig, params: Dict[str, np.ndarray], dtype=np.float32,
                 quantize: Optional[str] = None):
        self.config = config
        self.dtype = np.dtype(np.float32 if quantize else dtype)  # int8 weights: float64 buys nothing
        fused = fused_weights(config, params)
        as_weights = lambda a: None if a is None else np.ascontiguousarray(a, dtype=self.dtype)
        self.table = as_weights(fused.table)                      # (V, G*H)
        linear = _linear_class(quantize)
        build = lambda wb: None if wb is None else linear(as_weights(wb[0]), as_weights(wb[1]))
        self.xh, self.x, self.hh = ([build(wb) for wb in group] for group in (fused.xh, fused.x, fused.hh))
        self.head = FloatLinear(as_weights(fused.head[0]), as_weights(fused.head[1]))  # (H, V), (1, V)
        # int8: the compiled step's own tanh, op for op, so that both give the same states bit for bit
        self.tanh = np.tanh if quantize is None else tanh_approx


class NumpyStep(StepState):
    """One step of the model for B rows, in NumPy (float, or int8 layers); the weights are a snapshot.

    step(chars (B,) ints) -> logits (B, V), a view of an internal buffer that the next
    step overwrites; the state lives inside and moves in and out with set_state /
    get_state as the usual tuple of (L, B, H) arrays. Steps made `sharing` one NumpyWeights
    share the weights and nothing else, so each holds a state of its own.
    """

    def __init__(self, config: ModelConfig, params: Dict[str, np.ndarray], batch_size: int,
                 dtype=np.float32, quantize: Optional[str] = None):
        self._setup(NumpyWeights(config, params, dtype, quantize), batch_size)

    @classmethod
    def from_model(cls, model, batch_size: int, quantize: Optional[str] = None) -> "NumpyStep":
        """From any engine's model: a snapshot of its canonical parameters, in its dtype (float32 for torch)."""
        return cls.sharing(NumpyWeights.from_model(model, quantize), batch_size)

    def _setup(self, weights: NumpyWeights, batch_size: int) -> None:
        cfg = weights.config
        super().__init__(cfg, batch_size, weights.dtype)
        self.weights = weights
        L, H, B, G = cfg.layers, cfg.hidden, batch_size, cfg.gates
        self.table, self._tanh = weights.table, weights.tanh
        empty = lambda *shape: np.zeros(shape, self.dtype)
        self.a = empty(B, G * H)                                  # (B, G*H) pre-activations
        self.a2 = empty(B, G * H)                                 # (B, G*H) table rows; gru's h side
        self.tmp = empty(B, H)                                    # (B, H)
        self.logits = empty(B, cfg.vocab_size)                    # (B, V)
        self._cell = {"rnn": self._rnn, "gru": self._gru, "lstm": self._lstm}[cfg.cell]
        # per layer, built once: its input columns of self.h ([h(k-1), hk] for k > 0, [h0] for k = 0,
        # the character arriving through the table), its own h columns, and the matmuls bound to them
        self.inputs = [self.h[:, max(k - 1, 0) * H:(k + 1) * H] for k in range(L)]
        self.outputs = [self.h[:, k * H:(k + 1) * H] for k in range(L)]
        if cfg.cell != "gru":
            self.xh_call = [weights.xh[k].bind(self.inputs[k], self.a) for k in range(L)]
        else:
            self.x_call = [None] + [weights.x[k].bind(self.inputs[k][:, :H], self.a) for k in range(1, L)]
            self.hh_call = [weights.hh[k].bind(self.outputs[k], self.a2) for k in range(L)]
        self.head_call = weights.head.bind(self.outputs[-1], self.logits)
        a = self.a                                                # views of the LSTM gates: s = i, f, o together
        lstm = cfg.cell == "lstm"
        self.gates = (a[:, :3 * H], a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]) if lstm else None

    def step(self, chars) -> np.ndarray:
        """Feed one character per row, chars (B,) ints; returns logits (B, V), valid until the next step."""
        for k in range(self.config.layers):
            self._cell(k, chars)
        return self.head_call()                                   # (B, V) self.logits

    # Each cell reads layer k's input columns of self.h (self.inputs[k]) through its bound
    # matmuls and writes the new hk into its own columns (self.outputs[k]) in place.

    def _input(self, k: int, chars) -> np.ndarray:
        """a = xh @ W + b for rnn and lstm: the whole pre-activation."""
        a = self.xh_call[k]()                                     # (B, G*H)
        if k == 0:
            a += np.take(self.table, chars, axis=0, out=self.a2)  # (B, G*H) x W_ih^T + biases
        return a

    def _rnn(self, k: int, chars) -> None:
        self._tanh(self._input(k, chars), out=self.outputs[k])   # (B, H) h' = tanh(a)

    def _lstm(self, k: int, chars) -> None:
        c, tmp, (s, i, f, o, g) = self.c[k], self.tmp, self.gates
        a = self._input(k, chars)
        self._tanh(a, out=a)                                      # (B, 4H) tanh(a/2) for i, f, o; tanh(a) for g
        s *= 0.5
        s += 0.5                                                  # (B, 3H) i, f, o = sigmoid(.)
        c *= f                                                    # (B, H) f * c
        c += np.multiply(i, g, out=tmp)                           # (B, H) c' = f * c + i * g
        self._tanh(c, out=tmp)                                    # (B, H) tanh(c')
        np.multiply(o, tmp, out=self.outputs[k])                 # (B, H) h' = o * tanh(c')

    def _gru(self, k: int, chars) -> None:
        H, xp, hp, tmp = self.config.hidden, self.a, self.a2, self.tmp
        h = self.outputs[k]                                       # (B, H) old h, overwritten at the end
        if k == 0:
            np.take(self.table, chars, axis=0, out=xp)            # (B, 3H) W_i x + b_i
        else:
            self.x_call[k]()                                      # (B, 3H) W_i x + b_i
        self.hh_call[k]()                                         # (B, 3H) W_h h + b_h
        rz = xp[:, :2 * H]
        rz += hp[:, :2 * H]
        self._tanh(rz, out=rz)
        rz *= 0.5
        rz += 0.5                                                 # (B, 2H) r, z
        r, z, n = xp[:, :H], xp[:, H:2 * H], xp[:, 2 * H:]
        n += np.multiply(r, hp[:, 2 * H:], out=tmp)               # (B, H) W_in x + b_in + r * (W_hn h + b_hn)
        self._tanh(n, out=n)                                      # (B, H) n
        np.subtract(h, n, out=tmp)                                # (B, H) h - n
        tmp *= z
        np.add(tmp, n, out=h)                                     # (B, H) h' = n + z * (h - n)


def _linear_class(quantize: Optional[str]):
    """The layers' matmul: NumPy float, or linear.QuantLinear for int8 (the head stays float)."""
    assert quantize in (None, "int8"), quantize  # validated where the option entered
    return FloatLinear if quantize is None else QuantLinear


def _gate_layout(cell: str, H: int) -> Tuple[np.ndarray, np.ndarray, bool]:
    """(column order, per-column scale, whether b_hh folds into the input side) for a cell.

    LSTM's i, f, g, o become i, f, o, g; sigmoid columns (lstm i, f, o; gru r, z) are
    scaled by 1/2 so that tanh of the result gives sigmoid via 0.5 * (1 + tanh(a / 2)).
    """
    if cell == "rnn":
        return np.arange(H), np.ones(H), True
    if cell == "gru":
        return np.arange(3 * H), np.concatenate([np.full(2 * H, 0.5), np.ones(H)]), False
    gate = lambda j: np.arange(j * H, (j + 1) * H)
    return np.concatenate([gate(0), gate(1), gate(3), gate(2)]), np.concatenate([np.full(3 * H, 0.5), np.ones(H)]), True

"""What every engine shares: the interface, the canonical parameters, and their initial values.

Shape letters, used in comments across charrnn:
    B batch (streams)   T time (window length)   V vocabulary   E embedding
    H hidden units      L layers                 G gates (rnn 1, gru 3, lstm 4)

Every engine implements `CharModel`:
    initial_state(batch_size) -> State
    forward(inputs (B, T) ints, state) -> (logits (B, T, V), new State)
    get_parameters() -> {canonical name: NumPy array}; set_parameters(same)
State is a tuple of arrays (or tensors) of shape (L, B, H): `(h,)` for rnn and
gru, `(h, c)` for lstm, the layout torch.nn uses. Modules keep no state: it
goes in and comes out, so truncated BPTT is visible in the training loop.

Canonical parameter names and layouts are exactly torch.nn's (see
`parameter_shapes`), so the library engine loads them with no conversion.
GRU gates are ordered r, z, n with n = tanh(W_in x + b_in + r * (W_hn h + b_hn));
LSTM gates are ordered i, f, g, o.
"""
from __future__ import annotations

from typing import Any, Dict, Protocol, Tuple

import numpy as np

from charrnn.config import ModelConfig

State = Tuple[Any, ...]


class CharModel(Protocol):
    """What every engine is: training, sampling and evaluation never ask which one they hold."""

    config: ModelConfig
    backend: str   # "numpy", "torch", "tensorflow" or "onnx": which array type its forward takes and returns

    def initial_state(self, batch_size: int) -> State: ...

    def forward(self, inputs: Any, state: State) -> Tuple[Any, State]: ...

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
    return shapes


def init_parameters(cfg: ModelConfig, seed: int, dtype=np.float32) -> Dict[str, np.ndarray]:
    """Initial weights, the same for every engine given the same seed.

    torch.nn's scheme: recurrent weights and biases U(-1/sqrt(H), 1/sqrt(H)),
    the head U(-1/sqrt(H), 1/sqrt(H)), the embedding N(0, 1). Generated with
    NumPy so the naive engine needs no torch and all engines start equal.
    """
    rng = np.random.default_rng(seed)
    bound = 1.0 / np.sqrt(cfg.hidden)
    params = {}
    for name, shape in parameter_shapes(cfg).items():
        if name == "embed.weight":
            params[name] = rng.standard_normal(shape)
        else:
            params[name] = rng.uniform(-bound, bound, size=shape)
    return {k: v.astype(dtype) for k, v in params.items()}


def check_parameters(cfg: ModelConfig, params: Dict[str, np.ndarray], where: str) -> None:
    """Raise UserError unless `params` has exactly the canonical names and shapes for `cfg`."""
    from charrnn.errors import UserError

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

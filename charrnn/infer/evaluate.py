"""Bits per character: the text read as one stream from a zero state.

The first character is given; every later one is predicted from all before it,
so the loss is the mean negative log-likelihood over N-1 predictions.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from charrnn.errors import UserError
from charrnn.infer.predictor import Predictor
from charrnn.losses import bits_per_char, log_softmax


@dataclass(frozen=True)
class Evaluation:
    loss: float        # nats per predicted character
    characters: int    # predicted characters (text length - 1)

    @property
    def bpc(self) -> float:
        return bits_per_char(self.loss)

    def as_dict(self) -> dict:
        return {"loss": self.loss, "bpc": self.bpc, "characters": self.characters}


def evaluate_indices(predictor: Predictor, data: np.ndarray, chunk: int = 2048) -> Evaluation:
    """Mean NLL of data[1:] given everything before, data (N,) ints; chunks of `chunk` steps, state carried."""
    data = np.asarray(data)
    if data.ndim != 1 or not (data.dtype.kind in "iu" or (data.size == 0 and data.dtype.kind == "f")):
        raise UserError(f"evaluate_indices takes a 1-D array of character indices, not {data.dtype} of shape "
                        f"{list(data.shape)}")
    if len(data) < 2:
        raise UserError("the text must have at least 2 characters to evaluate")
    V = predictor.model.config.vocab_size
    if data.min() < 0 or data.max() >= V:
        raise UserError(f"character indices must be in [0, {V}); this array holds {int(data.min())}..{int(data.max())}")
    data = data.astype(np.int64)
    state = predictor.zero_state(1)
    total = 0.0
    for start in range(0, len(data) - 1, chunk):
        inputs = data[start : min(start + chunk, len(data) - 1)]
        targets = data[start + 1 : start + 1 + len(inputs)]
        logits, state = predictor.feed(inputs[None, :], state)
        logp = log_softmax(logits[0])                                   # (T, V)
        total -= logp[np.arange(len(targets)), targets].sum()
    return Evaluation(float(total / (len(data) - 1)), len(data) - 1)

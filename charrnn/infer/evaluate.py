"""Bits per character: the text read as one stream from a zero state.

The first character is given; every later one is predicted from all before it,
so the loss is the mean negative log-likelihood over N-1 predictions.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Tuple

import numpy as np

from charrnn.data.vocab import Vocab, format_chars
from charrnn.errors import UserError
from charrnn.infer.predictor import Predictor
from charrnn.losses import bits_per_char, log_softmax


@dataclass(frozen=True)
class Evaluation:
    loss: float                          # nats per predicted character
    characters: int                      # predicted characters (length of the text read, less 1)
    skipped: int = 0                     # characters outside the vocabulary dropped first (unknown="skip")
    skipped_chars: Tuple[str, ...] = ()  # which ones, each once, in code point order

    @property
    def bpc(self) -> float:
        return bits_per_char(self.loss)

    def as_dict(self) -> dict:
        return {"loss": self.loss, "bpc": self.bpc, "characters": self.characters,
                "skipped": self.skipped, "skipped_chars": list(self.skipped_chars)}


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


def to_model_indices(model_vocab: Vocab, text_vocab: Vocab, data: np.ndarray, unknown: str, what: str,
                     audience: str) -> Tuple[np.ndarray, int, Tuple[str, ...]]:
    """Re-encode `data` (indices in `text_vocab`) in the model's vocabulary: (indices, skipped, skipped_chars).

    A character the model lacks is an error naming `what`, or with unknown="skip" every occurrence
    of it is dropped and counted. `audience` ("cli", "python" or "web") words the hint (sampling.clean_prime).
    """
    from charrnn.config import check_choice
    from charrnn.infer.sampling import SKIP_HINTS, UNKNOWN_CHOICES

    check_choice("unknown", unknown, UNKNOWN_CHOICES, cli=audience == "cli")
    missing = tuple(c for c in text_vocab.chars if c not in model_vocab)
    if not missing:
        return model_vocab.translate(text_vocab, data, what), 0, ()
    if unknown != "skip":
        hint = (f"remove them ({SKIP_HINTS[audience]})" if audience == "web"
                else f"remove them or {SKIP_HINTS[audience]}")
        raise UserError(f"{what} has characters outside the model's vocabulary: {format_chars(missing)}; {hint}")
    position = {c: i for i, c in enumerate(model_vocab.chars)}
    table = np.array([position.get(c, -1) for c in text_vocab.chars], dtype=np.int32)
    mapped = table[np.asarray(data)]
    kept = mapped[mapped >= 0]
    skipped = len(mapped) - len(kept)
    if len(kept) < 2:
        raise UserError(f"{what} has fewer than 2 characters left to evaluate after skipping {skipped} outside the "
                        f"model's vocabulary ({format_chars(missing)})")
    return kept, skipped, missing

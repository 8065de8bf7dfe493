"""--init-from onto a new text: the parent's weights grown to the characters and labels the text adds
(data/dataset.py's Base puts them after the parent's: Vocab.extended).

char-rnn and torch-rnn fine-tune only within the parent's alphabet (a new character is garbled or
"unexpected"). Here the parent's vocabulary keeps its order and the new characters follow it, so every
trained row stays where it was; each new character's rows (its embedding, or its one-hot column of the
first layer, and its head row and bias) start as the parent's U+FFFD rows where it has that symbol
(the model's "some character I do not know"), else as a new model's would (models/base.init_parameters),
but for the output bias: a drawn bias near zero would give each new character about as much probability as
the parent's whole alphabet, whose biases learned a scale of their own. It starts at the character's log
frequency in the fine-tune's training text on the parent's scale (the log-sum-exp of its biases).
New labels follow the parent's too, their rows of `label.weight` at zero: the unlabelled model, to begin with.
Nothing else of the parent's run is carried: no optimizer state, no position, no schedule.
"""
from __future__ import annotations

import dataclasses
from typing import Dict, Optional, Sequence

import numpy as np

from charrnn.config import ModelConfig
from charrnn.data.vocab import UNKNOWN, Vocab
from charrnn.models.base import init_parameters, unigram_bias


def grow_parameters(params: Dict[str, np.ndarray], parent: ModelConfig, child: ModelConfig, parent_vocab: Vocab,
                    seed: int, char_counts: Optional[np.ndarray] = None) -> Dict[str, np.ndarray]:
    """The parent's parameters with rows for the child's new characters and labels (see the module docstring);
    `char_counts` (the child's V,): each character's count in the fine-tune's training text."""
    added_chars = child.vocab_size - parent.vocab_size
    added_labels = len(child.labels) - len(parent.labels)
    if not added_chars and not added_labels:
        return params
    fresh = init_parameters(child, seed)  # a new model's rows, for characters with no U+FFFD to copy
    unknown = parent_vocab.chars.index(UNKNOWN) if UNKNOWN in parent_vocab else None
    grown = dict(params)

    def new_rows(name: str, axis: int) -> np.ndarray:
        if unknown is not None:
            row = np.take(params[name], [unknown], axis=axis)
            return np.repeat(row, added_chars, axis=axis)
        return np.take(fresh[name], range(parent.vocab_size, child.vocab_size), axis=axis)

    if added_chars:
        by_char = {"head.weight": 0, "head.bias": 0}
        by_char.update({"embed.weight": 0} if child.embed else {"rnn.weight_ih_l0": 1})
        for name, axis in by_char.items():
            rows = new_rows(name, axis)
            if name == "head.bias" and unknown is None and char_counts is not None:
                scale = np.logaddexp.reduce(np.asarray(params[name], dtype=np.float64))   # log-sum-exp
                rows = scale + unigram_bias(char_counts)[parent.vocab_size:]
            grown[name] = np.concatenate([params[name], rows.astype(params[name].dtype)], axis=axis)
    if child.labels:
        width = child.gates * child.hidden
        old = params.get("label.weight", np.zeros((0, width), np.float32))
        grown["label.weight"] = np.concatenate([old, np.zeros((added_labels, width), old.dtype)], axis=0)
    return grown


def child_config(parent: ModelConfig, vocab: Vocab, labels: Sequence[str], dropout: float) -> ModelConfig:
    """The fine-tune's model: the parent's shape, the grown vocabulary and labels, its own dropout."""
    return dataclasses.replace(parent, vocab_size=len(vocab), labels=tuple(labels), dropout=dropout)

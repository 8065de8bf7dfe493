"""The library engine: torch.nn.Embedding + nn.RNN/GRU/LSTM + nn.Linear.

The fast path: oneDNN on CPU, cuDNN on GPU. Its parameter names are the
canonical ones because the submodules are called embed, rnn and head.

A labelled model (models/base.py) needs a per-step bias on the first layer's
input side, which nn.RNN/GRU/LSTM has no place for: the first layer reads
one_hot(label, N) after the character's vector, so its input weight has N more
columns, and those columns are label.weight^T. `own_to_canonical` and
`canonical_to_own` split and join them, so everything outside this module
(checkpoints, optimizer state, other engines) sees the canonical names and shapes.
"""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from charrnn.config import ModelConfig
from charrnn.models.torch_common import TorchCharModel

_RNN_CLASSES = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}
_JOINED = "rnn.weight_ih_l0"   # (G*H, in + N) for a labelled model: [W_ih_l0, label.weight^T]


class LibraryModel(TorchCharModel):
    def __init__(self, config: ModelConfig, seed: int = 0):
        super().__init__()
        self.config = config
        # embed 0: one-hot characters straight into the first layer, no embedding table
        self.embed = nn.Embedding(config.vocab_size, config.embed) if config.embed else None
        self.rnn = _RNN_CLASSES[config.cell](
            (config.embed or config.vocab_size) + len(config.labels), config.hidden, num_layers=config.layers,
            batch_first=True, dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, config.vocab_size)
        self.tie_head()
        self.init_weights(seed)

    def forward(self, inputs, state: tuple, labels=None):
        """inputs (B, T), state, labels (B, T) or (B,) for a labelled model -> (logits (B, T, V), new state)."""
        idx = self.as_inputs(inputs)
        lab = self.as_labels(labels, idx)                    # (B, T) or None
        if self.embed is not None:
            x = self.embed(idx)                              # (B, T, E)
        else:
            x = F.one_hot(idx, self.config.vocab_size).to(self.head.weight.dtype)   # (B, T, V)
        if lab is not None:                                  # the label's columns of W_ih_l0 pick its row
            x = torch.cat([x, F.one_hot(lab, len(self.config.labels)).to(x.dtype)], dim=-1)  # (B, T, in + N)
        rnn_state = state if self.config.cell == "lstm" else state[0]
        out, new_state = self.rnn(x, rnn_state)              # (B, T, H)
        logits = self.head(self.drop(out))                   # (B, T, V)
        return logits, (tuple(new_state) if self.config.cell == "lstm" else (new_state,))

    def own_to_canonical(self, own: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """Split W_ih_l0's label columns off as label.weight (N, G*H), last (weights, gradients or slots alike)."""
        own = super().own_to_canonical(own)
        if not self.config.labels:
            return own
        inputs = self.config.embed or self.config.vocab_size
        joined = own[_JOINED]                                                    # (G*H, in + N)
        out = {name: (joined[:, :inputs].copy() if name == _JOINED else value) for name, value in own.items()}
        out["label.weight"] = joined[:, inputs:].T.copy()                        # (N, G*H)
        return out

    def canonical_to_own(self, params: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        params = super().canonical_to_own(params)
        if not self.config.labels:
            return params
        out = {name: value for name, value in params.items() if name != "label.weight"}
        out[_JOINED] = np.concatenate([params[_JOINED], np.asarray(params["label.weight"]).T], axis=1)
        return out

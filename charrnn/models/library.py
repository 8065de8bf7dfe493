"""The library engine: torch.nn.Embedding + nn.RNN/GRU/LSTM + nn.Linear.

The fast path: oneDNN on CPU, cuDNN on GPU. Its parameter names are the
canonical ones because the submodules are called embed, rnn and head.
"""
from __future__ import annotations

import torch.nn.functional as F
from torch import nn

from charrnn.config import ModelConfig
from charrnn.models.torch_common import TorchCharModel

_RNN_CLASSES = {"rnn": nn.RNN, "gru": nn.GRU, "lstm": nn.LSTM}


class LibraryModel(TorchCharModel):
    def __init__(self, config: ModelConfig, seed: int = 0):
        super().__init__()
        self.config = config
        # embed 0: one-hot characters straight into the first layer, no embedding table
        self.embed = nn.Embedding(config.vocab_size, config.embed) if config.embed else None
        self.rnn = _RNN_CLASSES[config.cell](
            config.embed or config.vocab_size, config.hidden, num_layers=config.layers, batch_first=True,
            dropout=config.dropout if config.layers > 1 else 0.0,
        )
        self.drop = nn.Dropout(config.dropout)
        self.head = nn.Linear(config.hidden, config.vocab_size)
        self.init_weights(seed)

    def forward(self, inputs, state: tuple):
        idx = self.as_inputs(inputs)
        if self.embed is not None:
            x = self.embed(idx)                              # (B, T, E)
        else:
            x = F.one_hot(idx, self.config.vocab_size).to(self.head.weight.dtype)   # (B, T, V)
        rnn_state = state if self.config.cell == "lstm" else state[0]
        out, new_state = self.rnn(x, rnn_state)              # (B, T, H)
        logits = self.head(self.drop(out))                   # (B, T, V)
        return logits, (tuple(new_state) if self.config.cell == "lstm" else (new_state,))

"""Inference for any engine: feed characters, get NumPy logits and the carried state back.

Sampling and evaluation use this, so they never ask which engine they hold.
Torch engines run in eval mode under no_grad; the naive engine is called directly.
"""
from __future__ import annotations

from typing import Tuple

import numpy as np


class Runner:
    def __init__(self, model):
        self.model = model
        self.is_torch = not hasattr(model, "forward_train")
        if self.is_torch:
            import torch

            self.torch = torch
            model.eval()
            self.device = next(model.parameters()).device

    def zero_state(self, batch_size: int):
        return self.model.initial_state(batch_size)

    def feed(self, indices: np.ndarray, state) -> Tuple[np.ndarray, tuple]:
        """indices (B, T) -> logits (B, T, V) as float64 NumPy, new state."""
        if self.is_torch:
            with self.torch.no_grad():
                logits, state = self.model(self.torch.as_tensor(indices, device=self.device), state)
            return logits.double().cpu().numpy(), state
        self.model.eval()
        logits, state = self.model.forward(np.asarray(indices), state)
        return logits.astype(np.float64), state

    def select(self, state, rows: np.ndarray):
        """Keep the given batch rows of a state (beam search reorders beams)."""
        if self.is_torch:
            index = self.torch.as_tensor(rows, device=self.device)
            return tuple(s[:, index] for s in state)
        return tuple(s[:, rows] for s in state)


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))

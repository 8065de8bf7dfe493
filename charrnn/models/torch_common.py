"""Pieces the two PyTorch engines share: loading canonical NumPy parameters and state handling."""
from __future__ import annotations

from typing import Dict

import numpy as np
import torch
from torch import nn

from charrnn.config import ModelConfig
from charrnn.models.base import check_parameters, init_parameters, state_size


class TorchCharModel(nn.Module):
    """Base for the torch engines: canonical parameter I/O and zero state.

    Subclasses name their submodules `embed`, `rnn` and `head` so that
    `named_parameters()` yields the canonical names directly.
    """

    config: ModelConfig
    backend = "torch"    # how inference reaches it (infer/predictor.py)

    def init_weights(self, seed: int) -> None:
        self.set_parameters(init_parameters(self.config, seed))

    def get_parameters(self) -> Dict[str, np.ndarray]:
        return {name: p.detach().cpu().float().numpy().copy() for name, p in self.named_parameters()}

    def set_parameters(self, params: Dict[str, np.ndarray]) -> None:
        check_parameters(self.config, params, "weights")
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(torch.as_tensor(np.asarray(params[name])).to(dtype=p.dtype, device=p.device))

    def initial_state(self, batch_size: int) -> tuple:
        p = next(self.parameters())
        shape = (self.config.layers, batch_size, self.config.hidden)
        return tuple(torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(state_size(self.config.cell)))

    def as_inputs(self, inputs) -> torch.Tensor:
        """Accept NumPy or torch integer arrays (B, T); return a long tensor on the model's device."""
        device = next(self.parameters()).device
        return torch.as_tensor(np.asarray(inputs) if not torch.is_tensor(inputs) else inputs, device=device).long()

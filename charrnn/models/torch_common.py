"""Pieces the two PyTorch engines share: loading canonical NumPy parameters and state handling."""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np
import torch
from torch import nn

from charrnn.config import ModelConfig
from charrnn.models.base import check_labels, check_parameters, init_parameters, state_size


class TorchCharModel(nn.Module):
    """Base for the torch engines: canonical parameter I/O and zero state.

    Subclasses name their submodules `embed`, `rnn`, `head` (and `label`) so that
    `named_parameters()` yields the canonical names directly. One that keeps a canonical
    parameter inside another (the library engine's label.weight, inside its first layer's
    input weight) overrides `own_to_canonical` and `canonical_to_own`.
    """

    config: ModelConfig
    backend = "torch"    # how inference reaches it (infer/predictor.py)

    def init_weights(self, seed: int) -> None:
        self.set_parameters(init_parameters(self.config, seed))

    def tie_head(self) -> None:
        """A tied model's head weight is its embedding's, one Parameter: `named_parameters` (and so the optimizer)
        lists it once, as embed.weight, and its gradient is the sum of both uses."""
        if self.config.tied:
            self.head.weight = self.embed.weight

    def own_to_canonical(self, own: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """{name: array} by `named_parameters` (weights, their gradients or optimizer slots) -> canonical: a tied
        model's head.weight is a copy of its embed.weight (models/base.py)."""
        if not self.config.tied:
            return own
        out = {}
        for name, value in own.items():
            if name == "head.bias":
                out["head.weight"] = own["embed.weight"].copy()
            out[name] = value
        return out

    def canonical_to_own(self, params: Dict[str, np.ndarray]) -> Dict[str, np.ndarray]:
        """The inverse of `own_to_canonical` (base.check_parameters has made sure head.weight is embed.weight)."""
        if not self.config.tied:
            return params
        return {name: value for name, value in params.items() if name != "head.weight"}

    def get_parameters(self) -> Dict[str, np.ndarray]:
        own = {name: p.detach().cpu().float().numpy().copy() for name, p in self.named_parameters()}
        return self.own_to_canonical(own)

    def set_parameters(self, params: Dict[str, np.ndarray]) -> None:
        check_parameters(self.config, params, "weights")
        own = self.canonical_to_own({name: np.asarray(value) for name, value in params.items()})
        with torch.no_grad():
            for name, p in self.named_parameters():
                p.copy_(torch.as_tensor(own[name]).to(dtype=p.dtype, device=p.device))

    def initial_state(self, batch_size: int) -> tuple:
        p = next(self.parameters())
        shape = (self.config.layers, batch_size, self.config.hidden)
        return tuple(torch.zeros(shape, dtype=p.dtype, device=p.device) for _ in range(state_size(self.config.cell)))

    def as_inputs(self, inputs) -> torch.Tensor:
        """Accept NumPy or torch integer arrays (B, T); return a long tensor on the model's device."""
        device = next(self.parameters()).device
        return torch.as_tensor(np.asarray(inputs) if not torch.is_tensor(inputs) else inputs, device=device).long()

    def as_labels(self, labels, idx: torch.Tensor) -> Optional[torch.Tensor]:
        """labels (B, T) or (B,), NumPy or torch -> a long (B, T) tensor on the model's device; None for an
        unlabelled model. ValueError when they do not fit (models/base.check_labels)."""
        check_labels(self.config, labels if labels is None or torch.is_tensor(labels) else np.asarray(labels),
                     tuple(idx.shape))
        if labels is None:
            return None
        labels = self.as_inputs(labels)
        return labels[:, None].expand(idx.shape) if labels.dim() == 1 else labels   # (B, T)

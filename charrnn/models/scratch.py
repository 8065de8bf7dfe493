"""The scratch engine: PyTorch tensors we own, the cell equations written out, autograd for gradients.

This is the seed's section IV. One speed trick keeps it within reach of the
library engine: the input projection of a whole window is one matmul per
layer (`x @ W_ih.T` over all T steps at once); only the recurrent part,
`h @ W_hh.T`, must loop over time. A labelled model adds each position's
`label.weight` row to the first layer's projection (models/base.py): a lookup,
outside the loop too.
"""
from __future__ import annotations

from typing import List, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from charrnn.config import ModelConfig
from charrnn.models.torch_common import TorchCharModel


def rnn_layer(xp: Tensor, h: Tensor, w_hh_t: Tensor) -> Tuple[Tensor, Tensor]:
    """Vanilla tanh cell. xp (T, B, H) already holds W_ih x + b_ih + b_hh."""
    outs: List[Tensor] = []
    for x_t in xp.unbind(0):  # unbind, not xp[t]: select's backward would zero-fill all of xp each step
        h = torch.tanh(torch.addmm(x_t, h, w_hh_t))      # (B, H)
        outs.append(h)
    return torch.stack(outs), h                            # (T, B, H), (B, H)


def gru_layer(xp: Tensor, h: Tensor, w_hh_t: Tensor, b_hh: Tensor) -> Tuple[Tensor, Tensor]:
    """GRU, gates r, z, n; xp (T, B, 3H) holds W_ih x + b_ih. n = tanh(x_n + r * (W_hn h + b_hn))."""
    outs: List[Tensor] = []
    H = h.shape[1]
    for x_t in xp.unbind(0):
        hp = torch.addmm(b_hh, h, w_hh_t)                  # (B, 3H)
        rz = torch.sigmoid(x_t[:, : 2 * H] + hp[:, : 2 * H])
        r, z = rz[:, :H], rz[:, H:]                        # (B, H) each
        n = torch.tanh(x_t[:, 2 * H :] + r * hp[:, 2 * H :])
        h = n + z * (h - n)                                # = (1 - z) * n + z * h
        outs.append(h)
    return torch.stack(outs), h


def lstm_layer(xp: Tensor, h: Tensor, c: Tensor, w_hh_t: Tensor) -> Tuple[Tensor, Tensor, Tensor]:
    """LSTM, gates i, f, g, o; xp (T, B, 4H) holds W_ih x + b_ih + b_hh."""
    outs: List[Tensor] = []
    for x_t in xp.unbind(0):
        gates = torch.addmm(x_t, h, w_hh_t)              # (B, 4H)
        i, f, g, o = gates.chunk(4, 1)                     # (B, H) each; chunk's backward is one cat
        i, f, g, o = torch.sigmoid(i), torch.sigmoid(f), torch.tanh(g), torch.sigmoid(o)
        c = f * c + i * g                                  # (B, H)
        h = o * torch.tanh(c)                              # (B, H)
        outs.append(h)
    return torch.stack(outs), h, c


class _Holder(nn.Module):
    """A plain parameter container, so names come out as embed.weight, rnn.weight_ih_l0, ..."""

    def __init__(self, shapes: dict):
        super().__init__()
        for name, shape in shapes.items():
            self.register_parameter(name, nn.Parameter(torch.empty(shape)))


class ScratchModel(TorchCharModel):
    def __init__(self, config: ModelConfig, seed: int = 0, script: bool = False):
        super().__init__()
        self.config = config
        V, E, H, G = config.vocab_size, config.embed, config.hidden, config.gates
        self.embed = _Holder({"weight": (V, E)}) if E else None   # embed 0: one-hot inputs, no table
        layer_shapes = {}
        for k in range(config.layers):
            inp = (E or V) if k == 0 else H
            layer_shapes.update({f"weight_ih_l{k}": (G * H, inp), f"weight_hh_l{k}": (G * H, H),
                                 f"bias_ih_l{k}": (G * H,), f"bias_hh_l{k}": (G * H,)})
        self.rnn = _Holder(layer_shapes)
        self.head = _Holder({"weight": (V, H), "bias": (V,)})
        self.tie_head()
        # registered last, so label.weight comes last in named_parameters as in the canonical order
        self.label = _Holder({"weight": (len(config.labels), G * H)}) if config.labels else None
        self._layers = {"rnn": rnn_layer, "gru": gru_layer, "lstm": lstm_layer}
        if script:  # TorchScript removes the per-op Python overhead of the time loop
            self._layers = {k: torch.jit.script(f) for k, f in self._layers.items()}
        self.init_weights(seed)

    def forward(self, inputs, state: tuple, labels=None):
        """inputs (B, T), state, labels (B, T) or (B,) for a labelled model -> (logits (B, T, V), new state)."""
        cfg, p = self.config, dict(self.rnn.named_parameters())
        idx = self.as_inputs(inputs)
        lab = self.as_labels(labels, idx)                                              # (B, T) or None
        if self.embed is not None:
            x = F.embedding(idx, self.embed.weight).transpose(0, 1)                   # (T, B, E)
        else:                                                                          # the seed's tf.one_hot
            x = F.one_hot(idx, cfg.vocab_size).to(self.head.weight.dtype).transpose(0, 1)  # (T, B, V)
        new_h, new_c = [], []
        for k in range(cfg.layers):
            w_ih, w_hh = p[f"weight_ih_l{k}"], p[f"weight_hh_l{k}"]
            b_ih, b_hh = p[f"bias_ih_l{k}"], p[f"bias_hh_l{k}"]
            xp = torch.matmul(x, w_ih.t())                                            # (T, B, G*H)
            if k == 0 and lab is not None:                                            # the label's row, input side
                xp = xp + F.embedding(lab, self.label.weight).transpose(0, 1)        # (T, B, G*H)
            if cfg.cell == "gru":
                xp = xp + b_ih                                                        # (T, B, 3H)
                x, h = self._layers["gru"](xp, state[0][k], w_hh.t(), b_hh)
            else:
                xp = xp + (b_ih + b_hh)                                               # (T, B, G*H)
                if cfg.cell == "lstm":
                    x, h, c = self._layers["lstm"](xp, state[0][k], state[1][k], w_hh.t())
                    new_c.append(c)
                else:
                    x, h = self._layers["rnn"](xp, state[0][k], w_hh.t())
            new_h.append(h)
            x = F.dropout(x, cfg.dropout, self.training)                              # (T, B, H)
        logits = F.linear(x.transpose(0, 1), self.head.weight, self.head.bias)        # (B, T, V)
        state = (torch.stack(new_h),) + ((torch.stack(new_c),) if cfg.cell == "lstm" else ())
        return logits, state

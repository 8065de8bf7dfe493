"""Inference for any engine: feed characters, get NumPy logits and the carried state back.

Sampling and evaluation use this, so they never ask which engine they hold.

One character per step (T == 1, what sampling does) takes a fast path on each engine:
the naive engine runs `fastgen.FusedStep`, built from a snapshot of its weights the first
time it is needed (build a new Runner after changing the weights), at batch 1 on one
OpenBLAS thread unless OPENBLAS_NUM_THREADS / OMP_NUM_THREADS say otherwise: a
matrix-vector product is memory-bound, and a second thread that must wait for a busy
core made steps 2-8x slower on a busy shared 2-core machine (benchmarks/sampling_speed.py).
The torch engines run one step with oneDNN switched off, several times faster for
nn.LSTM at T = 1 on CPU.
Longer feeds (the prime, evaluation) use the model's own forward. States are the same
tuples of (L, B, H) arrays either way, so the two paths interleave freely.
"""
from __future__ import annotations

import contextlib
from typing import Dict, Tuple

import numpy as np


class Runner:
    def __init__(self, model):
        self.model = model
        self.is_torch = not hasattr(model, "forward_train")
        self._fused: Dict[int, object] = {}  # batch size -> fastgen.FusedStep (naive engine)
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
            step = np.shape(indices)[1] == 1 and self.device.type == "cpu"
            with self.torch.inference_mode(), (_onednn_off(self.torch) if step else contextlib.nullcontext()):
                logits, state = self.model(self.torch.as_tensor(indices, device=self.device), state)
            return logits.double().cpu().numpy(), state
        indices = np.asarray(indices)
        if indices.shape[1] == 1:
            fused = self._fused_step(indices.shape[0])
            fused.set_state(state)
            with self._blas_threads(indices.shape[0]):
                logits = fused.step(indices[:, 0])                # (B, V)
            return logits[:, None, :].astype(np.float64), fused.get_state()
        self.model.eval()
        logits, state = self.model.forward(indices, state)
        return logits.astype(np.float64), state

    def select(self, state, rows: np.ndarray):
        """Keep the given batch rows of a state (beam search reorders beams)."""
        if self.is_torch:
            index = self.torch.as_tensor(rows, device=self.device)
            return tuple(s[:, index] for s in state)
        return tuple(s[:, rows] for s in state)

    def _blas_threads(self, batch_size: int):
        if batch_size > 1:
            return contextlib.nullcontext()
        from .fastgen import one_blas_thread_unless_chosen

        return one_blas_thread_unless_chosen()

    def _fused_step(self, batch_size: int):
        if batch_size not in self._fused:
            from .fastgen import FusedStep

            self._fused[batch_size] = FusedStep.from_model(self.model, batch_size)
        return self._fused[batch_size]


@contextlib.contextmanager
def _onednn_off(torch):
    """torch.backends.mkldnn.flags(enabled=False) without touching (and warning about) TF32."""
    was = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = was


def log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))

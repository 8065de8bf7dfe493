"""The loss, outside the models, so one definition serves every engine.

The NumPy version returns its own gradient, because the naive engine has no
autograd. torch is imported only inside torch functions, so the naive engine
and its trainer stay importable without torch.
"""
from __future__ import annotations

import math
from typing import Tuple

import numpy as np


def cross_entropy(logits: np.ndarray, targets: np.ndarray) -> Tuple[float, np.ndarray]:
    """Mean next-character cross-entropy in nats, and its gradient with respect to the logits.

    logits (B, T, V) floats, targets (B, T) ints in [0, V). Returns (loss, dlogits (B, T, V))
    with dlogits = (softmax(logits) - onehot(targets)) / (B * T), in the logits' dtype.
    Log-sum-exp after subtracting each row's maximum, so large logits cannot overflow.
    """
    logits = np.asarray(logits)
    targets = np.asarray(targets)
    if logits.ndim != 3 or targets.shape != logits.shape[:2]:
        raise ValueError(f"cross_entropy: logits {logits.shape} and targets {targets.shape} "
                         "must be (B, T, V) and (B, T)")
    V, N = logits.shape[2], targets.size
    rows, flat = np.arange(N), targets.reshape(-1)
    flat_logits = logits.reshape(N, V)
    probs = flat_logits - flat_logits.max(axis=1, keepdims=True)  # (N, V) each row's max is 0
    picked = probs[rows, flat]                                  # (N,) the targets' shifted logits
    np.exp(probs, out=probs)                                    # (N, V) unnormalised, in (0, 1]
    total = probs @ np.ones(V, probs.dtype)                     # (N,) row sums (a matmul is faster); >= 1
    loss = np.mean(np.log(total) - picked, dtype=np.float64)
    probs *= (1.0 / (total * N))[:, None]                       # (N, V) softmax / N: the mean's 1 / (B*T)
    probs[rows, flat] -= 1.0 / N                                # (N, V) (softmax - onehot) / N
    return float(loss), probs.reshape(logits.shape)


def cross_entropy_torch(logits, targets):
    """Mean cross-entropy in nats per character; logits (B, T, V) tensor, targets (B, T) tensor."""
    import torch
    import torch.nn.functional as F

    flat = logits.reshape(-1, logits.shape[-1])
    # bfloat16 logits (autocast) are scored in float32; float64 ones (a float64 model) stay float64
    return F.cross_entropy(flat if flat.dtype == torch.float64 else flat.float(), targets.reshape(-1))


def log_softmax(logits: np.ndarray) -> np.ndarray:
    """log softmax over the last axis, shifted by each row's maximum so it cannot overflow."""
    shifted = logits - logits.max(axis=-1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=-1, keepdims=True))


LN2 = math.log(2.0)


def bits_per_char(nats: float) -> float:
    return nats / LN2

"""The layers of a fused generation step, in float or in int8.

At batch 1 a generation step reads every recurrent weight once, so its speed is
the speed of memory, and int8 weights are a quarter of the bytes of float32. `QuantLinear`
stores each output column's weights as int8 with its own scale, and at each call
quantizes its input to 8 bits with a scale from the input's own range (dynamic
quantization). It is the NumPy reference; native_step.c runs the same numbers fast.
The price is accuracy, which `charrnn eval --quantize int8` measures on any text
(docs/performance.md).

Every class here computes out = x @ W + b into a caller's buffer, so `steps.NumpyStep`
does not care which it holds.
"""
from __future__ import annotations

import functools
from typing import Callable, Optional, Tuple

import numpy as np


class FloatLinear:
    """out = x @ w + b in the buffer's dtype (NumPy's BLAS)."""

    def __init__(self, w: np.ndarray, b: Optional[np.ndarray]):
        self.w, self.b = w, b                       # (n_in, n_out), (1, n_out) or None

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        np.matmul(x, self.w, out=out)
        if self.b is not None:
            out += self.b
        return out

    def bind(self, x: np.ndarray, out: np.ndarray) -> Callable[[], np.ndarray]:
        """A call with its buffers fixed: `x` is read afresh at every call."""
        return functools.partial(self, x, out)


def quantize_columns(w: np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
    """w (n_in, n_out) -> (int8 q (n_in, n_out), float32 scale (n_out,)): w[:, n] ~ q[:, n] * scale[n].

    Symmetric, one scale per output column: scale = max |w[:, n]| / 127, so every column
    uses the whole int8 range whatever its size. An all-zero column gets scale 0.
    """
    w = np.asarray(w, dtype=np.float64)
    scale = (np.abs(w).max(axis=0) / 127).astype(np.float32)
    safe = np.where(scale > 0, scale, 1).astype(np.float64)
    q = np.clip(np.rint(w / safe), -127, 127).astype(np.int8)
    return q, scale


EXACT_FLOAT32_INPUTS = 1040   # n_in * 127 * 127 < 2^24: float32 sums of int8 products are exact up to this width


class QuantLinear:
    """out = x @ w + b with int8 weights per output column and each input row quantized per call.

    Per row: s = max |x| / 127 and q_x = rint(x / s) (symmetric, 8 bits); then
    out = (q_x @ q_w) * (s * scale) + b. The integer sums are exact (in float32 while
    |sum| <= n_in * 127 * 127 < 2^24, i.e. n_in up to 1,040; in float64 beyond), so native_step.c,
    which computes them in int32, gets the same sums bit for bit, for any width.
    This NumPy version runs at float speed: it is the C step's reference and fallback.
    """

    def __init__(self, w: np.ndarray, b: Optional[np.ndarray]):
        q, self.scales = quantize_columns(w)                       # (n_in, n_out) int8, (n_out,)
        # the integer sums are exact in float32 while |sum| < 2^24; a wider input sums in float64
        # (exact to 2^53) and rounds once to float32, as C's (float) of its exact int32 sum does
        self.wide = q.shape[0] > EXACT_FLOAT32_INPUTS
        self.q = q.astype(np.float64 if self.wide else np.float32)  # exact small integers
        self.b = None if b is None else np.asarray(b, dtype=np.float32).reshape(1, -1)

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        x = np.asarray(x, dtype=np.float32)
        s = np.abs(x).max(axis=1) / np.float32(127)                # (B,) one scale per row
        s[s == 0] = 1
        if self.wide:
            np.copyto(out, np.rint(x / s[:, None]).astype(np.float64) @ self.q, casting="same_kind")
        else:
            np.matmul(np.rint(x / s[:, None]), self.q, out=out)    # (B, n_out) exact integer sums
        out *= s[:, None] * self.scales
        if self.b is not None:
            out += self.b
        return out

    def bind(self, x: np.ndarray, out: np.ndarray) -> Callable[[], np.ndarray]:
        """A call with its buffers fixed: `x` is read afresh at every call."""
        return functools.partial(self, x, out)


_F = np.float32
_MAGIC = _F(12582912.0)   # 1.5 * 2^23: (v + MAGIC) - MAGIC rounds v to an integer, ties to even
_EXP_POLY = [_F(c) for c in (1.9875691500e-4, 1.3981999507e-3, 8.3334519073e-3, 4.1665795894e-2,
                             1.6666665459e-1, 5.0000001201e-1)]


def exp_approx(x: np.ndarray) -> np.ndarray:
    """native_step.c's exp_approx in float32 NumPy, operation for operation (Cephes' expf)."""
    x = np.clip(np.asarray(x, _F), _F(-87.0), _F(88.0))
    n = (x * _F(1.44269504088896341) + _MAGIC) - _MAGIC
    r = x - n * _F(0.693359375)
    r = r + n * _F(2.12194440e-4)
    p = np.full_like(x, _EXP_POLY[0])
    for c in _EXP_POLY[1:]:
        p = p * r + c
    p = (p * r) * r + r + _F(1.0)
    return p * ((n.astype(np.int32) + 127) << 23).view(_F)


def tanh_approx(x: np.ndarray, out: np.ndarray) -> np.ndarray:
    """native_step.c's tanh_approx: (e - 1) / (e + 1) with e = exp(2 clip(x, -9, 9)); absolute error ~1e-7.

    The int8 NumPy step uses it instead of np.tanh so that it and the compiled step compute the
    same states bit for bit: any difference, however small, can round a later input to another
    int8 level, and the recurrence then carries it on.
    """
    e = exp_approx(_F(2.0) * np.clip(np.asarray(x, _F), _F(-9.0), _F(9.0)))
    np.divide(e - _F(1.0), e + _F(1.0), out=out)
    return out

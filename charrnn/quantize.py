"""The layers of a fused generation step, in float or in int8.

At batch 1 a generation step reads every recurrent weight once, so its speed is
the speed of memory: float32 matrix-vector products on the 2-core Xeon of
benchmarks/sampling_speed.py top out near 4,000 steps/s for a 2x512 LSTM even
with no other work at all. Int8 weights are a quarter of the bytes. `Int8Linear`
stores each output column's weights as int8 with its own scale, and at each call
quantizes its input to 7 bits with a scale from the input's own range: PyTorch's
dynamic quantization, run by fbgemm's int8 kernels. The price is accuracy, which
`charrnn eval --quantize int8` measures on any text (README, Performance).

Every class here computes out = x @ W + b into a caller's buffer, so `fastgen.FusedStep`
does not care which it holds.
"""
from __future__ import annotations

import functools
import warnings
from typing import Callable, Optional

import numpy as np

from .errors import UserError

QUANTIZE_CHOICES = ("int8",)


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


class Int8Linear:
    """out = x @ w + b with w in int8 per output column and x quantized per call (fbgemm)."""

    def __init__(self, w: np.ndarray, b: Optional[np.ndarray]):
        torch = _torch()
        weight = torch.from_numpy(np.ascontiguousarray(np.asarray(w, dtype=np.float32).T))  # (n_out, n_in)
        scales = (weight.abs().amax(dim=1).double() / 127).clamp_min(1e-12)
        bias = None if b is None else torch.from_numpy(np.asarray(b, dtype=np.float32).reshape(-1).copy())
        with warnings.catch_warnings():  # quantized tensors are deprecated in favour of torchao; the kernels remain
            warnings.simplefilter("ignore")
            zero = torch.zeros(weight.shape[0], dtype=torch.long)
            qweight = torch.quantize_per_channel(weight, scales, zero, 0, torch.qint8)
            self.packed = torch.ops.quantized.linear_prepack(qweight, bias)
        # the overload itself: the packet's Python dispatch cost ~10 us a call, a tenth of the kernel
        self.op = torch.ops.quantized.linear_dynamic.default
        self.torch = torch
        self.scales = scales.numpy()                # (n_out,) for tests and error bounds

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        return self._run(self.torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)), out)

    def bind(self, x: np.ndarray, out: np.ndarray) -> Callable[[], np.ndarray]:
        """A call with its buffers fixed; a contiguous float32 `x` is wrapped once, not at every call."""
        if x.dtype != np.float32 or not x.flags.c_contiguous:
            return functools.partial(self, x, out)
        return functools.partial(self._run, self.torch.from_numpy(x), out)

    def _run(self, x, out: np.ndarray) -> np.ndarray:
        # reduce_range=True: 7-bit inputs, so that the 16-bit sums of u8 * s8 pairs in
        # fbgemm's AVX2 kernels cannot saturate
        np.copyto(out, self.op(x, self.packed, True).numpy(), casting="unsafe")
        return out


class TorchLinear:
    """out = x @ w + b in float32 on torch's threads: the int8 step's head.

    In int8 mode every multithreaded kernel then runs on one thread pool: OpenBLAS's
    threads and torch's OpenMP threads, both spinning on the same two cores, made a
    64-stream int8 step 6x slower than on one thread (benchmarks/sampling_speed.py).
    """

    def __init__(self, w: np.ndarray, b: Optional[np.ndarray]):
        self.torch = _torch()
        self.w = self.torch.from_numpy(np.ascontiguousarray(w, dtype=np.float32))              # (n_in, n_out)
        self.b = None if b is None else self.torch.from_numpy(np.asarray(b, dtype=np.float32).reshape(1, -1).copy())

    def __call__(self, x: np.ndarray, out: np.ndarray) -> np.ndarray:
        return self.bind(x, out)()

    def bind(self, x: np.ndarray, out: np.ndarray) -> Callable[[], np.ndarray]:
        x_, out_ = self.torch.from_numpy(x), self.torch.from_numpy(out)  # views: x is read afresh at every call
        if self.b is None:
            multiply = functools.partial(self.torch.mm, x_, self.w, out=out_)
        else:
            multiply = functools.partial(self.torch.addmm, self.b, x_, self.w, out=out_)
        return lambda: (multiply(), out)[1]


def check_quantize(quantize: Optional[str]) -> None:
    """One line for a bad choice or a torch without the int8 kernels, before any work."""
    if quantize is None:
        return
    if quantize not in QUANTIZE_CHOICES:
        raise UserError(f"--quantize {quantize!r} is not one of {', '.join(QUANTIZE_CHOICES)}")
    torch = _torch()
    if not any(engine in torch.backends.quantized.supported_engines for engine in ("x86", "fbgemm", "qnnpack")):
        raise UserError("--quantize int8 needs PyTorch's int8 CPU kernels (fbgemm or qnnpack), which this torch "
                        "build lacks; sample without --quantize")


def _torch():
    try:
        import torch
    except ImportError:
        raise UserError("--quantize int8 runs on PyTorch's int8 kernels and PyTorch is not installed; "
                        "install torch or sample without --quantize") from None
    return torch

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

quantize="int8" sends every feed, of any length and for any engine, through an int8
step, one character at a time: the compiled native.NativeStep, or where it cannot be
built the NumPy FusedStep with the same numbers (quantize.QuantLinear). The loss that
evaluation reports is then the int8 model's own. `generator` lets sampling draw the
characters inside the compiled step as well.
"""
from __future__ import annotations

import contextlib
import sys
from typing import Callable, Dict, Optional, Tuple

import numpy as np

from .errors import UserError


class Runner:
    def __init__(self, model, quantize: Optional[str] = None):
        self.model, self.quantize = model, quantize
        self.is_torch = not hasattr(model, "forward_train")
        self._fused: Dict[int, object] = {}  # batch size -> fastgen.FusedStep, or native.NativeStep for int8
        self._inside: Dict[int, tuple] = {}   # batch size -> the state that step holds now
        if self.is_torch:
            import torch

            self.torch = torch
            model.eval()
            self.device = next(model.parameters()).device
            if quantize and self.device.type != "cpu":
                raise UserError(f"--quantize {quantize} runs on the CPU's int8 kernels; use --device cpu")
        if quantize:  # build it now: a bad choice fails, and the C step compiles, before any output
            self._fused_step(1)

    def zero_state(self, batch_size: int):
        return self.model.initial_state(batch_size)

    def feed(self, indices: np.ndarray, state) -> Tuple[np.ndarray, tuple]:
        """indices (B, T) -> logits (B, T, V) as float64 NumPy, new state."""
        if self.quantize:
            return self._feed_fused(np.asarray(indices), state)
        if self.is_torch:
            step = np.shape(indices)[1] == 1 and self.device.type == "cpu"
            with self.torch.inference_mode(), (_onednn_off(self.torch) if step else contextlib.nullcontext()):
                logits, state = self.model(self.torch.as_tensor(indices, device=self.device), state)
            return logits.double().cpu().numpy(), state
        indices = np.asarray(indices)
        if indices.shape[1] == 1:
            return self._feed_fused(indices, state)
        self.model.eval()
        logits, state = self.model.forward(indices, state)
        return logits.astype(np.float64), state

    def stepper(self, state, batch_size: int) -> Callable[[np.ndarray], np.ndarray]:
        """step(chars (B,) ints) -> logits (B, V), starting from `state` and carrying it inside.

        For generation's tight loop: on the FusedStep path a step skips everything `feed`
        does around the step (state copies in and out, new arrays), ~10% of an int8 step.
        The logits are valid until the next call.
        """
        if not self.quantize and self.is_torch:
            held = [state]

            def step(chars):
                logits, held[0] = self.feed(chars[:, None], held[0])
                return logits[:, -1]

            return step
        fused = self._fused_step_from(state, batch_size)

        def fused_step(chars):
            with self._blas_threads(batch_size):
                return fused.step(chars)

        return fused_step

    def generator(self, state, batch_size: int) -> Optional[Callable]:
        """gen(last (B, V) or None, n, temperature, uniforms (n, B) or None) -> (n, B) characters drawn
        and fed in compiled code (native.NativeStep.generate), from `state`; None without one.

        The first call passes the logits that predict the first character; later calls pass
        None and continue where the last one ended. uniforms None takes the argmax.
        """
        if not self.quantize or not hasattr(self._fused_step(batch_size), "generate"):
            return None
        return self._fused_step_from(state, batch_size).generate

    def select(self, state, rows: np.ndarray):
        """Keep the given batch rows of a state (beam search reorders beams)."""
        if self.is_torch:
            index = self.torch.as_tensor(rows, device=self.device)
            return tuple(s[:, index] for s in state)
        return tuple(s[:, rows] for s in state)

    def _blas_threads(self, batch_size: int):
        if batch_size > 1 or self.quantize:
            return contextlib.nullcontext()
        from .fastgen import one_blas_thread_unless_chosen

        return one_blas_thread_unless_chosen()

    def _feed_fused(self, indices: np.ndarray, state) -> Tuple[np.ndarray, tuple]:
        """The FusedStep path, one character at a time; the state handed back stays valid for good."""
        B = indices.shape[0]
        fused = self._fused_step(B)
        if state is not self._inside.get(B):  # skip the copy in when the state is the one just handed out
            fused.set_state(self._as_numpy(state))
        with self._blas_threads(B):  # switching OpenBLAS's threads costs ~30 us: not for int8, which needs no BLAS
            logits = fused.feed(indices)                          # (B, T, V)
        state = fused.get_state()
        if self.is_torch:
            state = tuple(self.torch.from_numpy(s) for s in state)
        self._inside[B] = state
        return logits, state

    @staticmethod
    def _as_numpy(state) -> tuple:
        return tuple(s.cpu().numpy() if hasattr(s, "cpu") else s for s in state)

    def _fused_step_from(self, state, batch_size: int):
        """The step for this batch size, holding `state`, for a loop that carries the state inside it."""
        fused = self._fused_step(batch_size)
        fused.set_state(self._as_numpy(state))
        self._inside.pop(batch_size, None)  # the step's state moves on: no state handed out matches it now
        return fused

    def _fused_step(self, batch_size: int):
        if batch_size not in self._fused:
            from .fastgen import FusedStep

            if self.quantize:
                self._fused[batch_size] = _int8_step(self.model, batch_size)
            else:
                self._fused[batch_size] = FusedStep.from_model(self.model, batch_size)
        return self._fused[batch_size]


def _int8_step(model, batch_size: int):
    """The compiled int8 step (native.py), or NumPy's with the same numbers, at float speed, and a warning."""
    from .fastgen import FusedStep
    from .native import NativeStep, kernel, kernel_problem

    if kernel() is not None:
        return NativeStep.from_model(model, batch_size)
    if not _warned:
        _warned.append(True)
        print(f"warning: --quantize int8 runs in NumPy, at float speed: its compiled step is unavailable "
              f"({kernel_problem()})", file=sys.stderr)
    return FusedStep.from_model(model, batch_size, quantize="int8")


_warned: list = []


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

"""The front door of inference: feed characters to any engine, get NumPy logits and the state back.

Sampling, evaluation and the playground use a Predictor, so they never ask which engine
they hold. States cross this door as tuples of (L, B, H) NumPy arrays, whatever the engine.

Two ways in:
- `feed(indices, state)`: a pure function of its inputs, for windows (a prime, evaluation,
  beam search). Windows longer than one character use the engine's own forward; one
  character, and every feed when quantized, goes through a Step made for the call.
- `start(state, batch_size)`: a Step of its own, holding a copy of `state`, for generation's
  tight loop. Each generation owns its Step, so interleaved generations on one model never
  touch each other's state; only the weights, prepared once, are shared.

Which Step: the naive engine's float32 NumpyStep (its fused layout, built once from a snapshot
of the weights: build a new Predictor after changing them); for torch engines their own
forward at T = 1 with oneDNN off (several times faster for nn.LSTM at batch 1 on CPU); with
quantize="int8", for any engine, the compiled int8 NativeStep, or where it cannot be built
the NumpyStep with the same int8 numbers, and a warning.

A labelled run (config.labels, issue #29) is predicted under one label, fixed for the Predictor's
life: the engine's forward gets labels (B,), the same row for every stream, and the Steps that
prepare weights (NumpyStep, NativeStep) prepare the folded model (models.base.fold_label), an
ordinary unlabelled model whose first-layer input bias holds the label's row: no kernel knows
about labels.
"""
from __future__ import annotations

import contextlib
import threading
import warnings
from typing import Optional, Tuple

import numpy as np

from charrnn.config import QUANTIZE_MODES
from charrnn.devices import one_blas_thread_unless_chosen
from charrnn.errors import UserError
from charrnn.infer.steps import NumpyStep, NumpyWeights, Step, StepState
from charrnn.models.base import CharModel, State, fold_label, state_size


class Predictor:
    """Inference for one model; `quantize` must already be valid (None or one of QUANTIZE_MODES), and so must
    `label`: for a labelled model the index of one of its labels (api.py checks the name), else None."""

    def __init__(self, model: CharModel, quantize: Optional[str] = None, label: Optional[int] = None):
        assert quantize is None or quantize in QUANTIZE_MODES, quantize  # checked where the option entered
        labels = model.config.labels
        if bool(labels) != (label is not None):  # a caller's bug: the name was checked where it entered
            raise ValueError(f"a model trained with {len(labels)} labels is predicted under one label index"
                             if labels else "this model was trained without labels: give label=None")
        assert label is None or 0 <= label < len(labels), label
        self.model, self.quantize, self.label = model, quantize, label
        self.backend = model.backend
        self._forward = _FORWARDS[self.backend](model, label)
        if quantize and self._forward.device_type != "cpu":
            raise UserError(f"{quantize} quantization runs on the CPU's int8 kernels; load the model on the CPU "
                            "(device cpu)")
        self._weights = None              # NumpyWeights or native.NativeWeights, prepared once
        self._lock = threading.Lock()
        if quantize or self.backend == "numpy":  # now: a bad build fails, and the C step compiles, before any output
            self._prepared()

    def zero_state(self, batch_size: int) -> State:
        cfg = self.model.config
        return tuple(np.zeros((cfg.layers, batch_size, cfg.hidden), np.float32) for _ in range(state_size(cfg.cell)))

    def feed(self, indices: np.ndarray, state: State) -> Tuple[np.ndarray, State]:
        """indices (B, T) -> logits (B, T, V) float64 NumPy, and the new state (NumPy)."""
        indices = np.asarray(indices)
        if not self.quantize and indices.shape[1] > 1:
            logits, state = self._forward(indices, state)
            return logits.astype(np.float64), state
        step = self.start(state, indices.shape[0])
        with self._blas_threads(indices.shape[0]):
            logits = step.feed(indices)
        return logits, step.get_state()

    def _pins_blas(self, batch_size: int) -> bool:
        """Small matrix-vector products run fastest on one BLAS thread (devices.py): the NumPy float step
        at batch 1. int8 needs no BLAS, and the other engines run their own threads."""
        return batch_size == 1 and not self.quantize and self.backend == "numpy"

    def start(self, state: State, batch_size: int) -> Step:
        """A Step of its own holding a copy of `state`, for a loop that carries the state inside it."""
        if self.quantize or self.backend == "numpy":
            step = self._prepared().make_step(batch_size)
        else:
            step = ModelStep(self._forward, batch_size)  # the label goes in with every call (_forward)
        step.set_state(state)
        return step

    def step_function(self, step: Step):
        """step.step with NumPy's BLAS pinned to one thread around each call where that is faster (batch 1)."""
        if not self._pins_blas(step.batch_size):
            return step.step

        def pinned(chars):
            with one_blas_thread_unless_chosen():
                return step.step(chars)

        return pinned

    def select(self, state: State, rows: np.ndarray) -> State:
        """Keep the given batch rows of a state (beam search reorders beams)."""
        return tuple(s[:, rows] for s in state)

    def _blas_threads(self, batch_size: int):
        return one_blas_thread_unless_chosen() if self._pins_blas(batch_size) else contextlib.nullcontext()

    def _prepared(self):
        with self._lock:
            if self._weights is None:
                self._weights = _prepare(self.model, self.quantize, self.label)
            return self._weights


class _Prepared:
    """Weights prepared once and the Step class that shares them."""

    def __init__(self, step_class, weights):
        self.step_class, self.weights = step_class, weights

    def make_step(self, batch_size: int) -> Step:
        return self.step_class.sharing(self.weights, batch_size)


def _prepare(model: CharModel, quantize: Optional[str], label: Optional[int] = None) -> _Prepared:
    """The compiled int8 step (native.py), or NumPy's with the same numbers (at float speed, with a warning);
    without quantize, the NumPy float step. `label`: the model with that label folded in (fold_label)."""
    config, params = model.config, model.get_parameters()
    if label is not None:
        config, params = fold_label(config, params, label)
    if quantize is None:
        return _Prepared(NumpyStep, NumpyWeights(config, params, NumpyWeights.model_dtype(model)))
    from charrnn.infer.native import NativeStep, NativeWeights, kernel, kernel_problem

    if kernel() is not None:
        return _Prepared(NativeStep, NativeWeights(config, params))
    warnings.warn(f"int8 quantization runs in NumPy, at float speed: its compiled step is unavailable "
                  f"({kernel_problem()})", NativeStepUnavailable, stacklevel=3)
    return _Prepared(NumpyStep, NumpyWeights(config, params, quantize="int8"))


class NativeStepUnavailable(UserWarning):
    """The compiled int8 step could not be built; int8 runs in NumPy (same numbers, float speed)."""


warnings.simplefilter("once", NativeStepUnavailable)


class ModelStep(StepState):
    """A Step through an engine's own forward, one character at a time (torch, TensorFlow, ONNX...)."""

    def __init__(self, forward, batch_size: int):
        self.forward, self.batch_size = forward, batch_size
        self.state: State = ()

    def set_state(self, state: State) -> None:
        self.state = tuple(np.array(s, dtype=np.float32) for s in state)

    def get_state(self) -> State:
        return tuple(s.copy() for s in self.state)

    def step(self, chars) -> np.ndarray:
        logits, self.state = self.forward(np.asarray(chars)[:, None], self.state)
        return logits[:, -1]

    def feed(self, indices: np.ndarray) -> np.ndarray:
        logits, self.state = self.forward(np.asarray(indices), self.state)
        return logits.astype(np.float64)


# ---- each backend's forward: NumPy indices and state in, NumPy logits and state out -------------
# A labelled model's forward gets labels (B,): the Predictor's one label for every stream.

def _labels(label: Optional[int], batch_size: int) -> dict:
    """The forward's keyword for a label (none for an unlabelled model, whose forward refuses labels)."""
    return {} if label is None else {"labels": np.full(batch_size, label, dtype=np.int64)}


class _NumpyForward:
    device_type = "cpu"

    def __init__(self, model, label: Optional[int] = None):
        self.model, self.label = model, label

    def __call__(self, indices: np.ndarray, state: State):
        self.model.eval()
        with one_blas_thread_unless_chosen() if indices.shape[0] == 1 else contextlib.nullcontext():
            logits, state = self.model.forward(indices, tuple(np.asarray(s, self.model.dtype) for s in state),
                                               **_labels(self.label, indices.shape[0]))
        return logits, state


class _TorchForward:
    def __init__(self, model, label: Optional[int] = None):
        import torch

        self.torch, self.model, self.label = torch, model, label
        model.eval()
        self.device = next(model.parameters()).device
        self.device_type = self.device.type

    def __call__(self, indices: np.ndarray, state: State):
        torch = self.torch
        one_step = indices.shape[1] == 1 and self.device_type == "cpu"
        state = tuple(torch.as_tensor(np.asarray(s), device=self.device) for s in state)
        labels = {k: torch.as_tensor(v, device=self.device) for k, v in _labels(self.label, indices.shape[0]).items()}
        with torch.inference_mode(), (_onednn_off(torch) if one_step else contextlib.nullcontext()):
            logits, state = self.model(torch.as_tensor(indices, device=self.device), state, **labels)
        return logits.float().cpu().numpy(), tuple(s.float().cpu().numpy() for s in state)


class _GenericForward:
    """An engine whose forward takes and returns array-likes (TensorFlow, ONNX Runtime)."""

    def __init__(self, model, label: Optional[int] = None):
        self.model = model.eval()            # no dropout when predicting (the TF engines)
        self.device_type = model.device_type
        self.label = label

    def __call__(self, indices: np.ndarray, state: State):
        logits, state = self.model.forward(indices, state, **_labels(self.label, np.shape(indices)[0]))
        return np.asarray(logits, np.float32), tuple(np.asarray(s, np.float32) for s in state)


_FORWARDS = {"numpy": _NumpyForward, "torch": _TorchForward, "tensorflow": _GenericForward, "onnx": _GenericForward}


@contextlib.contextmanager
def _onednn_off(torch):
    """torch.backends.mkldnn.flags(enabled=False) without touching (and warning about) TF32."""
    was = torch.backends.mkldnn.enabled
    torch.backends.mkldnn.enabled = False
    try:
        yield
    finally:
        torch.backends.mkldnn.enabled = was

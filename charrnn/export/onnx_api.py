"""`charrnn sample --onnx` and `charrnn eval --onnx`: an exported model behind the same front door.

`OnnxRunner` does for an `OnnxCharModel` what runner.Runner does for the engines (feed characters,
hand back float64 logits and the carried state), so sampling, beam search and evaluation run the
same code, with the same knobs and the same seed rule (sample.sample_next: one uniform per row
per step), whichever model they hold. `load_onnx` is `charrnn.load` for a .onnx file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Callable

import numpy as np

from ..api import TrainedModel
from ..errors import UserError
from .onnx_model import OnnxCharModel


class OnnxRunner:
    """The Runner interface (zero_state, feed, stepper, generator, select) over ONNX Runtime."""

    quantize = None  # int8 lives in the file itself; nothing to choose at run time

    def __init__(self, model: OnnxCharModel):
        self.model = model

    def zero_state(self, batch_size: int):
        return self.model.initial_state(batch_size)

    def feed(self, indices: np.ndarray, state) -> tuple[np.ndarray, tuple]:
        """indices (B, T) -> logits (B, T, V) as float64, new state."""
        logits, state = self.model.forward(indices, state)
        return logits.astype(np.float64), state

    def stepper(self, state, batch_size: int) -> Callable[[np.ndarray], np.ndarray]:
        """step(chars (B,) ints) -> logits (B, V), carrying the state inside."""
        held = [state]

        def step(chars):
            logits, held[0] = self.model.forward(np.asarray(chars, dtype=np.int64)[:, None], held[0])
            return logits[:, -1].astype(np.float64)

        return step

    def generator(self, state, batch_size: int):
        return None  # no compiled draw: sample.sample_next draws in NumPy

    def select(self, state, rows: np.ndarray):
        return tuple(s[:, rows] for s in state)


class OnnxTrainedModel(TrainedModel):
    """TrainedModel's sample, stream, beam and evaluate over an exported .onnx file."""

    def __init__(self, path, threads: int | None = None):  # not super().__init__, which reads a run directory
        self.run_dir = None
        self.path = Path(path)
        self.model = OnnxCharModel(path, threads=threads)
        self.config, self.vocab = self.model.config, self.model.vocab
        self.impl = "onnx"
        self.runner = OnnxRunner(self.model)


def load_onnx(path, threads: int | None = None) -> OnnxTrainedModel:
    return OnnxTrainedModel(path, threads=threads)


def load_from_args(args) -> OnnxTrainedModel:
    """The --onnx model of a `sample` or `eval` command line; flags that only a run directory uses are refused."""
    if args.quantize:
        raise UserError("--quantize applies to --checkpoint; an .onnx file is quantized when it is exported "
                        "('charrnn export --format onnx --quantize int8')")
    for flag, default in (("which", "latest"), ("impl", "library"), ("device", "cpu")):
        if getattr(args, flag) != default:
            raise UserError(f"--{flag} applies to --checkpoint only; --onnx runs the file in ONNX Runtime on the CPU")
    return load_onnx(args.onnx)

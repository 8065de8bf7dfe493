"""`charrnn sample --onnx` and `charrnn eval --onnx`: an exported model behind the same front door.

An `OnnxCharModel` is a CharModel whose backend is "onnx", so the usual Predictor feeds it and
sampling, beam search and evaluation run the same code, with the same knobs and the same seed
rule (infer.sampling.sample_next: one uniform per row per step), whichever model they hold.
`load_onnx` is `charrnn.load` for a .onnx file.
"""
from __future__ import annotations

from pathlib import Path
from typing import Optional

from charrnn.errors import UserError
from charrnn.export.onnx_model import OnnxCharModel
from charrnn.infer.api import TrainedModel
from charrnn.infer.predictor import Predictor


class OnnxTrainedModel(TrainedModel):
    """TrainedModel's sample, stream, beam and evaluate over an exported .onnx file."""

    def __init__(self, path, threads: Optional[int] = None):  # not super().__init__, which reads a run directory
        self.run_dir = None
        self.path = Path(path)
        self.model = OnnxCharModel(path, threads=threads)
        self.config, self.vocab = self.model.config, self.model.vocab
        self.impl = "onnx"
        self.predictor = Predictor(self.model)


def load_onnx(path, threads: Optional[int] = None) -> OnnxTrainedModel:
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

"""charrnn: character-level recurrent language models with interchangeable engines.

    import charrnn
    model = charrnn.load("runs/shakespeare")                  # a trained run, for sampling and evaluation
    text = charrnn.read_text("notes.txt")                     # read exactly as training and `charrnn eval` read
"""

from charrnn.errors import UserError  # a ValueError: what a bad option or file raises

__version__ = "0.2.0"


def load(run_dir, impl: str = "library", which: str = "latest", device: str = "cpu", quantize=None):
    """Load a trained run for sampling and evaluation; see charrnn.infer.api.load and TrainedModel."""
    from charrnn.infer.api import load as _load

    return _load(run_dir, impl=impl, which=which, device=device, quantize=quantize)


def load_onnx(path):
    """A model exported with `charrnn export --format onnx`, run by ONNX Runtime alone (no torch)."""
    from charrnn.infer.api import load_onnx as _load_onnx

    return _load_onnx(path)


def read_text(path) -> str:
    """A text file read as charrnn reads every text: UTF-8, a byte-order mark dropped, line endings kept."""
    from charrnn.data.textfile import read_text_file

    return read_text_file(path)


__all__ = ["UserError", "load", "load_onnx", "read_text"]

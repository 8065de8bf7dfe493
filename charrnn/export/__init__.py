"""Take a trained model elsewhere: an ONNX file any ONNX Runtime can run, or a static web page.

    charrnn export --checkpoint RUN --format onnx --out model.onnx [--quantize int8]
    charrnn export --checkpoint RUN --format web --out DIR

onnx_export.py builds the .onnx from the canonical weights (NumPy + the `onnx` package: no
torch), onnx_model.py runs one with ONNX Runtime alone, web.py writes the page (web_static/).
The `onnx` extra (errors.install_hint) is imported only inside the functions that
need it, through `require`, so the rest of charrnn never loads it.
"""
from __future__ import annotations

import importlib

from charrnn.errors import UserError, install_hint

INSTALL_HINT = install_hint("onnx")


def require(module: str, what: str):
    """Import `module` ('onnx' or 'onnxruntime') or raise a one-line UserError saying what to install."""
    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{what} needs the {module} package, which is not installed: {INSTALL_HINT}") from None

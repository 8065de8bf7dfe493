"""Take a trained model elsewhere: an ONNX file any ONNX Runtime can run, or a static web page.

    charrnn export --checkpoint RUN --format onnx --out model.onnx [--quantize int8]
    charrnn export --checkpoint RUN --format web --out DIR

onnx_export.py builds the .onnx from the canonical weights (NumPy + the `onnx` package: no
torch); models/onnx_runtime.py runs one with ONNX Runtime alone (`charrnn sample --onnx`);
web.py writes the page (web_static/). The `onnx` extra is imported only inside the functions
that need it (errors.require_package), so the rest of charrnn never loads it.
"""

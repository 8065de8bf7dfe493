"""Inference: the front door (predictor.Predictor) over one-character Steps (steps: NumPy float or int8;
native: the compiled int8 step and native_step.c; linear: their matmuls), sampling, evaluation,
the Python API (api) and `charrnn sample` / `charrnn eval` (cli)."""

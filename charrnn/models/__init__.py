"""The five engines behind one interface (see base.py), built by name."""
from __future__ import annotations

import numpy as np

from charrnn.config import ModelConfig
from charrnn.errors import UserError


def build_model(impl: str, config: ModelConfig, seed: int = 0, params=None, device=None,
                dtype: str = "float32", script: bool = False):
    """Build an engine by name. The naive engine needs NumPy only; tf and keras need TensorFlow (not torch),
    and `device` is then a TensorFlow device name ('/CPU:0', '/GPU:0'); scratch and library need torch."""
    if impl == "naive":
        from charrnn.models.naive import NaiveModel

        return NaiveModel(config, params=params, dtype=np.dtype(dtype), seed=seed)
    if impl in ("tf", "keras"):  # TensorFlow, imported by these engines only (models/tf_common.py)
        if impl == "tf":
            from charrnn.models.tf_engine import TFModel as model_class
        else:
            from charrnn.models.keras_engine import KerasModel as model_class

        return model_class(config, seed=seed, params=params, dtype=dtype, device=device or "/CPU:0")
    try:
        import torch
    except ImportError:
        raise UserError(f"--impl {impl} needs PyTorch, which is not installed; "
                        "install torch or use --impl naive") from None
    if impl == "scratch":
        from charrnn.models.scratch import ScratchModel

        model = ScratchModel(config, seed=seed, script=script)
    elif impl == "library":
        from charrnn.models.library import LibraryModel

        model = LibraryModel(config, seed=seed)
    else:
        raise UserError(f"--impl {impl!r} is not one of naive, scratch, library, tf, keras")
    model = model.to(dtype=getattr(torch, dtype))
    if params is not None:
        model.set_parameters(params)
    if device is not None:
        model = model.to(device)
    return model

"""What the two TensorFlow engines (tf_engine.py, keras_engine.py) share.

TensorFlow is optional: it is imported here, and only here, the first time a
TF engine is built, never by the rest of charrnn. `require_tensorflow` turns a
missing install into one line for the user, quiets TensorFlow's start-up
chatter, and sets its thread pools once, before TensorFlow's runtime starts:

- intra-op threads (one matmul split across cores): `$CHARRNN_TF_THREADS`, else
  `$OMP_NUM_THREADS`, else the cores this process may use;
- inter-op threads (independent ops side by side): `$CHARRNN_TF_INTER_THREADS`, else 2
  (TensorFlow's default is one per core). A window's graph is mostly one chain of
  dependent steps; in alternating runs on a busy 2-core machine 2 was 1.0-1.3x 1 for
  the tf engine and within noise for keras, and more only adds threads that wait.

Both engines hand the trainer (train/tf_step.py) the same few things:
`call(x, state, training, labels=None)` (traceable TF code; labels (B, T) int32 for a
labelled model), `training_variables()` [(key, tf.Variable)], `rng_variables()`
{name: tf.Variable}, `device`, `tf_dtype`, `optimizer_layout` ("canonical" or "keras":
the keys of the optimizer's slots).
"""
from __future__ import annotations

import os
import re
import sys
import tempfile
from typing import Optional

from charrnn.errors import UserError, install_hint

_TF = None

# Lines TensorFlow writes to the process's stderr while it loads (C++ logging that starts before
# TF_CPP_MIN_LOG_LEVEL is read, so no setting silences it). Anything else is passed through.
_NOISE = re.compile(r"absl::InitializeLog|oneDNN custom operations are on|TF_ENABLE_ONEDNN_OPTS|"
                    r"Unable to register cu(DNN|FFT|BLAS) factory|computation placer already registered|"
                    r"This TensorFlow binary is optimized|rebuild TensorFlow with the appropriate compiler|"
                    r"TF-TRT Warning|Could not find cuda drivers|cuda_executor|successful NUMA node read|"
                    r"^\s*$")


def missing_tensorflow(impl: str) -> str:
    return (f"--impl {impl} needs TensorFlow, which is not installed: {install_hint('tensorflow')}; "
            "or use --impl library or naive")


def require_tensorflow(impl: str = "tf"):
    """The tensorflow module, imported once (quietly, threads set); UserError when it is not installed."""
    global _TF
    if _TF is not None:
        return _TF
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")   # C++ INFO and WARNING off
    try:
        tf = _quiet_import()
    except ImportError:
        raise UserError(missing_tensorflow(impl)) from None
    _set_threads(tf)
    tf.get_logger().setLevel("ERROR")                       # Python-side deprecation chatter
    _TF = tf
    return tf


def require_keras(impl: str = "keras"):
    """keras (3, on the TensorFlow backend), with TensorFlow set up as above."""
    require_tensorflow(impl)
    os.environ.setdefault("KERAS_BACKEND", "tensorflow")
    try:
        import keras
    except ImportError:
        raise UserError(missing_tensorflow(impl)) from None
    backend = keras.backend.backend()
    if backend != "tensorflow":
        raise UserError(f"--impl {impl} runs Keras on TensorFlow, but KERAS_BACKEND is {backend!r}; "
                        "unset KERAS_BACKEND or set it to tensorflow")
    return keras


def _quiet_import():
    """import tensorflow with file descriptor 2 sent to a temporary file, then replay what was not noise."""
    if "tensorflow" in sys.modules and sys.modules["tensorflow"] is not None:
        return sys.modules["tensorflow"]
    try:
        sys.stderr.flush()
        saved = os.dup(2)
    except (OSError, ValueError, AttributeError):   # no real stderr (embedded, captured): import plainly
        import tensorflow

        return tensorflow
    with tempfile.TemporaryFile(mode="w+b") as captured:
        os.dup2(captured.fileno(), 2)
        try:
            import tensorflow
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            captured.seek(0)
            lines = captured.read().decode("utf-8", "replace").splitlines()
            kept = [line for line in lines if not _NOISE.search(line)]
            if kept:
                print("\n".join(kept), file=sys.stderr, flush=True)
    return tensorflow


def _env_int(*names: str) -> Optional[int]:
    for name in names:
        value = os.environ.get(name, "").strip()
        if value.isdigit() and int(value) > 0:
            return int(value)
    return None


def _cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def _set_threads(tf) -> None:
    intra = _env_int("CHARRNN_TF_THREADS", "OMP_NUM_THREADS") or _cores()
    inter = _env_int("CHARRNN_TF_INTER_THREADS") or min(2, _cores())
    try:
        tf.config.threading.set_intra_op_parallelism_threads(intra)
        tf.config.threading.set_inter_op_parallelism_threads(inter)
    except RuntimeError:
        pass   # TensorFlow's runtime started before charrnn (a caller imported and used it): keep its pools


def resolve_tf_device(name: str, impl: str) -> str:
    """--device for TensorFlow: auto -> a GPU TensorFlow sees, else the CPU. Returns '/CPU:0' or '/GPU:0'.

    TensorFlow has no 'cuda' or 'mps' devices of its own: both mean its GPU (CUDA on Linux,
    tensorflow-metal on a Mac), which tensorflow-cpu never has.
    """
    tf = require_tensorflow(impl)
    gpus = tf.config.list_physical_devices("GPU")
    if name == "cpu" or (name == "auto" and not gpus):
        return "/CPU:0"
    if not gpus:
        raise UserError(f"--device {name}: TensorFlow sees no GPU here (tensorflow-cpu never does; a GPU needs "
                        "pip install 'tensorflow[and-cuda]'); use --device cpu (or auto)")
    local = _env_int("LOCAL_RANK") or 0
    return f"/GPU:{min(local, len(gpus) - 1)}"


def as_state(state, dtype, impl: str = "tf") -> tuple:
    """A state of NumPy arrays or tensors -> a tuple of tf tensors of `dtype` (each (L, B, H))."""
    tf = require_tensorflow(impl)
    return tuple(tf.convert_to_tensor(s, dtype=dtype) if not isinstance(s, tf.Tensor) or s.dtype != dtype
                 else s for s in state)


def as_inputs(inputs, impl: str = "tf"):
    """(B, T) character indices, NumPy or tensor of any integer type -> an int32 tensor."""
    tf = require_tensorflow(impl)
    if isinstance(inputs, tf.Tensor):
        return tf.cast(inputs, tf.int32) if inputs.dtype != tf.int32 else inputs
    import numpy as np

    return tf.convert_to_tensor(np.asarray(inputs, dtype=np.int32))


def as_labels(config, labels, inputs, impl: str = "tf"):
    """labels (B, T) or (B,), NumPy or tensor -> an int32 (B, T) tensor beside inputs (B, T); None for an
    unlabelled model. ValueError when they do not fit (models/base.check_labels). Eager: outside the trace."""
    from charrnn.models.base import check_labels

    tf = require_tensorflow(impl)
    if labels is not None and not isinstance(labels, tf.Tensor):
        import numpy as np

        labels = np.asarray(labels)
    check_labels(config, labels, tuple(inputs.shape))
    if labels is None:
        return None
    labels = as_inputs(labels, impl)
    return tf.broadcast_to(labels[:, None], tf.shape(inputs)) if labels.shape.rank == 1 else labels   # (B, T)


def state_specs(config, dtype) -> list:
    """tf.TensorSpecs of a state (L, B, H) with any batch: one trace serves every batch size."""
    from charrnn.models.base import state_size

    tf = require_tensorflow()
    return [tf.TensorSpec([config.layers, None, config.hidden], dtype) for _ in range(state_size(config.cell))]


def zero_state(config, batch_size: int, dtype, device: str) -> tuple:
    from charrnn.models.base import state_size

    tf = require_tensorflow()
    with tf.device(device):
        return tuple(tf.zeros([config.layers, batch_size, config.hidden], dtype)
                     for _ in range(state_size(config.cell)))


class TFCharModel:
    """What the two TensorFlow engines share as CharModels: train/eval mode, the device, the zero state,
    and a forward compiled once per mode (tf.function over a window; NumPy accepted going in).

    A subclass sets `tf`, `config`, `tf_dtype`, `device` and `training`, defines
    `call(x, state, training, labels=None)` (the window's traceable function), and calls `_compile_forward()`.
    A labelled model's forward takes labels (B, T) int32 as one more input, after x; an
    unlabelled model's trace is what it was before labels existed.
    """

    backend = "tensorflow"   # its forward takes and returns tf tensors (infer/predictor.py converts)

    def _compile_forward(self) -> None:
        tf = self.tf
        labels = [tf.TensorSpec([None, None], tf.int32)] if self.config.labels else []
        signature = [tf.TensorSpec([None, None], tf.int32), *labels, *state_specs(self.config, self.tf_dtype)]
        self._forward = {mode: tf.function(self._caller(mode), input_signature=signature) for mode in (False, True)}

    def _caller(self, training: bool):
        if self.config.labels:
            return lambda x, labels, *state: self.call(x, state, training, labels=labels)
        return lambda x, *state: self.call(x, state, training)

    def train(self, mode: bool = True):
        self.training = mode
        return self

    def eval(self):
        return self.train(False)

    @property
    def device_type(self) -> str:
        """'cpu' or 'gpu', as the Predictor asks (int8 runs on the CPU only)."""
        return "gpu" if "GPU" in self.device.upper() else "cpu"

    def initial_state(self, batch_size: int) -> tuple:
        return zero_state(self.config, batch_size, self.tf_dtype, self.device)

    def forward(self, inputs, state, labels=None):
        """inputs (B, T) ints (NumPy or tensor), state, labels (B, T) or (B,) for a labelled model ->
        (logits (B, T, V), new state) as tf tensors."""
        with self.tf.device(self.device):
            x = as_inputs(inputs)
            lab = as_labels(self.config, labels, x)
            given = (x,) if lab is None else (x, lab)
            logits, new_state = self._forward[self.training](*given, *as_state(state, self.tf_dtype))
        return logits, tuple(new_state)

    __call__ = forward

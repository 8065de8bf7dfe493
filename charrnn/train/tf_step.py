"""One training step for the two TensorFlow engines (`--impl tf`, `--impl keras`).

`TFLearner` is what the trainer calls (the `Learner` interface of train/learners.py, as the NumPy and
torch learners): one `tf.function` per window runs the forward over the whole window,
the mean cross-entropy in nats, `tf.GradientTape`, global-norm clipping and the
optimizer's update, in one graph. The state a window ends with comes back as
plain tensors and goes into the next call as an input, so no gradient crosses
windows (truncated BPTT), exactly as the other engines detach it.

The optimizers are written here, on the variables, with torch.optim's update
rules and defaults, because TensorFlow's own differ where it matters:

- Keras' Adagrad starts its accumulator at 0.1 (`initial_accumulator_value`) and
  adds eps 1e-7; torch's starts at 0 and adds 1e-10 (after the square root);
- Keras' Adam adds eps 1e-7 to sqrt(v_hat) computed from a bias-corrected lr
  ("epsilon hat"); torch adds 1e-8 to sqrt(v) / sqrt(1 - beta2^t);
- Keras' `weight_decay` is decoupled in every optimizer; in torch (and charrnn)
  `--weight-decay` is L2 added to the gradient for adagrad and adam, decoupled
  (lr * wd) for adamw;
- Keras' `clipnorm` clips each tensor alone; torch's clip_grad_norm_ clips the
  global norm with coef = clip / (norm + 1e-6), at most 1.

With these, `--optimizer`, `--lr`, `--weight-decay` and `--grad-clip` mean the
same for every engine, and the slots (sum, exp_avg, exp_avg_sq) mean what the
naive engine's mean. The step is skipped when the loss is not finite, as the
torch learner does; the trainer then stops the run.
"""
from __future__ import annotations

import math
import sys
from typing import Dict, List, Optional, Tuple

import numpy as np

from charrnn.errors import UserError
from charrnn.models.tf_common import as_inputs, as_labels, as_state, require_tensorflow, state_specs
from charrnn.train.numpy_optim import OPTIMIZERS  # the same slots as the naive engine's, by name

OPTIMIZER_DEFAULTS = {
    "adagrad": {"eps": 1e-10},
    "adam": {"betas": (0.9, 0.999), "eps": 1e-8},
    "adamw": {"betas": (0.9, 0.999), "eps": 1e-8},
}


class TFOptimizer:
    """torch.optim.Adagrad / Adam / AdamW on tf.Variables (the single-tensor update, op for op).

    `named` is [(key, tf.Variable)] or [(key, tf.Variable, bias_hh)]; one step counter serves
    them all (every step updates every variable). Slots live next to their variables, in
    their dtype; hyperparameter arithmetic (bias corrections, lr) is done in float64 and
    cast, as torch does with Python floats.

    A `bias_hh` (an array; None for an ordinary variable) marks a variable that holds the sum
    of two canonical parameters: Keras' one bias for torch's b_ih + b_hh, with b_hh's value.
    torch updates each half with the same (full) gradient but its own slots, and with L2 weight
    decay (adam, adagrad) each half's gradient differs (g + wd * half). So the optimizer keeps
    b_hh (`halves`) and a second set of slots for it; b_ih is the sum less b_hh. Each half
    takes torch's step and the sum moves by both: torch's update exactly, whatever the decay.
    """

    def __init__(self, kind: str, named, lr: float, weight_decay: float = 0.0, device: str = "/CPU:0"):
        tf = self.tf = require_tensorflow()
        if kind not in OPTIMIZERS:
            raise UserError(f"--optimizer {kind!r} is not one of {', '.join(OPTIMIZERS)}")
        self.kind, self.weight_decay = kind, float(weight_decay)
        self.hyper = dict(OPTIMIZER_DEFAULTS[kind])
        named = [entry if len(entry) == 3 else (*entry, None) for entry in named]
        self.names = [name for name, _, _ in named]
        self.variables = [v for _, v, _ in named]
        buffers = OPTIMIZERS[kind].buffers
        with tf.device(device):
            self.lr = tf.Variable(float(lr), dtype=tf.float64, trainable=False, name="lr")
            self.step = tf.Variable(0, dtype=tf.int64, trainable=False, name="step")
            self.slots = {b: [self._zeros(v, b, n) for n, v, _ in named] for b in buffers}
            # a summed bias: b_hh's value, and b_hh's own slots (the slots above are b_ih's)
            self.halves = {i: tf.Variable(np.asarray(hh, v.dtype.as_numpy_dtype), trainable=False,
                                          name=f"bias_hh/{n.replace('.', '/')}")
                           for i, (n, v, hh) in enumerate(named) if hh is not None}
            self.half_slots = {b: {i: self._zeros(self.variables[i], b, self.names[i] + "_hh") for i in self.halves}
                               for b in buffers}

    def _zeros(self, var, buffer: str, name: str):
        return self.tf.Variable(self.tf.zeros_like(var), trainable=False, name=f"{buffer}/{name.replace('.', '/')}")

    @property
    def summed(self) -> List[bool]:
        """Which variables hold two canonical parameters (their gradient counts twice in torch's global norm)."""
        return [i in self.halves for i in range(len(self.variables))]

    def apply(self, grads: List) -> None:
        """One update of every variable from its gradient (traceable: called inside the step's tf.function)."""
        tf = self.tf
        step = tf.cast(self.step.assign_add(1), tf.float64)
        if self.kind == "adagrad":
            update = self._adagrad
        else:
            beta1, beta2 = self.hyper["betas"]
            step_size = self.lr / (1.0 - tf.pow(tf.constant(beta1, tf.float64), step))
            correction2_sqrt = tf.sqrt(1.0 - tf.pow(tf.constant(beta2, tf.float64), step))

            def update(var, g, slots):
                return self._adam(var, g, slots, step_size, correction2_sqrt)
        decoupled = self.kind == "adamw" and self.weight_decay
        for i, (var, g) in enumerate(zip(self.variables, grads)):
            slots = [self.slots[b][i] for b in self.slots]
            if decoupled:                                                  # AdamW: shrink the weights first
                shrink = tf.cast(1.0 - self.lr * self.weight_decay, g.dtype)
                var.assign(var * shrink)
                if i in self.halves:
                    self.halves[i].assign(self.halves[i] * shrink)
            if i not in self.halves:
                var.assign_sub(update(var, g, slots))
                continue
            hh = self.halves[i]
            ih = var - hh                                                  # b_ih: the sum less b_hh
            step_ih = update(ih, g, slots)
            step_hh = update(hh, g, [self.half_slots[b][i] for b in self.half_slots])
            var.assign_sub(step_ih + step_hh)
            hh.assign_sub(step_hh)

    # Python numbers enter as tf.constant(x, dtype): tf.cast(x, float64) would first make x a float32 tensor,
    # so a float64 model would train with 1 - beta1 and eps rounded to float32.

    def _adagrad(self, var, g, slots):
        """torch's Adagrad step for `var` (returned, to subtract): L2 decay added to the gradient."""
        tf, dt, (acc,) = self.tf, g.dtype, slots
        if self.weight_decay:
            g = g + tf.constant(self.weight_decay, dt) * var
        acc.assign_add(g * g)
        return tf.cast(self.lr, dt) * (g / (tf.sqrt(acc) + tf.constant(self.hyper["eps"], dt)))

    def _adam(self, var, g, slots, step_size, correction2_sqrt):
        """torch's Adam / AdamW step for `var` (returned, to subtract; AdamW's decay is applied in `apply`)."""
        tf, dt, (m, v) = self.tf, g.dtype, slots
        beta1, beta2 = self.hyper["betas"]
        if self.weight_decay and self.kind == "adam":
            g = g + tf.constant(self.weight_decay, dt) * var                 # L2 added to the gradient
        m.assign_add(tf.constant(1.0 - beta1, dt) * (g - m))                # torch's lerp_(grad, 1 - beta1)
        v.assign(v * tf.constant(beta2, dt) + tf.constant(1.0 - beta2, dt) * (g * g))
        denom = tf.sqrt(v) / tf.cast(correction2_sqrt, dt) + tf.constant(self.hyper["eps"], dt)
        return tf.cast(step_size, dt) * (m / denom)

    def _arrays(self) -> Dict[str, tuple]:
        """Every saved array's key -> (its variable, whether a checkpoint from before the split may lack it)."""
        out = {f"{b}.{n}": (self.slots[b][i], False) for b in self.slots for i, n in enumerate(self.names)}
        for b, slots in self.half_slots.items():
            out.update({f"{b}.{self.names[i]}_hh": (slot, True) for i, slot in slots.items()})
        out.update({f"bias_hh.{self.names[i]}": (h, True) for i, h in self.halves.items()})
        return out

    def state_dict(self, layout: str) -> Tuple[Dict[str, np.ndarray], dict]:
        """(arrays keyed '<buffer>.<key>', metadata): the naive engine's format when the keys are canonical
        (a summed bias adds '<buffer>.<key>_hh' and 'bias_hh.<key>', its b_hh half's slots and value)."""
        arrays = {key: v.numpy() for key, (v, _) in self._arrays().items()}
        meta = {"type": self.kind, "step": int(self.step.numpy()), "lr": float(self.lr.numpy()),
                "weight_decay": self.weight_decay, "layout": layout, **self.hyper}
        return arrays, meta

    def load_state_dict(self, arrays: Dict[str, np.ndarray], meta: dict, layout: str) -> None:
        """The saved slots, step count and lr; the weight decay stays the one this optimizer was made with
        (--weight-decay given with --resume is in force, as config.json records and as in the NumPy and torch
        learners; --lr is set at every step by the schedule). A keras checkpoint from before b_hh was kept apart
        gave both halves the same slots, and its saved weights put the whole bias in b_ih: loaded so."""
        if meta.get("type") != self.kind:
            raise ValueError(f"it is {meta.get('type')!r} state, not {self.kind!r}")
        saved_layout = meta.get("layout", "canonical")
        if saved_layout != layout:
            raise ValueError(f"its slots follow {saved_layout} weights, this engine's follow {layout} weights")
        expected = self._arrays()
        split = [key for key, (_, optional) in expected.items() if optional]
        older = not any(key in arrays for key in split)        # saved before the b_hh half was kept apart
        needed = {key for key, (_, optional) in expected.items() if not (optional and older)}
        if set(arrays) != needed:
            missing = sorted(needed - set(arrays))[:3]
            raise ValueError(f"the slots do not match the model's weights (missing {', '.join(missing) or 'none'})")
        for key in needed:
            if tuple(arrays[key].shape) != tuple(expected[key][0].shape):
                raise ValueError(f"{key} has shape {list(arrays[key].shape)}, expected {list(expected[key][0].shape)}")
        for key, (var, _) in expected.items():
            if key in needed:
                value = arrays[key]
            elif key.startswith("bias_hh."):
                value = np.zeros(var.shape)
            else:
                value = arrays[key[:-len("_hh")]]                    # b_hh's slots were b_ih's
            var.assign(np.asarray(value, var.dtype.as_numpy_dtype))
        self.step.assign(int(meta["step"]))
        self.lr.assign(float(meta["lr"]))
        for h in self.hyper:
            value = meta.get(h, self.hyper[h])
            self.hyper[h] = tuple(float(b) for b in value) if isinstance(value, (list, tuple)) else float(value)


def clip_by_global_norm(tf, grads: List, max_norm: float, summed: Optional[List[bool]] = None) -> List:
    """torch.nn.utils.clip_grad_norm_: scale by max_norm / (norm + 1e-6), clamped to 1. A `summed` variable
    (Keras' one bias for b_ih + b_hh) stands for two parameters with the same gradient: it counts twice."""
    dtype = grads[0].dtype
    norm = global_norm(tf, grads, summed)
    coef = tf.minimum(tf.constant(max_norm, dtype) / (norm + tf.constant(1e-6, dtype)), tf.constant(1.0, dtype))
    return [g * tf.cast(coef, g.dtype) for g in grads]


def global_norm(tf, grads: List, summed: Optional[List[bool]] = None):
    """The gradients' global L2 norm as torch's clip_grad_norm_ counts it (a `summed` variable twice)."""
    dtype = grads[0].dtype
    counts = [2.0 if twice else 1.0 for twice in (summed or [False] * len(grads))]
    return tf.sqrt(tf.add_n([c * tf.reduce_sum(tf.square(tf.cast(g, dtype))) for g, c in zip(grads, counts)]))


def mean_cross_entropy(tf, logits, targets):
    """Mean next-character cross-entropy in nats; logits (B, T, V), targets (B, T) ints."""
    return tf.reduce_mean(tf.nn.sparse_softmax_cross_entropy_with_logits(labels=targets, logits=logits))


class TFLearner:
    """Training for the tf and keras engines: the trainer's learner interface (see train/loop.py)."""

    def __init__(self, model, optimizer: str, lr: float, weight_decay: float, grad_clip: float):
        tf = self.tf = require_tensorflow(model.impl)
        self.model = model
        self.grad_clip = float(grad_clip)
        self._grad_norm = tf.Variable(0.0, dtype=model.tf_dtype, trainable=False)   # set by each train step
        named = model.training_variables()
        self.variables = [entry[1] for entry in named]
        self.optimizer = TFOptimizer(optimizer, named, lr, weight_decay, device=model.device)
        # x, y, and for a labelled model each position's label: the unlabelled trace is what it was without labels
        windows = [tf.TensorSpec([None, None], tf.int32)] * (3 if model.config.labels else 2)
        signature = windows + state_specs(model.config, model.tf_dtype)
        self._train = tf.function(self._train_window, input_signature=signature)
        self._eval = tf.function(self._eval_window, input_signature=signature)

    # ---- the two compiled functions -------------------------------------------------
    def _split(self, inputs: tuple):
        """The compiled functions' inputs after x and y -> (labels (B, T) or None, state)."""
        return (inputs[0], inputs[1:]) if self.model.config.labels else (None, inputs)

    def _train_window(self, x, y, *inputs):
        tf = self.tf
        labels, state = self._split(inputs)
        with tf.GradientTape() as tape:
            logits, new_state = self.model.call(x, state, training=True, labels=labels)
            loss = mean_cross_entropy(tf, logits, y)
        # the embedding's gradient comes as IndexedSlices; dense, as torch's, so Adam's moments
        # decay for rows not in this window too
        grads = [tf.convert_to_tensor(g) for g in tape.gradient(loss, self.variables)]
        self._grad_norm.assign(global_norm(tf, grads, self.optimizer.summed))
        if self.grad_clip > 0:
            grads = clip_by_global_norm(tf, grads, self.grad_clip, self.optimizer.summed)

        def update():
            self.optimizer.apply(grads)
            return tf.constant(True)

        tf.cond(tf.math.is_finite(loss), update, lambda: tf.constant(False))
        return loss, new_state

    def _eval_window(self, x, y, *inputs):
        labels, state = self._split(inputs)
        logits, new_state = self.model.call(x, state, training=False, labels=labels)
        return mean_cross_entropy(self.tf, logits, y), new_state

    # ---- the learner interface --------------------------------------------------------
    def zero_state(self, batch_size: int):
        return self.model.initial_state(batch_size)

    def _run(self, fn, x, y, state, labels) -> Tuple[float, tuple]:
        with self.tf.device(self.model.device):
            x = as_inputs(x)
            lab = as_labels(self.model.config, labels, x)
            given = (x, as_inputs(y)) if lab is None else (x, as_inputs(y), lab)
            loss, new_state = fn(*given, *as_state(state, self.model.tf_dtype))
        return float(loss.numpy()), tuple(new_state)

    def train_step(self, x: np.ndarray, y: np.ndarray, state, labels=None) -> Tuple[float, tuple]:
        self.model.train()
        loss, new_state = self._run(self._train, x, y, state, labels)
        self.grad_norm = float(self._grad_norm.numpy()) if math.isfinite(loss) else math.nan
        return loss, new_state

    def eval_loss(self, x: np.ndarray, y: np.ndarray, state, labels=None) -> Tuple[float, tuple]:
        """Mean loss of one window in eval mode (no dropout), and the carried state."""
        return self._run(self._eval, x, y, state, labels)

    def set_lr(self, lr: float) -> None:
        self.optimizer.lr.assign(float(lr))

    def state_to_numpy(self, state) -> list:
        return [np.asarray(s.numpy() if hasattr(s, "numpy") else s, np.float32) for s in state]

    def state_from_numpy(self, arrays: list) -> tuple:
        with self.tf.device(self.model.device):
            return tuple(self.tf.convert_to_tensor(np.asarray(a, self.model.dtype)) for a in arrays)

    def optimizer_state(self) -> Tuple[Dict[str, np.ndarray], dict]:
        return self.optimizer.state_dict(self.model.optimizer_layout)

    def load_optimizer_state(self, arrays: Dict[str, np.ndarray], meta: dict) -> None:
        try:
            self.optimizer.load_state_dict(arrays, meta, self.model.optimizer_layout)
        except (KeyError, ValueError, TypeError) as e:
            raise UserError(f"the optimizer state in the checkpoint does not fit this model or optimizer ({e}); "
                            "start a new run or resume with the same --optimizer and --impl") from None

    def rng_state(self) -> Tuple[Dict[str, np.ndarray], dict]:
        return {name: v.numpy() for name, v in self.model.rng_variables().items()}, {}

    def set_rng_state(self, arrays: Dict[str, np.ndarray], meta: dict) -> None:
        """Restore the dropout generators. A checkpoint written by another engine has none of ours:
        the weights, optimizer and state still resume exactly, and dropout draws masks anew."""
        ours = self.model.rng_variables()
        missing = [name for name in ours if name not in arrays]
        for name, v in ours.items():
            if name in arrays:
                value = np.asarray(arrays[name])
                if value.shape != tuple(v.shape):
                    raise ValueError(f"RNG state {name} has shape {list(value.shape)}, expected {list(v.shape)}")
                v.assign(value.astype(v.dtype.as_numpy_dtype))
        if missing and self.model.config.dropout > 0:
            print(f"warning: the checkpoint holds no {self.model.impl} dropout RNG state (written by another engine); "
                  "dropout masks start afresh", file=sys.stderr)

    def get_parameters(self) -> Dict[str, np.ndarray]:
        return self.model.get_parameters()

    def parameters_finite(self) -> bool:
        tf = self.tf
        return all(bool(tf.reduce_all(tf.math.is_finite(v)).numpy()) for v in self.variables)

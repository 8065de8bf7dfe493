"""NumPy optimizers with torch.optim's exact update rules, for the naive engine.

Same formulas and defaults as torch.optim's single-tensor path (agreeing to
rounding), so a run with the naive engine can be
compared step for step with one on torch, and its optimizer state means the
same thing in a checkpoint. Parameters are updated in place, in the dict the
optimizer was given (the model's own arrays).

One step counter serves all parameters, where torch keeps one per tensor: every
`step` must bring a gradient for every parameter, which the naive engine does.
"""
from __future__ import annotations

import math
from typing import Dict, Tuple

import numpy as np

Arrays = Dict[str, np.ndarray]


def clip_grad_norm(grads: Arrays, max_norm: float) -> float:
    """Scale all gradients in place so their global L2 norm is at most `max_norm`.

    torch.nn.utils.clip_grad_norm_: coef = max_norm / (norm + 1e-6), clamped to 1.
    Returns the norm before clipping (NaN or inf is returned, not raised: the
    trainer decides what a diverged run means).
    """
    total = math.sqrt(sum(float(np.vdot(g, g)) for g in grads.values()))
    coef = max_norm / (total + 1e-6)
    if coef < 1.0:
        for g in grads.values():
            g *= g.dtype.type(coef)
    return total


class _Optimizer:
    """What all three share: the parameters, a step count, and (de)serialising named buffers."""

    kind = ""
    buffers: Tuple[str, ...] = ()
    hyper: Tuple[str, ...] = ()

    def __init__(self, params: Arrays, lr: float):
        if lr <= 0:
            raise ValueError(f"learning rate {lr} must be positive")
        self.params = params
        self.lr = lr
        self.steps = 0
        self.state = {b: {n: np.zeros_like(p) for n, p in params.items()} for b in self.buffers}

    def step(self, grads: Arrays) -> None:
        missing = sorted(set(self.params) - set(grads))
        if missing:
            raise ValueError(f"no gradient for {', '.join(missing[:4])}")
        self.steps += 1
        for name, param in self.params.items():
            self._update(name, param, np.asarray(grads[name], dtype=param.dtype))

    def _update(self, name: str, param: np.ndarray, grad: np.ndarray) -> None:
        raise NotImplementedError

    def state_dict(self) -> Tuple[Arrays, dict]:
        """(arrays keyed '<buffer>.<parameter name>', JSON-able metadata) for a checkpoint."""
        arrays = {f"{b}.{n}": a.copy() for b, per in self.state.items() for n, a in per.items()}
        meta = {"type": self.kind, "step": self.steps, "lr": self.lr}
        meta.update({h: getattr(self, h) for h in self.hyper})
        return arrays, meta

    def load_state_dict(self, arrays: Arrays, meta: dict) -> None:
        """Restore a `state_dict`; hyperparameters come back too, as torch's load_state_dict does."""
        if meta.get("type") != self.kind:
            raise ValueError(f"optimizer state is for {meta.get('type')!r}, not {self.kind!r}")
        expected = {f"{b}.{n}": p for b in self.buffers for n, p in self.params.items()}
        if set(arrays) != set(expected):
            raise ValueError("optimizer state does not match the model's parameters")
        for key, param in expected.items():
            if tuple(arrays[key].shape) != param.shape:
                raise ValueError(f"optimizer state {key} has shape {list(arrays[key].shape)}, "
                                 f"expected {list(param.shape)}")
        for key in expected:
            buffer, name = key.split(".", 1)
            self.state[buffer][name] = np.array(arrays[key], dtype=self.params[name].dtype)
        self.steps = int(meta["step"])
        self.lr = float(meta["lr"])
        for h in self.hyper:
            value = meta[h]
            setattr(self, h, tuple(value) if isinstance(value, list) else value)


class Adagrad(_Optimizer):
    """torch.optim.Adagrad (lr_decay 0, initial accumulator 0): the seed's optimizer."""

    kind = "adagrad"
    buffers = ("sum",)
    hyper = ("eps", "weight_decay")

    def __init__(self, params: Arrays, lr: float = 1e-2, eps: float = 1e-10, weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.eps, self.weight_decay = eps, weight_decay

    def _update(self, name, param, grad):
        if self.weight_decay:
            grad = grad + self.weight_decay * param             # L2, as torch
        acc = self.state["sum"][name]
        acc += grad * grad
        param -= self.lr * (grad / (np.sqrt(acc) + self.eps))


class Adam(_Optimizer):
    """torch.optim.Adam; weight_decay is L2 added to the gradient (use AdamW to decouple it)."""

    kind = "adam"
    buffers = ("exp_avg", "exp_avg_sq")
    hyper = ("betas", "eps", "weight_decay")
    decoupled = False

    def __init__(self, params: Arrays, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, lr)
        self.betas, self.eps, self.weight_decay = tuple(betas), eps, weight_decay

    def _update(self, name, param, grad):
        beta1, beta2 = self.betas
        if self.weight_decay and self.decoupled:
            param *= 1 - self.lr * self.weight_decay
        elif self.weight_decay:
            grad = grad + self.weight_decay * param
        m, v = self.state["exp_avg"][name], self.state["exp_avg_sq"][name]
        m += (grad - m) * (1 - beta1)                           # torch's lerp_(grad, 1 - beta1)
        v *= beta2
        v += (1 - beta2) * grad * grad
        step_size = self.lr / (1 - beta1 ** self.steps)
        denom = np.sqrt(v) / math.sqrt(1 - beta2 ** self.steps) + self.eps
        param -= step_size * (m / denom)


class AdamW(Adam):
    """torch.optim.AdamW: weight decay shrinks the weights directly, apart from the gradient."""

    kind = "adamw"
    decoupled = True

    def __init__(self, params: Arrays, lr: float = 1e-3, betas: Tuple[float, float] = (0.9, 0.999),
                 eps: float = 1e-8, weight_decay: float = 1e-2):
        super().__init__(params, lr, betas, eps, weight_decay)


OPTIMIZERS = {"adagrad": Adagrad, "adam": Adam, "adamw": AdamW}   # --optimizer name -> its rules and slots


def make_optimizer(name: str, params: Arrays, lr: float, weight_decay: float = 0.0) -> _Optimizer:
    """The optimizer a TrainConfig names: adagrad, adam or adamw (weight_decay as each defines it)."""
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choose adagrad, adam or adamw")
    return OPTIMIZERS[name](params, lr=lr, weight_decay=weight_decay)

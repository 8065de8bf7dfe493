"""Tolerances derived from the computation, not fitted to one CPU's order of float sums.

Two correct implementations of one float computation differ only by rounding, and how far that can
take them follows from the computation: a float sum of n terms is off by at most about
n * eps * (the largest term), eps being the dtype's machine epsilon (first order; a library may add in
any order, vectorised or not, which is why a tolerance fitted to one CPU failed on another). A chain
of k such sums (a recurrence over T time steps and L layers) adds its relative errors, k of them.

Optimizers then amplify what reaches them: Adam moves a weight by lr * m_hat / (sqrt(v_hat) + eps_adam),
Adagrad by lr * g / (sqrt(sum) + eps_adagrad), so a gradient error d changes a step by at most about
2 * lr * d / denominator (numerator and denominator both move by d). For a weight whose gradient is
itself within rounding of zero that is as large as a whole step: its direction is not determined by
the computation, and the bound says so instead of hiding it in one CPU's luck.
"""
from __future__ import annotations

import numpy as np

EPS = {"float32": float(np.finfo(np.float32).eps), "float64": float(np.finfo(np.float64).eps)}


def chain_length(layers: int, steps: int, fan_in: int) -> int:
    """Sums a recurrent forward passes a value through: `steps` time steps x `layers` cells, each a sum
    of `fan_in` products (input, hidden and bias). The logits and the state at the end of a window."""
    return layers * steps * fan_in


def window_terms(cfg, steps: int) -> int:
    """The longest chain of sums behind a window's logits and final state: every layer at every step sums
    input (E, or H above the first layer; a one-hot input is one term), hidden (H) and bias; the head H + 1."""
    return chain_length(cfg.layers, steps, max(cfg.embed, cfg.hidden) + cfg.hidden + 1) + cfg.hidden + 1


def gradient_terms(cfg, batch: int, steps: int) -> int:
    """A weight's gradient: the forward chain, the same chain back, then a sum over the window's B*T positions."""
    return 2 * window_terms(cfg, steps) + batch * steps


def rounding_bound(dtype: str, terms: int, scale: float) -> float:
    """How far float rounding can move a result built from `terms` accumulated terms of size <= `scale`."""
    return terms * EPS[dtype] * scale


def torch_optimizer_sensitivity(learner) -> dict:
    """{name: 2 * lr / denominator} for each parameter of a TorchLearner, after its optimizer's step: how far
    that step moves per unit of gradient error (see the module docstring). Adagrad, Adam and AdamW."""
    group = learner.optimizer.param_groups[0]           # charrnn's learners have one
    out = {}
    for name, p in learner.model.named_parameters():
        state = learner.optimizer.state[p]
        if "sum" in state:                                     # Adagrad
            denominator = state["sum"].double().sqrt() + group["eps"]
        else:                                                  # Adam, AdamW: bias-corrected v
            v_hat = state["exp_avg_sq"].double() / (1 - group["betas"][1] ** float(state["step"]))
            denominator = v_hat.sqrt() + group["eps"]
        out[name] = 2 * group["lr"] / denominator.numpy()
    return out


def sum_the_biases(params: dict, cfg) -> dict:
    """Canonical parameters with each layer's b_ih + b_hh in bias_ih and zeros in bias_hh: what a keras run
    saves for SimpleRNN and LSTM, its one bias (GRU keeps two). A bound on each half sums the same way."""
    if cfg.cell == "gru":
        return dict(params)
    out = dict(params)
    for k in range(cfg.layers):
        out[f"rnn.bias_ih_l{k}"] = params[f"rnn.bias_ih_l{k}"] + params[f"rnn.bias_hh_l{k}"]
        out[f"rnn.bias_hh_l{k}"] = 0 * params[f"rnn.bias_hh_l{k}"]
    return out


class TrajectoryBound:
    """How far a float32 engine's weights and losses may be from an exact (float64) torch learner's, step by
    step, when both take the same windows: derived as the module docstring says, first order.

    Call `step()` after each `exact.train_step`: it returns the tolerance of that window's loss (the forward's
    rounding plus |gradient| x the weights' bound so far) and adds the step's own share to `bound`: the
    gradient's rounding (a float32 sum over the window's `positions` = B*T, times its largest entry) times the
    optimizer's sensitivity, plus eps32 * |w| for the weight's own rounding.
    """

    def __init__(self, exact, positions: int, window_chain: int):
        self.exact, self.positions, self.window_chain = exact, positions, window_chain
        self.bound = {name: np.zeros(p.shape) for name, p in exact.model.named_parameters()}

    def step(self, exact_loss: float) -> float:
        params = dict(self.exact.model.named_parameters())
        grads = {name: p.grad.numpy() for name, p in params.items()}          # clipped, this window's
        loss_tol = (rounding_bound("float32", self.window_chain, max(1.0, exact_loss))
                    + sum(float((np.abs(grads[n]) * self.bound[n]).sum()) for n in self.bound))
        gradient_error = rounding_bound("float32", self.positions, max(float(np.abs(g).max()) for g in grads.values()))
        sensitivity = torch_optimizer_sensitivity(self.exact)
        for name, p in params.items():
            weight_rounding = EPS["float32"] * np.abs(p.detach().numpy())
            self.bound[name] = self.bound[name] + sensitivity[name] * gradient_error + weight_rounding
        return loss_tol

    def exact_weights(self) -> dict:
        return {name: p.detach().numpy().astype(np.float64) for name, p in self.exact.model.named_parameters()}

"""A learner: one engine's model with its optimizer, loss and gradients, behind one interface.

The training loop never asks which engine it holds: it calls a `Learner`.
`TorchLearner` serves the scratch and library engines (autograd, torch.optim,
optionally DDP); `NumpyLearner` serves the naive engine (hand-written backward,
NumPy optimizers with torch.optim's exact semantics). States cross this boundary
as NumPy arrays only when saved; inside the loop they stay in the engine's own
array type.
"""
from __future__ import annotations

import math
import sys
from typing import Any, Dict, List, Protocol, Tuple

import numpy as np

from charrnn.errors import UserError
from charrnn.losses import cross_entropy, cross_entropy_torch
from charrnn.models.base import CharModel, State, parameter_shapes

Arrays = Dict[str, np.ndarray]


class Learner(Protocol):
    """What the training loop needs of an engine: steps, and everything a checkpoint holds."""

    model: CharModel
    grad_norm: float   # the last train_step's global L2 norm of the gradient, before clipping (NaN: no update)

    def zero_state(self, batch_size: int) -> State: ...

    def train_step(self, x: np.ndarray, y: np.ndarray, state: State, labels: Any = None) -> Tuple[float, State]:
        """One window: forward (B, T), mean loss in nats, backward, clip, update. Returns the loss and the
        final state, detached (truncated BPTT). A non-finite loss skips the update. `labels` (B, T) ints: each
        position's label, for a labelled model only (models/base.py)."""

    def eval_loss(self, x: np.ndarray, y: np.ndarray, state: State, labels: Any = None) -> Tuple[float, State]:
        """Mean loss of one window in eval mode (no dropout), and the carried state."""

    def set_lr(self, lr: float) -> None: ...

    def state_to_numpy(self, state: State) -> List[np.ndarray]: ...

    def state_from_numpy(self, arrays: List[np.ndarray]) -> State: ...

    def optimizer_state(self) -> Tuple[Arrays, Any]: ...

    def load_optimizer_state(self, arrays: Arrays, meta: Any) -> None: ...

    def rng_state(self) -> Tuple[Arrays, Any]: ...

    def set_rng_state(self, arrays: Arrays, meta: Any) -> None: ...

    def get_parameters(self) -> Arrays: ...

    def parameters_finite(self) -> bool: ...


class NumpyLearner:
    """Training for the naive engine: forward_train -> shared loss -> backward -> clip -> step."""

    def __init__(self, model, optimizer: str, lr: float, weight_decay: float, grad_clip: float, seed: int):
        from charrnn.train.numpy_optim import make_optimizer

        self.model = model
        self.optimizer = make_optimizer(optimizer, model.params, lr, weight_decay)
        self.weight_decay = weight_decay
        self.grad_clip = grad_clip
        self.grad_norm = math.nan
        self.rng = np.random.default_rng(seed)

    def zero_state(self, batch_size: int):
        return self.model.initial_state(batch_size)

    def train_step(self, x: np.ndarray, y: np.ndarray, state, labels=None) -> Tuple[float, tuple]:
        from charrnn.devices import one_blas_thread_unless_chosen

        with one_blas_thread_unless_chosen():
            return self._train_step(x, y, state, labels)

    def _train_step(self, x: np.ndarray, y: np.ndarray, state, labels) -> Tuple[float, tuple]:
        from charrnn.train.numpy_optim import clip_grad_norm

        self.model.train()
        logits, new_state, cache = self.model.forward_train(x, state, self.rng, labels)
        loss, dlogits = cross_entropy(logits, y)
        if not math.isfinite(loss):
            self.grad_norm = math.nan
            return loss, new_state
        grads, _ = self.model.backward(cache, dlogits)
        self.grad_norm = clip_grad_norm(grads, self.grad_clip if self.grad_clip > 0 else math.inf)
        self.optimizer.step(grads)
        return loss, new_state

    def eval_loss(self, x: np.ndarray, y: np.ndarray, state, labels=None) -> Tuple[float, tuple]:
        """Mean loss of one window in eval mode (no dropout), and the carried state."""
        self.model.eval()
        logits, new_state = self.model.forward(x, state, labels)
        self.model.train()
        return cross_entropy(logits, y)[0], new_state

    def set_lr(self, lr: float) -> None:
        self.optimizer.lr = lr

    def state_to_numpy(self, state) -> list:
        return [np.asarray(s) for s in state]

    def state_from_numpy(self, arrays: list) -> tuple:
        return tuple(np.asarray(a, dtype=self.model.dtype) for a in arrays)

    def optimizer_state(self) -> Tuple[Dict[str, np.ndarray], dict]:
        return self.optimizer.state_dict()

    def load_optimizer_state(self, arrays: Dict[str, np.ndarray], meta: dict) -> None:
        """The saved slots and step count; the hyperparameters stay this run's (--weight-decay given on
        --resume is in force, as config.json records it; --lr is set at every step by the schedule)."""
        self.optimizer.load_state_dict(arrays, meta)
        self.optimizer.weight_decay = self.weight_decay

    def rng_state(self) -> Tuple[Dict[str, np.ndarray], dict]:
        return {}, {"numpy": self.rng.bit_generator.state}

    def set_rng_state(self, arrays: Dict[str, np.ndarray], meta: dict) -> None:
        """Restore the dropout generator. A tf run's checkpoint (the same slots: checkpoint.RESUME_GROUPS) has
        none of ours: the weights, optimizer and state still resume exactly, and dropout draws masks anew."""
        if "numpy" in meta:
            self.rng.bit_generator.state = meta["numpy"]
        elif self.model.config.dropout > 0:
            print("warning: the checkpoint holds no naive dropout RNG state (written by another engine); "
                  "dropout masks start afresh", file=sys.stderr)

    def get_parameters(self) -> Dict[str, np.ndarray]:
        return self.model.get_parameters()

    def parameters_finite(self) -> bool:
        return all(np.isfinite(p).all() for p in self.model.params.values())


class TorchLearner:
    """Training for the scratch and library engines, with optional DDP, bf16 autocast and compile."""

    def __init__(self, model, optimizer: str, lr: float, weight_decay: float, grad_clip: float,
                 device, bf16: bool = False, compile: bool = False, distributed: bool = False):
        import torch

        self.torch = torch
        self.model = model  # the plain module: canonical names, never the compile/DDP wrapper
        self.device = device
        self.grad_clip = grad_clip
        self.grad_norm = math.nan
        self.bf16 = bf16
        wrapped = model
        if distributed:
            from torch.nn.parallel import DistributedDataParallel

            wrapped = DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
        self.wrapped = torch.compile(wrapped) if compile else wrapped  # what the forward runs through
        params = list(model.parameters())
        self.weight_decay = weight_decay
        if optimizer == "adagrad":
            self.optimizer = torch.optim.Adagrad(params, lr=lr, weight_decay=weight_decay)
        elif optimizer == "adam":
            self.optimizer = torch.optim.Adam(params, lr=lr, weight_decay=weight_decay)
        else:
            self.optimizer = torch.optim.AdamW(params, lr=lr, weight_decay=weight_decay)

    def _tensor(self, a: np.ndarray):
        return self.torch.as_tensor(a, device=self.device)

    def zero_state(self, batch_size: int):
        return self.model.initial_state(batch_size)

    def _forward(self, x, state, autocast: bool, labels=None):
        labels = None if labels is None else self._tensor(labels)
        with self.torch.autocast(self.device.type, dtype=self.torch.bfloat16, enabled=autocast):
            return self.wrapped(self._tensor(x), state, labels=labels)

    def train_step(self, x: np.ndarray, y: np.ndarray, state, labels=None) -> Tuple[float, tuple]:
        self.model.train()
        logits, new_state = self._forward(x, state, self.bf16, labels)
        loss = cross_entropy_torch(logits, self._tensor(y))
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        norm = self.torch.nn.utils.clip_grad_norm_(self.model.parameters(),  # inf: measure, do not clip
                                                   self.grad_clip if self.grad_clip > 0 else math.inf)
        self.grad_norm = float(norm)
        value = loss.item()
        if math.isfinite(value):
            self.optimizer.step()
        return value, tuple(s.detach().to(self.model.head.weight.dtype) for s in new_state)

    def eval_loss(self, x: np.ndarray, y: np.ndarray, state, labels=None) -> Tuple[float, tuple]:
        self.model.eval()
        with self.torch.no_grad():  # float32, as the saved weights will run: bf16 only speeds up training
            logits, new_state = self._forward(x, state, False, labels)
            loss = cross_entropy_torch(logits, self._tensor(y)).item()
        self.model.train()
        return loss, tuple(s.to(self.model.head.weight.dtype) for s in new_state)

    def set_lr(self, lr: float) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr

    def state_to_numpy(self, state) -> list:
        return [s.detach().float().cpu().numpy() for s in state]

    def state_from_numpy(self, arrays: list) -> tuple:
        dtype = self.model.head.weight.dtype
        return tuple(self.torch.as_tensor(a).to(device=self.device, dtype=dtype) for a in arrays)

    def _names(self) -> Tuple[List[str], List[str]]:
        """(the model's own parameter names, in torch.optim's order; the canonical names, in theirs)."""
        own = [name for name, _ in self.model.named_parameters()]
        return own, list(parameter_shapes(self.model.config))

    def optimizer_state(self) -> Tuple[Dict[str, np.ndarray], dict]:
        """torch.optim's state, indexed by the canonical parameter order: the same file from scratch and library
        (which keeps label.weight inside its first layer's weight), so each continues the other's runs."""
        sd = self.optimizer.state_dict()
        own, canonical = self._names()
        state = {index: {key: self.torch.as_tensor(value).detach().cpu().numpy() for key, value in entries.items()}
                 for index, entries in sd["state"].items()}
        state = reindex_slots(state, own, canonical, self.model.own_to_canonical)
        groups = [{**group, "params": list(range(len(canonical)))} for group in sd["param_groups"]]  # one group
        arrays, keys = {}, {}
        for index, entries in state.items():
            keys[str(index)] = sorted(entries)
            for key, value in entries.items():
                arrays[f"{index}/{key}"] = value
        return arrays, {"param_groups": groups, "keys": keys}

    def load_optimizer_state(self, arrays: Dict[str, np.ndarray], meta: dict) -> None:
        try:
            own, canonical = self._names()
            state = {int(i): {k: np.asarray(arrays[f"{i}/{k}"]) for k in ks} for i, ks in meta["keys"].items()}
            state = reindex_slots(state, canonical, own, self.model.canonical_to_own)
            state = {i: {k: self.torch.as_tensor(v) for k, v in entries.items()} for i, entries in state.items()}
            groups = [{**group, "params": list(range(len(own)))} for group in meta["param_groups"]]
            params = [p for group in self.optimizer.param_groups for p in group["params"]]
            for i, entries in state.items():  # torch checks no shapes here; a mismatch would fail mid-step
                for k, v in entries.items():
                    if k != "step" and v.shape != params[i].shape:
                        raise ValueError(f"{i}/{k} has shape {list(v.shape)}, expected {list(params[i].shape)}")
            self.optimizer.load_state_dict({"state": state, "param_groups": groups})
            for group in self.optimizer.param_groups:  # torch restores the saved hyperparameters: keep this run's
                group["weight_decay"] = self.weight_decay
        except (KeyError, ValueError, TypeError, RuntimeError, IndexError) as e:
            raise UserError(f"the optimizer state in the checkpoint does not fit this model or optimizer ({e}); start "
                            f"a new run or resume with the same --optimizer") from None

    def rng_state(self) -> Tuple[Dict[str, np.ndarray], dict]:
        arrays = {"torch": self.torch.get_rng_state().numpy()}
        if self.device.type == "cuda":
            arrays["cuda"] = self.torch.cuda.get_rng_state(self.device).numpy()
        return arrays, {}

    def set_rng_state(self, arrays: Dict[str, np.ndarray], meta: dict) -> None:
        self.torch.set_rng_state(self.torch.as_tensor(arrays["torch"]))
        if self.device.type == "cuda" and "cuda" in arrays:
            self.torch.cuda.set_rng_state(self.torch.as_tensor(arrays["cuda"]), self.device)

    def get_parameters(self) -> Dict[str, np.ndarray]:
        return self.model.get_parameters()

    def parameters_finite(self) -> bool:
        return all(bool(self.torch.isfinite(p).all()) for p in self.model.parameters())


def reindex_slots(state: Dict[int, Dict[str, np.ndarray]], from_names: List[str], to_names: List[str],
                  convert) -> Dict[int, Dict[str, np.ndarray]]:
    """torch.optim's per-parameter state indexed by one list of names -> by another.

    A slot with one value per weight entry (exp_avg, exp_avg_sq, sum) moves with the weights: `convert` takes
    {name: array} to the other names and shapes (the library engine's label.weight split off or joined back,
    exact for these elementwise slots). A number per parameter (torch's step count, the same for all of them:
    every step updates every parameter) goes to each name as it is. Identity when the lists are equal.
    """
    if from_names == to_names or not state:
        return state
    if sorted(state) != list(range(len(from_names))):
        raise ValueError(f"the state covers parameters {sorted(state)[:5]}, not all {len(from_names)} of them")
    by_name = {from_names[i]: entries for i, entries in state.items()}
    out: Dict[int, Dict[str, np.ndarray]] = {i: {} for i in range(len(to_names))}
    first_entries = next(iter(by_name.values()))
    for key in [k for k in first_entries if all(k in entries for entries in by_name.values())]:  # torch's order
        values = {name: entries[key] for name, entries in by_name.items()}
        # torch's step is 0-d in memory but (1,) once written to safetensors: a slot is per weight entry when some
        # parameter has more than one value in it (every model has a (V, H) head)
        if any(np.size(v) > 1 for v in values.values()):
            moved = convert(values)
        else:
            first = next(iter(values.values()))
            moved = {name: values.get(name, first) for name in to_names}
        for i, name in enumerate(to_names):
            out[i][key] = moved[name]
    return out

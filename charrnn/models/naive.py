"""The naive engine: NumPy only, forward and backward through time written by hand.

Like min-char-rnn, but vectorized over the batch and stacked in layers, with
torch.nn's equations, gate orders and parameter layout, so weights move
between engines unchanged. Internally everything is time-major, (T, B, ...),
so each step reads and writes one contiguous (B, ...) slice. Everything that
does not depend on the previous step (the input projection, the head, the
weight gradients) is one matmul over the whole window; only the recurrence
loops over t. Each cell's backward mirrors its forward line for line.

No torch here, directly or indirectly: this engine must run where torch is
not installed, and the tests check that it does.
"""
from __future__ import annotations

from typing import Callable, Dict, List, Optional, Tuple

import numpy as np

from charrnn.config import ModelConfig
from charrnn.models.base import State, check_labels, check_parameters, init_parameters, parameter_shapes, state_size


def _sigmoid(x: np.ndarray) -> np.ndarray:
    """In place; 0.5 * (1 + tanh(x / 2)) never overflows, unlike 1 / (1 + exp(-x))."""
    x *= 0.5
    np.tanh(x, out=x)
    x += 1.0
    x *= 0.5
    return x


def _column_sums(a: np.ndarray) -> np.ndarray:
    """a.sum(axis=0) for a 2-D array, as a matmul: several times faster than NumPy's reduction."""
    return np.ones(a.shape[0], a.dtype) @ a


class _Arena:
    """The large arrays of one forward_train/backward pair, recycled once backward is done.

    Fresh arrays of a few hundred KB each window cost page faults comparable to the
    arithmetic itself (about a third of the step time at B=64, T=25, H=100).
    """

    def __init__(self, free: Dict[tuple, List[np.ndarray]], dtype):
        self.free, self.dtype, self.used, self.released = free, dtype, [], False

    def empty(self, shape) -> np.ndarray:
        stack = self.free.get(tuple(shape))
        array = stack.pop() if stack else np.empty(shape, self.dtype)
        self.used.append(array)
        return array

    def release(self) -> None:
        for array in self.used:
            self.free.setdefault(array.shape, []).append(array)
        self.used, self.released = [], True


# Each cell has forward(xp (T,B,G*H), state0, w_hh, b_hh, empty) -> (hs (T+1,B,H), final, cache),
# with cache[0] = hs, and backward(dhs (T,B,H), dfinal, cache, w_hh, empty) -> (dxp, dhp, dstate0).
# xp is the input projection x W_ih^T + b_ih; dxp and dhp (T,B,G*H) are the pre-activation
# gradients on the input and recurrent sides: one array, except for gru, where r scales
# the recurrent part of n. `empty(shape)` hands out reusable uninitialised arrays.

def _rnn_forward(xp, state0, w_hh, b_hh, empty):
    (h0,) = state0
    xp += b_hh                                              # (T, B, H) both biases, outside the loop
    hs = empty((xp.shape[0] + 1,) + h0.shape)               # (T+1, B, H); hs[0] is h0
    hs[0] = h0
    w_hh_t = np.ascontiguousarray(w_hh.T)                   # (H, H) BLAS is faster on a contiguous copy
    for t in range(xp.shape[0]):
        np.matmul(hs[t], w_hh_t, out=hs[t + 1])             # (B, H) h W_hh^T
        hs[t + 1] += xp[t]                                  # (B, H) a = x W_ih^T + h W_hh^T + b
        np.tanh(hs[t + 1], out=hs[t + 1])                   # (B, H) h' = tanh(a)
    return hs, (hs[-1],), (hs,)


def _rnn_backward(dhs, dfinal, cache, w_hh, empty):
    (hs,) = cache
    (dh,) = (d.copy() for d in dfinal)                      # (B, H) grad flowing into h_T
    da = np.square(hs[1:], out=empty(dhs.shape))            # (T, B, H) h'^2, all steps at once
    np.subtract(1.0, da, out=da)                            # (T, B, H) tanh' = 1 - h'^2
    for t in reversed(range(dhs.shape[0])):
        dh += dhs[t]                                        # (B, H) dh' from above plus from step t+1
        da[t] *= dh                                         # (B, H) da = dh' * (1 - h'^2)
        np.matmul(da[t], w_hh, out=dh)                      # (B, H) dh = da W_hh
    return da, da, (dh,)


def _gru_forward(xp, state0, w_hh, b_hh, empty):
    (h0,) = state0
    T, H = xp.shape[0], h0.shape[1]
    hs = empty((T + 1,) + h0.shape)                         # (T+1, B, H)
    hs[0] = h0
    gates = empty(xp.shape)                                 # (T, B, 3H) r, z, n after activation
    hp = empty(xp.shape)                                    # (T, B, 3H) h W_hh^T + b_hh, kept for backward
    w_hh_t = np.ascontiguousarray(w_hh.T)                   # (H, 3H)
    for t in range(T):
        np.matmul(hs[t], w_hh_t, out=hp[t])                 # (B, 3H)
        hp[t] += b_hh                                       # (B, 3H)
        g = gates[t]
        np.add(xp[t, :, :2 * H], hp[t, :, :2 * H], out=g[:, :2 * H])  # (B, 2H) r, z pre-activations
        _sigmoid(g[:, :2 * H])                              # (B, 2H) r, z
        np.multiply(g[:, :H], hp[t, :, 2 * H:], out=g[:, 2 * H:])     # (B, H) r * (W_hn h + b_hn)
        g[:, 2 * H:] += xp[t, :, 2 * H:]                    # (B, H) n pre-activation
        np.tanh(g[:, 2 * H:], out=g[:, 2 * H:])             # (B, H) n
        z, n = g[:, H:2 * H], g[:, 2 * H:]
        np.subtract(hs[t], n, out=hs[t + 1])                # (B, H) h - n
        hs[t + 1] *= z                                      # (B, H) z * (h - n)
        hs[t + 1] += n                                      # (B, H) h' = (1 - z) * n + z * h
    return hs, (hs[-1],), (hs, gates, hp)


def _gru_backward(dhs, dfinal, cache, w_hh, empty):
    hs, gates, hp = cache
    H = hs.shape[2]
    (dh,) = (d.copy() for d in dfinal)                      # (B, H)
    dxp = empty(gates.shape)                                # (T, B, 3H) input-side pre-activation grads
    dhp = empty(gates.shape)                                # (T, B, 3H) recurrent-side pre-activation grads
    for t in reversed(range(dhs.shape[0])):
        r, z, n = gates[t, :, :H], gates[t, :, H:2 * H], gates[t, :, 2 * H:]
        dh += dhs[t]                                        # (B, H) dh'
        dn = dh * (1.0 - z) * (1.0 - n * n)                 # (B, H) through n = tanh(.)
        dxp[t, :, 2 * H:] = dn                              # (B, H) W_in x + b_in
        dhp[t, :, 2 * H:] = dn * r                          # (B, H) r * (W_hn h + b_hn)
        dxp[t, :, :H] = dn * hp[t, :, 2 * H:] * r * (1.0 - r)          # (B, H) r pre-activation
        dxp[t, :, H:2 * H] = dh * (hs[t] - n) * z * (1.0 - z)          # (B, H) z pre-activation
        dhp[t, :, :2 * H] = dxp[t, :, :2 * H]               # (B, 2H) r, z: same on both sides
        dh *= z                                             # (B, H) h' = ... + z * h
        dh += dhp[t] @ w_hh                                 # (B, H) h W_hh^T
    return dxp, dhp, (dh,)


def _lstm_forward(xp, state0, w_hh, b_hh, empty):
    h0, c0 = state0
    T, H = xp.shape[0], h0.shape[1]
    xp += b_hh                                              # (T, B, 4H) both biases
    hs = empty((T + 1,) + h0.shape)                         # (T+1, B, H)
    cs = empty(hs.shape)                                    # (T+1, B, H)
    hs[0], cs[0] = h0, c0
    gates = empty(xp.shape)                                 # (T, B, 4H) i, f, g, o after activation
    tanh_c = empty(hs[1:].shape)                            # (T, B, H)
    w_hh_t = np.ascontiguousarray(w_hh.T)                   # (H, 4H)
    for t in range(T):
        a = gates[t]
        np.matmul(hs[t], w_hh_t, out=a)                     # (B, 4H)
        a += xp[t]                                          # (B, 4H) pre-activations
        _sigmoid(a[:, :2 * H])                              # (B, 2H) i, f
        np.tanh(a[:, 2 * H:3 * H], out=a[:, 2 * H:3 * H])   # (B, H) g
        _sigmoid(a[:, 3 * H:])                              # (B, H) o
        i, f, g, o = a[:, :H], a[:, H:2 * H], a[:, 2 * H:3 * H], a[:, 3 * H:]
        np.multiply(f, cs[t], out=cs[t + 1])                # (B, H) f * c
        cs[t + 1] += i * g                                  # (B, H) c' = f * c + i * g
        np.tanh(cs[t + 1], out=tanh_c[t])                   # (B, H) tanh(c')
        np.multiply(o, tanh_c[t], out=hs[t + 1])            # (B, H) h' = o * tanh(c')
    return hs, (hs[-1], cs[-1]), (hs, cs, gates, tanh_c)


def _lstm_backward(dhs, dfinal, cache, w_hh, empty):
    hs, cs, gates, tanh_c = cache
    H = hs.shape[2]
    dh, dc = (d.copy() for d in dfinal)                     # (B, H) each
    da = empty(gates.shape)                                 # (T, B, 4H)
    for t in reversed(range(dhs.shape[0])):
        g_ = gates[t]
        i, f, g, o = g_[:, :H], g_[:, H:2 * H], g_[:, 2 * H:3 * H], g_[:, 3 * H:]
        dh += dhs[t]                                        # (B, H) dh'
        dc += dh * o * (1.0 - tanh_c[t] ** 2)               # (B, H) dc' through h' = o * tanh(c')
        da[t, :, 3 * H:] = dh * tanh_c[t] * o * (1.0 - o)   # (B, H) o
        da[t, :, :H] = dc * g * i * (1.0 - i)               # (B, H) i, from c' = ... + i * g
        da[t, :, 2 * H:3 * H] = dc * i * (1.0 - g * g)     # (B, H) g
        da[t, :, H:2 * H] = dc * cs[t] * f * (1.0 - f)      # (B, H) f, from c' = f * c + ...
        dc *= f                                             # (B, H) dc = dc' * f
        np.matmul(da[t], w_hh, out=dh)                      # (B, H) dh = da W_hh
    return da, da, (dh, dc)


_CELLS = {"rnn": (_rnn_forward, _rnn_backward),
          "gru": (_gru_forward, _gru_backward),
          "lstm": (_lstm_forward, _lstm_backward)}


class NaiveModel:
    """Embedding (V->E) -> L cells (H) with dropout after each -> linear head (H->V), in NumPy.

    `params` holds the canonical torch.nn names and layouts (base.parameter_shapes).
    Use float32 to train and float64 to check gradients.
    """

    backend = "numpy"    # how inference reaches it (infer/predictor.py)

    def __init__(self, config: ModelConfig, params: Optional[Dict[str, np.ndarray]] = None,
                 dtype=np.float32, seed: int = 0):
        self.config = config
        self.dtype = np.dtype(dtype)
        self.training = True
        self.params: Dict[str, np.ndarray] = {}
        self.set_parameters(init_parameters(config, seed, self.dtype) if params is None else params)
        self._rng = np.random.default_rng(seed)  # dropout masks when no generator is passed
        self._free: Dict[tuple, List[np.ndarray]] = {}  # arrays recycled between windows (_Arena)

    def train(self, mode: bool = True) -> "NaiveModel":
        self.training = mode
        return self

    def eval(self) -> "NaiveModel":
        return self.train(False)

    def initial_state(self, batch_size: int) -> State:
        shape = (self.config.layers, batch_size, self.config.hidden)
        return tuple(np.zeros(shape, self.dtype) for _ in range(state_size(self.config.cell)))

    def get_parameters(self) -> Dict[str, np.ndarray]:
        return {name: value.copy() for name, value in self.params.items()}

    def set_parameters(self, params: Dict[str, np.ndarray]) -> None:
        """Copy in canonical parameters (cast to self.dtype); raises UserError on a mismatch.

        Copies into the existing arrays, so an optimizer built on `self.params` keeps
        updating the live weights after a checkpoint is loaded.
        """
        check_parameters(self.config, params, "parameters")
        for name in parameter_shapes(self.config):
            if name in self.params:
                np.copyto(self.params[name], params[name], casting="unsafe")
            else:
                self.params[name] = np.array(params[name], dtype=self.dtype)

    def forward(self, inputs, state: State, labels=None) -> Tuple[np.ndarray, State]:
        """inputs (B, T) ints, state, labels (B, T) or (B,) ints for a labelled model -> (logits (B, T, V),
        new state); keeps nothing for backward."""
        logits, new_state, cache = self.forward_train(inputs, state, None, labels)
        cache[-1].release()
        return logits, new_state

    def forward_train(self, inputs, state: State, rng: Optional[np.random.Generator] = None, labels=None):
        """As `forward`, plus the cache for one call of `backward`.

        `rng` draws the dropout masks (training mode, dropout > 0); passing a generator seeded
        the same way reproduces them, which is what finite-difference checks need.
        """
        cfg, p = self.config, self.params
        idx = np.asarray(inputs).T                              # (T, B) time-major
        T, B = idx.shape
        lab = self._label_steps(labels, (B, T))                 # (T, B) or None
        arena = _Arena(self._free, self.dtype)
        forward_cell = _CELLS[cfg.cell][0]
        drop = cfg.dropout if self.training else 0.0
        rng = self._rng if rng is None else rng
        x, finals, layers = idx, [], []                         # layer 0 reads characters, not vectors
        for k in range(cfg.layers):
            xp = self._project(k, x, arena.empty)               # (T, B, G*H) x W_ih^T + b_ih
            if k == 0 and lab is not None:
                xp += np.take(p["label.weight"], lab, axis=0, out=arena.empty(xp.shape))  # (T, B, G*H) + its row
            state0 = tuple(np.asarray(s[k], dtype=self.dtype) for s in state)  # (B, H) each
            w_hh, b_hh = p[f"rnn.weight_hh_l{k}"], p[f"rnn.bias_hh_l{k}"]
            hs, final, cell_cache = forward_cell(xp, state0, w_hh, b_hh, arena.empty)
            mask = None
            if drop > 0:                                        # inverted dropout: eval needs no rescale
                mask = rng.random(hs[1:].shape, dtype=self.dtype, out=arena.empty(hs[1:].shape))
                np.greater_equal(mask, drop, out=mask)          # (T, B, H) 1 keeps, 0 drops
                mask *= 1.0 / (1.0 - drop)                      # (T, B, H) 0 or 1 / (1 - p)
            layers.append((x, cell_cache, mask))
            x = hs[1:] if mask is None else np.multiply(hs[1:], mask, out=arena.empty(mask.shape))
            finals.append(final)
        top = arena.empty((B, T, cfg.hidden))                   # (B, T, H) batch-major, for the head
        np.copyto(top, x.transpose(1, 0, 2))
        top = top.reshape(B * T, -1)                            # (B*T, H)
        logits = top @ p["head.weight"].T                       # (B*T, V) one matmul for the window
        logits += p["head.bias"]                                # (B*T, V)
        new_state = tuple(np.stack(s) for s in zip(*finals))    # (L, B, H) each, copies
        return logits.reshape(B, T, -1), new_state, (idx, lab, layers, top, arena)

    def backward(self, cache, dlogits: np.ndarray, dfinal_state: Optional[State] = None):
        """Gradients of a loss given dloss/dlogits (B, T, V) and, optionally, dloss/dfinal state.

        Returns (grads: {canonical name: array}, dinitial_state): the second lets a caller
        chain windows or check the state path; truncated BPTT simply ignores it. Consumes
        the cache: its arrays are reused by the next forward_train.
        """
        cfg, p = self.config, self.params
        idx, lab, layers, top, arena = cache
        if arena.released:
            raise RuntimeError("this forward_train cache was already used by backward (or came from forward)")
        T, B = idx.shape
        backward_cell = _CELLS[cfg.cell][1]
        grads = {}
        dl = np.asarray(dlogits, dtype=self.dtype).reshape(B * T, -1)  # (B*T, V)
        grads["head.weight"] = dl.T @ top                       # (V, H)
        grads["head.bias"] = _column_sums(dl)                   # (V,)
        dtop = np.matmul(dl, p["head.weight"], out=arena.empty(top.shape))  # (B*T, H)
        dx = arena.empty((T, B, cfg.hidden))                    # (T, B, H) back to time-major
        np.copyto(dx, dtop.reshape(B, T, -1).transpose(1, 0, 2))
        dinitial = [[] for _ in range(state_size(cfg.cell))]
        for k in reversed(range(cfg.layers)):
            x, cell_cache, mask = layers[k]
            if mask is not None:
                dx *= mask                                      # (T, B, H) through dropout
            if dfinal_state is None:
                dfinal = tuple(np.zeros((B, cfg.hidden), self.dtype) for _ in dinitial)  # (B, H) each
            else:
                dfinal = tuple(np.asarray(d[k], dtype=self.dtype) for d in dfinal_state)  # (B, H) each
            w_hh = p[f"rnn.weight_hh_l{k}"]
            dxp, dhp, dstate0 = backward_cell(dx, dfinal, cell_cache, w_hh, arena.empty)
            if k == 0 and lab is not None:                      # mirror of xp += label.weight[lab]
                grads["label.weight"] = np.zeros_like(p["label.weight"])               # (N, G*H)
                np.add.at(grads["label.weight"], lab.reshape(-1), dxp.reshape(T * B, -1))  # summed by label
            hs_prev = cell_cache[0][:-1].reshape(T * B, -1)     # (T*B, H) h_{t-1} at each step
            dhp2 = dhp.reshape(T * B, -1)                       # (T*B, G*H)
            grads[f"rnn.weight_hh_l{k}"] = dhp2.T @ hs_prev     # (G*H, H) one matmul for the window
            grads[f"rnn.bias_hh_l{k}"] = _column_sums(dhp2)     # (G*H,)
            dx = self._project_backward(k, x, dxp, grads, arena.empty)  # (T, B, in); None below layer 0
            for acc, d in zip(dinitial, dstate0):
                acc.insert(0, d)
        arena.release()
        ordered = {name: grads[name] for name in parameter_shapes(cfg)}
        return ordered, tuple(np.stack(d) for d in dinitial)

    def _label_steps(self, labels, inputs_shape) -> Optional[np.ndarray]:
        """labels (B, T) or (B,) -> (T, B) time-major ints; None for an unlabelled model (check_labels)."""
        labels = None if labels is None else np.asarray(labels)
        check_labels(self.config, labels, inputs_shape)
        if labels is None:
            return None
        return np.broadcast_to(labels.reshape(inputs_shape[0], -1), inputs_shape).T  # (T, B)

    def _project(self, k: int, x: np.ndarray, empty: Callable) -> np.ndarray:
        """Layer k's input projection x W_ih^T + b_ih (T, B, G*H), for all steps at once.

        Layer 0 gets characters idx (T, B): embedding then W_ih is one (V, G*H) table,
        so a lookup replaces a (T*B)-row matmul (with embed 0, one-hot inputs, W_ih^T is the table).
        """
        p = self.params
        w_ih, b_ih = p[f"rnn.weight_ih_l{k}"], p[f"rnn.bias_ih_l{k}"]
        T, B = x.shape[:2]
        xp = empty((T, B, w_ih.shape[0]))                       # (T, B, G*H)
        if k == 0:  # embed 0: a one-hot vector times W_ih^T is a row of W_ih^T
            table = (p["embed.weight"] @ w_ih.T if self.config.embed else w_ih.T) + b_ih  # (V, G*H)
            return np.take(table, x, axis=0, out=xp)            # (T, B, G*H)
        np.matmul(x.reshape(T * B, -1), w_ih.T, out=xp.reshape(T * B, -1))  # (T*B, G*H)
        xp += b_ih                                              # (T, B, G*H)
        return xp

    def _project_backward(self, k: int, x: np.ndarray, dxp: np.ndarray, grads: dict, empty: Callable):
        """Mirror of `_project`: fills W_ih, b_ih (and the embedding) grads, returns dx or None."""
        p = self.params
        w_ih = p[f"rnn.weight_ih_l{k}"]
        dxp2 = dxp.reshape(-1, dxp.shape[2])                    # (T*B, G*H)
        if k == 0:
            onehot = empty((self.config.vocab_size, x.size))    # (V, T*B)
            onehot.fill(0.0)
            onehot[x.reshape(-1), np.arange(x.size)] = 1.0
            dtable = onehot @ dxp2                              # (V, G*H) summed over uses of each char
            if self.config.embed:
                grads["embed.weight"] = dtable @ w_ih           # (V, E)
                grads[f"rnn.weight_ih_l{k}"] = dtable.T @ p["embed.weight"]  # (G*H, E)
            else:                                               # one-hot inputs: W_ih^T is the table
                grads[f"rnn.weight_ih_l{k}"] = dtable.T.copy()  # (G*H, V)
            grads[f"rnn.bias_ih_l{k}"] = _column_sums(dtable)   # (G*H,)
            return None
        grads[f"rnn.weight_ih_l{k}"] = dxp2.T @ x.reshape(dxp2.shape[0], -1)  # (G*H, H)
        grads[f"rnn.bias_ih_l{k}"] = _column_sums(dxp2)         # (G*H,)
        return np.matmul(dxp2, w_ih, out=empty(x.shape).reshape(dxp2.shape[0], -1)).reshape(x.shape)

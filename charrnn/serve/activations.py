"""Look inside a model: per-character activations, next-character predictions, units that track features.

Torch-free: `infer.steps.NumpyStep` steps one character at a time from a zero state, and after
each character we copy out the state (h for every layer, c too for an LSTM) and the logits.
Position t therefore holds the state *after reading* text[t] and the prediction of text[t + 1].

Shape letters: T text length, L layers, H hidden, V vocab, F features, U units (one column
per (state, layer, unit), states in STATES order).
"""
from __future__ import annotations

import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Dict, List, Optional, Tuple

import numpy as np

from charrnn.config import ModelConfig
from charrnn.data.vocab import Vocab
from charrnn.devices import blas_threads
from charrnn.errors import UserError
from charrnn.infer.steps import NumpyStep
from charrnn.losses import log_softmax
from charrnn.models.base import fold_label

STATES = ("h", "c")  # c exists for LSTMs only


@dataclass(frozen=True)
class Trace:
    """What the model computed while reading a text."""

    text: str
    states: Dict[str, np.ndarray]   # "h" (and "c" for LSTMs) -> (T, L, H) after reading each character
    logits: np.ndarray              # (T, V) predicting the character after each one

    def top_predictions(self, vocab: Vocab, k: int = 5) -> List[List[Tuple[str, float]]]:
        """For each position, the k most likely next characters with their probabilities, best first."""
        return top_predictions(self.logits, vocab, k)


class Tracer:
    """Runs texts through a NumpyStep (batch 1, float32); one text at a time, the last few cached.

    A labelled run is read under one label per text: its step is the model with that label folded in
    (models.base.fold_label), made on first use; the last few are kept."""

    def __init__(self, config: ModelConfig, params: Dict[str, np.ndarray], vocab: Vocab, cache_size: int = 4):
        self.config, self.vocab, self.params = config, vocab, params
        self.lock = threading.Lock()  # the NumpyStep's buffers are shared: one text at a time
        self._steps: "OrderedDict[Optional[int], NumpyStep]" = OrderedDict()
        self._cache: "OrderedDict[Tuple[str, Optional[int]], Trace]" = OrderedDict()
        self._cache_size = cache_size
        if not config.labels:
            self._step(None)  # now, not on the first request

    def _step(self, label: Optional[int]) -> NumpyStep:
        """The step for a label index (None: an unlabelled run)."""
        if label not in self._steps:
            config, params = (self.config, self.params) if label is None else fold_label(self.config, self.params,
                                                                                         label)
            self._steps[label] = NumpyStep(config, params, batch_size=1, dtype=np.float32)
        self._steps.move_to_end(label)
        while len(self._steps) > self._cache_size:
            self._steps.popitem(last=False)
        return self._steps[label]

    def trace(self, text: str, label: Optional[int] = None) -> Trace:
        """Activations and logits for every character of `text` (under a labelled run's label index, checked by
        the caller); UserError for characters outside the vocabulary.

        The caller holds `self.lock` (see `locked`), so a busy tracer can be reported rather than queued.
        """
        key = (text, label)
        if key in self._cache:
            self._cache.move_to_end(key)
            return self._cache[key]
        missing = self.vocab.unknown(text)
        if missing:
            from charrnn.data.vocab import format_chars

            raise UserError(f"the text has characters outside the model's vocabulary: {format_chars(missing)}")
        trace = self._run(text, self._step(label))
        self._cache[key] = trace
        while len(self._cache) > self._cache_size:
            self._cache.popitem(last=False)
        return trace

    def _run(self, text: str, fused: NumpyStep) -> Trace:
        cfg = self.config
        T, L, H = len(text), cfg.layers, cfg.hidden
        chars = self.vocab.encode(text).astype(np.intp)[:, None]   # (T, 1): one (B,) row per step
        h = np.empty((T, L, H), np.float32)
        c = np.empty((T, L, H), np.float32) if cfg.cell == "lstm" else None
        logits = np.empty((T, cfg.vocab_size), np.float32)
        zero = np.zeros((L, 1, H), np.float32)
        fused.set_state((zero, zero) if c is not None else (zero,))
        with blas_threads(1):  # batch-1 matrix-vector products: one thread is fastest on a busy machine
            for t in range(T):
                logits[t] = fused.step(chars[t])[0]                # (V,)
                state = fused.get_state()                           # ((L, 1, H), [(L, 1, H)])
                h[t] = state[0][:, 0]
                if c is not None:
                    c[t] = state[1][:, 0]
        states = {"h": h} if c is None else {"h": h, "c": c}
        return Trace(text, states, logits)


def top_predictions(logits: np.ndarray, vocab: Vocab, k: int = 5) -> List[List[Tuple[str, float]]]:
    """logits (T, V) -> per position the min(k, V) most likely characters and probabilities, best first."""
    p = np.exp(log_softmax(np.asarray(logits, dtype=np.float64)))  # (T, V)
    k = min(k, p.shape[1])
    best = np.argsort(-p, axis=1, kind="stable")[:, :k]            # (T, k)
    return [[(vocab.chars[int(i)], float(row[i])) for i in order] for row, order in zip(p, best)]


# ---- features of the text, and the units that track them ---------------------------------

FEATURES = ("inside quotes", "inside brackets", "position in line", "start of a word")
_OPEN, _CLOSE = "([{", ")]}"


def text_features(text: str) -> Dict[str, np.ndarray]:
    """Simple per-character features (T,) as floats, each describing the text *after* reading text[t].

    inside quotes:    1 from an opening double quote up to (not including) its closing one
    inside brackets:  nesting depth of (), [], {} (a closing bracket is outside its pair)
    position in line: characters since the last newline (the newline itself is 0)
    start of a word:  1 on a letter, digit or _ that follows anything else (or starts the text)
    """
    T = len(text)
    quotes, depth, column, word = (np.zeros(T) for _ in range(4))
    inside, level, col, previous = False, 0, 0, ""
    for t, ch in enumerate(text):
        inside = not inside if ch == '"' else inside
        level = level + 1 if ch in _OPEN else max(level - 1, 0) if ch in _CLOSE else level
        col = 0 if ch == "\n" else col + 1
        is_word = ch.isalnum() or ch == "_"
        quotes[t], depth[t], column[t] = inside, level, col
        word[t] = is_word and not (previous.isalnum() or previous == "_")
        previous = ch
    return dict(zip(FEATURES, (quotes, depth, column, word)))


def correlations(activations: np.ndarray, features: np.ndarray) -> np.ndarray:
    """Pearson r of every column of activations (T, U) with every column of features (T, F) -> (U, F).

    A constant column (a feature absent from the text, a saturated unit) has no correlation: 0.
    """
    a = activations - activations.mean(axis=0)                       # (T, U)
    f = features - features.mean(axis=0)                             # (T, F)
    a_norm, f_norm = np.linalg.norm(a, axis=0), np.linalg.norm(f, axis=0)  # (U,), (F,)
    with np.errstate(invalid="ignore", divide="ignore"):
        r = (a.T @ f) / np.outer(a_norm, f_norm)                     # (U, F)
    r[~np.isfinite(r)] = 0.0
    r[a_norm < 1e-9, :] = 0.0
    r[:, f_norm < 1e-9] = 0.0
    return np.clip(r, -1.0, 1.0)


def rank_units(states: Dict[str, np.ndarray], features: Dict[str, np.ndarray], top: int = 10) -> dict:
    """Units ranked by |Pearson r| with each feature, over one text.

    states: name -> (T, L, H) activations; features: name -> (T,).
    Returns {"by_feature": {feature: [unit, ...]}, "ranking": [unit, ...]}, each unit a dict
    {"state", "layer", "unit", "feature", "r"}; "ranking" holds every unit's best feature, strongest first.
    """
    names = [s for s in STATES if s in states]
    T, L, H = states[names[0]].shape
    columns = np.concatenate([states[s].reshape(T, L * H) for s in names], axis=1).astype(np.float64)  # (T, U)
    feature_names = list(features)
    r = correlations(columns, np.stack([features[f] for f in feature_names], axis=1).astype(np.float64))  # (U, F)

    def unit(u: int, f: int) -> dict:
        s, rest = divmod(u, L * H)
        layer, index = divmod(rest, H)
        return {"state": names[s], "layer": int(layer), "unit": int(index), "feature": feature_names[f],
                "r": round(float(r[u, f]), 4)}

    by_feature = {}
    for f, name in enumerate(feature_names):
        order = np.argsort(-np.abs(r[:, f]), kind="stable")[:top]
        by_feature[name] = [unit(int(u), f) for u in order if r[u, f] != 0.0]
    best = np.abs(r).argmax(axis=1)                                   # (U,) each unit's best feature
    strength = np.abs(r[np.arange(len(best)), best])                  # (U,)
    order = np.argsort(-strength, kind="stable")[:top]
    return {"by_feature": by_feature, "ranking": [unit(int(u), int(best[u])) for u in order if strength[u] > 0]}


def unit_series(trace: Trace, state: str, layer: int, unit: int) -> np.ndarray:
    """One unit's activation over the text, (T,); UserError naming the field for an index out of range."""
    if state not in trace.states:
        raise UserError(f"state {state!r} is not one of {', '.join(trace.states)} for this model")
    _, L, H = trace.states[state].shape
    if not 0 <= layer < L:
        raise UserError(f"layer {layer} is out of range: the model has layers 0..{L - 1}")
    if not 0 <= unit < H:
        raise UserError(f"unit {unit} is out of range: each layer has units 0..{H - 1}")
    return trace.states[state][:, layer, unit]


def trace_state_names(config: ModelConfig) -> Tuple[str, ...]:
    return STATES if config.cell == "lstm" else STATES[:1]


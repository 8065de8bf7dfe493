"""Run an exported .onnx with ONNX Runtime alone: charrnn's CharModel interface, no torch.

    model = OnnxCharModel("model.onnx")
    state = model.initial_state(1)                              # ((L, 1, H),) or (h, c) for LSTM
    logits, state = model.forward(np.array([[5, 7, 2]]), state)  # (1, 3, V) float32, the new state
    logits, state = model.forward(chars, state, labels=np.array([1]))  # a labelled run: one label per stream

The config and vocabulary come from the file's metadata (onnx_export.py writes them), with the run's
document separator and --max-vocab unknown symbol (`doc_sep`, `unknown`: JSON strings or null). A file
exported before those two were written has neither key: it runs as it always did (no separator, no
unknown symbol), and `symbols_recorded` says so. A file that ONNX Runtime cannot read, that is not a
charrnn export, or whose inputs are not the ones charrnn feeds (a `chars` input pinned to a fixed
shape by another tool), is refused with a one-line UserError when it is opened, never mid-run.

A labelled run's file takes one label per call (its `label` input, (1,)); `forward` takes the engines'
labels (B,) and runs each label's streams as their own call, so streams may differ in label.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np

from charrnn.config import ModelConfig, from_dict
from charrnn.data.vocab import Vocab
from charrnn.errors import UserError, require_package

FORMAT = "charrnn-onnx/1"  # the same string as onnx_export.FORMAT (not imported: that module is for exporting)


class OnnxCharModel:
    """A charrnn model in an ONNX Runtime session on the CPU.

    `threads`: ONNX Runtime's intra-op threads; default $OMP_NUM_THREADS, else 1. One thread, not
    ONNX Runtime's one per core, because a second one made neither generation nor evaluation faster
    on a 2-core machine, and with ONNX Runtime's spin-waiting on (its default, turned off here) it
    halved generation speed whenever anything else wanted that core (docs/export.md, Speed).
    """

    backend = "onnx"    # how inference reaches it (infer/predictor.py): NumPy in, NumPy out
    device_type = "cpu"  # ONNX Runtime's CPU provider, where int8 would run too

    def eval(self) -> "OnnxCharModel":
        """An exported graph has no dropout: always in inference mode."""
        return self

    def __init__(self, path, threads: int | None = None):
        ort = require_package("onnxruntime", "running an .onnx model", "onnx")
        self.path = Path(path)
        if not self.path.is_file():
            raise UserError(f"{self.path} is not a file; give a model written by 'charrnn export --format onnx'")
        options = ort.SessionOptions()
        options.log_severity_level = 3  # ONNX Runtime's own warnings would add lines to a one-line error
        options.intra_op_num_threads = threads or _threads_from_env()
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        try:
            self.session = ort.InferenceSession(str(self.path), options, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001 (onnxruntime raises its own types: InvalidProtobuf, InvalidGraph, Fail, ...)
            raise UserError(f"{self.path} is not a readable ONNX model ({type(e).__name__}); "
                            "it is damaged, or not a file written by 'charrnn export'") from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.config, self.vocab = _read_metadata(meta, str(self.path))
        self.separator, self.unknown, self.symbols_recorded = _read_symbols(meta, self.vocab, str(self.path))
        self.quantize = meta.get("quantize", "none")
        self._state_names = ("h0", "c0") if self.config.cell == "lstm" else ("h0",)
        self._outputs = ["logits", "hn", "cn"][: 1 + len(self._state_names)]
        self.labels = self.config.labels
        _check_signature(self.session, self.config, self._state_names, self._outputs, str(self.path))

    def initial_state(self, batch_size: int) -> tuple[np.ndarray, ...]:
        shape = (self.config.layers, batch_size, self.config.hidden)
        return tuple(np.zeros(shape, np.float32) for _ in self._state_names)

    def forward(self, inputs, state, labels=None) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        """inputs (B, T) ints, state -> (logits (B, T, V) float32, new state); the state given is not changed.

        labels: a labelled run's label index per stream, (B,), or (B, T) the same along T (the file takes one
        label per call); required for a labelled run, refused otherwise, as the engines do (models/base.py)."""
        chars = np.ascontiguousarray(inputs, dtype=np.int64)
        if chars.ndim != 2:
            raise ValueError(f"inputs must be (B, T) character indices, got shape {chars.shape}")
        if chars.size and (chars.min() < 0 or chars.max() >= self.config.vocab_size):
            raise ValueError(f"character indices must be in [0, {self.config.vocab_size})")
        per_stream = self._per_stream(labels, chars.shape)
        if chars.shape[1] == 0:  # ONNX's recurrent ops need one step at least; nothing to do
            return np.zeros(chars.shape + (self.config.vocab_size,), np.float32), tuple(state)
        states = tuple(np.ascontiguousarray(s, dtype=np.float32) for s in state)
        if per_stream is None:
            return self._run(chars, states, {})
        if (per_stream == per_stream[0]).all():
            return self._run(chars, states, {"label": per_stream[:1]})
        logits = np.empty(chars.shape + (self.config.vocab_size,), np.float32)
        new_state = tuple(np.empty_like(s) for s in states)
        for label in np.unique(per_stream):  # one call per label, its streams only
            rows = np.flatnonzero(per_stream == label)
            part, part_state = self._run(chars[rows], tuple(s[:, rows] for s in states), {"label": np.array([label])})
            logits[rows] = part
            for whole, piece in zip(new_state, part_state):
                whole[:, rows] = piece
        return logits, new_state

    def _per_stream(self, labels, shape) -> np.ndarray | None:
        """labels as one int64 index per stream (B,), checked; None for an unlabelled run."""
        if labels is None:
            if self.labels:
                raise ValueError(f"this model was trained with {len(self.labels)} labels: give labels (B,)")
            return None
        if not self.labels:
            raise ValueError("this model was trained without labels: give labels=None")
        labels = np.asarray(labels)
        if labels.dtype.kind not in "iu" or labels.shape not in ((shape[0],), tuple(shape)):
            raise ValueError(f"labels must be ints of shape (B,) or (B, T), {(shape[0],)} here; got "
                             f"{labels.dtype} {labels.shape}")
        if labels.ndim == 2:
            if labels.shape[1] and (labels != labels[:, :1]).any():
                raise ValueError("an .onnx file takes one label per stream per call: labels must not change along T")
            labels = labels[:, 0] if labels.shape[1] else np.zeros(shape[0], np.int64)
        if labels.size and (labels.min() < 0 or labels.max() >= len(self.labels)):
            raise ValueError(f"label indices must be in [0, {len(self.labels)})")
        return labels.astype(np.int64)

    def _run(self, chars: np.ndarray, states: tuple, extra: dict) -> tuple[np.ndarray, tuple[np.ndarray, ...]]:
        feeds = {"chars": chars, **dict(zip(self._state_names, states)), **extra}
        try:
            logits, *new_state = self.session.run(self._outputs, feeds)
        except Exception as e:  # noqa: BLE001 (onnxruntime's own types); the signature check makes this rare
            first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
            raise UserError(f"ONNX Runtime could not run {self.path} on a {chars.shape[0]}x{chars.shape[1]} input "
                            f"({first}); export the run again with 'charrnn export --format onnx'") from None
        return logits, tuple(new_state)

    __call__ = forward


def _threads_from_env() -> int:
    try:
        return max(1, int(os.environ.get("OMP_NUM_THREADS", "1")))
    except ValueError:
        return 1


def _read_metadata(meta: dict, where: str) -> tuple[ModelConfig, Vocab]:
    if meta.get("format") != FORMAT:
        raise UserError(f"{where} is an ONNX model but not one written by 'charrnn export' "
                        "(its metadata lacks format, vocab and config); export the run with charrnn")
    try:
        config = from_dict(ModelConfig, json.loads(meta["config"]), f"{where} (config metadata)")
        chars = json.loads(meta["vocab"])
    except (KeyError, ValueError, TypeError):
        raise UserError(f"{where}: its charrnn metadata (config, vocab) is damaged; export the run again") from None
    # checked here, not by Vocab, whose messages are about a run directory's vocab.json
    if not isinstance(chars, list) or not all(isinstance(c, str) and len(c) == 1 for c in chars):
        raise UserError(f"{where}: its vocab metadata is not a JSON list of single characters; export the run again")
    if len(set(chars)) != len(chars):
        raise UserError(f"{where}: its vocab metadata lists a character twice; export the run again")
    vocab = Vocab(tuple(chars))
    if len(vocab) != config.vocab_size or config.vocab_size < 1:
        raise UserError(f"{where}: its vocabulary has {len(vocab)} characters but its config says "
                        f"{config.vocab_size}; the file is mixed up")
    return config, vocab


def _read_symbols(meta: dict, vocab: Vocab, where: str) -> tuple[str | None, str | None, bool]:
    """(separator, unknown, recorded): `doc_sep` and `unknown` from the metadata, each a JSON string naming a
    character of the vocabulary, or null; recorded is False for a file exported before they were written."""
    if "doc_sep" not in meta and "unknown" not in meta:
        return None, None, False
    symbols = []
    for key in ("doc_sep", "unknown"):
        try:
            value = json.loads(meta.get(key, "null"))
        except ValueError:
            value = ()  # not JSON: refused below
        if value is not None and not (isinstance(value, str) and value in vocab):
            raise UserError(f"{where}: its {key} metadata is not null or a character of its vocabulary; "
                            "export the run again")
        symbols.append(value)
    return symbols[0], symbols[1], True


def _check_signature(session, config: ModelConfig, state_names, output_names, where: str) -> None:
    """The graph's inputs and outputs must be the ones onnx_export writes for this config."""
    L, H, V = config.layers, config.hidden, config.vocab_size
    inputs = {i.name: i for i in session.get_inputs()}
    outputs = {o.name: o for o in session.get_outputs()}
    expected_in = ["chars", *state_names, *(["label"] if config.labels else [])]
    problem = None
    if sorted(inputs) != sorted(expected_in) or sorted(outputs) != sorted(output_names):
        problem = f"inputs {sorted(inputs)} and outputs {sorted(outputs)}"
    else:
        chars = inputs["chars"]
        if chars.type != "tensor(int64)" or len(chars.shape) != 2 or any(isinstance(d, int) for d in chars.shape):
            # charrnn feeds any batch and any number of steps: a dimension pinned to a number fails at run time
            problem = f"chars of type {chars.type} and shape {chars.shape} (charrnn feeds int64 (batch, time))"
        for name in state_names:
            shape = inputs[name].shape
            if len(shape) != 3 or shape[0] != L or shape[2] != H or isinstance(shape[1], int):
                problem = problem or f"{name} of shape {shape}"
        shape = outputs["logits"].shape
        if len(shape) != 3 or shape[2] != V:
            problem = problem or f"logits of shape {shape}"
        if config.labels and (inputs["label"].type != "tensor(int64)" or inputs["label"].shape != [1]):
            problem = problem or f"label of type {inputs['label'].type} and shape {inputs['label'].shape}"
    if problem:
        raise UserError(f"{where} has {problem}, not what its config ({config.cell} {L}x{H}, V={V}) implies; "
                        "the file is damaged or was changed by another tool: export the run again")

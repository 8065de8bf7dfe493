"""Build a .onnx from a run's canonical weights, with the state going in and coming out.

The graph (shape letters as in models/base.py; B and T are dynamic, L, H, V fixed):

    chars (B, T) int64 --Gather(embed.weight)--> (B, T, E) --Transpose--> (T, B, E)
    for each layer k:  RNN | GRU | LSTM (initial state h0[k], c0[k])  --> Y (T, 1, B, H) --Squeeze--> (T, B, H)
                                                                      --> Y_h, Y_c (1, B, H) --Concat--> hn, cn (L, B,
                                                                                                                 H)
    (T, B, H) --Transpose--> (B, T, H) --MatMul(head.weight^T), Add(head.bias)--> logits (B, T, V)

A labelled run (config.labels, issue #29) has one more input, `label` (1,) int64: the label's index,
one for the whole call. Its row of label.weight, gate-reordered, is gathered and added to the input
half of layer 0's bias B, which the RNN/GRU/LSTM op adds to W x at every step, exactly where the
engines add it (for GRU, W_in x + b_in is outside r * (...), as linear_before_reset=1 keeps it):

    label (1,) --Gather(label table (N, 2*G*H), the hh half zeros)--> (1, 2*G*H) --Add(B_l0)--> layer 0's B

So W and R stay constants and the int8 variant quantizes exactly the weights it would without labels
(the bias stays float32 in DynamicQuantizeLSTM). One label per call, not per stream, because an ONNX
recurrent op's bias has no batch axis; OnnxCharModel runs each label's streams as their own call. The
label names travel in the metadata (`labels`, a JSON list in index order; also in `config`).

ONNX Runtime keeps no state between calls: feed `hn` (and `cn`) back as `h0` (`c0`) to carry it,
which is what `OnnxCharModel.forward` and examples/onnx_generate.py do. The vocabulary (JSON list of
characters), the ModelConfig (JSON), and the run's document separator and --max-vocab unknown symbol
(`doc_sep`, `unknown`: JSON strings, or null where the run has none) travel in the file's
metadata_props, so the file alone generates and reads text as `charrnn sample --checkpoint` does: an
empty prime starts a new document, the unknown symbol is never drawn, and characters outside the
vocabulary read as it.

Exporter: the graph is written node by node with `onnx.helper` from the canonical NumPy weights,
not traced by torch.onnx. Both were tried on torch 2.13: the TorchScript exporter (dynamo=False) is
deprecated ("will be removed") and warns that an LSTM exported at one batch size can fail at
another; the torch.export-based exporter (the default) needs two more packages (onnxscript,
onnx-ir), takes ~3 s, and emits the same LSTM op wrapped in Shape/Slice/Reshape glue with
names of its own. Written directly, the graph has exactly the names and dynamic axes above, the
gate reorders are plain NumPy that a test checks against the naive engine, exporting needs no
torch at all (a run trained anywhere exports where only NumPy and `onnx` are installed), and the
file is a fraction of a second to build.

Opset 14, IR version 8: every op used here (Gather, Transpose, Slice, Squeeze, Concat, MatMul, Add
at 13; RNN, GRU, LSTM at 14) has had its current definition since opset 14, so choosing it costs
nothing and the file loads in every ONNX Runtime since 1.9 (2021), onnxruntime-web and mobile
included, and in other ONNX runtimes that stop short of the newest opsets.

Gate orders: torch.nn (and so the canonical weights) stacks LSTM gates i, f, g, o and GRU gates
r, z, n; ONNX stacks LSTM gates i, o, f, c and GRU gates z, r, h. torch's GRU applies the reset
gate after the recurrent product, n = tanh(W_in x + b_in + r * (W_hn h + b_hn)): ONNX's GRU with
linear_before_reset=1. The vanilla RNN is tanh in both.

int8 (`quantize="int8"`): each LSTM becomes ONNX Runtime's DynamicQuantizeLSTM (a com.microsoft op,
so the file runs in ONNX Runtime only) with **uint8** W and R: one scale per gate row, the row's
largest |w| / 127, and every row's zero point 128, so w ~= (q - 128) * scale with q - 128 in
[-127, 127]: exactly the numbers of symmetric int8. The input and the state are quantized to uint8 on
the fly, per call and per step. The embedding and the head stay float32, as in charrnn's own int8.

Why uint8 weights and not ONNX Runtime's quantizer (int8 weights, "U8S8"): on x86 CPUs without VNNI
(AVX2, AVX-512 without VNNI) ONNX Runtime multiplies u8 x s8 with vpmaddubsw, which adds each pair of
products into a saturating int16: 255 * 127 * 2 = 64,770 > 32,767, so pairs clip. Measured on an AVX2
machine (#25) that moved the test model's loss by 0.0304; a NumPy emulation of that kernel gives
0.0304 here (tests/test_export_onnx.py, docs/export.md). With uint8 weights ONNX Runtime takes its
U8U8 kernel: on AVX2 it widens both to int16 and multiplies with vpmaddwd (int32 pair sums: exact);
with VNNI or AMX it flips the weights back to int8 and runs the same kernel as U8S8 (vpdpbusd sums
into int32: exact). No pair can saturate on any x86 CPU, and the numbers are those of 8-bit
symmetric weights. The alternative, reduce_range (7-bit weights, |q| <= 64, so pairs <= 32,640),
also cannot saturate but doubles the rounding step: it moved the output distribution 1.6x further
from float32 (docs/export.md). ONNX Runtime's quantizer cannot write uint8 LSTM weights (its LSTM
path hard-codes int8), so the nodes are written here; quantizing needs only NumPy and `onnx`.

Measured on a 2x512 LSTM (docs/export.md): per-row scales cost +0.00005 nats/char where one scale
per matrix moved the loss by 0.0004, and quantizing the head as well added another +0.00006 for
0.1 MB. ONNX Runtime has no quantized GRU or RNN kernel, so those cells are refused rather than
exported with float recurrent weights under an int8 name.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from charrnn.config import ModelConfig, to_dict
from charrnn.data.vocab import Vocab
from charrnn.errors import UserError, require_package

if TYPE_CHECKING:
    import onnx

OPSET = 14
IR_VERSION = 8
FORMAT = "charrnn-onnx/1"
QUANTIZE_CHOICES = ("int8",)
PROTOBUF_LIMIT = 2**31 - 2**26  # bytes of weights one .onnx file can hold, with room for the graph

# Gate blocks of the canonical (torch.nn) weights, in ONNX's order.
ONNX_GATE_ORDER = {"rnn": [0], "gru": [1, 0, 2], "lstm": [0, 3, 1, 2]}  # gru: z, r, n; lstm: i, o, f, g
ONNX_OP = {"rnn": "RNN", "gru": "GRU", "lstm": "LSTM"}


def reorder_gates(weight: np.ndarray, cell: str, hidden: int) -> np.ndarray:
    """(G*H, ...) canonical gate blocks -> the same blocks in ONNX's order."""
    blocks = [weight[g * hidden:(g + 1) * hidden] for g in ONNX_GATE_ORDER[cell]]
    return np.ascontiguousarray(np.concatenate(blocks, axis=0))


def layer_weights(config: ModelConfig, params: dict[str, np.ndarray], k: int):
    """Layer k's W (1, G*H, in), R (1, G*H, H), B (1, 2*G*H) for ONNX's RNN/GRU/LSTM op, float32."""
    cell, H = config.cell, config.hidden
    w = reorder_gates(params[f"rnn.weight_ih_l{k}"], cell, H)
    r = reorder_gates(params[f"rnn.weight_hh_l{k}"], cell, H)
    b = np.concatenate([reorder_gates(params[f"rnn.bias_ih_l{k}"], cell, H),
                        reorder_gates(params[f"rnn.bias_hh_l{k}"], cell, H)])
    return tuple(a[None].astype(np.float32) for a in (w, r, b))


def label_bias_table(config: ModelConfig, params: dict[str, np.ndarray]) -> np.ndarray:
    """label.weight (N, G*H) -> (N, 2*G*H) float32: each row in ONNX's gate order on the input half of B
    (ONNX's B is [Wb, Rb]), zeros on the recurrent half."""
    rows = reorder_gates(np.asarray(params["label.weight"]).T, config.cell, config.hidden).T    # (N, G*H)
    return np.ascontiguousarray(np.concatenate([rows, np.zeros_like(rows)], axis=1), dtype=np.float32)


def build_model_proto(config: ModelConfig, vocab: Vocab, params: dict[str, np.ndarray], source: str = "",
                      separator: str | None = None, unknown: str | None = None) -> onnx.ModelProto:
    """The float32 ONNX model of a charrnn network (see the module docstring for the graph)."""
    onnx = require_package("onnx", "exporting to ONNX", "onnx")
    from onnx import TensorProto, helper, numpy_helper

    cfg, L, H, V = config, config.layers, config.hidden, config.vocab_size
    lstm = cfg.cell == "lstm"
    inits, nodes = [], []

    def const(name: str, value: np.ndarray) -> str:
        inits.append(numpy_helper.from_array(np.ascontiguousarray(value), name))
        return name

    def node(op: str, inputs, outputs, **attrs):
        nodes.append(helper.make_node(op, list(inputs), list(outputs), name=f"{op}_{len(nodes)}", **attrs))
        return outputs[0]

    # embed 0 (one-hot inputs): gathering rows of the identity is the one-hot encoding
    table = params["embed.weight"] if cfg.embed else np.eye(V)
    embed = const("embed.weight", table.astype(np.float32))                            # (V, E), or (V, V)
    x = node("Gather", [embed, "chars"], ["embedded"], axis=0)                         # (B, T, E)
    x = node("Transpose", [x], ["layer_in_0"], perm=[1, 0, 2])                        # (T, B, E)
    axes0, axes1 = const("axes_0", np.array([0], np.int64)), const("axes_1", np.array([1], np.int64))
    finals = {"h": [], "c": []}
    for k in range(L):
        w, r, b = (const(f"{name}_l{k}", a) for name, a in zip("WRB", layer_weights(cfg, params, k)))
        if k == 0 and cfg.labels:
            rows = node("Gather", [const("label.bias", label_bias_table(cfg, params)), "label"], ["label_bias"],
                        axis=0)                                                       # (1, 2*G*H)
            b = node("Add", [b, rows], ["B_l0_labelled"])                               # (1, 2*G*H)
        start, end = const(f"start_l{k}", np.array([k], np.int64)), const(f"end_l{k}", np.array([k + 1], np.int64))
        inputs = [x, w, r, b, "", node("Slice", ["h0", start, end, axes0], [f"h0_l{k}"])]  # (1, B, H)
        outputs = [f"y_l{k}", f"hn_l{k}"]
        if lstm:
            inputs.append(node("Slice", ["c0", start, end, axes0], [f"c0_l{k}"]))
            outputs.append(f"cn_l{k}")
        extra = {"linear_before_reset": 1} if cfg.cell == "gru" else {}
        node(ONNX_OP[cfg.cell], inputs, outputs, hidden_size=H, **extra)              # Y (T, 1, B, H)
        x = node("Squeeze", [outputs[0], axes1], [f"layer_in_{k + 1}"])                  # (T, B, H)
        finals["h"].append(outputs[1])
        if lstm:
            finals["c"].append(outputs[2])
    node("Concat", finals["h"], ["hn"], axis=0)                                        # (L, B, H)
    if lstm:
        node("Concat", finals["c"], ["cn"], axis=0)
    y = node("Transpose", [x], ["top"], perm=[1, 0, 2])                                 # (B, T, H)
    head = const("head.weight_t", np.ascontiguousarray(params["head.weight"].T.astype(np.float32)))  # (H, V)
    y = node("MatMul", [y, head], ["head_out"])                                        # (B, T, V)
    node("Add", [y, const("head.bias", params["head.bias"].astype(np.float32))], ["logits"])

    state = lambda name: helper.make_tensor_value_info(name, TensorProto.FLOAT, [L, "batch", H])
    graph = helper.make_graph(
        nodes, "charrnn",
        inputs=[helper.make_tensor_value_info("chars", TensorProto.INT64, ["batch", "time"]), state("h0")]
        + ([state("c0")] if lstm else [])
        + ([helper.make_tensor_value_info("label", TensorProto.INT64, [1])] if cfg.labels else []),
        outputs=[helper.make_tensor_value_info("logits", TensorProto.FLOAT, ["batch", "time", V]), state("hn")]
        + ([state("cn")] if lstm else []),
        initializer=inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="charrnn",
                              doc_string=f"charrnn {cfg.cell} {L}x{H}: chars (B, T) int64 and the state in, "
                                         "logits (B, T, V) and the new state out; feed hn/cn back as h0/c0"
                                         + ("; label (1,) int64: the index of one of the labels in the metadata"
                                            if cfg.labels else ""))
    model.ir_version = IR_VERSION
    metadata = {"format": FORMAT, "vocab": json.dumps(list(vocab.chars), ensure_ascii=False),
                "config": json.dumps(to_dict(cfg)), "quantize": "none", "source": source,
                "doc_sep": json.dumps(separator), "unknown": json.dumps(unknown)}  # null where the run has none
    if cfg.labels:  # only for a labelled run: an unlabelled run's file is as it was
        metadata["labels"] = json.dumps(list(cfg.labels), ensure_ascii=False)
    helper.set_model_props(model, metadata)
    onnx.checker.check_model(model, full_check=True)
    return model


def quantize_rows(weight: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(1, G*H, K) float32 -> DynamicQuantizeLSTM's (1, K, G*H) uint8 weights, (1, G*H) scales, (1, G*H) zero points.

    Symmetric per gate row: scale = max|w| / 127 (1 for a row of zeros), q = round(w / scale) + 128."""
    largest = np.abs(weight).max(axis=2)                                              # (1, G*H)
    scale = np.where(largest > 0, largest / 127, 1).astype(np.float32)
    q = np.clip(np.rint(weight / scale[..., None]), -127, 127).astype(np.int16) + 128  # (1, G*H, K) in [1, 255]
    zero = np.full(scale.shape, 128, np.uint8)
    return np.ascontiguousarray(q.astype(np.uint8).transpose(0, 2, 1)), scale, zero


def quantize_int8(model: onnx.ModelProto, config: ModelConfig) -> onnx.ModelProto:
    """A copy of the float model with each LSTM as DynamicQuantizeLSTM on uint8 weights (the module docstring)."""
    if config.cell != "lstm":
        raise UserError(f"--quantize int8 is offered for LSTM models only: ONNX Runtime has no int8 kernel for "
                        f"{config.cell.upper()} layers (its dynamic quantization covers LSTM and MatMul); "
                        "export this model in float32")
    onnx = require_package("onnx", "exporting to ONNX", "onnx")
    from onnx import helper, numpy_helper

    quantized = onnx.ModelProto()
    quantized.CopyFrom(model)
    graph = quantized.graph
    weights = {t.name: t for t in graph.initializer}
    nodes = []
    for node in graph.node:
        if node.op_type != "LSTM":
            nodes.append(node)
            continue
        x, w, r, b, lengths, h0, c0 = node.input
        for name in (w, r):
            q, scale, zero = quantize_rows(numpy_helper.to_array(weights[name]))
            graph.initializer.remove(weights[name])
            graph.initializer.extend([numpy_helper.from_array(q, f"{name}_uint8"),
                                      numpy_helper.from_array(scale, f"{name}_scale"),
                                      numpy_helper.from_array(zero, f"{name}_zero_point")])
        # inputs: X, W, R, B, sequence_lens, initial_h, initial_c, P, W_scale, W_zero_point, R_scale, R_zero_point
        inputs = [x, f"{w}_uint8", f"{r}_uint8", b, lengths, h0, c0, "",
                  f"{w}_scale", f"{w}_zero_point", f"{r}_scale", f"{r}_zero_point"]
        nodes.append(helper.make_node("DynamicQuantizeLSTM", inputs, list(node.output), name=f"{node.name}_int8",
                                      domain="com.microsoft", hidden_size=config.hidden))
    del graph.node[:]
    graph.node.extend(nodes)
    quantized.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    props = {p.key: p.value for p in model.metadata_props}
    props["quantize"] = "int8"
    del quantized.metadata_props[:]
    helper.set_model_props(quantized, props)
    return quantized


def export_onnx(run_dir, which: str, out, quantize: str | None = None) -> dict:
    """Write run_dir's weights (`which`: latest or best) to `out` as ONNX; returns what was written."""
    from charrnn.checkpoint import load_run
    from charrnn.data.dataset import read_record
    from charrnn.infer.api import run_symbols
    from charrnn.storage import write_bytes_atomic

    if quantize is not None and quantize not in QUANTIZE_CHOICES:
        raise UserError(f"--quantize {quantize!r} is not one of {', '.join(QUANTIZE_CHOICES)}")
    require_package("onnx", "exporting to ONNX", "onnx")  # before reading the run: say what is missing first
    out = Path(out)
    _check_out_file(out)
    config, vocab, params = load_run(Path(run_dir), which)
    size = sum(p.size for p in params.values()) * 4
    if size > PROTOBUF_LIMIT:
        raise UserError(f"the model's weights are {size / 2**30:.1f} GiB; a single .onnx file holds under 2 GiB "
                        "(protobuf's limit), and charrnn does not write ONNX external-data files")
    separator, unknown = run_symbols(read_record(Path(run_dir)), vocab)
    model = build_model_proto(config, vocab, params, source=f"{Path(run_dir).resolve().name} ({which})",
                              separator=separator, unknown=unknown)
    if quantize:
        model = quantize_int8(model, config)
    data = model.SerializeToString()
    try:
        write_bytes_atomic(out, data)
    except OSError as e:
        raise UserError(f"cannot write {out} ({e.strerror or e})") from None
    return {"path": str(out), "bytes": len(data), "cell": config.cell, "layers": config.layers,
            "hidden": config.hidden, "vocab_size": config.vocab_size, "quantize": quantize or "none"}


def _check_out_file(out: Path) -> None:
    if out.is_dir():
        raise UserError(f"--out {out} is a directory; give a file name such as {out / 'model.onnx'}")
    if not out.parent.is_dir():
        raise UserError(f"--out {out}: the folder {out.parent} does not exist")
    if not os.access(out.parent, os.W_OK):
        raise UserError(f"--out {out}: the folder {out.parent} is not writable")

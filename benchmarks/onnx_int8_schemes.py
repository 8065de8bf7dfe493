"""int8 ONNX schemes: what each costs on a CPU with VNNI (measured here) and on one without (emulated).

    python benchmarks/onnx_int8_schemes.py RUN_DIR TEXT [CHARS]

For the run's float32 export and four int8 versions of it: ONNX Runtime's quantizer (int8 weights, "U8S8"),
the same with reduce_range (7-bit weights), the same asked for weight_type=QUInt8 (which its LSTM path
ignores), and charrnn's `export --quantize int8` (uint8 weights, zero point 128, "U8U8"). Each is read
over the last CHARS characters of TEXT (default 5,000; characters outside the run's vocabulary dropped)
from a zero state, and the table gives the loss difference from float32 as ONNX Runtime computes it on
this CPU, the KL divergence of its predictions from float32's, and the loss difference as a CPU without
VNNI computes it: tests/test_export_onnx.py's `emulate_int8`, which adds int8-weight products in
saturating int16 pairs as MLAS's AVX2 kernel does (docs/export.md, int8). The emulation's exact mode is
printed too: where it matches ONNX Runtime's column, the emulation is what this CPU runs.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from _common import print_table  # noqa: E402
from test_export_onnx import cpu_has_vnni, emulate_int8  # noqa: E402

import charrnn  # noqa: E402
from charrnn.checkpoint import load_run  # noqa: E402
from charrnn.export.onnx_export import build_model_proto, quantize_int8  # noqa: E402


def files(run: Path, folder: Path) -> dict:
    """{scheme: .onnx path} for the run's latest weights."""
    from onnxruntime.quantization import QuantType, quantize_dynamic

    config, vocab, params = load_run(run, "latest")
    proto = build_model_proto(config, vocab, params)
    paths = {"float32": folder / "float.onnx"}
    paths["float32"].write_bytes(proto.SerializeToString())
    logging.getLogger().setLevel(logging.ERROR)  # the quantizer's advice about image models
    for name, options in (("U8S8 (ONNX Runtime's quantizer)", {}), ("U8S8 reduce_range", {"reduce_range": True}),
                          ("weight_type=QUInt8", {"weight_type": QuantType.QUInt8})):
        paths[name] = folder / f"{len(paths)}.onnx"
        quantize_dynamic(proto, paths[name], op_types_to_quantize=["LSTM"], per_channel=True,
                         **{"weight_type": QuantType.QInt8, **options})
    paths["U8U8 (charrnn)"] = folder / "u8u8.onnx"
    paths["U8U8 (charrnn)"].write_bytes(quantize_int8(proto, config).SerializeToString())
    return paths


def log_probs(path: Path, indices: np.ndarray) -> np.ndarray:
    """(T-1, V) log-probabilities of each next character, the text read as one stream."""
    model = charrnn.load_onnx(path).model
    logits, _ = model.forward(indices[None, :-1], model.initial_state(1))
    z = logits[0].astype(np.float64)
    z -= z.max(axis=1, keepdims=True)
    return z - np.log(np.exp(z).sum(axis=1, keepdims=True))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("text", type=Path)
    parser.add_argument("chars", type=int, nargs="?", default=5000)
    args = parser.parse_args()
    vocab = load_run(args.run, "latest")[1]
    text = "".join(c for c in args.text.read_text(encoding="utf-8")[-args.chars:] if c in vocab)
    indices = vocab.encode(text).astype(np.int64)
    rows = []
    with tempfile.TemporaryDirectory(prefix="charrnn-int8-") as tmp:
        paths = files(args.run, Path(tmp))
        reference = log_probs(paths.pop("float32"), indices)
        targets = np.arange(len(indices) - 1), indices[1:]
        loss = float(-reference[targets].mean())
        for name, path in paths.items():
            got = log_probs(path, indices)
            kl = float((np.exp(reference) * (reference - got)).sum(axis=1).mean())
            rows.append([name, f"{float(-got[targets].mean()) - loss:+.5f}", f"{kl:.1e}",
                         f"{emulate_int8(path, text, avx2=False) - loss:+.5f}",
                         f"{emulate_int8(path, text, avx2=True) - loss:+.5f}"])
    vnni = {True: "with VNNI", False: "without VNNI", None: "not x86 with AVX2"}[cpu_has_vnni()]
    print(f"{args.run}: {len(text):,} characters, float32 loss {loss:.6f} nats/char; this CPU: {vnni}")
    print_table(["scheme", "ONNX Runtime here", "KL here", "emulated, exact", "emulated, AVX2"], rows)


if __name__ == "__main__":
    main()

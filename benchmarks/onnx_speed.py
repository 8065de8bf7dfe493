"""Single-stream generation through ONNX Runtime vs charrnn's own float32 and int8 paths.

    python benchmarks/onnx_speed.py [--rounds 3] [--chars 300] [--run RUN_DIR [--which best] [--data TEXT]]

A 2x512 LSTM, embedding 64, V = 65, random weights (speed does not depend on them), batch 1,
temperature-1 sampling, every row through charrnn's real sampling loop (sample.generate_indices,
one uniform per character): the rows differ only in what computes the logits.
  - ONNX Runtime float32 / int8: `charrnn sample --onnx FILE` (Predictor over OnnxCharModel: one session.run per
    character, state in and out). int8 is `charrnn export --quantize int8`: ONNX Runtime's
    DynamicQuantizeLSTM on uint8 weights (the head stays float32; docs/export.md, int8).
  - ONNX Runtime session.run alone, greedy: the floor of any ONNX Runtime loop (no sampling).
  - charrnn naive / library float32 and `--quantize int8` (the compiled C step), as sampling_speed.py.
Rows alternate within each round, 0.3 s apart; each thread setting (1 and 2: torch, OpenBLAS,
OpenMP and ONNX Runtime's intra-op threads alike) has its own sessions. The ratio is taken against
ONNX Runtime float32 in the same round and thread setting.

--run: also the accuracy cost of int8, as `charrnn eval --quantize int8` measures it: mean NLL
(nats/char) of the last 10% of --data (default tiny shakespeare) read as one stream, for the
run's float32 weights, its ONNX float32 and int8 exports, and charrnn's own int8.
"""
from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

# _common first: early_threads must pin BLAS threads before NumPy loads OpenBLAS (isort: skip)
from _common import load_text, machine_line, print_table  # isort: skip
from sampling_speed import charrnn_generate, int8_runner, measure, per_setting, table, warm_up  # isort: skip

import numpy as np

from charrnn.config import ModelConfig
from charrnn.data.vocab import Vocab
from charrnn.export.onnx_export import build_model_proto, quantize_int8
from charrnn.infer.evaluate import evaluate_indices
from charrnn.infer.predictor import Predictor
from charrnn.models import build_model
from charrnn.models.onnx_runtime import OnnxCharModel

V, E, H, L = 65, 64, 512, 2
REF = "ONNX Runtime float32 (charrnn sample --onnx)"


def write_onnx(config, vocab, params, folder: Path) -> dict:
    """{'float32': path, 'int8': path}: the model exported both ways."""
    proto = build_model_proto(config, vocab, params)
    paths = {"float32": folder / "float32.onnx", "int8": folder / "int8.onnx"}
    paths["float32"].write_bytes(proto.SerializeToString())
    paths["int8"].write_bytes(quantize_int8(proto, config).SerializeToString())
    return paths


def session_greedy(path: Path, threads_n: int):
    """The bare loop: session.run per character, argmax, state fed back."""
    model = OnnxCharModel(path, threads=threads_n)

    def run(chars: int) -> int:
        state, x = model.initial_state(1), np.zeros((1, 1), np.int64)
        for _ in range(chars):
            logits, state = model.forward(x, state)
            x[0, 0] = logits[0, -1].argmax()
        return chars

    return run


def speed(args, settings) -> None:
    cfg = ModelConfig(vocab_size=V, cell="lstm", layers=L, hidden=H, embed=E)
    vocab = Vocab(tuple(chr(32 + i) for i in range(V)))
    models = {impl: build_model(impl, cfg, seed=0) for impl in ("naive", "library")}
    with tempfile.TemporaryDirectory(prefix="onnx-speed-") as tmp:
        paths = write_onnx(cfg, vocab, models["naive"].get_parameters(), Path(tmp))
        sizes = {k: p.stat().st_size / 1e6 for k, p in paths.items()}
        rows = {
            REF: per_setting(settings, lambda n: charrnn_generate(Predictor(OnnxCharModel(paths["float32"], n)), 1)),
            "ONNX Runtime int8 (export --quantize int8, sample --onnx)": per_setting(
                settings, lambda n: charrnn_generate(Predictor(OnnxCharModel(paths["int8"], n)), 1)),
            "ONNX Runtime float32, session.run alone (greedy)": per_setting(
                settings, lambda n: session_greedy(paths["float32"], n)),
            "ONNX Runtime int8, session.run alone (greedy)": per_setting(
                settings, lambda n: session_greedy(paths["int8"], n)),
        }
        rows.update({f"charrnn {impl} float32 (sample --checkpoint --impl {impl})": charrnn_generate(Predictor(m), 1)
                     for impl, m in models.items()})
        rows["charrnn --quantize int8 (compiled C step)"] = per_setting(
            settings, lambda n: charrnn_generate(int8_runner(models["library"], n), 1))
        warm_up(rows, 20)
        import onnxruntime

        print(f"# single-stream generation: 2x{H} LSTM, E{E}, V{V}, random weights, batch 1, temperature 1")
        print(machine_line() + f" | onnxruntime {onnxruntime.__version__}")
        print(f".onnx sizes: float32 {sizes['float32']:.1f} MB, int8 {sizes['int8']:.1f} MB")
        print(f"{args.rounds} rounds; median (min-max); ratio = row / ONNX Runtime float32, same round and threads")
        print()
        results = measure(rows, settings, args.rounds, args.chars)
        table(results, settings, list(rows), REF, f"{args.chars} characters per measurement:", "ONNX Runtime float32")


def accuracy(args) -> None:
    """Mean NLL of the validation split: float32 vs ONNX float32 vs ONNX int8 vs charrnn int8."""
    from charrnn.checkpoint import load_run

    config, vocab, params = load_run(Path(args.run), args.which)
    text = Path(args.data).read_text(encoding="utf-8") if args.data else load_text()[0]
    valid = text[int(len(text) * 0.9):]
    data = vocab.encode(valid)
    with tempfile.TemporaryDirectory(prefix="onnx-acc-") as tmp:
        paths = write_onnx(config, vocab, params, Path(tmp))
        runners = {"charrnn float32 (naive)": Predictor(build_model("naive", config, params=params)),
                   "ONNX Runtime float32": Predictor(OnnxCharModel(paths["float32"])),
                   "ONNX Runtime int8 (export --quantize int8)": Predictor(OnnxCharModel(paths["int8"])),
                   "charrnn --quantize int8": Predictor(build_model("naive", config, params=params), quantize="int8")}
        rows, base = [], None
        for name, runner in runners.items():
            start = time.perf_counter()
            loss = evaluate_indices(runner, data).loss
            base = loss if base is None else base
            rows.append([name, f"{loss:.6f}", f"{loss - base:+.6f}", f"{time.perf_counter() - start:.1f}"])
    print(f"accuracy: {args.run} ({args.which}), {config.cell} {config.layers}x{config.hidden}, last 10% of the text "
          f"({len(data):,} characters) read as one stream")
    print_table(["model", "nats/char", "vs float32", "seconds"], rows)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--chars", type=int, default=300, help="characters per measurement")
    parser.add_argument("--threads", type=int, default=None, help="only this thread setting (default: 1 and 2)")
    parser.add_argument("--run", help="a trained run: also measure what int8 costs in accuracy")
    parser.add_argument("--which", default="best", choices=("latest", "best"))
    parser.add_argument("--data", help="text for --run (default: tiny shakespeare)")
    parser.add_argument("--skip-speed", action="store_true", help="only the accuracy table (with --run)")
    args = parser.parse_args()
    if not args.skip_speed:
        speed(args, (args.threads,) if args.threads else (1, 2))
    if args.run:
        accuracy(args)
    return 0


if __name__ == "__main__":
    os.environ.setdefault("ORT_LOGGING_LEVEL", "3")
    raise SystemExit(main())

"""Train `--preset cpu-10min` (auto with a 600 s budget) on tiny shakespeare and print the best validation loss.

Validation is the last 10% of the text, read in order with the state carried
(the same split nanoGPT's shakespeare_char uses). The target is <= 1.40 nats/char.

    python benchmarks/preset_cpu10min.py [--out DIR] [extra train flags...]
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import machine_line  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", help="run directory (default: a temporary one)")
    args, extra = parser.parse_known_args()
    out = Path(args.out or tempfile.mkdtemp(prefix="cpu10min-"))
    print(machine_line(), flush=True)
    command = [sys.executable, "-m", "charrnn", "train", "--data", "tinyshakespeare", "--out", str(out),
               "--preset", "cpu-10min", "--overwrite", *extra]
    print("command:", " ".join(command[1:]), flush=True)
    started = time.perf_counter()
    done = subprocess.run(command)
    wall = time.perf_counter() - started
    rows = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()]
    val = [(r["iter"], r["elapsed_s"], r["val_loss"]) for r in rows if "val_loss" in r]
    print("\n| iter | elapsed s | val loss (nats/char) | val bpc |\n|---|---|---|---|")
    for it, elapsed, loss in val:
        print(f"| {it} | {elapsed:.0f} | {loss:.4f} | {loss / 0.6931471805599453:.4f} |")
    best = min(v[2] for v in val)
    print(f"\nbest validation loss during training {best:.4f} nats/char ({best / 0.6931471805599453:.4f} bpc), "
          f"the split read as {_streams(out)} streams; wall {wall:.0f} s; exit {done.returncode}; run in {out}")
    for quantize in ([], ["--quantize", "int8"]):
        one_stream = _eval_one_stream(out, quantize)
        print(f"best.safetensors{' ' + ' '.join(quantize) if quantize else ''} on the validation split read as ONE "
              f"stream from a zero state (charrnn eval): {one_stream['loss']:.4f} nats/char "
              f"({one_stream['bpc']:.4f} bpc) over {one_stream['characters']} characters")
    return 0


def _streams(out: Path) -> int:
    return json.loads((out / "config.json").read_text())["train"]["batch_size"]


def _eval_one_stream(out: Path, extra: list) -> dict:
    """The last 10% of the text as one stream: fewer cold starts than the B streams of in-training validation.
    With --quantize int8: what int8 generation costs in accuracy on a real model."""
    from charrnn.data.sources import resolve_data

    text = resolve_data("tinyshakespeare").read_text(encoding="utf-8")
    val_path = out / "validation-split.txt"
    val_path.write_text(text[len(text) - int(len(text) * 0.1):], encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "charrnn", "eval", "--checkpoint", str(out), "--which", "best",
                             "--data", str(val_path), "--json", *extra], capture_output=True, text=True, check=True)
    return json.loads(result.stdout)


if __name__ == "__main__":
    sys.exit(main())

"""Judge `--preset auto` against plain references on texts it never saw, the same minutes each, side by side.

Contenders (any of them, --contenders):
    auto        charrnn train --preset auto --max-time S
    auto-busy   the same, with a competing process spinning on its core for the first BUSY_SECONDS
    lstm-2xH    the plain reference loop at width H (128, 192, 320: what a careful user would try): 2xH LSTM,
                AdamW 3e-3, warm-up 100 then cosine to lr/10, B64 T64, dropout 0.1, clip 1 (float32), every
                weight drawn (--head-bias random: a plain loop's start, and the references judged before it)
    lstm-2x512  the fixed shape `--preset cpu-10min` had before it became auto with 600 s: 2x512 LSTM,
                dropout 0.25, AdamW 4e-3 wd 0.01, warm-up 100 then cosine, B32 T100 (float32)
    babygpt     benchmarks/babygpt.py: nanoGPT's CPU baby GPT, schedule sized to the budget

Two jobs run at once, each alone on one core (taskset, one thread), in the order given (auto beside auto-busy,
so quiet and busy share the machine's state); with 2 cores nothing else should run. Every LSTM's
best.safetensors is then read over the WHOLE validation split (the last --val-frac of the text) as one stream by
`charrnn eval`; the GPT scores the same characters with 64-character windows, each scored character seeing at
least 32 before it. That column is the judged figure; each text ends with auto's margin over the best reference
(positive: auto is lower) and the busy run's distance from the quiet one.

    python benchmarks/preset_auto.py --data A.txt [B.txt ...] [--budgets 120 300] [--contenders ...] [--out DIR --keep]

With --keep, a run whose judged figure is already in --out is not run again: after a change to auto, only auto's
runs are made again (delete them first) and the references' runs are reused.

The texts judged in docs/performance.md are built by benchmarks/unseen_texts.py (never committed).
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Optional

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import ROOT, machine_line  # noqa: E402

REFERENCE = ["--cell", "lstm", "--layers", "2", "--embed", "64", "--dropout", "0.1",
             "--batch-size", "64", "--seq-len", "64", "--optimizer", "adamw", "--lr", "3e-3", "--schedule", "cosine",
             "--warmup-iters", "100", "--grad-clip", "1", "--val-chars", "100000", "--head-bias", "random"]
OLD_CPU_10MIN = ["--impl", "library", "--cell", "lstm", "--layers", "2", "--hidden", "512", "--embed", "64",
                 "--dropout", "0.25", "--batch-size", "32", "--seq-len", "100", "--optimizer", "adamw", "--lr", "4e-3",
                 "--weight-decay", "0.01", "--schedule", "cosine", "--warmup-iters", "100", "--grad-clip", "1",
                 "--val-chars", "100000", "--head-bias", "random"]
CONTENDERS = ("auto", "auto-busy", "lstm-2x128", "lstm-2x192", "lstm-2x320", "lstm-2x512", "babygpt")
REFERENCES = ("lstm-2x128", "lstm-2x192", "lstm-2x320", "lstm-2x512", "babygpt")
BUSY_SECONDS = 60
SPIN = f"import time\nend = time.time() + {BUSY_SECONDS}\nwhile time.time() < end: pass"


def command(contender: str, data: Path, budget: float, out: Path) -> list:
    train = [sys.executable, "-m", "charrnn", "train", "--data", str(data), "--out", str(out), "--overwrite",
             "--max-time", str(budget)]
    evals = ["--eval-every", str(max(50, int(budget * 2 / 3)))]  # ~8 validations in the budget
    if contender in ("auto", "auto-busy"):
        return [*train, "--preset", "auto"]
    if contender in ("lstm-2x128", "lstm-2x192", "lstm-2x320"):
        return [*train, *REFERENCE, "--hidden", contender.split("x")[1], *evals]
    if contender == "lstm-2x512":
        return [*train, *OLD_CPU_10MIN, *evals]
    return [sys.executable, str(ROOT / "benchmarks" / "babygpt.py"), "--data", str(data), "--max-time", str(budget),
            "--json", str(out / "babygpt.json")]


def run_pair(jobs: list, val_path: Path) -> None:
    """Start up to two jobs, one per core, and wait for both; then score the LSTMs on the whole split."""
    running, spinners = [], []
    for core, (contender, _, out, cmd) in enumerate(jobs):
        out.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
        log = open(out / "log.txt", "w")
        pin = ["taskset", "-c", str(core % (os.cpu_count() or 1))]
        if contender == "auto-busy":   # another job on the same core from the start: half the core for a minute
            spinners.append(subprocess.Popen([*pin, sys.executable, "-c", SPIN]))
        running.append((subprocess.Popen([*pin, *cmd], cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT),
                        log))
    for spinner in spinners:
        spinner.wait()
    for process, log in running:
        process.wait()
        log.close()
    for contender, _, out, _ in jobs:
        if contender != "babygpt" and (out / "best.safetensors").exists():
            done = subprocess.run([sys.executable, "-m", "charrnn", "eval", "--checkpoint", str(out), "--which", "best",
                                   "--data", str(val_path), "--json"], cwd=ROOT, capture_output=True, text=True)
            if done.returncode == 0:
                (out / "whole-split.json").write_text(done.stdout)


def judged(contender: str, out: Path) -> Optional[float]:
    """The whole-split loss of a run, or None where it failed."""
    if contender == "babygpt":
        path = out / "babygpt.json"
        return json.loads(path.read_text())["best_val"] if path.exists() else None
    path = out / "whole-split.json"
    return json.loads(path.read_text())["loss"] if path.exists() else None


def row(contender: str, budget: float, out: Path) -> str:
    if contender == "babygpt":
        if not (out / "babygpt.json").exists():
            return f"| {budget:g} | {contender} | failed: see {out / 'log.txt'} | | | |"
        result = json.loads((out / "babygpt.json").read_text())
        return (f"| {budget:g} | babygpt | 4×128 GPT ({result['params'] / 1e6:.2f}M) | {result['iterations']} | "
                f"{result['best_val']:.4f} | {result['best_val']:.4f} |")
    metrics = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines() if line.strip()] \
        if (out / "metrics.jsonl").exists() else []
    if not metrics or not (out / "whole-split.json").exists():
        return f"| {budget:g} | {contender} | failed: see {out / 'log.txt'} | | | |"
    config = json.loads((out / "config.json").read_text())
    model, train = config["model"], config["train"]
    shape = (f"{model['layers']}×{model['hidden']} {model['cell'].upper()} d{model['dropout']:g} "
             f"B{train['batch_size']} T{train['seq_len']}{' bf16' if train['bf16'] else ''}")
    best = min(m["val_loss"] for m in metrics if "val_loss" in m)
    whole = json.loads((out / "whole-split.json").read_text())["loss"]
    return f"| {budget:g} | {contender} | {shape} | {metrics[-1]['iter']} | {best:.4f} | {whole:.4f} |"


def verdict(runs: list, budget: float) -> str:
    """auto's margin over the best reference run at this budget, and the busy run's distance from the quiet one."""
    losses = {c: judged(c, out) for c, b, out, _ in runs if b == budget}
    refs = {c: v for c, v in losses.items() if c in REFERENCES and v is not None}
    said = [f"{budget:g} s:"]
    if losses.get("auto") is not None and refs:
        best = min(refs, key=refs.get)
        said.append(f"auto {losses['auto']:.4f}, best reference {best} {refs[best]:.4f}: "
                    f"auto ahead by {refs[best] - losses['auto']:+.4f}")
    if losses.get("auto") is not None and losses.get("auto-busy") is not None:
        said.append(f"busy {losses['auto-busy']:.4f}, {losses['auto-busy'] - losses['auto']:+.4f} from quiet")
    return " ".join(said)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True, nargs="+", help="UTF-8 text files, judged one after another")
    parser.add_argument("--budgets", type=float, nargs="+", default=[120.0, 300.0], metavar="SECONDS")
    parser.add_argument("--contenders", nargs="+", choices=CONTENDERS,
                        default=["auto", "auto-busy", "lstm-2x128", "lstm-2x192", "lstm-2x320", "babygpt"])
    parser.add_argument("--val-frac", type=float, default=0.1)
    parser.add_argument("--out", help="folder for the runs (default: a temporary one)")
    parser.add_argument("--keep", action="store_true", help="reuse the runs --out already holds a judged figure for")
    args = parser.parse_args()
    for data in map(Path, args.data):
        if not data.is_file():
            parser.error(f"--data {data}: no such file")
    root = Path(args.out or tempfile.mkdtemp(prefix="preset-auto-"))
    print(machine_line(), flush=True)
    print(f"each job alone on one core, one thread; runs in {root}", flush=True)
    verdicts = []
    for data in map(Path, args.data):
        text = data.read_text(encoding="utf-8")
        out = root / data.stem
        out.mkdir(parents=True, exist_ok=True)
        val_path = out / "validation-split.txt"
        val_path.write_text(text[len(text) - int(len(text) * args.val_frac):], encoding="utf-8")
        print(f"\n## {data.name} ({len(text):,} chars, {len(set(text)):,} distinct)", flush=True)
        jobs = [(c, b, out / f"{c}-{b:g}s", command(c, data, b, out / f"{c}-{b:g}s"))
                for b in args.budgets for c in args.contenders]
        to_run = [job for job in jobs if not (args.keep and judged(job[0], job[2]) is not None)]
        for start in range(0, len(to_run), 2):
            run_pair(to_run[start:start + 2], val_path)
            for contender, budget, run_dir, _ in to_run[start:start + 2]:
                print(row(contender, budget, run_dir).replace("| ", "", 1), flush=True)
        print("\n| budget s | contender | shape | iterations | best val in training | whole val split (judged) |")
        print("|---|---|---|---|---|---|")
        for contender, budget, run_dir, _ in jobs:
            print(row(contender, budget, run_dir))
        for budget in args.budgets:
            verdicts.append(f"{data.name} {verdict(jobs, budget)}")
            print(verdicts[-1], flush=True)
    print("\n" + "\n".join(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())

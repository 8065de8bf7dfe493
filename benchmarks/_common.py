"""What the benchmark scripts share: thread setup, the machine line, timing rounds, tables, data.

Import this before NumPy: `early_threads()` must set OPENBLAS_NUM_THREADS before
NumPy loads OpenBLAS. Every script is run from anywhere as
`python benchmarks/NAME.py [--rounds N] [--threads N]`; see BENCHMARKING.md for
why each reports ratios measured side by side, as medians with the min-max.
"""
from __future__ import annotations

import contextlib
import datetime
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))  # run from a checkout without installing


@contextlib.contextmanager
def scratch_folder(prefix: str, keep: bool = False):
    """A temporary folder for a benchmark's generated data and runs: removed at the end, or kept (and its path
    printed) with `keep`, to look at what was measured."""
    folder = Path(tempfile.mkdtemp(prefix=prefix))
    try:
        yield folder
    finally:
        if keep:
            print(f"kept {folder}")
        else:
            shutil.rmtree(folder, ignore_errors=True)


def early_threads(argv=None):
    """Read `--threads N` from argv before NumPy is imported and pin every BLAS to N threads.

    Returns N, or None when not given (library defaults: one thread per core).
    """
    argv = sys.argv if argv is None else argv
    if "--threads" not in argv:
        return None
    n = int(argv[argv.index("--threads") + 1])
    for var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[var] = str(n)
    return n


def cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def blas_thread_count():
    from charrnn.devices import blas_thread_count as count

    return count() or "?"


def machine_line() -> str:
    import numpy as np

    parts = [f"CPU: {cpu_model()}", f"cores: {os.cpu_count()}", f"numpy {np.__version__}",
             f"OpenBLAS threads {blas_thread_count()}"]
    try:
        import torch

        parts += [f"torch {torch.__version__}", f"torch threads {torch.get_num_threads()}",
                  f"oneDNN {'on' if torch.backends.mkldnn.is_available() and torch.backends.mkldnn.enabled else 'off'}"]
    except ImportError:
        parts.append("torch not installed")
    try:
        load = "load avg %.2f" % os.getloadavg()[0]
    except OSError:
        load = "load avg ?"
    parts += [load, f"python {platform.python_version()}", datetime.datetime.now().strftime("%Y-%m-%d %H:%M")]
    return "machine: " + " | ".join(parts)


def timed(fn) -> float:
    """Seconds one call of fn takes."""
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def spread(values) -> str:
    """'median (min-max)' of a list of numbers, formatted for a table."""
    values = list(values)
    fmt = _fmt(statistics.median(values))
    return f"{fmt} ({_fmt(min(values))}-{_fmt(max(values))})"


def _fmt(x: float) -> str:
    if abs(x) >= 1000:
        return f"{x:,.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    return f"{x:.2f}"


def print_table(headers, rows) -> None:
    """A GitHub-flavoured markdown table, so the output pastes into the README."""
    cells = [list(map(str, headers))] + [[str(c) for c in row] for row in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    line = lambda r: "| " + " | ".join(c.ljust(w) for c, w in zip(r, widths)) + " |"
    print(line(cells[0]))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for row in cells[1:]:
        print(line(row))


def shakespeare_path():
    """tinyshakespeare.txt from $CHARRNN_DATA_DIR, else /work/shared/data; None if neither has it."""
    for directory in (os.environ.get("CHARRNN_DATA_DIR"), "/work/shared/data"):
        if directory and (Path(directory).expanduser() / "tinyshakespeare.txt").is_file():
            return Path(directory).expanduser() / "tinyshakespeare.txt"
    return None


def load_text(min_chars: int = 1_000_000):
    """(text, where it came from): tiny shakespeare, or synthetic English-like text when absent."""
    path = shakespeare_path()
    if path is not None:
        return path.read_text(encoding="utf-8"), str(path)
    import random

    rng = random.Random(0)
    words = ("the of and to in that it with as for his be he not by her but have from they you "
             "thou thee lord king love death night day sweet good speak come go").split()
    parts, size = [], 0
    while size < min_chars:
        line = " ".join(rng.choice(words) for _ in range(rng.randint(4, 12))).capitalize() + ".\n"
        parts.append(line)
        size += len(line)
    return "".join(parts), "synthetic text (tinyshakespeare.txt not found)"


def training_loop(stepper, streams):
    """run(iters) -> characters trained: charrnn's real train_step over the windows, state carried,
    reset at each epoch, exactly as the Trainer does (the benchmarks time this, not the Trainer's I/O)."""
    state = {"s": stepper.zero_state(streams.batch_size), "k": 0}

    def run(iters: int) -> int:
        for _ in range(iters):
            if state["k"] == streams.num_windows:
                state["s"], state["k"] = stepper.zero_state(streams.batch_size), 0
            x, y = streams.window(state["k"])
            _, state["s"] = stepper.train_step(x, y, state["s"])
            state["k"] += 1
        return iters * streams.batch_size * streams.seq_len

    return run

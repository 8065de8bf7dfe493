"""metrics.jsonl (one JSON object per logged step), the same rows as TensorBoard events, and loss.png."""
from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Callable, List

from charrnn.errors import checkpoint_write_error
from charrnn.train.tensorboard import open_event_log


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class MetricsLog:
    """Append-only JSON lines. On resume, rows past the resumed iteration are dropped,
    so the file tells one consistent history.

    Every row also goes to the run's TensorBoard events (train/tensorboard.py), when TensorBoard is
    installed: every engine logs through here, so the two always hold the same numbers."""

    def __init__(self, path: Path, resume_from_iter: int | None = None, warn: Callable[[str], None] = _stderr):
        from charrnn.storage import write_text_atomic  # a kill while rewriting must not lose the history

        self.path = Path(path)
        kept = [] if resume_from_iter is None else [r for r in read_metrics(self.path) if r.get("iter",
                                                                                                0) <= resume_from_iter]
        with self._reporting_errors():
            write_text_atomic(self.path, "".join(json.dumps(r) + "\n" for r in kept))
            self.events = open_event_log(self.path.parent, resume_from_iter, warn)

    def append(self, row: dict) -> None:
        with self._reporting_errors():
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")
            if self.events is not None:
                self.events.scalars(row)

    def add_sample(self, iteration: int, text: str) -> None:
        """A sample drawn during training, as a TensorBoard text event (metrics.jsonl holds numbers only)."""
        if self.events is not None:
            with self._reporting_errors():
                self.events.text(text, iteration)

    def close(self) -> None:
        """Close the event file; later rows go to metrics.jsonl alone."""
        if self.events is not None:
            self.events.close()
            self.events = None

    @contextlib.contextmanager
    def _reporting_errors(self):
        """A full disk or a read-only folder is the user's to fix: one line, not a traceback."""
        try:
            yield
        except OSError as e:
            raise checkpoint_write_error(self.path.parent, e) from None


def read_metrics(path: Path) -> List[dict]:
    rows = []
    try:
        lines = Path(path).read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError):
        return rows
    for line in lines:
        try:
            row = json.loads(line)
        except ValueError:
            continue  # a line cut short by a kill
        if isinstance(row, dict):
            rows.append(row)
    return rows


class LossPlot:
    """loss.png, drawn by a child process (`python -m charrnn.train.metrics`): matplotlib stays out of the
    training process (some 40 MB of its peak memory, half a second of its time), and training goes on while
    the picture is drawn. One drawing at a time: asked again meanwhile, it draws once more when that one ends
    (from the newer rows). `finish` waits, so loss.png is complete when training returns."""

    def __init__(self, metrics_path: Path, png_path: Path):
        self.args = [sys.executable, "-m", "charrnn.train.metrics", str(metrics_path), str(png_path)]
        self.child: subprocess.Popen | None = None
        self.again = False

    def request(self) -> None:
        if self.child is not None and self.child.poll() is None:
            self.again = True
            return
        self._start()

    def finish(self) -> None:
        if self.child is not None:
            self.child.wait()
        if self.again:
            self._start()
            self.child.wait()

    def _start(self) -> None:
        self.again = False
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(p for p in sys.path if p))  # this process's charrnn
        try:
            self.child = subprocess.Popen(self.args, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.DEVNULL)
        except OSError:
            self.child = None  # no process to spare: the run goes on without its picture


def plot_losses(metrics_path: Path, png_path: Path, title: str = "") -> None:
    """Train and validation loss against iterations; written atomically."""
    import matplotlib

    matplotlib.use("Agg")
    import io

    import matplotlib.pyplot as plt

    from charrnn.storage import write_bytes_atomic

    rows = read_metrics(metrics_path)
    train = [(r["iter"], r["train_loss"]) for r in rows if r.get("train_loss") is not None]
    val = [(r["iter"], r["val_loss"]) for r in rows if r.get("val_loss") is not None]
    fig, ax = plt.subplots(figsize=(8, 4.5), dpi=100)
    if train:
        ax.plot(*zip(*train), label="train", color="tab:blue", alpha=0.8)
    if val:
        ax.plot(*zip(*val), "o-", label="validation", color="tab:orange")
        best = min(val, key=lambda p: p[1])
        ax.annotate(f"best {best[1]:.3f}", best, textcoords="offset points", xytext=(0, 8), ha="center")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (nats per character)")
    ax.set_title(title or "charrnn training loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png")
    plt.close(fig)
    write_bytes_atomic(Path(png_path), buffer.getvalue())


if __name__ == "__main__":  # LossPlot's child: metrics.jsonl -> loss.png
    try:
        plot_losses(Path(sys.argv[1]), Path(sys.argv[2]))
    except OSError:
        sys.exit(1)

"""`--preset auto`: a model and schedule sized to this text, this budget and this machine.

The rule (docs/performance.md has the runs it was fitted on) works in characters, not seconds,
so one rule serves a slow laptop and a GPU alike:

1. Probe: time a few training steps of two model widths, in float32 and (where autocast can run)
   bfloat16, with the engine and device that will train. Seconds per character grow with the
   number of weights, so two widths give a line that predicts every other width.
2. Budget in characters: with `--max-time`, what each width would read in the time left after
   probing and validation; with `--epochs` or `--max-iters`, what those say.
3. Width: the largest whose budget is still at least CHARS_PER_WEIGHT characters per weight (a
   bigger model that sees too little text loses to a smaller one that sees more), and whose
   weights number at most WEIGHTS_PER_CHAR per training character (more only memorizes).
4. Regularization from the passes over the text the run will make: no dropout below one pass,
   then more as the passes grow; early stopping (`--patience`) where it expects to overfit.

Explicit flags always override what auto chose. The choice and its reason go to config.json.
"""
from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Sequence, Tuple

from charrnn.errors import UserError

WIDTHS = (128, 192, 256, 320, 384, 448, 512, 640, 768, 1024, 1280)
PROBE_WIDTHS = (256, 640)
CHARS_PER_WEIGHT = 1.0      # fitted: see docs/performance.md, "--preset auto"
WEIGHTS_PER_CHAR = 4.0      # fitted: the largest model worth training on a text of N characters is ~4N weights
EVALS = 8                   # validations per run: enough to keep a good best.safetensors and to stop early
EVAL_SHARE = 0.01           # of the time budget, per validation
BATCH, SEQ_LEN, EMBED, LAYERS = 32, 100, 64, 2
PROBE_SEQ_LEN = 50


@dataclass(frozen=True)
class Workload:
    """What auto looks at: the training text and the budget."""

    train_chars: int
    val_chars: int
    vocab_size: int
    max_time: Optional[float] = None
    epochs: Optional[float] = None
    max_iters: Optional[int] = None


@dataclass(frozen=True)
class Speed:
    """Training speed by width, from the probe: seconds per character = base + per_weight * weights(H),
    one such line per precision tried (False: float32, True: bfloat16 autocast)."""

    lines: Dict[bool, Tuple[float, float]]
    probe_seconds: float = 0.0
    measured: Dict[str, float] = field(default_factory=dict)   # "H/precision" -> chars/s, for config.json

    def _seconds_per_char(self, bf16: bool, hidden: int, vocab_size: int) -> float:
        base, per_weight = self.lines[bf16]
        return max(base + per_weight * weights(hidden, vocab_size), 1e-12)

    def bf16_for(self, hidden: int, vocab_size: int) -> bool:
        """Whether bfloat16 trains this width faster than float32 here (where it was tried at all)."""
        return min(self.lines, key=lambda bf16: self._seconds_per_char(bf16, hidden, vocab_size))

    def chars_per_second(self, hidden: int, vocab_size: int) -> float:
        return 1.0 / self._seconds_per_char(self.bf16_for(hidden, vocab_size), hidden, vocab_size)


@dataclass(frozen=True)
class Choice:
    values: dict          # flag name -> value, as a preset's
    reason: str           # one or two lines for the user and config.json


def weights(hidden: int, vocab_size: int, layers: int = LAYERS, embed: int = EMBED) -> int:
    """Parameters of the library engine's LSTM: embedding, torch's two bias vectors per layer, head."""
    count = vocab_size * embed + hidden * vocab_size + vocab_size
    inputs = embed
    for _ in range(layers):
        count += 4 * hidden * (inputs + hidden) + 8 * hidden
        inputs = hidden
    return count


def dropout_for(passes: float) -> float:
    """More passes over the same text, more dropout: none below one pass, 0.25 at ~5, at most 0.45."""
    if passes <= 1.0:
        return 0.0
    return round(min(0.45, 0.1 + 0.1 * math.log2(passes)), 2)


def choose(work: Workload, speed: Optional[Speed]) -> Choice:
    """The rule, a pure function of the workload and the probed speed (None: a budget in epochs or
    iterations, where speed does not change what a run reads)."""
    eval_time = EVALS * EVAL_SHARE if work.max_time else 0.0
    seconds = work.max_time * (1 - eval_time) if work.max_time else None

    def budget_chars(hidden: int) -> float:
        limits = []
        if seconds is not None and speed is not None:
            limits.append(seconds * speed.chars_per_second(hidden, work.vocab_size))
        if work.epochs is not None:
            limits.append(work.epochs * work.train_chars)
        if work.max_iters is not None:
            limits.append(work.max_iters * BATCH * SEQ_LEN)
        return min(limits)

    fits = [h for h in WIDTHS if budget_chars(h) >= CHARS_PER_WEIGHT * weights(h, work.vocab_size)
            and weights(h, work.vocab_size) <= WEIGHTS_PER_CHAR * work.train_chars]
    hidden = fits[-1] if fits else WIDTHS[0]
    n_weights = weights(hidden, work.vocab_size)
    chars = budget_chars(hidden)
    passes = chars / max(work.train_chars, 1)
    iterations = max(1, int(chars // (BATCH * SEQ_LEN)))
    values = dict(impl="library", cell="lstm", layers=LAYERS, hidden=hidden, embed=EMBED, dropout=dropout_for(passes),
                  batch_size=BATCH, seq_len=SEQ_LEN, optimizer="adamw", lr=4e-3 if hidden <= 512 else 3e-3,
                  weight_decay=0.01, schedule="cosine", warmup_iters=min(100, max(1, iterations // 20)),
                  grad_clip=1.0, eval_every=max(1, iterations // EVALS),
                  bf16=bool(speed and speed.bf16_for(hidden, work.vocab_size)))
    if passes > 4:
        values["patience"] = 3
    if work.max_time and speed is not None:
        eval_rate = 2.0 * speed.chars_per_second(hidden, work.vocab_size)  # forward only, about twice as fast
        values["val_chars"] = max(10_000, int(EVAL_SHARE * work.max_time * eval_rate))
        values["max_time"] = max(1.0, work.max_time - speed.probe_seconds)
    why = _why(work, speed, hidden, n_weights, chars, passes, fits)
    shape = (f"{LAYERS}×{hidden} LSTM ({n_weights / 1e6:.2f}M weights), dropout {values['dropout']}, "
             f"B{BATCH} T{SEQ_LEN}, AdamW {values['lr']:.0e} warm-up + cosine"
             + (", bf16" if values["bf16"] else "") + (", --patience 3" if "patience" in values else ""))
    return Choice(values, f"auto: {shape}\n  because {why}")


def _why(work: Workload, speed: Optional[Speed], hidden: int, n_weights: int, chars: float, passes: float,
         fits: Sequence[int]) -> str:
    where = "the budget reads"
    if speed is not None and work.max_time:
        precision = "bf16" if speed.bf16_for(hidden, work.vocab_size) else "float32"
        where = (f"this machine trains it at {speed.chars_per_second(hidden, work.vocab_size):,.0f} chars/s "
                 f"({precision}), so the budget reads")
    said = (f"{where} ~{chars / 1e6:.1f}M chars = {passes:.1f} passes over {work.train_chars / 1e6:.2f}M training "
            f"chars")
    if not fits:
        return f"{said}; even the smallest width sees fewer than {CHARS_PER_WEIGHT:g} chars per weight"
    if hidden == WIDTHS[-1]:
        return f"{said}; this is the widest auto trains"
    if weights(WIDTHS[WIDTHS.index(hidden) + 1], work.vocab_size) > WEIGHTS_PER_CHAR * work.train_chars:
        return f"{said}; a wider model would hold over {WEIGHTS_PER_CHAR:g} weights per training char (memorizing)"
    return f"{said}; a wider model would see fewer than {CHARS_PER_WEIGHT:g} chars per weight"


def probe(make_step: Callable[[int, bool], Callable[[], None]], bf16_possible: bool, vocab_size: int,
          steps: int = 3) -> Speed:
    """Time training steps (the median of `steps`, after one to warm up) at each probe width, in
    float32 and, where `bf16_possible`, bfloat16.

    `make_step(hidden, bf16)` builds a learner of that width and returns a function doing one step
    of BATCH x PROBE_SEQ_LEN characters."""
    started = time.perf_counter()
    measured: Dict[str, float] = {}
    lines = {}
    for bf16 in ((False, True) if bf16_possible else (False,)):
        per_char = []
        for hidden in PROBE_WIDTHS:
            step = make_step(hidden, bf16)
            step()                                   # oneDNN builds its kernels on the first call
            times = []
            for _ in range(steps):
                t = time.perf_counter()
                step()
                times.append(time.perf_counter() - t)
            seconds = statistics.median(times) / (BATCH * PROBE_SEQ_LEN)
            per_char.append(seconds)
            measured[f"{hidden}/{'bf16' if bf16 else 'float32'}"] = round(1.0 / seconds)
        (w0, w1), (s0, s1) = [weights(h, vocab_size) for h in PROBE_WIDTHS], per_char
        slope = max((s1 - s0) / (w1 - w0), 1e-15)
        lines[bf16] = (max(s0 - slope * w0, 0.0), slope)
    return Speed(lines, probe_seconds=time.perf_counter() - started, measured=measured)


def check_usable(given: dict, distributed: bool) -> None:
    """What --preset auto cannot do, refused before any work."""
    if given.get("resume"):
        return  # the run's saved choice is kept (train/cli.py)
    if given.get("init_from"):
        raise UserError("--preset auto chooses a new model's shape, but --init-from keeps the other run's; "
                        "drop one of them")
    if distributed:
        raise UserError("--preset auto probes the speed of one process; under torchrun give the model's flags "
                        "(or --preset cpu-10min)")
    if not any(given.get(k) is not None for k in ("max_time", "epochs", "max_iters")):
        raise UserError("--preset auto sizes the model to a budget; add --max-time SECONDS (or --epochs E)")

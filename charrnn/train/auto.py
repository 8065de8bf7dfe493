"""`--preset auto`: a model and schedule sized to this text, this budget and this machine.

The rule (docs/performance.md has the runs it was fitted on) works in characters, not seconds,
so one rule serves a slow laptop and a GPU alike:

1. Probe: time a few training steps of three model widths, in float32 and (where autocast can
   run) bfloat16, with the engine and device that will train. Seconds per character grow with
   the number of weights, so straight lines between the three predict every other width.
2. Budget in characters: with `--max-time`, what each width would read in the time left after
   probing and validation; with `--epochs` or `--max-iters`, what those say.
3. Width: the largest that still trains for MIN_STEPS optimizer steps (a small text too: more
   steps beat more width there as well, docs/performance.md) and reads enough characters per
   weight (a bigger model that sees too little text loses to a smaller one that sees more):
   CHARS_PER_WEIGHT on fresh text, fewer the more passes, as a text read again teaches less than
   new text would. At most WEIGHTS_PER_CHAR weights per training character. Where even the
   narrowest width would step fewer than MIN_STEPS times on a wide alphabet, the batch shrinks
   (SMALLER_BATCHES) so that it steps more: there the head's cost per character is most of a step
   and a smaller batch does not raise it, where on a small alphabet the recurrence's cost per step
   is most of it and a smaller batch trains slower per character (docs/performance.md).
4. Regularization from the passes over the text the budget allows: no dropout below one pass,
   then more as the passes grow. Past MANY_PASSES (a small text: there the text runs out, not the time) weight
   decay rises to MANY_PASSES_WEIGHT_DECAY and, unless the user gave --batch-size or a budget in steps, the
   batch halves: twice the steps per character, so a wider model still steps MIN_STEPS times (the widths are
   chosen again for that batch). A list of names learnt by heart at 2x256 on B32 did better wider on B16 with
   more weight decay (docs/performance.md, "A text read many times").
5. When to stop (a time budget): not at a pass count fitted on larger texts, but when the text
   has taught what it can. The cosine is planned over the whole budget and validation runs often
   (as often as its reserved time allows, at most MAX_EVALS times); a plateau (ANNEAL_AFTER
   validations in a row without a new best, and as long since the best as before it, or averaging
   2% above it) starts the decay at once from the best weights: the rate falls to its floor over a
   short tail (train/replan.py) and the run ends there. A budget in epochs or iterations has no
   plan to shorten: there `--patience` stops an overfitting run.

Large alphabets (a Chinese text has thousands of characters): the head and the embedding are in `weights`, so
the probe's line prices them and the width shrinks to match. Past WIDE_ALPHABET characters, a character being
nearer a word than a letter, the embedding is twice as wide. Where the head alone holds more weights than the
recurrent layers (thousands of characters: the model is then mostly a table of characters), the head is tied to
the embedding (`--tied`, E = H): one table for reading and writing, and a character's output row is its input
vector, so a model that learned to carry a character it read can write it back, even one it never wrote in
training (a dictionary repeats each line's first character on the next; untied, the validation's first
characters cost more than a uniform guess: docs/performance.md). Fewer characters keep two tables (tied, a
Japanese text of 957 did worse). The alphabet is never cut: `--max-vocab` would map the rare characters to
one symbol the model can never write back. The head's bias starts at the text's
character frequencies (models/base.unigram_bias), which a drawn bias would spend much of a short run learning.

Explicit flags always override what auto chose. The choice and its reason go to config.json.
"""
from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import dataclass, field
from typing import Callable, Dict, Optional, Tuple

from charrnn.errors import UserError
from charrnn.train.machine_load import BUSY_SHARE, LoadMeter, own_share

WIDTHS = (128, 192, 256, 320, 384, 448, 512, 640, 768, 1024, 1280)
PROBE_WIDTHS = (128, 192, 384, 640)   # the narrowest width measured, not extrapolated: below 192 a step's
#                                        fixed costs weigh, and the line from 192 and 384 promised 1.6x the speed
CHARS_PER_WEIGHT = 4.5      # these three fitted on four texts at two budgets: docs/performance.md, "--preset auto"
MIN_STEPS = 1900
WEIGHTS_PER_CHAR = 16.0
EVALS = 8                   # validations the time reserved for them is sized for: EVAL_SHARE of the budget each
EVAL_SHARE = 0.01           # of the time budget, per validation
MAX_EVALS = 32              # where a validation costs less than its share (a small text), as many as fit, up to this
ANNEAL_AFTER = 2            # validations without a new best that start the final decay (a time budget)
BATCH, SEQ_LEN, EMBED, LAYERS = 32, 100, 64, 2
SMALLER_BATCHES = (16, 8)   # a wide alphabet's, where even the narrowest width steps too few times on B32 windows
MANY_PASSES = 8             # a text read more often than this (a small one) is learnt by heart: what data limits, not
MANY_PASSES_BATCH = 16      # compute, so half the batch (twice the steps: a wider model trains its MIN_STEPS) and
MANY_PASSES_WEIGHT_DECAY = 0.3   # more weight decay (docs/performance.md, "A text read many times")
WIDE_ALPHABET = 512         # characters: past this many a character is nearer a word (CJK) and embeds in 2 * EMBED
PROBE_SEQ_LEN = 50
PROBE_SHARE = 0.1           # of --max-time, at most, spent probing (past it, the widths measured so far decide)
PROBE_STEPS = 5             # timed steps per width and precision: their lower quartile is the speed
PROBE_SPREAD = 1.5          # slowest / fastest step above this: a busy moment; measure as many steps again


@dataclass(frozen=True)
class Workload:
    """What auto looks at: the training text and the budget."""

    train_chars: int
    vocab_size: int
    max_time: Optional[float] = None
    epochs: Optional[float] = None
    max_iters: Optional[int] = None
    validates: bool = True        # a validation split exists: early stopping has something to watch
    val_chars: int = 0            # characters in the validation split (0: unknown, or none)
    cosine: bool = True           # the schedule is cosine (a plan from the clock needs one), not --schedule epoch
    batch: Optional[int] = None   # the run's --batch-size where given (None: auto's to choose)
    seq_len: int = SEQ_LEN        # the window length the run trains with


@dataclass(frozen=True)
class Speed:
    """Training speed by width, from the probe: seconds per character at the probed numbers of
    weights, per precision tried (False: float32, True: bfloat16 autocast), joined by straight
    lines and extended beyond the ends by the nearest one (the cost is close to linear in the
    weights, but not quite: wide layers fall out of the caches)."""

    points: Dict[bool, Tuple[Tuple[int, float], ...]]       # precision -> ((weights, seconds per char), ...)
    probe_seconds: float = 0.0
    measured: Dict[str, float] = field(default_factory=dict)   # "H/precision" -> chars/s, for config.json
    measured_ago: Optional[float] = None   # seconds since a run measured it (train/speed_cache.py); None: probed now
    busy_share: Optional[float] = None     # the least share of its cores the probe had, where other processes
    #                                        took enough to correct for (probe); None: a quiet machine

    def _seconds_per_char(self, bf16: bool, hidden: int, vocab_size: int) -> float:
        points = sorted(self.points[bf16])
        n = step_weights(hidden, vocab_size)
        if len(points) == 1:  # a probe cut short by its deadline: cost in proportion to the weights
            return points[0][1] * n / points[0][0]
        (w0, s0), (w1, s1) = next(((a, b) for a, b in zip(points, points[1:]) if n <= b[0]), points[-2:])
        return max(s0 + (s1 - s0) * (n - w0) / (w1 - w0), 1e-12) if w1 != w0 else s0

    def bf16_for(self, hidden: int, vocab_size: int) -> bool:
        """Whether bfloat16 trains this width faster than float32 here (where it was tried at all)."""
        return min(self.points, key=lambda bf16: self._seconds_per_char(bf16, hidden, vocab_size))

    def chars_per_second(self, hidden: int, vocab_size: int) -> float:
        return 1.0 / self._seconds_per_char(self.bf16_for(hidden, vocab_size), hidden, vocab_size)


@dataclass(frozen=True)
class Choice:
    values: dict          # flag name -> value, as a preset's
    reason: str           # one or two lines for the user and config.json
    plan: Optional[dict] = None   # a budget of time alone: what the run's schedule is planned from (train/replan.py)


def tied_for(vocab_size: int, hidden: int, layers: int = LAYERS, gates: int = 4) -> bool:
    """Whether auto ties the head to the embedding: where the head (V x H) holds more weights than the recurrent
    layers (about 2 G H^2 each: an LSTM's 8 H^2), over 2,048 characters at auto's narrowest (the module's docstring)."""
    return vocab_size * hidden > 2 * gates * hidden * hidden * layers


def embed_for(vocab_size: int, hidden: int, layers: int = LAYERS, gates: int = 4) -> int:
    """auto's embedding width: the hidden width where the head is tied to it; else EMBED, doubled for a wide
    alphabet (a Chinese character carries about what a word does, and 64 numbers held it back: docs/performance.md)."""
    if tied_for(vocab_size, hidden, layers, gates):
        return hidden
    return 2 * EMBED if vocab_size > WIDE_ALPHABET else EMBED


def weights(hidden: int, vocab_size: int, layers: int = LAYERS, embed: Optional[int] = None,
            tied: Optional[bool] = None) -> int:
    """Parameters of the library engine's LSTM: embedding, torch's two bias vectors per layer, head (none of its
    own when tied); auto's embedding and tying unless given."""
    tied = tied_for(vocab_size, hidden, layers) if tied is None else tied
    embed = embed_for(vocab_size, hidden, layers) if embed is None else embed
    count = vocab_size * embed + (0 if tied else hidden * vocab_size) + vocab_size
    inputs = embed
    for _ in range(layers):
        count += 4 * hidden * (inputs + hidden) + 8 * hidden
        inputs = hidden
    return count


def step_weights(hidden: int, vocab_size: int) -> int:
    """The weights a character's step multiplies by, the probe's measure of a width: auto's model, its head counted
    as the matrix it still is when tied to the embedding."""
    return weights(hidden, vocab_size, embed=embed_for(vocab_size, hidden), tied=False)


def chars_needed(n_weights: int, passes: float) -> float:
    """Characters a model of `n_weights` should read in its budget to be worth its size."""
    return CHARS_PER_WEIGHT * n_weights / max(1.0, passes)


def dropout_for(passes: float) -> float:
    """More passes over the same text, more dropout: none below one pass, ~0.2 at 4, at most 0.45."""
    if passes <= 1.0:
        return 0.0
    return round(min(0.45, 0.05 + 0.075 * math.log2(passes)), 2)


def choose(work: Workload, speed: Optional[Speed]) -> Choice:
    """The rule, a pure function of the workload and the probed speed (None: a budget in epochs or
    iterations, where speed does not change what a run reads)."""
    first, passes = _choose(work, speed, work.batch or BATCH, many_passes=False)
    if passes <= MANY_PASSES:
        return first
    halve = work.batch is None and work.max_iters is None and first.values["batch_size"] == BATCH
    choice, _ = _choose(work, speed, MANY_PASSES_BATCH if halve else first.values["batch_size"], many_passes=True)
    batch, hidden = first.values["batch_size"], choice.values["hidden"]
    why = (f"; on B{batch} windows it would read the text {passes:.1f} times, and a text read that often is learnt "
           f"by heart: weight decay {choice.values['weight_decay']:g} holds that back, the weights validated and "
           "saved are an average over the last steps (--weight-average ema)")
    if halve:
        why += f", and B{choice.values['batch_size']} windows step twice as often"
        if hidden > first.values["hidden"]:
            why += f", so the wider {LAYERS}×{hidden} still steps {MIN_STEPS} times"
    return dataclasses.replace(choice, reason=choice.reason + why)


def _choose(work: Workload, speed: Optional[Speed], given_batch: int, many_passes: bool) -> Tuple[Choice, float]:
    """The rule for windows of `given_batch` streams (a wide alphabet's may shrink), and the passes over the text
    the budget then reads; `many_passes`: the regularization of a text read more than MANY_PASSES times."""
    seconds = None
    if work.max_time:  # what training has: the time the probe left, less the validations
        seconds = max(0.0, work.max_time - (speed.probe_seconds if speed else 0.0)) * (1 - EVALS * EVAL_SHARE)

    window = given_batch * work.seq_len   # characters a step reads, before a wide alphabet's batch shrinks

    def budget_chars(hidden: int) -> float:
        limits = [math.inf]
        if seconds is not None and speed is not None:
            limits.append(seconds * speed.chars_per_second(hidden, work.vocab_size))
        if work.epochs is not None:
            limits.append(work.epochs * work.train_chars)
        if work.max_iters is not None:
            limits.append(work.max_iters * window)
        return min(limits)

    def too_wide(hidden: int) -> Optional[str]:
        """Why a width does not fit this workload, or None when it does."""
        n_weights, chars = weights(hidden, work.vocab_size), budget_chars(hidden)
        if chars < MIN_STEPS * window:
            return f"would train for fewer than {MIN_STEPS} steps"
        if chars < chars_needed(n_weights, chars / max(work.train_chars, 1)):
            return "would read too few chars per weight to be worth its size"
        if n_weights > WEIGHTS_PER_CHAR * work.train_chars:
            return f"would hold over {WEIGHTS_PER_CHAR:g} weights per training char (memorizing)"
        return None

    fitting = [h for h in WIDTHS if too_wide(h) is None]
    hidden = fitting[-1] if fitting else WIDTHS[0]
    n_weights = weights(hidden, work.vocab_size)
    chars = budget_chars(hidden)
    passes = chars / max(work.train_chars, 1)
    batch = given_batch
    if not fitting and work.batch is None and work.max_iters is None and work.vocab_size > WIDE_ALPHABET:
        batch = next((b for b in (BATCH, *SMALLER_BATCHES)
                      if b <= given_batch and chars >= MIN_STEPS * b * work.seq_len), SMALLER_BATCHES[-1])
    iterations = max(1, int(chars // (batch * work.seq_len)))
    values = dict(impl="library", cell="lstm", layers=LAYERS, hidden=hidden, embed=embed_for(work.vocab_size, hidden),
                  tied=tied_for(work.vocab_size, hidden), dropout=dropout_for(passes),
                  batch_size=batch, seq_len=SEQ_LEN, optimizer="adamw", lr=4e-3 if hidden <= 512 else 3e-3,
                  weight_decay=MANY_PASSES_WEIGHT_DECAY if many_passes else 0.01,
                  weight_average="ema" if many_passes else "none", schedule="cosine",
                  warmup_iters=min(100, max(1, iterations // 20)),
                  grad_clip=1.0, eval_every=max(1, iterations // EVALS),
                  bf16=bool(speed and speed.bf16_for(hidden, work.vocab_size)))
    planned = (seconds is not None and speed is not None and work.epochs is None and work.max_iters is None
               and work.cosine)
    if passes > 4 and work.validates and not planned:
        values["patience"] = 3    # a plan from the clock anneals and ends on a plateau instead (step 5)
    evals = EVALS
    if work.max_time and speed is not None:
        eval_rate = 2.0 * speed.chars_per_second(hidden, work.vocab_size)  # forward only, about twice as fast
        values["val_chars"] = max(10_000, int(EVAL_SHARE * work.max_time * eval_rate))
        values["max_time"] = max(1.0, work.max_time - speed.probe_seconds)
        validation = min(values["val_chars"], work.val_chars or values["val_chars"]) / eval_rate
        evals = int(min(MAX_EVALS, max(EVALS, EVALS * EVAL_SHARE * work.max_time / max(validation, 1e-9))))
        values["eval_every"] = max(1, iterations // evals)
    wider = WIDTHS[WIDTHS.index(hidden) + 1] if hidden != WIDTHS[-1] else None
    why = _why(work, speed, hidden, chars, passes,
               too_wide(hidden) if not fitting else too_wide(wider) if wider else None)
    embedding = f", embedding {values['embed']}" + (" tied to the head" if values["tied"] else "")
    shape = (f"{LAYERS}×{hidden} LSTM ({n_weights / 1e6:.2f}M weights"
             + (embedding if values["embed"] != EMBED or values["tied"] else "")
             + f"), dropout {values['dropout']}, "
             f"B{batch} T{work.seq_len}, AdamW {values['lr']:.0e}"
             + (f" weight decay {values['weight_decay']:g}" if many_passes else "") + " warm-up + cosine"
             + (", weights averaged" if many_passes else "")
             + (", bf16" if values["bf16"] else "")
             + (f", --patience {values['patience']}" if "patience" in values else ""))
    plan = None
    if planned and work.validates:
        shape += ", decays from its best weights and ends early on a plateau"
    if planned:
        plan = {"iterations": iterations, "chars_per_s": round(speed.chars_per_second(hidden, work.vocab_size), 1),
                "evals": evals, "eval_seconds": round(EVALS * EVAL_SHARE * work.max_time / evals, 3),
                "anneal_after": ANNEAL_AFTER if work.validates else None}
    if batch < given_batch:
        why += f"; on B{batch} windows it steps {iterations:,} times"
    return Choice(values, f"auto: {shape}\n  because {why}", plan), passes


def _why(work: Workload, speed: Optional[Speed], hidden: int, chars: float, passes: float,
         limit: Optional[str]) -> str:
    where = "the budget reads"
    if speed is not None and work.max_time:
        precision = "bf16" if speed.bf16_for(hidden, work.vocab_size) else "float32"
        rate = speed.chars_per_second(hidden, work.vocab_size)
        if speed.measured_ago is not None:
            precision += f", as a run measured it {_age(speed.measured_ago)} ago: too short a budget to probe"
        if speed.busy_share is not None:
            precision += (f", had other processes left it alone: the probe had {speed.busy_share:.0%} of its cores; "
                          "the schedule follows the clock")
        where = f"this machine trains it at {rate:,.0f} chars/s ({precision})"
        where += ", so the run reads"
    said = f"{where} ~{chars / 1e6:.1f}M chars = {passes:.1f} passes over {work.train_chars / 1e6:.2f}M training chars"
    if limit is None:
        return f"{said}; this is the widest auto trains"
    return f"{said}; even the narrowest {limit}" if hidden == WIDTHS[0] and limit else f"{said}; a wider model {limit}"


def _age(seconds: float) -> str:
    for unit, size in (("d", 86400), ("h", 3600), ("min", 60)):
        if seconds >= size:
            return f"{seconds / size:.0f} {unit}"
    return f"{seconds:.0f} s"


def probe(make_step: Callable[[int, bool], Callable[[], None]], bf16_possible: bool, vocab_size: int,
          seconds: float = math.inf, steps: int = PROBE_STEPS, load: Optional[LoadMeter] = None,
          threads: int = 1, cpu_clock: Callable[[], float] = time.process_time) -> Speed:
    """Time training steps (the lower quartile of `steps`, after one to warm up) at each probe width, in
    float32 and, where `bf16_possible`, bfloat16; within about `seconds` in all.

    `make_step(hidden, bf16)` builds a learner of that width and returns a function doing one step
    of BATCH x PROBE_SEQ_LEN characters. Widths go narrowest first, both precisions of each together,
    so a probe cut short by `seconds` still knows the narrow end in every precision (one step of the
    narrowest width in each precision is always timed). Steps whose times spread widely (another
    process took the core for a moment) are measured again, so one busy moment does not decide.

    With `load` (the cores' use by other processes, train/machine_load.py) a probe on a machine busy for longer
    than a moment measures what the steps would take without the others: the width is chosen for the machine,
    and the schedule follows the clock while the others run (train/replan.py). One thread's steps take what its
    own CPU time says (`cpu_clock`: the time the core gave this process, whoever else ran); several threads'
    own time counts their waits for each other too, so theirs are their wall times times the share of its cores
    the run had, where every step slowed alike (a share averaged over steps that spread widely would correct
    the fastest of them, which had more than the average, too far)."""
    started = time.perf_counter()
    shares = []
    deadline = started + seconds
    measured: Dict[str, float] = {}
    points: Dict[bool, list] = {bf16: [] for bf16 in ((False, True) if bf16_possible else (False,))}
    for hidden in PROBE_WIDTHS:
        if measured and time.perf_counter() >= deadline:
            break
        for bf16 in points:
            step = make_step(hidden, bf16)
            step()                                   # oneDNN builds its kernels on the first call
            if load is not None:
                load.start()
            times, cpu = _timed(step, steps, deadline, cpu_clock)
            if len(times) >= 3 and max(times) > PROBE_SPREAD * min(times):
                more, more_cpu = _timed(step, steps, deadline, cpu_clock)
                times, cpu = times + more, cpu + more_cpu
            per_char = _lower_quartile(times) / (BATCH * PROBE_SEQ_LEN)  # a busy moment only ever slows a
            # step, so the faster steps are the machine's own speed
            share = own_share(load, threads) if load is not None else 1.0
            if share < BUSY_SHARE and threads == 1:
                shares.append(share)
                per_char = min(per_char, _lower_quartile(cpu) / (BATCH * PROBE_SEQ_LEN))
            elif share < BUSY_SHARE and max(times) <= PROBE_SPREAD * min(times):
                shares.append(share)   # every step slowed alike: the others ran throughout (had they come and
                per_char *= share      # gone, the fastest steps, kept above, would already be the quiet speed)
            points[bf16].append((step_weights(hidden, vocab_size), per_char))
            measured[f"{hidden}/{'bf16' if bf16 else 'float32'}"] = round(1.0 / per_char)
    return Speed({k: tuple(v) for k, v in points.items() if v}, probe_seconds=time.perf_counter() - started,
                 measured=measured, busy_share=min(shares) if shares else None)


def _timed(step: Callable[[], None], steps: int, deadline: float, cpu_clock: Callable[[], float]) -> tuple:
    """Wall and CPU seconds of up to `steps` calls, stopping at the deadline (after one call at least)."""
    times, cpu = [], []
    while len(times) < steps and (not times or time.perf_counter() < deadline):
        t, c = time.perf_counter(), cpu_clock()
        step()
        times.append(time.perf_counter() - t)
        cpu.append(cpu_clock() - c)
    return times, cpu


def _lower_quartile(values: list) -> float:
    return sorted(values)[len(values) // 4]


def check_usable(given: dict, distributed: bool) -> None:
    """What --preset auto (or cpu-10min, auto with 600 s) cannot do, refused before any work."""
    if given.get("resume"):
        return  # the run's saved choice is kept (train/cli.py)
    preset = f"--preset {given.get('preset', 'auto')}"
    if given.get("init_from"):
        raise UserError(f"{preset} chooses a new model's shape, but --init-from keeps the other run's; "
                        "drop one of them")
    if given.get("impl") not in (None, "library", "scratch"):
        raise UserError(f"{preset} sizes models for the PyTorch engines (library, scratch); with --impl "
                        f"{given['impl']} give the model's flags yourself")
    if distributed:
        raise UserError(f"{preset} probes the speed of one process; under torchrun give the model's flags")
    if not any(given.get(k) is not None for k in ("max_time", "epochs", "max_iters")):
        raise UserError(f"{preset} sizes the model to a budget; add --max-time SECONDS (or --epochs E)")

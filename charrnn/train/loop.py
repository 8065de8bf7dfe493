"""The training loop: truncated BPTT over the seed's batch layout, validation, checkpoints.

Truncated BPTT is visible in `run`: the state a window ends with is the state the next
window of the same streams starts from (the learner detaches it), and it is reset to
zeros at the start of every epoch. Everything else (the budget and the learning rate,
logging, when to validate and checkpoint) is a helper that `run` calls by name.
"""
from __future__ import annotations

import contextlib
import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, List, Optional

import numpy as np

from charrnn.checkpoint import RESUME, WEIGHTS, ResumePoint, load_weights, read_resume, save_weights, write_resume
from charrnn.config import TrainConfig
from charrnn.data.batching import Streams
from charrnn.errors import TrainingDiverged, UserError, checkpoint_write_error
from charrnn.losses import bits_per_char
from charrnn.train.averaging import WeightAverage
from charrnn.train.distributed import World
from charrnn.train.learners import Learner
from charrnn.train.machine_load import LoadMeter
from charrnn.train.metrics import LossPlot, MetricsLog
from charrnn.train.replan import Plan, Planner, rule_for
from charrnn.train.schedule import Budget, learning_rate


@dataclass
class Progress:
    """The trainer's counters; saved with every checkpoint so --resume continues exactly."""

    iteration: int = 0
    epoch: int = 0
    window: int = 0          # next window to train on within the epoch
    elapsed: float = 0.0     # seconds of training over the whole run, across resumes
    best_val: float = math.inf
    last_val: Optional[float] = None
    lr: Optional[float] = None                   # the learning rate of the last iteration
    lr0: Optional[float] = None                  # the run's --lr (resolved) when it was saved
    budget: Optional[list] = None                # [max_iters, epochs, max_time] when it was saved
    cosine_from: Optional[List[float]] = None    # where the cosine starts: [fraction of the budget, lr]
    evals_since_best: int = 0                    # validations in a row without a new best (--patience)
    # a schedule planned from --max-time (train/replan.py): where it ends, its validations' spacing, the speed it
    # assumes, and what a validation was last measured to take; None where the run has no plan
    plan_iters: Optional[int] = None
    plan_eval_every: Optional[int] = None
    plan_chars_per_s: Optional[float] = None
    plan_eval_seconds: Optional[float] = None
    plan_best_at: Optional[int] = None           # the iteration of the best validation (auto's plateau rule)
    plan_annealed_at: Optional[int] = None       # the iteration a plateau started the final decay at (auto)
    plan_recent_vals: Optional[List[float]] = None   # the latest validation losses the plateau rule averages (auto)

    def epochs_done(self, windows_per_epoch: int) -> float:
        return round(self.epoch + self.window / windows_per_epoch, 4)


def _stderr(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


class Trainer:
    """Trains a Learner on `train` streams, validating on `val`; writes the run directory.

    Under torchrun, `train` and `val` are this process's share of the streams and `world`
    holds the collectives; every process runs the same loop and only rank 0 writes. `clock` gives seconds
    (a test passes its own); `load` says what other processes take of this process's `threads`' cores, for a
    schedule planned from the clock (train/replan.py; a single process only: every rank must plan alike).
    """

    def __init__(self, cfg: TrainConfig, learner: Learner, train: Streams, val: Optional[Streams], run_dir: Path,
                 world: Optional[World] = None, sampler: Optional[Callable[[], str]] = None,
                 log: Callable[[str], None] = _stderr, clock: Callable[[], float] = time.perf_counter,
                 load: Optional[LoadMeter] = None, threads: int = 1):
        self.cfg, self.learner, self.train, self.val = cfg, learner, train, val
        self.run_dir = Path(run_dir)
        self.world = world or World()
        self.sampler, self.log = sampler, log
        self.budget = Budget(cfg, train.num_windows)
        self.progress = Progress()
        self.state = learner.zero_state(train.batch_size)
        self.lr0 = cfg.resolved_lr
        self.stop_requested: Optional[str] = None
        self.chars_per_iter = train.batch_size * train.seq_len  # this process's share
        self.metrics: Optional[MetricsLog] = None
        self.plot = LossPlot(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
        self.resumed = False               # restore() succeeded: metrics.jsonl keeps the rows up to its iteration
        self._schedule_note: Optional[str] = None
        self.clock = clock
        self.best_params: Optional[dict] = None   # the best validation's weights, where a plateau rewinds to them
        self.average = WeightAverage() if cfg.weight_average == "ema" else None   # what is validated and saved
        rule = rule_for(cfg, train.num_windows)
        self.planner = Planner(rule, load, threads) if rule is not None else None   # a schedule planned from the
        #                                                        clock, and from what other processes take (load)
        first = self.planner.first_plan() if self.planner else None
        if first is not None:
            self._adopt_plan(first)

    def finished(self) -> bool:
        return self.budget.finished(self.progress.iteration, self.progress.elapsed) or self.out_of_patience()

    def out_of_patience(self) -> bool:
        """--patience N: N validations in a row without a new best. The validation loss is the same on
        every process (it is all-reduced), so every process stops at the same iteration."""
        return self.cfg.patience is not None and self.progress.evals_since_best >= self.cfg.patience

    # ---- the loop -----------------------------------------------------------
    def run(self) -> Progress:
        p, cfg = self.progress, self.cfg
        if self.world.is_main and self.metrics is None:
            self.metrics = MetricsLog(self.run_dir / "metrics.jsonl",
                                      resume_from_iter=p.iteration if self.resumed else None)
        started, base_elapsed, last_saved = self.clock(), p.elapsed, None
        window = _Window(self.clock)
        bar = self._progress_bar()
        stopping = self._agree_to_stop(p.elapsed)
        if self.planner is not None:
            self.planner.start(p.elapsed)
        after = "start"   # what the interval before the next step's end holds besides the step (replan.SpeedMeter)
        while not self.finished() and not stopping:
            lr = self._learning_rate()
            self.learner.set_lr(lr)
            x, y = self.train.window(p.window)
            loss, self.state = self.learner.train_step(x, y, self.state,   # the state carries to the next window
                                                       labels=self.train.labels(p.window))
            stopping = self._agree_to_stop(base_elapsed + self.clock() - started, loss, lr)
            p.iteration += 1
            p.window += 1
            self._update_average()
            if p.window == self.train.num_windows:  # epoch boundary: the seed resets the state
                p.epoch, p.window = p.epoch + 1, 0
                self.state = self.learner.zero_state(self.train.batch_size)
            window.add(loss)
            if bar is not None:
                self._update_bar(bar, loss, window.rate(self.chars_per_iter))
            evaluate_now = p.iteration % (p.plan_eval_every or cfg.eval_every) == 0
            self._follow_the_clock(after, evaluate_now)
            if p.iteration % cfg.log_every == 0 or evaluate_now or self.finished():
                self._log_train(window.mean_loss(), lr, window.rate(self.chars_per_iter))
                window = _Window(self.clock)
            if evaluate_now:
                self.validate_and_save()
                last_saved = p.iteration
            elif cfg.checkpoint_every and p.iteration % cfg.checkpoint_every == 0:
                self.save()
                last_saved = p.iteration
            sample_now = bool(cfg.sample_every and p.iteration % cfg.sample_every == 0 and self.sampler)
            if sample_now and self.world.is_main:
                self._print_sample()
            after = "validation" if evaluate_now else "other" if last_saved == p.iteration or sample_now else "step"
        if bar is not None:
            bar.close()
        if stopping and self.world.is_main:
            self.log(f"{stopping}: saving a checkpoint at iteration {p.iteration}")
        if self.out_of_patience() and self.world.is_main:
            self.log(f"early stop at iteration {p.iteration}: the validation loss has not improved for "
                     f"{p.evals_since_best} evaluations (--patience {cfg.patience}); best {p.best_val:.4f} "
                     "is in best.safetensors")
        if last_saved != p.iteration:
            self.validate_and_save()
        if self.metrics is not None:
            self.metrics.close()
        self.plot.finish()
        return p

    def _learning_rate(self) -> float:
        p = self.progress
        fraction = self.budget.fraction_done(p.iteration, p.elapsed)
        if p.cosine_from is None and self.cfg.warmup_iters and p.iteration == self.cfg.warmup_iters:
            p.cosine_from = [fraction, self.lr0]           # the cosine starts where warm-up ends
        p.lr = learning_rate(self.cfg, self.lr0, p.iteration, p.epoch, fraction, p.cosine_from)
        return p.lr

    # ---- a schedule planned from the clock (train/replan.py) ----------------
    def _follow_the_clock(self, after: str, evaluate_now: bool) -> None:
        """Measure the speed after each step; where the plan has gone far off, re-plan and say so."""
        if self.planner is None:
            return
        change = self.planner.observe(self.progress, after, evaluate_now)
        if change is not None:
            self._adopt_plan(*change)

    def _rewinds(self) -> bool:
        """Whether a plateau may yet start auto's decay, from the best weights (kept in memory, and read back from
        best.safetensors on --resume); once decaying, they are not needed."""
        return (self.planner is not None and self.planner.rule.anneal_after is not None
                and self.progress.plan_annealed_at is None)

    def _settle_on_plateau(self) -> None:
        """After a validation: where auto's plan says the text has taught what it can, decay to the end now."""
        if self.planner is None:
            return
        change = self.planner.settle(self.progress, rewinds=self.best_params is not None)
        if change is not None:
            if self.best_params is not None:   # the decay starts from the best weights, not from where the plateau
                self.learner.model.set_parameters(self.best_params)   # (or the overfitting) has taken them since;
                self.progress.last_val = self.progress.best_val       # the checkpoint saved next holds them
                if self.average is not None:
                    self.average.restart(self.best_params, self.progress.iteration)
            self._adopt_plan(*change)

    def _adopt_plan(self, plan: Plan, line: Optional[str] = None) -> None:
        """Run to `plan` from here; the cosine goes on from the rate it has, down to its floor at the plan's end."""
        p, cfg = self.progress, self.cfg
        cosine_started = cfg.schedule == "cosine" and (cfg.warmup_iters == 0 or p.cosine_from is not None)
        if cosine_started:
            lr = learning_rate(cfg, self.lr0, p.iteration, p.epoch,
                               self.budget.fraction_done(p.iteration, p.elapsed), p.cosine_from)
        p.plan_iters, p.plan_eval_every = plan.iterations, plan.eval_every
        p.plan_chars_per_s = round(plan.chars_per_s, 1)
        self.budget.planned = plan.iterations
        if cosine_started:
            p.cosine_from = [self.budget.fraction_done(p.iteration, p.elapsed), lr]
        if self.metrics is not None:
            self.metrics.append({"iter": p.iteration, "plan_iters": plan.iterations,
                                 "plan_eval_every": plan.eval_every, "plan_chars_per_s": p.plan_chars_per_s})
        if line and self.world.is_main:
            self.log(line)

    def measured_chars_per_second(self) -> Optional[float]:
        """The speed this process's training steps ran at, validations left out (None where not measured)."""
        return self.planner.meter.chars_per_second(self.planner.rule.chars_per_iter) if self.planner else None

    def _diverged(self, loss: float) -> bool:
        """NaN, infinite, or far beyond a uniform guess (ln V): the run has blown up.

        Adam-style updates keep a blown-up loss finite for a long time (weights grow by lr
        per step), so "finite" alone would train on garbage for hours.
        """
        uniform = math.log(max(2, self.learner.model.config.vocab_size))
        return not math.isfinite(loss) or loss > 50 * uniform

    def _agree_to_stop(self, elapsed: float, loss: float = 0.0, lr: float = 0.0) -> Optional[str]:
        """Set the run's clock and say whether to stop, the same on every process.

        Under torchrun each process has its own clock, its own signals and its own share of
        the loss; one stopping alone would leave the others waiting in a collective forever.
        So all take the slowest clock, stop if any was asked to, and stop with an error if
        the loss blew up on any of them.
        """
        diverged = self._diverged(loss)
        self.progress.elapsed, asked, blown = self.world.max(
            [elapsed, 1.0 if self.stop_requested else 0.0, 1.0 if diverged else 0.0])
        if blown:
            where = f"loss became {loss:.4g}" if diverged else "the loss blew up on another process"
            raise TrainingDiverged(
                f"{where} at iteration {self.progress.iteration + 1}; training stopped and the last good checkpoint "
                f"in {self.run_dir} is intact; lower --lr (now {lr:.3g}) or --grad-clip")
        if not asked:
            return None
        return self.stop_requested or "another process was asked to stop"

    def _print_sample(self) -> None:
        """A sample (of the weights saved) must never stop training: a failure is reported and training goes on."""
        try:
            with self._weights_shown():
                text = self.sampler()
        except Exception as e:  # whatever went wrong, the run matters more than its sample
            self.log(f"warning: no sample at iteration {self.progress.iteration} ({type(e).__name__}: {e})")
            return
        self.log(f"--- sample at iteration {self.progress.iteration} ---\n{text}\n---")
        self.metrics.add_sample(self.progress.iteration, text)

    # ---- progress and metrics -------------------------------------------------
    def _progress_bar(self):
        if not (self.world.is_main and sys.stderr.isatty()):
            return None
        from tqdm import tqdm

        return tqdm(total=self.budget.total_iterations(), initial=self.progress.iteration, unit="it",
                    dynamic_ncols=True, file=sys.stderr)

    def _update_bar(self, bar, loss: float, chars_per_sec: float) -> None:
        p = self.progress
        postfix = {"epoch": p.epoch, "loss": f"{loss:.3f}", "chars/s": f"{chars_per_sec:,.0f}"}
        if self.budget.planned is not None:  # a plan made from the clock ends here (re-planned as the speed changes)
            bar.total = self.budget.planned
        if bar.total is None and self.cfg.max_time:  # a time budget: the bar cannot know the ETA itself
            postfix["left"] = f"{max(0.0, self.cfg.max_time - p.elapsed):.0f}s"
        bar.update(1)
        bar.set_postfix(postfix, refresh=False)

    def _row(self, **values) -> dict:
        """One metrics.jsonl row: where the run is, then the values measured there."""
        p = self.progress
        return {"iter": p.iteration, "epoch": p.epochs_done(self.train.num_windows), **values,
                "elapsed_s": round(p.elapsed, 2)}

    def _log_train(self, train_loss: float, lr: float, chars_per_sec: float) -> None:
        """One row for the whole world: the loss averaged over every process's streams, the rates summed."""
        loss_sum, processes, world_rate = self.world.sum([train_loss, 1.0, chars_per_sec])
        train_loss = loss_sum / processes
        row = self._row(train_loss=round(train_loss, 5), train_bpc=round(bits_per_char(train_loss), 5), lr=lr,
                        grad_norm=_rounded(self.learner.grad_norm, 5),
                        chars_per_sec=round(world_rate, 1))
        if self.world.is_main:
            self.metrics.append(row)
            if not sys.stderr.isatty():
                self.log(f"iter {row['iter']} epoch {row['epoch']:.2f} loss {train_loss:.4f} lr {lr:.3g} "
                         f"{world_rate:,.0f} chars/s elapsed {row['elapsed_s']:.0f}s")

    # ---- validation and checkpoints, of the weights saved: the last step's, or their average ---------------
    def _horizon(self) -> int:
        return self.progress.plan_eval_every or self.cfg.eval_every   # about one validation interval

    def _update_average(self) -> None:
        if self.average is not None and self.average.due(self.progress.iteration, self._horizon()):
            self.average.update(self.learner.get_parameters(), self.progress.iteration, self._horizon())

    def _averaging(self) -> bool:
        return self.average is not None and self.average.arrays is not None

    def shown_parameters(self, last_step: dict) -> Optional[dict]:
        """The weights validation measures and model.safetensors holds where they are not `last_step` (the last
        step's, from get_parameters): the average, with the steps since its last sample counted in (a new dict);
        None without one."""
        if not self._averaging():
            return None
        if self.average.at == self.progress.iteration:
            return {k: v.copy() for k, v in self.average.arrays.items()}
        return self.average.blended(last_step, self.progress.iteration, self._horizon())

    @contextlib.contextmanager
    def _weights_shown(self):
        """Inside, the model holds the weights saved (yielded; None: the last step's, left in place), and the last
        step's weights again after."""
        if not self._averaging():
            yield None
            return
        last_step = self.learner.get_parameters()
        shown = self.shown_parameters(last_step)
        self.learner.model.set_parameters(shown)
        try:
            yield shown
        finally:
            self.learner.model.set_parameters(last_step)

    def validate(self) -> Optional[float]:
        """Mean loss over the validation split of the weights the model holds, read in order with the state
        carried."""
        if self.val is None:
            return None
        state = self.learner.zero_state(self.val.batch_size)
        total = 0.0
        for k in range(self.val.num_windows):
            loss, state = self.learner.eval_loss(*self.val.window(k), state, labels=self.val.labels(k))
            total += loss
        summed, count = self.world.sum([total, float(self.val.num_windows)])
        return summed / count

    def validate_and_save(self) -> None:
        p = self.progress
        with self._weights_shown() as shown:   # the weights saved are the ones validated
            val = self.validate()
        is_best = val is not None and val < p.best_val
        if val is not None:
            # an overflowed loss (NaN, inf) is kept as null: JSON has no such numbers, and resume.safetensors'
            # counters must stay readable (checkpoint._check_progress refuses a NaN)
            p.last_val = val if math.isfinite(val) else None
            p.best_val = min(p.best_val, val)
            p.evals_since_best = 0 if is_best else p.evals_since_best + 1
            if is_best and self._rewinds():
                self.best_params = shown if shown is not None else self.learner.get_parameters()
            if self.world.is_main:
                self.metrics.append(self._row(val_loss=_rounded(val, 5), val_bpc=_rounded(bits_per_char(val), 5)))
                self.log(f"iter {p.iteration}: validation loss {val:.4f} nats/char ({bits_per_char(val):.4f} bpc)"
                         + (" (best)" if is_best else ""))
            self._settle_on_plateau()   # before saving: the checkpoint holds the best's iteration and any decay
        self.save(best=is_best or (val is None))
        if self.world.is_main:
            self.plot.request()

    def save(self, best: bool = False) -> None:
        """Write resume.safetensors, then model.safetensors (and best.safetensors), each atomically."""
        state = self.world.gather_state(self.learner.state_to_numpy(self.state))
        if not self.world.is_main:
            return
        if not self.learner.parameters_finite():
            raise TrainingDiverged(f"the weights hold NaN or infinite values at iteration {self.progress.iteration}; "
                                   f"the last good checkpoint in {self.run_dir} is intact; lower --lr or --grad-clip")
        params = self.learner.get_parameters()
        self.progress.lr0, self.progress.budget = self.lr0, self.budget.as_list()
        average = self.average if self._averaging() else None
        point = ResumePoint(params=params, optimizer=self.learner.optimizer_state(), rng=self.learner.rng_state(),
                            state=state, progress=asdict(self.progress), optimizer_name=self.cfg.resolved_optimizer,
                            average=(average.arrays, average.counters()) if average is not None else None)
        info = {"iteration": self.progress.iteration, "val_loss": self.progress.last_val}
        shown = self.shown_parameters(params) or params
        try:
            write_resume(self.run_dir, point)
            save_weights(self.run_dir / WEIGHTS["latest"], shown, info)
            if best:
                save_weights(self.run_dir / WEIGHTS["best"], shown, info)
        except OSError as e:
            raise checkpoint_write_error(self.run_dir, e) from None

    def restore(self) -> None:
        """Load resume.safetensors: weights, optimizer, carried state, RNG and counters. It only reads and
        checks: a resume it refuses leaves the run directory as it was (metrics.jsonl is trimmed by `run`)."""
        point = read_resume(self.run_dir, self.learner.model.config)
        if point.optimizer_name != self.cfg.resolved_optimizer:   # the flags were checked against config.json
            raise UserError(f"{self.run_dir / RESUME} was written with --optimizer {point.optimizer_name}, but this "
                            f"run trains with {self.cfg.resolved_optimizer} (config.json); the run directory is "
                            "mixed up: resume the run it came from, or start a new run with --init-from")
        try:
            self.learner.model.set_parameters(point.params)
            if self.average is not None and point.average is not None:   # (turned on at this resume: it starts now)
                self.average = WeightAverage(point.average[0], **point.average[1])
            self.learner.load_optimizer_state(*point.optimizer)
            self.learner.set_rng_state(*point.rng)
            self.progress = Progress(**point.progress)
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"{self.run_dir / RESUME} does not fit this run ({type(e).__name__}: {e}); "
                            "it is damaged or from another program") from None
        self.progress.best_val = math.inf if self.progress.best_val is None else self.progress.best_val
        self.state = self._reshard_state(point.state)
        if self.progress.window >= self.train.num_windows:
            raise UserError(f"cannot resume at window {self.progress.window}: this data and --batch-size/--seq-len "
                            f"give {self.train.num_windows} windows per epoch; resume with the run's original data "
                            "and shapes")
        self._continue_schedule()   # (a new budget undoes a plateau's decay: then the best weights are needed again)
        if self._rewinds() and (self.run_dir / WEIGHTS["best"]).exists():
            self.best_params = load_weights(self.run_dir / WEIGHTS["best"], self.learner.model.config)
        self.resumed = True

    def say_what_resume_changed(self) -> None:
        """After restore() has passed every check: what a changed budget or --lr does to the schedule."""
        if self._schedule_note and self.world.is_main:
            self.log(self._schedule_note)

    def _continue_schedule(self) -> None:
        """A resume with another budget or --lr: the cosine goes on from the rate the run had, scaled by
        the change of --lr, down to the new floor at the new end; it never jumps back up."""
        p = self.progress
        self._resume_plan()
        if p.lr is None or (p.budget == self.budget.as_list() and p.lr0 == self.lr0):
            return
        start = p.lr * (self.lr0 / p.lr0 if p.lr0 else 1.0)
        if self.cfg.schedule == "cosine" and p.iteration >= self.cfg.warmup_iters:
            p.cosine_from = [self.budget.fraction_done(p.iteration, p.elapsed), start]
            self._schedule_note = (f"resume: the budget or --lr changed: the cosine continues from lr {start:.3g} "
                                   f"down to {self.lr0 / 10:.3g} at the new end")

    def _resume_plan(self) -> None:
        """The saved plan goes on as it was; with another --max-time it is made again for the time now left, at the
        speed it had measured; a run no longer planned from time (--max-iters or --epochs given) drops it."""
        p = self.progress
        if self.planner is None:
            p.plan_iters = p.plan_eval_every = p.plan_annealed_at = p.plan_best_at = p.plan_recent_vals = None
        elif p.plan_iters is not None and p.plan_chars_per_s and p.budget != self.budget.as_list():
            plan = self.planner.plan(p, p.plan_chars_per_s)   # a new budget: a new plan, a plateau's decay undone,
            p.plan_iters, p.plan_eval_every, p.plan_annealed_at = plan.iterations, plan.eval_every, None
            if p.plan_best_at is not None:   # and a plateau measured from here: the time given is to be used
                p.plan_best_at, p.plan_recent_vals = p.iteration, None
        self.budget.planned = p.plan_iters

    def _reshard_state(self, states: list):
        """The saved state holds every stream of the global batch, whatever the number of processes
        that saved it; keep this process's share."""
        start, stop, total = self.world.shard_rows(self.train.batch_size * self.world.size)
        if not states:
            return self.learner.zero_state(self.train.batch_size)
        if states[0].shape[1] != total:
            raise UserError(f"the checkpoint carries {states[0].shape[1]} streams but this run has "
                            f"--batch-size {total}; "
                            "resume with the same --batch-size")
        return self.learner.state_from_numpy([s[:, start:stop] for s in states])


class _Window:
    """Losses and time since the last logged row."""

    def __init__(self, clock: Callable[[], float] = time.perf_counter):
        self.clock = clock
        self.losses, self.started = [], clock()

    def add(self, loss: float) -> None:
        self.losses.append(loss)

    def mean_loss(self) -> float:
        return float(np.mean(self.losses))

    def rate(self, chars_per_iter: int) -> float:
        return len(self.losses) * chars_per_iter / max(self.clock() - self.started, 1e-9)


def _rounded(value: float, digits: int):
    """A number for metrics.jsonl (JSON has no NaN): rounded, or None where it is not finite."""
    return round(value, digits) if math.isfinite(value) else None

"""The training loop: truncated BPTT over the seed's batch layout, validation, checkpoints.

Truncated BPTT is visible here: the state a window ends with is the state the
next window of the same streams starts from (the stepper detaches it), and it
is reset to zeros at the start of every epoch.
"""
from __future__ import annotations

import math
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Optional

import numpy as np

from .batching import Streams
from .checkpoint import RESUME, WEIGHTS, check_resume, read_safetensors, save_weights, write_safetensors
from .config import TrainConfig
from .errors import TrainingDiverged, UserError, checkpoint_write_error
from .metrics import MetricsLog, bits_per_char, plot_losses


@dataclass
class Progress:
    """The trainer's counters; saved with every checkpoint so --resume continues exactly."""

    iteration: int = 0
    epoch: int = 0
    window: int = 0          # next window to train on within the epoch
    elapsed: float = 0.0     # seconds of training over the whole run, across resumes
    best_val: float = math.inf
    last_val: Optional[float] = None


def learning_rate(cfg: TrainConfig, lr0: float, progress: Progress, fraction_done: float) -> float:
    """The seed's per-epoch decay, or warm-up + cosine to lr0/10 over the run's budget."""
    if cfg.schedule == "epoch":
        lr = lr0 * cfg.lr_decay ** progress.epoch
    else:
        floor = lr0 / 10
        lr = floor + 0.5 * (lr0 - floor) * (1 + math.cos(math.pi * min(1.0, fraction_done)))
    if cfg.warmup_iters and progress.iteration < cfg.warmup_iters:
        lr *= (progress.iteration + 1) / cfg.warmup_iters
    return lr


class Trainer:
    def __init__(self, cfg: TrainConfig, stepper, train: Streams, val: Optional[Streams], run_dir: Path,
                 is_main: bool = True, reduce_sum: Callable[[list], list] = lambda v: v,
                 reduce_max: Callable[[list], list] = lambda v: v,
                 gather_state: Callable[[list], list] = lambda s: s, shard: Optional[tuple] = None,
                 sampler: Optional[Callable] = None,
                 log: Callable[[str], None] = lambda m: print(m, file=sys.stderr, flush=True)):
        """Under torchrun, `train` and `val` are this process's streams; `shard` = (start, stop, total)
        places them in the global batch; the reducers are collectives (devices.make_reducers)."""
        self.cfg, self.stepper, self.train, self.val = cfg, stepper, train, val
        self.run_dir = Path(run_dir)
        self.is_main, self.reduce_sum, self.reduce_max, self.gather_state = is_main, reduce_sum, reduce_max, gather_state
        self.shard = shard or (0, train.batch_size, train.batch_size)
        self.sampler, self.log = sampler, log
        self.progress = Progress()
        self.state = stepper.zero_state(train.batch_size)
        self.lr0 = cfg.resolved_lr
        self.stop_requested: Optional[str] = None
        self.epochs = cfg.resolved_epochs
        self.chars_per_iter = train.batch_size * train.seq_len  # this process's share
        self.metrics: Optional[MetricsLog] = None

    # ---- budget -------------------------------------------------------------
    def fraction_done(self) -> float:
        p, parts = self.progress, []
        if self.cfg.max_iters:
            parts.append(p.iteration / self.cfg.max_iters)
        if self.epochs:
            parts.append(p.iteration / (self.epochs * self.train.num_windows))
        if self.cfg.max_time:
            parts.append(p.elapsed / self.cfg.max_time)
        return max(parts) if parts else 0.0

    def finished(self) -> bool:
        p, cfg = self.progress, self.cfg
        if cfg.max_iters is not None and p.iteration >= cfg.max_iters:
            return True
        if self.epochs is not None and p.iteration >= self.epochs * self.train.num_windows:
            return True
        return cfg.max_time is not None and p.elapsed >= cfg.max_time

    def diverged(self, loss: float) -> bool:
        """NaN, infinite, or far beyond a uniform guess (ln V): the run has blown up.

        Adam-style updates keep a blown-up loss finite for a long time (weights
        grow by lr per step), so "finite" alone would train on garbage for hours.
        """
        uniform = math.log(max(2, self.stepper.model.config.vocab_size))
        return not math.isfinite(loss) or loss > 50 * uniform

    # ---- the loop -----------------------------------------------------------
    def run(self) -> Progress:
        p, cfg = self.progress, self.cfg
        if self.is_main and self.metrics is None:
            self.metrics = MetricsLog(self.run_dir / "metrics.jsonl")
        started, window_losses, window_started, iters_since = time.perf_counter(), [], time.perf_counter(), 0
        base_elapsed, last_saved = p.elapsed, None
        bar = self._progress_bar()
        stopping = self._agree_to_stop(p.elapsed)
        while not self.finished() and not stopping:
            lr = learning_rate(cfg, self.lr0, p, self.fraction_done())
            self.stepper.set_lr(lr)
            x, y = self.train.window(p.window)
            loss, self.state = self.stepper.train_step(x, y, self.state)
            if self.diverged(loss):
                raise TrainingDiverged(
                    f"loss became {loss:.4g} at iteration {p.iteration + 1}; training stopped and the last good checkpoint "
                    f"in {self.run_dir} is intact; lower --lr (now {lr:.3g}) or --grad-clip")
            p.iteration += 1
            p.window += 1
            if p.window == self.train.num_windows:  # epoch boundary: the seed resets the state
                p.epoch, p.window = p.epoch + 1, 0
                self.state = self.stepper.zero_state(self.train.batch_size)
            stopping = self._agree_to_stop(base_elapsed + time.perf_counter() - started)
            window_losses.append(loss)
            iters_since += 1
            if bar is not None:
                self._update_bar(bar, loss, time.perf_counter() - window_started, iters_since)
            evaluate_now = p.iteration % cfg.eval_every == 0
            if p.iteration % cfg.log_every == 0 or evaluate_now or self.finished():
                seconds = time.perf_counter() - window_started
                self._log_row(float(np.mean(window_losses)), lr, iters_since * self.chars_per_iter / max(seconds, 1e-9))
                window_losses, iters_since = [], 0
            if evaluate_now:
                self.validate_and_save()
                last_saved = p.iteration
            elif cfg.checkpoint_every and p.iteration % cfg.checkpoint_every == 0:
                self.save()
                last_saved = p.iteration
            if cfg.sample_every and p.iteration % cfg.sample_every == 0 and self.sampler and self.is_main:
                self.log(f"--- sample at iteration {p.iteration} ---\n{self.sampler()}\n---")
            if iters_since == 0:
                window_started = time.perf_counter()
        if bar is not None:
            bar.close()
        if stopping and self.is_main:
            self.log(f"{stopping}: saving a checkpoint at iteration {p.iteration}")
        if last_saved != p.iteration:
            self.validate_and_save()
        return p

    def _agree_to_stop(self, elapsed: float) -> Optional[str]:
        """Set the run's clock and say whether to stop, the same on every process.

        Under torchrun each process has its own clock and its own signals; one
        stopping alone would leave the others waiting in a collective forever.
        So all take the slowest clock and stop if any was asked to.
        """
        self.progress.elapsed, asked = self.reduce_max([elapsed, 1.0 if self.stop_requested else 0.0])
        if not asked:
            return None
        return self.stop_requested or "another process was asked to stop"

    def _progress_bar(self):
        if not (self.is_main and sys.stderr.isatty()):
            return None
        from tqdm import tqdm

        total = None
        if self.cfg.max_iters is not None:
            total = self.cfg.max_iters
        elif self.epochs is not None:
            total = int(self.epochs * self.train.num_windows)
        return tqdm(total=total, initial=self.progress.iteration, unit="it", dynamic_ncols=True, file=sys.stderr)

    def _update_bar(self, bar, loss: float, seconds: float, iters: int) -> None:
        p = self.progress
        postfix = {"epoch": p.epoch, "loss": f"{loss:.3f}",
                   "chars/s": f"{iters * self.chars_per_iter / max(seconds, 1e-9):,.0f}"}
        if bar.total is None and self.cfg.max_time:  # a time budget: the bar cannot know the ETA itself
            postfix["left"] = f"{max(0.0, self.cfg.max_time - p.elapsed):.0f}s"
        bar.update(1)
        bar.set_postfix(postfix, refresh=False)

    def _log_row(self, train_loss: float, lr: float, chars_per_sec: float) -> None:
        p = self.progress
        world_rate = self.reduce_sum([chars_per_sec])[0]
        row = {"iter": p.iteration, "epoch": round(p.epoch + p.window / self.train.num_windows, 4),
               "train_loss": round(train_loss, 5), "lr": lr, "chars_per_sec": round(world_rate, 1),
               "elapsed_s": round(p.elapsed, 2)}
        if self.is_main:
            self.metrics.append(row)
            if not sys.stderr.isatty():
                self.log(f"iter {p.iteration} epoch {row['epoch']:.2f} loss {train_loss:.4f} lr {lr:.3g} "
                         f"{world_rate:,.0f} chars/s elapsed {p.elapsed:.0f}s")

    # ---- validation and checkpoints -----------------------------------------
    def validate(self) -> Optional[float]:
        """Mean loss over the validation split, read in order with the state carried."""
        if self.val is None:
            return None
        state = self.stepper.zero_state(self.val.batch_size)
        total = 0.0
        for k in range(self.val.num_windows):
            loss, state = self.stepper.eval_loss(*self.val.window(k), state)
            total += loss
        summed, count = self.reduce_sum([total, float(self.val.num_windows)])
        return summed / count

    def validate_and_save(self) -> None:
        p = self.progress
        val = self.validate()
        is_best = val is not None and val < p.best_val
        if val is not None:
            p.last_val = val
            p.best_val = min(p.best_val, val)
            if self.is_main:
                row = {"iter": p.iteration, "epoch": round(p.epoch + p.window / self.train.num_windows, 4),
                       "val_loss": round(val, 5), "val_bpc": round(bits_per_char(val), 5), "elapsed_s": round(p.elapsed, 2)}
                self.metrics.append(row)
                self.log(f"iter {p.iteration}: validation loss {val:.4f} nats/char ({bits_per_char(val):.4f} bpc)"
                         + (" (best)" if is_best else ""))
        self.save(best=is_best or (val is None))
        if self.is_main:
            try:
                plot_losses(self.run_dir / "metrics.jsonl", self.run_dir / "loss.png")
            except OSError:
                pass

    def save(self, best: bool = False) -> None:
        """Write resume.safetensors, then model.safetensors (and best.safetensors), each atomically."""
        state = self.gather_state(self.stepper.state_to_numpy(self.state))
        if not self.is_main:
            return
        if not self.stepper.parameters_finite():
            raise TrainingDiverged(f"the weights hold NaN or infinite values at iteration {self.progress.iteration}; "
                                   f"the last good checkpoint in {self.run_dir} is intact; lower --lr or --grad-clip")
        params = self.stepper.get_parameters()
        optim_arrays, optim_meta = self.stepper.optimizer_state()
        rng_arrays, rng_meta = self.stepper.rng_state()
        arrays = {f"param/{k}": v for k, v in params.items()}
        arrays.update({f"optim/{k}": v for k, v in optim_arrays.items()})
        arrays.update({f"state/{i}": s for i, s in enumerate(state)})
        arrays.update({f"rng/{k}": v for k, v in rng_arrays.items()})
        meta = {"progress": asdict(self.progress), "optimizer": optim_meta, "rng": rng_meta,
                "optimizer_name": self.cfg.resolved_optimizer}
        info = {"iteration": self.progress.iteration, "val_loss": self.progress.last_val}
        try:
            write_safetensors(self.run_dir / RESUME, arrays, meta)
            save_weights(self.run_dir / WEIGHTS["latest"], params, info)
            if best:
                save_weights(self.run_dir / WEIGHTS["best"], params, info)
        except OSError as e:
            raise checkpoint_write_error(self.run_dir, e) from None

    def restore(self) -> None:
        """Load resume.safetensors: weights, optimizer, carried state, RNG and counters."""
        arrays, meta = read_safetensors(self.run_dir / RESUME)
        check_resume(arrays, meta, self.stepper.model.config, self.run_dir / RESUME)
        if meta.get("optimizer_name") != self.cfg.resolved_optimizer:
            raise UserError(f"the run in {self.run_dir} was trained with --optimizer {meta.get('optimizer_name')}, not "
                            f"{self.cfg.resolved_optimizer}; resume it with the same --optimizer and --impl")
        try:
            params = {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}
            self.stepper.model.set_parameters(params)
            self.stepper.load_optimizer_state({k[len("optim/"):]: v for k, v in arrays.items() if k.startswith("optim/")}, meta["optimizer"])
            self.stepper.set_rng_state({k[len("rng/"):]: v for k, v in arrays.items() if k.startswith("rng/")}, meta["rng"])
            progress = meta["progress"]
            self.progress = Progress(**progress)
            states = [arrays[f"state/{i}"] for i in range(len([k for k in arrays if k.startswith("state/")]))]
        except (KeyError, TypeError, ValueError, RuntimeError) as e:
            raise UserError(f"{self.run_dir / RESUME} does not fit this run ({type(e).__name__}: {e}); "
                            "it is damaged or from another program") from None
        self.progress.best_val = math.inf if self.progress.best_val is None else self.progress.best_val
        self.state = self._reshard_state(states)
        if self.progress.window >= self.train.num_windows:
            raise UserError(f"cannot resume at window {self.progress.window}: this data and --batch-size/--seq-len give "
                            f"{self.train.num_windows} windows per epoch; resume with the run's original data and shapes")
        if self.is_main:
            self.metrics = MetricsLog(self.run_dir / "metrics.jsonl", resume_from_iter=self.progress.iteration)

    def _reshard_state(self, states: list):
        """The saved state holds every stream of the global batch, whatever the number of processes
        that saved it; keep this process's share."""
        start, stop, total = self.shard
        if not states:
            return self.stepper.zero_state(self.train.batch_size)
        if states[0].shape[1] != total:
            raise UserError(f"the checkpoint carries {states[0].shape[1]} streams but this run has --batch-size {total}; "
                            "resume with the same --batch-size")
        return self.stepper.state_from_numpy([s[:, start:stop] for s in states])

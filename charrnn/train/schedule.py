"""The run's budget (when to stop, how far along it is) and the learning rate at each iteration.

A budget is any of --max-iters, --epochs and --max-time, each counted over the whole run
(across --resume); the first one reached ends it, and "how far along" is the largest of the
three fractions, so a cosine schedule always reaches its floor exactly when the run ends.

A run planned from time (train/replan.py) also has `planned`, the iteration its plan ends at: its fraction is
the plan's as of the end of each step, so the plan's last step trains at the floor (and the clock's where it
is ahead: a machine that slows after the last re-plan still reaches the floor at the deadline), and the plan's
end ends the run.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence

from charrnn.config import TrainConfig


class Budget:
    """--max-iters, --epochs (in windows of this data) and --max-time, whichever comes first."""

    def __init__(self, cfg: TrainConfig, windows_per_epoch: int):
        self.max_iters, self.max_time = cfg.max_iters, cfg.max_time
        self.epochs = cfg.resolved_epochs
        self.windows_per_epoch = windows_per_epoch
        self.planned: Optional[int] = None   # the last iteration of a plan made from the clock (train/replan.py)

    def fraction_done(self, iteration: int, elapsed: float) -> float:
        parts = []
        if self.max_iters:
            parts.append(iteration / self.max_iters)
        if self.epochs:
            parts.append(iteration / (self.epochs * self.windows_per_epoch))
        if self.max_time:
            parts.append(elapsed / self.max_time)
        if self.planned:
            parts.append(min(1.0, (iteration + 1) / self.planned))
        return max(parts) if parts else 0.0

    def finished(self, iteration: int, elapsed: float) -> bool:
        if self.max_iters is not None and iteration >= self.max_iters:
            return True
        if self.epochs is not None and iteration >= self.epochs * self.windows_per_epoch:
            return True
        if self.planned is not None and iteration >= self.planned:
            return True
        return self.max_time is not None and elapsed >= self.max_time

    def as_list(self) -> list:
        """What the budget is, as a checkpoint records it (a resume compares it with its own); a plan is not
        part of it (Progress keeps the plan)."""
        return [self.max_iters, self.epochs, self.max_time]

    def total_iterations(self) -> Optional[int]:
        """Iterations the run will take, where an iteration budget or a plan says (None for a time budget)."""
        if self.planned is not None:
            return self.planned
        if self.max_iters is not None:
            return self.max_iters
        if self.epochs is not None:
            return int(self.epochs * self.windows_per_epoch)
        return None


def learning_rate(cfg: TrainConfig, lr0: float, iteration: int, epoch: int, fraction_done: float,
                  cosine_from: Optional[Sequence[float]] = None) -> float:
    """The learning rate for this iteration.

    Warm-up (--warmup-iters W, either schedule): a linear ramp from lr0/W to lr0 over the first W
    iterations. Then --schedule epoch is the seed's per-epoch decay, lr0 * lr_decay ** epoch, and
    --schedule cosine falls from its start to lr0/10 when the budget ends. The cosine starts at
    `cosine_from` = (fraction of the budget, learning rate): (0, lr0) for a run without warm-up,
    (where warm-up ended, lr0) after one, and (where a --resume with a larger or smaller budget
    found the run, the rate it had then), so that extending a run continues its decay instead of
    jumping back up.
    """
    ramp = (iteration + 1) / cfg.warmup_iters if iteration < cfg.warmup_iters else 1.0
    if cfg.schedule == "epoch":
        return lr0 * cfg.lr_decay ** epoch * ramp
    if iteration < cfg.warmup_iters:
        return lr0 * ramp
    start_fraction, start_lr = cosine_from if cosine_from is not None else (0.0, lr0)
    floor = lr0 / 10
    span = 1.0 - start_fraction
    t = 1.0 if span <= 0 else min(1.0, max(0.0, (fraction_done - start_fraction) / span))
    return floor + 0.5 * (start_lr - floor) * (1 + math.cos(math.pi * t))

"""The run's budget (when to stop, how far along it is) and the learning rate at each iteration.

A budget is any of --max-iters, --epochs and --max-time, each counted over the whole run
(across --resume); the first one reached ends it, and "how far along" is the largest of the
three fractions, so a cosine schedule always reaches its floor exactly when the run ends.
"""
from __future__ import annotations

import math
from typing import Optional

from charrnn.config import TrainConfig


class Budget:
    """--max-iters, --epochs (in windows of this data) and --max-time, whichever comes first."""

    def __init__(self, cfg: TrainConfig, windows_per_epoch: int):
        self.max_iters, self.max_time = cfg.max_iters, cfg.max_time
        self.epochs = cfg.resolved_epochs
        self.windows_per_epoch = windows_per_epoch

    def fraction_done(self, iteration: int, elapsed: float) -> float:
        parts = []
        if self.max_iters:
            parts.append(iteration / self.max_iters)
        if self.epochs:
            parts.append(iteration / (self.epochs * self.windows_per_epoch))
        if self.max_time:
            parts.append(elapsed / self.max_time)
        return max(parts) if parts else 0.0

    def finished(self, iteration: int, elapsed: float) -> bool:
        if self.max_iters is not None and iteration >= self.max_iters:
            return True
        if self.epochs is not None and iteration >= self.epochs * self.windows_per_epoch:
            return True
        return self.max_time is not None and elapsed >= self.max_time

    def total_iterations(self) -> Optional[int]:
        """Iterations the run will take, where an iteration budget says (None for a time budget)."""
        if self.max_iters is not None:
            return self.max_iters
        if self.epochs is not None:
            return int(self.epochs * self.windows_per_epoch)
        return None


def learning_rate(cfg: TrainConfig, lr0: float, iteration: int, epoch: int, fraction_done: float) -> float:
    """The seed's per-epoch decay, or warm-up + cosine to lr0/10 over the run's budget."""
    if cfg.schedule == "epoch":
        lr = lr0 * cfg.lr_decay ** epoch
    else:
        floor = lr0 / 10
        lr = floor + 0.5 * (lr0 - floor) * (1 + math.cos(math.pi * min(1.0, fraction_done)))
    if cfg.warmup_iters and iteration < cfg.warmup_iters:
        lr *= (iteration + 1) / cfg.warmup_iters
    return lr

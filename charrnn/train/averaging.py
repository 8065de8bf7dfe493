"""An exponential moving average of the weights (--weight-average ema): what is validated and saved.

On a small text read many times, the weights after one step and after the next validate far apart: each
step moves them along the few characters its window held, and the validation loss swings with it. Their
average over about one validation interval of steps sits in the middle of that swing and validates lower
and steadier, so the best checkpoint and a plateau's decision rest on it (the optimizer itself goes on from
the last step's weights). It is kept as canonical NumPy arrays, read through `get_parameters`, so it
works alike in every engine; under torchrun every process holds the same weights and so the same average.
"""
from __future__ import annotations

from typing import Dict, Optional

import numpy as np

Arrays = Dict[str, np.ndarray]

AVERAGES_PER_HORIZON = 16   # updates per horizon: often enough to follow it, rarely enough to cost ~1% of a step


def update_every(horizon: int) -> int:
    """Steps between two updates of an average over `horizon` steps."""
    return max(1, horizon // AVERAGES_PER_HORIZON)


class WeightAverage:
    """w_avg <- w_avg + a (w - w_avg) every `update_every(horizon)` steps, with a = 1 - (1 - 1/horizon)^k for k
    steps between updates: the per-step average 1/horizon would give, sampled every k steps. The first weights
    it is given start it."""

    def __init__(self, arrays: Optional[Arrays] = None):
        self.arrays: Optional[Arrays] = None if arrays is None else {k: np.array(v, np.float32)
                                                                     for k, v in arrays.items()}

    def due(self, iteration: int, horizon: int) -> bool:
        """Whether the step that ended at `iteration` updates the average (the first step always starts it)."""
        return self.arrays is None or iteration % update_every(horizon) == 0

    def update(self, params: Arrays, horizon: int) -> None:
        if self.arrays is None:
            self.arrays = {k: np.array(v, np.float32) for k, v in params.items()}
            return
        weight = 1.0 - (1.0 - 1.0 / max(horizon, 1)) ** update_every(horizon)
        for name, value in params.items():
            average = self.arrays[name]
            average += np.float32(weight) * (value - average)

    def restart(self, params: Arrays) -> None:
        """Start again from `params` (a plateau's rewind to the best weights, which are an average already)."""
        self.arrays = {k: np.array(v, np.float32) for k, v in params.items()}

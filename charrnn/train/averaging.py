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

AVERAGES_PER_HORIZON = 16   # samples per horizon: often enough to follow it, rarely enough to cost ~1% of a step


def update_every(horizon: int) -> int:
    """Steps between two samples of an average over `horizon` steps."""
    return max(1, horizon // AVERAGES_PER_HORIZON)


class WeightAverage:
    """An exponential average over `horizon` steps (beta = 1 - 1/horizon a step), sampled every few steps and
    corrected for its start as Adam corrects its moments: a sample stands for the s steps since the one before
    and weighs 1 - beta^s against beta^s of all before it; `mass` is what the samples weigh together (1 -
    beta^steps for a constant horizon since the start; 1 after a restart), and the average is their weighted
    mean. So early on it is close to a plain mean of what it has seen, not the first weights held as if they
    were a whole horizon's. `at`: the iteration of the last sample (or of the restart)."""

    def __init__(self, arrays: Optional[Arrays] = None, at: Optional[int] = None, mass: float = 0.0):
        self.arrays = None if arrays is None else {k: np.array(v, np.float32) for k, v in arrays.items()}
        self.at, self.mass = at, mass

    def due(self, iteration: int, horizon: int) -> bool:
        """Whether the step that ended at `iteration` is sampled (the first step always starts the average)."""
        return self.arrays is None or iteration - self.at >= update_every(horizon)

    def _weight(self, iteration: int, horizon: int):
        """(the new sample's share, the mass after it) for a sample at `iteration`."""
        steps = 1 if self.at is None else iteration - self.at
        kept = (1.0 - 1.0 / max(horizon, 1)) ** steps
        mass = kept * self.mass + (1.0 - kept)
        return (1.0 - kept) / mass if mass > 0 else 0.0, mass

    def update(self, params: Arrays, iteration: int, horizon: int) -> None:
        share, self.mass = self._weight(iteration, horizon)
        if self.arrays is None:
            self.arrays = {k: np.array(v, np.float32) for k, v in params.items()}
        else:
            for name, value in params.items():
                average = self.arrays[name]
                average += np.float32(share) * (value - average)
        self.at = iteration

    def blended(self, params: Arrays, iteration: int, horizon: int) -> Arrays:
        """The average as a sample of `params` at `iteration` would make it, leaving the average as it is: what a
        validation or a checkpoint between two samples holds (so it counts the last steps, and a run stopped
        there and resumed samples at the same steps as one never stopped)."""
        share, _ = self._weight(iteration, horizon)
        return {name: average + np.float32(share) * (params[name] - average) for name, average in self.arrays.items()}

    def restart(self, params: Arrays, iteration: int) -> None:
        """Start again from `params` as a whole average (a plateau's rewind to the best weights, an average
        already)."""
        self.arrays = {k: np.array(v, np.float32) for k, v in params.items()}
        self.at, self.mass = iteration, 1.0

    def counters(self) -> dict:
        return {"at": self.at, "mass": self.mass}

"""The Python API; the `sample` and `eval` commands are thin layers over it.

    model = charrnn.load("runs/shakespeare", impl="naive")
    print(model.sample("ROMEO:", 200, temperature=0.8, seed=1))
    for ch in model.stream("ROMEO:", 200): print(ch, end="", flush=True)
    print(model.evaluate(open("valid.txt").read()).bpc)
"""
from __future__ import annotations

from pathlib import Path
from typing import Iterator, List, Optional, Union

import numpy as np

from .checkpoint import load_run
from .config import IMPLS
from .errors import UserError
from .evaluate import Evaluation, evaluate_indices
from .runner import Runner
from .sample import beam_search, check_sampling, generate_indices, prime_indices


class TrainedModel:
    """A trained run loaded into one engine, ready to sample and evaluate."""

    def __init__(self, run_dir: Path, impl: str = "library", which: str = "latest", device: str = "cpu"):
        if impl not in IMPLS:
            raise UserError(f"--impl {impl!r} is not one of {', '.join(IMPLS)}")
        from .models import build_model

        self.run_dir = Path(run_dir)
        self.config, self.vocab, params = load_run(self.run_dir, which)
        self.impl = impl
        torch_device = None
        if impl != "naive":
            from .devices import resolve_device

            torch_device = resolve_device(device, impl)
        self.model = build_model(impl, self.config, params=params, device=torch_device,
                                 dtype="float64" if impl == "naive" else "float32")
        self.runner = Runner(self.model)

    def stream(self, prime: str = "", length: int = 500, temperature: float = 1.0, top_k: Optional[int] = None,
               top_p: Optional[float] = None, greedy: bool = False, seed: Optional[int] = None,
               unknown: str = "error") -> Iterator[str]:
        """Yield generated characters one at a time (the prime itself is not yielded)."""
        check_sampling(temperature, top_k, top_p)
        idx = prime_indices(self.vocab, prime, unknown)
        rng = np.random.default_rng(seed)
        for step in generate_indices(self.runner, idx, length, 1, temperature, top_k, top_p, greedy, rng):
            yield self.vocab.chars[int(step[0])]

    def sample(self, prime: str = "", length: int = 500, temperature: float = 1.0, top_k: Optional[int] = None,
               top_p: Optional[float] = None, greedy: bool = False, seed: Optional[int] = None,
               num_samples: int = 1, unknown: str = "error") -> Union[str, List[str]]:
        """The prime followed by `length` characters; a list of num_samples texts when num_samples > 1."""
        check_sampling(temperature, top_k, top_p)
        if num_samples < 1:
            raise UserError(f"--num-samples {num_samples} must be at least 1")
        idx = prime_indices(self.vocab, prime, unknown)
        prime = self.vocab.decode(idx) if prime else ""
        rng = np.random.default_rng(seed)
        steps = list(generate_indices(self.runner, idx, length, num_samples, temperature, top_k, top_p, greedy, rng))
        columns = np.stack(steps, axis=1) if steps else np.zeros((num_samples, 0), dtype=np.int64)
        texts = [prime + self.vocab.decode(row) for row in columns]
        return texts[0] if num_samples == 1 else texts

    def beam(self, prime: str = "", length: int = 100, beam: int = 5, unknown: str = "error") -> str:
        """The most likely continuation by beam search, after the prime."""
        if beam < 1:
            raise UserError(f"--beam {beam} must be at least 1")
        idx = prime_indices(self.vocab, prime, unknown)
        return (self.vocab.decode(idx) if prime else "") + self.vocab.decode(beam_search(self.runner, idx, length, beam))

    def evaluate(self, text: str) -> Evaluation:
        missing = self.vocab.unknown(text)
        if missing:
            from .vocab import format_chars

            raise UserError(f"the text has characters outside the model's vocabulary: {format_chars(missing)}")
        return evaluate_indices(self.runner, self.vocab.encode(text))

    def evaluate_indices(self, data: np.ndarray) -> Evaluation:
        return evaluate_indices(self.runner, data)


def load(run_dir, impl: str = "library", which: str = "latest", device: str = "cpu") -> TrainedModel:
    return TrainedModel(Path(run_dir), impl=impl, which=which, device=device)

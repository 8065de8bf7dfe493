"""The Python API; the `sample` and `eval` commands are thin layers over it.

    model = charrnn.load("runs/shakespeare", impl="naive")     # quantize="int8": faster, slightly less exact
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
from .sample import beam_search, check_sampling, clean_prime, generate, generate_indices, prime_indices


class TrainedModel:
    """A trained run loaded into one engine, ready to sample and evaluate."""

    def __init__(self, run_dir: Path, impl: str = "library", which: str = "latest", device: str = "cpu",
                 quantize: Optional[str] = None):
        if impl not in IMPLS:
            raise UserError(f"--impl {impl!r} is not one of {', '.join(IMPLS)}")
        from .models import build_model

        self.run_dir = Path(run_dir)
        self.config, self.vocab, params = load_run(self.run_dir, which)
        self.impl = impl
        torch_device = None
        if impl != "naive":
            from .devices import resolve_device

            torch_device = resolve_device(device, impl)  # one-line UserError when torch is missing
        self.model = build_model(impl, self.config, params=params, device=torch_device,
                                 dtype="float32")  # what every engine trains in; float64 halves batch-1 speed
        self.runner = Runner(self.model, quantize)  # int8: every engine steps through the same int8 step

    def prime(self, prime: str = "", unknown: str = "error") -> str:
        """The prime as sampling uses it and prints it: unknown characters raise UserError,
        or are dropped with a warning on stderr when unknown='skip'."""
        return clean_prime(self.vocab, prime, unknown)

    def stream(self, prime: str = "", length: int = 500, temperature: float = 1.0, top_k: Optional[int] = None,
               top_p: Optional[float] = None, greedy: bool = False, seed: Optional[int] = None,
               unknown: str = "error") -> Iterator[str]:
        """Yield `length` generated characters one at a time (the prime itself is not yielded).

        Arguments are checked here, before the first character, so a bad one raises at the
        call rather than in the middle of a loop that may already have printed the prime.
        """
        check_sampling(temperature, top_k, top_p)
        _check_length(length)
        idx = prime_indices(self.vocab, prime, unknown)
        steps = generate_indices(self.runner, idx, length, 1, temperature, top_k, top_p, greedy,
                                 np.random.default_rng(seed))
        return (self.vocab.chars[int(step[0])] for step in steps)

    def sample(self, prime: str = "", length: int = 500, temperature: float = 1.0, top_k: Optional[int] = None,
               top_p: Optional[float] = None, greedy: bool = False, seed: Optional[int] = None,
               num_samples: int = 1, unknown: str = "error") -> Union[str, List[str]]:
        """The (cleaned) prime followed by `length` characters; a list of num_samples texts when num_samples > 1."""
        check_sampling(temperature, top_k, top_p)
        _check_length(length)
        if num_samples < 1:
            raise UserError(f"--num-samples {num_samples} must be at least 1")
        return generate(self.runner, self.vocab, self.prime(prime, unknown), length, temperature, top_k, top_p,
                        greedy, np.random.default_rng(seed), num_samples)

    def beam(self, prime: str = "", length: int = 100, beam: int = 5, unknown: str = "error") -> str:
        """The (cleaned) prime followed by the most likely continuation that beam search finds."""
        if beam < 1:
            raise UserError(f"--beam {beam} must be at least 1")
        _check_length(length)
        prime = self.prime(prime, unknown)
        idx = prime_indices(self.vocab, prime)
        return prime + self.vocab.decode(beam_search(self.runner, idx, length, beam))

    def evaluate(self, text: str) -> Evaluation:
        """Loss (nats/char), bpc and the number of predicted characters, the text read as one stream."""
        missing = self.vocab.unknown(text)
        if missing:
            from .vocab import format_chars

            raise UserError(f"the text has characters outside the model's vocabulary: {format_chars(missing)}")
        return evaluate_indices(self.runner, self.vocab.encode(text))

    def evaluate_indices(self, data: np.ndarray) -> Evaluation:
        """As `evaluate`, for text already encoded with this model's vocabulary."""
        return evaluate_indices(self.runner, data)


def _check_length(length: int) -> None:
    if length < 0:
        raise UserError(f"--length {length} must be non-negative")


def load(run_dir, impl: str = "library", which: str = "latest", device: str = "cpu",
         quantize: Optional[str] = None) -> TrainedModel:
    """quantize="int8": layer weights in int8, run by the compiled step (native.py; CPU, no torch needed);
    `evaluate` then reports the int8 model's loss, so its cost in accuracy is one call away."""
    return TrainedModel(Path(run_dir), impl=impl, which=which, device=device, quantize=quantize)

"""Sampling, layered: logits -> sample_next -> generate_indices -> generate.

Order of the knobs in sample_next: logits are divided by the temperature,
then top-k keeps the k largest, then top-p keeps the smallest set whose
probability reaches p; the draw is one uniform number per row (inverse CDF),
so a seed gives the same text on every run.
"""
from __future__ import annotations

from typing import Iterator, List, Optional

import numpy as np

from .errors import UserError
from .runner import Runner, log_softmax
from .vocab import Vocab, format_chars

DEFAULT_START = "\n"


def check_sampling(temperature: float, top_k: Optional[int], top_p: Optional[float]) -> None:
    if not temperature > 0:
        raise UserError(f"--temperature {temperature} must be positive; for the single most likely character use --greedy")
    if top_k is not None and top_k < 1:
        raise UserError(f"--top-k {top_k} must be at least 1")
    if top_p is not None and not 0 < top_p <= 1:
        raise UserError(f"--top-p {top_p} must be in (0, 1]")


def sample_next(logits: np.ndarray, temperature: float = 1.0, top_k: Optional[int] = None,
                top_p: Optional[float] = None, rng: Optional[np.random.Generator] = None,
                greedy: bool = False) -> np.ndarray:
    """Draw one index per row of logits (B, V); returns (B,) ints.

    greedy takes the argmax and ignores the other knobs. Otherwise: logits / temperature,
    keep the top_k largest (ties at the k-th value are all kept), keep the smallest set
    whose probability reaches top_p, renormalize, draw with one `rng.random` per row.
    """
    if greedy:
        return logits.argmax(axis=-1)
    z = np.multiply(logits, 1.0 / temperature, dtype=np.float64)  # (B, V) a new float64 array
    if top_k is not None and top_k < z.shape[-1]:
        kth = np.partition(z, -top_k, axis=-1)[:, -top_k][:, None]
        z[z < kth] = -np.inf
    z -= z.max(axis=-1, keepdims=True)
    p = np.exp(z, out=z)                                    # (B, V) unnormalized: the draw scales u instead
    if top_p is not None and top_p < 1:
        p /= p.sum(axis=-1, keepdims=True)
        order = np.argsort(-p, axis=-1)
        sorted_p = np.take_along_axis(p, order, axis=-1)
        drop_sorted = np.cumsum(sorted_p, axis=-1) - sorted_p >= top_p  # mass before this one already reaches p
        drop = np.zeros_like(drop_sorted)
        np.put_along_axis(drop, order, drop_sorted, axis=-1)
        p[drop] = 0.0
    rng = rng or np.random.default_rng()
    cdf = np.cumsum(p, axis=-1, out=p)                      # (B, V), in place: a batch-1 step is ~200 us, each call counts
    u = rng.random(p.shape[0]) * cdf[:, -1]                 # (B,) uniform in [0, total mass)
    # the first index whose cdf exceeds u: `<=` (not `<`) so u = 0 can never pick a
    # leading character that top-k or top-p removed (probability 0, so cdf 0)
    return np.minimum((cdf <= u[:, None]).sum(axis=-1), p.shape[-1] - 1)


def clean_prime(vocab: Vocab, prime: str, unknown: str = "error") -> str:
    """The prime as it will be used: unknown characters are an error, or dropped with a warning (unknown='skip')."""
    if unknown not in ("error", "skip"):
        raise UserError(f"--unknown {unknown!r} is not one of error, skip")
    missing = vocab.unknown(prime)
    if missing:
        if unknown != "skip":
            raise UserError(f"the prime has characters outside the model's vocabulary: {format_chars(missing)}; "
                            "remove them or pass --unknown skip")
        import sys

        print(f"warning: dropping characters outside the vocabulary: {format_chars(missing)}", file=sys.stderr)
        prime = "".join(c for c in prime if c in vocab)
    return prime


def prime_indices(vocab: Vocab, prime: str, unknown: str = "error") -> np.ndarray:
    """Encode the (cleaned) prime; an empty prime becomes a newline, the start the model knows best."""
    prime = clean_prime(vocab, prime, unknown)
    if not prime:
        prime = DEFAULT_START if DEFAULT_START in vocab else vocab.chars[0]
    return vocab.encode(prime).astype(np.int64)


def generate_indices(runner: Runner, prime: np.ndarray, length: int, num_samples: int = 1,
                     temperature: float = 1.0, top_k: Optional[int] = None, top_p: Optional[float] = None,
                     greedy: bool = False, rng: Optional[np.random.Generator] = None) -> Iterator[np.ndarray]:
    """Warm the state on the prime, then yield (num_samples,) indices, one step at a time."""
    state = runner.zero_state(num_samples)
    logits, state = runner.feed(np.tile(prime, (num_samples, 1)), state)
    last = logits[:, -1]
    compiled = None if top_k is not None or top_p is not None else runner.generator(state, num_samples)
    if compiled is not None:
        yield from _compiled(compiled, last, length, num_samples, temperature, greedy, rng)
        return
    step = runner.stepper(state, num_samples)
    for _ in range(length):
        nxt = sample_next(last, temperature, top_k, top_p, rng, greedy)
        yield nxt
        last = step(nxt)


def _compiled(generate, last: np.ndarray, length: int, num_samples: int, temperature: float, greedy: bool,
              rng: Optional[np.random.Generator], chunk: int = 32) -> Iterator[np.ndarray]:
    """generate_indices through compiled code, `chunk` characters per call (few enough to stream).

    The uniforms are drawn as sample_next draws them, one per row per step in order, so the
    same seed and logits give the same characters on either path.
    """
    rng = rng or np.random.default_rng()
    for start in range(0, length, chunk):
        n = min(chunk, length - start)
        uniforms = None if greedy else rng.random((n, num_samples))
        yield from generate(last if start == 0 else None, n, temperature, uniforms)


def generate(runner: Runner, vocab: Vocab, prime: str = "", length: int = 500, temperature: float = 1.0,
             top_k: Optional[int] = None, top_p: Optional[float] = None, greedy: bool = False,
             rng: Optional[np.random.Generator] = None, num_samples: int = 1) -> str | List[str]:
    """The prime (already cleaned, see clean_prime) followed by `length` generated characters;
    a list of num_samples texts when num_samples > 1."""
    check_sampling(temperature, top_k, top_p)
    idx = prime_indices(vocab, prime)
    steps = list(generate_indices(runner, idx, length, num_samples, temperature, top_k, top_p, greedy, rng))
    columns = np.stack(steps, axis=1) if steps else np.zeros((num_samples, 0), dtype=np.int64)  # (N, length)
    texts = [prime + vocab.decode(row) for row in columns]
    return texts[0] if num_samples == 1 else texts


def beam_search(runner: Runner, prime: np.ndarray, length: int, beam: int) -> np.ndarray:
    """The most likely continuation found keeping `beam` hypotheses; returns (length,) indices."""
    state = runner.zero_state(1)
    logits, state = runner.feed(prime[None, :], state)
    scores = np.zeros(1)
    sequences = np.zeros((1, 0), dtype=np.int64)
    last = logits[:, -1]
    for _ in range(length):
        total = scores[:, None] + log_softmax(last)          # (K, V)
        flat = np.argsort(-total, axis=None)[:beam]
        rows, chars = np.divmod(flat, total.shape[1])
        scores = total[rows, chars]
        sequences = np.concatenate([sequences[rows], chars[:, None]], axis=1)
        state = runner.select(state, rows)
        logits, state = runner.feed(chars[:, None], state)
        last = logits[:, -1]
    return sequences[0]

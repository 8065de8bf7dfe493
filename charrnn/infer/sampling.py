"""Sampling, layered: logits -> sample_next -> generate_indices -> generate.

Order of the knobs in sample_next: logits are divided by the temperature,
then top-k keeps the k largest, then top-p keeps the smallest set whose
probability reaches p; the draw is one uniform number per row (inverse CDF),
so a seed gives the same text on every run.
"""
from __future__ import annotations

import sys
from dataclasses import asdict, dataclass
from typing import Iterator, List, Optional, Protocol, runtime_checkable

import numpy as np

from charrnn.data.vocab import Vocab, format_chars
from charrnn.errors import UserError
from charrnn.infer.predictor import Predictor
from charrnn.infer.steps import Step
from charrnn.losses import log_softmax

DEFAULT_START = "\n"


@dataclass(frozen=True)
class SamplingOptions:
    """How each next character is chosen; build with `sampling_options`, which validates."""

    temperature: float = 1.0
    top_k: Optional[int] = None
    top_p: Optional[float] = None
    greedy: bool = False

    @property
    def draws_in_python(self) -> bool:
        """top-k and top-p are applied in Python; plain temperature or greedy can draw in compiled code."""
        return self.top_k is not None or self.top_p is not None

    def as_dict(self) -> dict:
        return asdict(self)


def option_name(name: str, cli: bool) -> str:
    """How the user wrote an option: `--top-k` on the command line, `top_k=` in Python."""
    return "--" + name.replace("_", "-") if cli else f"{name}="


def count(name: str, value, minimum: int, cli: bool) -> int:
    """An integer option (not a bool, not a float) of at least `minimum`, or one clear error."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise UserError(f"{option_name(name, cli)} {value!r} must be a whole number")
    if value < minimum:
        raise UserError(f"{option_name(name, cli)} {value} must be at least {minimum}")
    return int(value)


def _number(name: str, value, cli: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) or value != value:
        raise UserError(f"{option_name(name, cli)} {value!r} must be a number")
    return float(value)


def sampling_options(temperature: Optional[float] = None, top_k: Optional[int] = None, top_p: Optional[float] = None,
                     greedy: bool = False, *, cli: bool = False) -> SamplingOptions:
    """Validate the sampling knobs once, where they enter (the CLI, or the Python API with cli=False)."""
    name = lambda n: option_name(n, cli)
    if not isinstance(greedy, (bool, np.bool_)):
        raise UserError(f"{name('greedy')} {greedy!r} must be True or False")
    if greedy and temperature is not None:
        raise UserError(f"{name('greedy')} takes the most likely character and ignores {name('temperature')}; "
                        "give one of them")
    if temperature is not None and not _number("temperature", temperature, cli) > 0:
        how = "--greedy" if cli else "greedy=True"
        raise UserError(f"{name('temperature')} {temperature} must be positive; for the single most likely character "
                        f"use {how}")
    if top_k is not None:
        top_k = count("top_k", top_k, 1, cli)
    if top_p is not None and not 0 < _number("top_p", top_p, cli) <= 1:
        raise UserError(f"{name('top_p')} {top_p} must be in (0, 1]")
    return SamplingOptions(1.0 if temperature is None else float(temperature), top_k,
                           None if top_p is None else float(top_p), bool(greedy))


def sample_next(logits: np.ndarray, temperature: float = 1.0, top_k: Optional[int] = None,
                top_p: Optional[float] = None, rng: Optional[np.random.Generator] = None,
                greedy: bool = False) -> np.ndarray:
    """Draw one index per row of logits (B, V); returns (B,) ints.

    greedy takes the argmax and ignores the other knobs. Otherwise: logits / temperature,
    keep the top_k largest (ties at the k-th value are all kept), keep the smallest set
    whose probability reaches top_p (and every character tied with its least likely member),
    renormalize, draw with one `rng.random` per row.
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
        sorted_p = -np.sort(-p, axis=-1)                                  # (B, V) largest first
        keep_sorted = np.cumsum(sorted_p, axis=-1) - sorted_p < top_p      # mass before this one is short of p
        # the smallest kept probability; every character as likely is kept too, as top-k keeps ties,
        # so the set does not depend on how a sort orders equal values
        threshold = np.where(keep_sorted, sorted_p, np.inf).min(axis=-1, keepdims=True)
        p[p < threshold] = 0.0
    rng = rng or np.random.default_rng()
    cdf = np.cumsum(p, axis=-1, out=p)                      # (B, V), in place: at batch 1 each call counts
    u = rng.random(p.shape[0]) * cdf[:, -1]                 # (B,) uniform in [0, total mass)
    # the first index whose cdf exceeds u: `<=` (not `<`) so u = 0 can never pick a
    # leading character that top-k or top-p removed (probability 0, so cdf 0)
    return np.minimum((cdf <= u[:, None]).sum(axis=-1), p.shape[-1] - 1)


UNKNOWN_CHOICES = ("error", "skip")


SKIP_HINTS = {"cli": "pass --unknown skip", "python": "pass unknown='skip'", "web": "the model cannot read them"}


def clean_prime(vocab: Vocab, prime: str, unknown: str = "error", audience: str = "python") -> str:
    """The prime as it will be used: unknown characters are an error, or dropped with a warning (unknown='skip').

    `audience` ("cli", "python" or "web") words the hint as the reader can act on it.
    """
    if unknown not in UNKNOWN_CHOICES:
        raise UserError(f"{option_name('unknown', audience == 'cli')} {unknown!r} is not one of "
                        f"{', '.join(UNKNOWN_CHOICES)}")
    if not isinstance(prime, str):
        raise UserError(f"the prime must be a str, not {type(prime).__name__}")
    missing = vocab.unknown(prime)
    if missing:
        if unknown != "skip":
            hint = f"({SKIP_HINTS[audience]})" if audience == "web" else f"or {SKIP_HINTS[audience]}"
            raise UserError(f"the prime has characters outside the model's vocabulary: {format_chars(missing)}; "
                            f"remove them {hint}")
        print(f"warning: dropping characters outside the vocabulary: {format_chars(missing)}", file=sys.stderr)
        prime = "".join(c for c in prime if c in vocab)
    return prime


def prime_indices(vocab: Vocab, prime: str, start: Optional[str] = None) -> np.ndarray:
    """Encode a cleaned prime (clean_prime); an empty prime becomes `start` (a collection's document
    separator: a new document begins), else a newline, the start the model knows best, or the
    vocabulary's first character where the text had no newline."""
    if not prime:
        prime = start if start and start in vocab else DEFAULT_START if DEFAULT_START in vocab else vocab.chars[0]
    return vocab.encode(prime).astype(np.int64)


@runtime_checkable
class DrawingStep(Step, Protocol):
    """A Step that can also draw and feed many characters per call in compiled code (native.NativeStep)."""

    def generate(self, last: Optional[np.ndarray], length: int, temperature: float,
                 uniforms: Optional[np.ndarray]) -> np.ndarray: ...


def generate_indices(predictor: Predictor, prime: np.ndarray, length: int, options: SamplingOptions,
                     num_samples: int = 1, rng: Optional[np.random.Generator] = None,
                     banned: Optional[int] = None) -> Iterator[np.ndarray]:
    """Warm the state on the prime, then yield (num_samples,) indices, one step at a time.

    The generation owns its Step (Predictor.start), so generations interleave freely. `banned`: an
    index never drawn (a --max-vocab run's unknown symbol): its logit is masked at every step.
    """
    rng = rng or np.random.default_rng()
    logits, state = predictor.feed(np.tile(prime, (num_samples, 1)), predictor.zero_state(num_samples))
    last = logits[:, -1]
    step = predictor.start(state, num_samples)
    if isinstance(step, DrawingStep) and not options.draws_in_python and banned is None:
        yield from _compiled(step, last, length, num_samples, options, rng)
        return
    step_function = predictor.step_function(step)
    for _ in range(length):
        if banned is not None:
            last = np.array(last, dtype=np.float64)  # a copy: a Step's logits buffer is its own
            last[:, banned] = -np.inf
        nxt = sample_next(last, options.temperature, options.top_k, options.top_p, rng, options.greedy)
        yield nxt
        last = step_function(nxt)


def _compiled(step: DrawingStep, last: np.ndarray, length: int, num_samples: int, options: SamplingOptions,
              rng: np.random.Generator, chunk: int = 32) -> Iterator[np.ndarray]:
    """generate_indices through compiled code, `chunk` characters per call (few enough to stream).

    The uniforms are drawn as sample_next draws them, one per row per step in order, so the
    same seed and logits give the same characters on either path.
    """
    for start in range(0, length, chunk):
        n = min(chunk, length - start)
        uniforms = None if options.greedy else rng.random((n, num_samples))
        yield from step.generate(last if start == 0 else None, n, options.temperature, uniforms)


def generate(predictor: Predictor, vocab: Vocab, prime: str, length: int, options: SamplingOptions,
             rng: Optional[np.random.Generator] = None, num_samples: int = 1, start: Optional[str] = None,
             banned: Optional[str] = None) -> List[str]:
    """num_samples texts, each the (cleaned) prime followed by `length` generated characters.
    `start`: what an empty prime becomes (prime_indices); `banned`: a character never drawn."""
    idx = prime_indices(vocab, prime, start)
    never = vocab.chars.index(banned) if banned and banned in vocab else None
    steps = list(generate_indices(predictor, idx, length, options, num_samples, rng, never))
    columns = np.stack(steps, axis=1) if steps else np.zeros((num_samples, 0), dtype=np.int64)  # (N, length)
    return [prime + vocab.decode(row) for row in columns]


def beam_search(predictor: Predictor, prime: np.ndarray, length: int, beam: int,
                banned: Optional[int] = None) -> np.ndarray:
    """The most likely continuation found keeping `beam` hypotheses, never `banned`; returns (length,) indices."""
    logits, state = predictor.feed(prime[None, :], predictor.zero_state(1))
    scores = np.zeros(1)
    sequences = np.zeros((1, 0), dtype=np.int64)
    last = logits[:, -1]
    for _ in range(length):
        total = scores[:, None] + log_softmax(last)          # (K, V)
        if banned is not None:
            total[:, banned] = -np.inf
        flat = np.argsort(-total, axis=None, kind="stable")[:beam]
        rows, chars = np.divmod(flat, total.shape[1])
        scores = total[rows, chars]
        sequences = np.concatenate([sequences[rows], chars[:, None]], axis=1)
        state = predictor.select(state, rows)
        logits, state = predictor.feed(chars[:, None], state)
        last = logits[:, -1]
    return sequences[0]

"""The Python API; the `sample` and `eval` commands are thin layers over it.

    model = charrnn.load("runs/shakespeare", impl="naive")     # quantize="int8": faster, slightly less exact
    print(model.sample("ROMEO:", 200, temperature=0.8, seed=1))
    for ch in model.stream("ROMEO:", 200): print(ch, end="", flush=True)
    print(model.evaluate(charrnn.read_text("valid.txt")).bpc)

A run trained with labels (`--label-by`) samples and scores under one of them: `label="dickinson"`
on every call (infer/labels.py checks it); `evaluate_by_label` scores a text under each.

Every option is checked here, where it enters, and a bad one raises `charrnn.UserError` (a
ValueError) with one line saying what is wrong; below this layer values are trusted.
"""
from __future__ import annotations

import dataclasses
import threading
from collections import OrderedDict
from pathlib import Path
from typing import Iterator, List, Optional, Tuple, Union

import numpy as np

from charrnn.checkpoint import load_run
from charrnn.config import DEVICES, IMPLS, QUANTIZE_MODES, WHICH, check_choice
from charrnn.data.vocab import Vocab
from charrnn.errors import UserError
from charrnn.infer.evaluate import Evaluation, evaluate_indices, to_model_indices
from charrnn.infer.labels import check_label
from charrnn.infer.predictor import Predictor
from charrnn.infer.sampling import (
    SamplingOptions,
    beam_search,
    clean_prime,
    count,
    generate,
    generate_indices,
    prime_indices,
    sampling_options,
)


class TrainedModel:
    """A trained run loaded into one engine, ready to sample and evaluate. Build it with `load`.

    `separator`: the document separator of a run trained on a collection (else None): an empty prime
    starts a new document, and `text.split(model.separator)[0]` is a whole one. `unknown`: a --max-vocab
    run's symbol for every dropped character (U+FFFD), never sampled (else None)."""

    separator: Optional[str] = None
    unknown: Optional[str] = None
    _banned: Optional[int] = None
    symbols_recorded = True  # False: an .onnx file exported before the separator and unknown symbol travelled in it
    quantize: Optional[str] = None
    LABEL_PREDICTORS = 8     # a labelled run keeps the Predictors of its last few labels (each prepares its weights)

    def __init__(self, run_dir: Path, impl: str, which: str, device: str, quantize: Optional[str]):
        from charrnn.data.dataset import read_record
        from charrnn.models import build_model

        self.run_dir = Path(run_dir)
        self.config, self.vocab, params = load_run(self.run_dir, which)
        self.separator, self.unknown = run_symbols(read_record(self.run_dir), self.vocab)
        self._banned = self.vocab.chars.index(self.unknown) if self.unknown else None
        self.impl = impl
        from charrnn.devices import resolve_device

        # None for the NumPy engine; a one-line UserError when torch or TensorFlow is missing
        engine_device = resolve_device(device, impl, cli=False)
        self.model = build_model(impl, self.config, params=params, device=engine_device,
                                 dtype="float32")  # what every engine trains in; float64 halves batch-1 speed
        self.quantize = quantize
        self._use_predictors()

    def _use_predictors(self) -> None:
        """An unlabelled run's one Predictor (int8: every engine steps through the same int8 step); a labelled
        run's are made per label, on first use (predictor_for)."""
        self.labels: Tuple[str, ...] = tuple(self.config.labels)
        self.predictor = None if self.labels else Predictor(self.model, self.quantize)
        self._label_predictors: "OrderedDict[int, Predictor]" = OrderedDict()
        self._predictors_lock = threading.Lock()

    def label_index(self, label: Optional[str], audience: str = "python") -> Optional[int]:
        """`label` checked against this run's labels: its index, or None for an unlabelled run given none."""
        return check_label(self.labels, label, audience)

    def predictor_for(self, label: Optional[int]) -> Predictor:
        """The Predictor for a label index (label_index), or the unlabelled run's for None; a labelled run
        keeps its last LABEL_PREDICTORS, so a server asked for many labels does not hold each one's weights."""
        if label is None:
            assert self.predictor is not None, "a labelled run is predicted under a label"
            return self.predictor
        with self._predictors_lock:
            predictor = self._label_predictors.pop(label, None) or Predictor(self.model, self.quantize, label)
            self._label_predictors[label] = predictor
            while len(self._label_predictors) > self.LABEL_PREDICTORS:
                self._label_predictors.popitem(last=False)
            return predictor

    def prime(self, prime: str = "", unknown: str = "error", audience: str = "python") -> str:
        """The prime as sampling uses it and prints it: unknown characters raise UserError,
        or are dropped with a warning on stderr when unknown='skip'. `audience`: see clean_prime.
        A --max-vocab run reads them as its unknown symbol, as training did."""
        if isinstance(prime, str):
            prime = self._as_read_in_training(prime)
        return clean_prime(self.vocab, prime, unknown, audience)

    def _as_read_in_training(self, text: str) -> str:
        """A --max-vocab run read every character outside its vocabulary as its unknown symbol; others: unchanged."""
        if not self.unknown:
            return text
        return "".join(c if c in self.vocab else self.unknown for c in text)

    def stream(self, prime: str = "", length: int = 500, temperature: Optional[float] = None,
               top_k: Optional[int] = None, top_p: Optional[float] = None, greedy: bool = False,
               seed: Optional[int] = None, unknown: str = "error", label: Optional[str] = None) -> Iterator[str]:
        """Yield `length` generated characters one at a time (the prime itself is not yielded).

        Arguments are checked here, before the first character, so a bad one raises at the
        call rather than in the middle of a loop that may already have printed the prime.
        `label`: a labelled run's label (required there, refused elsewhere).
        """
        options = sampling_options(temperature, top_k, top_p, greedy)
        length, rng, index = count("length", length, 0, False), _rng(seed), self.label_index(label)
        return self.stream_checked(self.prime(prime, unknown), length, options, rng, index)

    def stream_checked(self, prime: str, length: int, options: SamplingOptions,
                       rng: np.random.Generator, label: Optional[int] = None) -> Iterator[str]:
        """`stream` for options already validated (the CLI's door), a prime already cleaned and a label index."""
        steps = generate_indices(self.predictor_for(label), prime_indices(self.vocab, prime, self.separator), length,
                                 options, 1, rng, self._banned)
        return (self.vocab.chars[int(step[0])] for step in steps)

    def stream_batch_checked(self, prime: str, length: int, options: SamplingOptions, rng: np.random.Generator,
                             num_samples: int, label: Optional[int] = None) -> Iterator[str]:
        """`num_samples` samples drawn as one batch, as `sample_checked` draws them (so the same seed gives the
        same texts), step by step: each step a string of num_samples characters, one per sample."""
        steps = generate_indices(self.predictor_for(label), prime_indices(self.vocab, prime, self.separator), length,
                                 options, num_samples, rng, self._banned)
        chars = self.vocab.chars
        return ("".join(chars[int(i)] for i in step) for step in steps)

    def sample(self, prime: str = "", length: int = 500, temperature: Optional[float] = None,
               top_k: Optional[int] = None, top_p: Optional[float] = None, greedy: bool = False,
               seed: Optional[int] = None, num_samples: int = 1, unknown: str = "error",
               label: Optional[str] = None) -> Union[str, List[str]]:
        """The (cleaned) prime followed by `length` characters; a list of num_samples texts when num_samples > 1."""
        options = sampling_options(temperature, top_k, top_p, greedy)
        length, num_samples = count("length", length, 0, False), count("num_samples", num_samples, 1, False)
        index = self.label_index(label)
        texts = self.sample_checked(self.prime(prime, unknown), length, options, _rng(seed), num_samples, index)
        return texts[0] if num_samples == 1 else texts

    def sample_checked(self, prime: str, length: int, options: SamplingOptions, rng: np.random.Generator,
                       num_samples: int, label: Optional[int] = None) -> List[str]:
        """`sample` for options already validated, a prime already cleaned and a label index; always a list."""
        return generate(self.predictor_for(label), self.vocab, prime, length, options, rng, num_samples,
                        self.separator, self.unknown)

    def beam(self, prime: str = "", length: int = 100, beam: int = 5, unknown: str = "error",
             label: Optional[str] = None) -> str:
        """The (cleaned) prime followed by the most likely continuation that beam search finds."""
        beam, length = count("beam", beam, 1, False), count("length", length, 0, False)
        index = self.label_index(label)
        return self.beam_checked(self.prime(prime, unknown), length, beam, index)

    def beam_checked(self, prime: str, length: int, beam: int, label: Optional[int] = None) -> str:
        start = prime_indices(self.vocab, prime, self.separator)
        found = beam_search(self.predictor_for(label), start, length, beam, self._banned)
        return prime + self.vocab.decode(found)

    def evaluate(self, text: str, unknown: str = "error", label: Optional[str] = None) -> Evaluation:
        """Loss (nats/char), bpc and the number of predicted characters, the text read as one stream.

        Characters outside the model's vocabulary raise UserError, or with unknown="skip" are dropped
        first: the result's `.skipped` counts them and `.skipped_chars` lists them. A --max-vocab run
        reads them as its unknown symbol instead, as training did."""
        index = self.label_index(label)
        text_vocab, data = self._encoded(text)
        return self.evaluate_encoded(text_vocab, data, unknown, "the text", audience="python", label=index)

    def evaluate_by_label(self, text: str, unknown: str = "error") -> List[Tuple[str, Evaluation]]:
        """A labelled run's `evaluate` under each of its labels: (label, Evaluation) pairs, best fit first
        (lowest loss; ties in label order). UserError for a run trained without labels."""
        self._check_labelled("evaluate_by_label")
        text_vocab, data = self._encoded(text)
        return self.evaluate_encoded_by_label(text_vocab, data, unknown, "the text", audience="python")

    def _encoded(self, text: str) -> Tuple[Vocab, np.ndarray]:
        if not isinstance(text, str):
            raise UserError(f"the text must be a str, not {type(text).__name__}")
        text = self._as_read_in_training(text)
        text_vocab = Vocab.from_text(text)
        return text_vocab, text_vocab.encode(text)

    def _check_labelled(self, what: str) -> None:
        if not self.labels:
            raise UserError(f"{what}: this run was trained without labels; there is one loss (evaluate)")

    def evaluate_encoded(self, text_vocab: Vocab, data: np.ndarray, unknown: str = "error", what: str = "the text",
                         audience: str = "python", label: Optional[int] = None) -> Evaluation:
        """`evaluate` for a text encoded in its own vocabulary (a Corpus) and a label index; `what` names the text
        in errors."""
        indices, skipped, skipped_chars = to_model_indices(self.vocab, text_vocab, data, unknown, what, audience)
        result = evaluate_indices(self.predictor_for(label), indices)
        return dataclasses.replace(result, skipped=skipped, skipped_chars=skipped_chars)

    def evaluate_encoded_by_label(self, text_vocab: Vocab, data: np.ndarray, unknown: str = "error",
                                  what: str = "the text", audience: str = "python") -> List[Tuple[str, Evaluation]]:
        """`evaluate_by_label` for a text encoded in its own vocabulary, on a run known to be labelled."""
        indices, skipped, skipped_chars = to_model_indices(self.vocab, text_vocab, data, unknown, what, audience)
        scored = [(name, dataclasses.replace(evaluate_indices(self.predictor_for(index), indices), skipped=skipped,
                                             skipped_chars=skipped_chars))
                  for index, name in enumerate(self.labels)]
        return sorted(scored, key=lambda pair: pair[1].loss)  # stable: ties stay in label order

    def evaluate_indices(self, data: np.ndarray, label: Optional[str] = None) -> Evaluation:
        """As `evaluate`, for text already encoded with this model's vocabulary."""
        return evaluate_indices(self.predictor_for(self.label_index(label)), data)


def run_symbols(record: Optional[dict], vocab: Vocab) -> Tuple[Optional[str], Optional[str]]:
    """A run's (separator, unknown) from its data.json record: a collection's document separator, what an empty
    prime starts from, and --max-vocab's unknown symbol, never sampled, which characters outside the vocabulary
    read as. Each None where the run has none (one text; nothing dropped) or no record (a run older than data.json).
    The exports carry both (export/), so an .onnx file and the web page start and read text as the run does."""
    record = record or {}
    separator, unknown = record.get("doc_sep"), record.get("unknown")
    return (separator if separator in vocab else None), (unknown if unknown in vocab else None)


def _rng(seed) -> np.random.Generator:
    if seed is not None and (isinstance(seed, bool) or not isinstance(seed, (int, np.integer))):
        raise UserError(f"seed= {seed!r} must be a whole number or None")
    return np.random.default_rng(seed)


def load(run_dir, impl: str = "library", which: str = "latest", device: str = "cpu",
         quantize: Optional[str] = None) -> TrainedModel:
    """A trained run, loaded for sampling and evaluation.

    impl: the engine (any reads any run); which: "latest" or "best" weights; device: for the
    torch and TensorFlow engines; quantize="int8": layer weights in int8, run by the compiled step (CPU, no
    torch needed), and `evaluate` then reports the int8 model's loss, so its cost is one call away.
    """
    check_choice("impl", impl, IMPLS, cli=False)
    check_choice("which", which, WHICH, cli=False)
    check_choice("device", device, DEVICES, cli=False)
    if quantize is not None:
        check_choice("quantize", quantize, QUANTIZE_MODES, cli=False)
    return TrainedModel(Path(run_dir), impl=impl, which=which, device=device, quantize=quantize)


class OnnxTrainedModel(TrainedModel):
    """TrainedModel's sample, stream, beam and evaluate over a file made by `charrnn export --format onnx`.

    Its model (models/onnx_runtime.py) is a CharModel whose backend is "onnx", so the usual Predictor
    feeds it: the same knobs and the same seed rule as a run directory, with ONNX Runtime alone.
    """

    def __init__(self, path, threads: Optional[int] = None):  # not super().__init__, which reads a run directory
        from charrnn.models.onnx_runtime import OnnxCharModel

        self.run_dir = None
        self.path = Path(path)
        self.model = OnnxCharModel(path, threads=threads)
        self.config, self.vocab = self.model.config, self.model.vocab
        # the run's separator and unknown symbol, from the file's metadata (run_symbols, at export)
        self.separator, self.unknown = self.model.separator, self.model.unknown
        self._banned = self.vocab.chars.index(self.unknown) if self.unknown else None
        self.symbols_recorded = self.model.symbols_recorded
        self.impl = "onnx"
        self._use_predictors()


def load_onnx(path, threads: Optional[int] = None) -> OnnxTrainedModel:
    """`load` for an exported .onnx file: needs only onnxruntime (the `onnx` extra), not torch."""
    return OnnxTrainedModel(path, threads=threads)

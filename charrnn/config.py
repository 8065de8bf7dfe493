"""Frozen dataclass configs. CLI flags are derived from these fields, so help and defaults live here.

Each field's `metadata["help"]` is its flag's help text; `metadata["choices"]`
restricts it; `metadata["default_text"]` says in words what a default of None means
(`--help` shows it), and `metadata["metavar"]` names the flag's value in the usage.
Validation happens in `__post_init__` and raises UserError naming the flag, so a bad
value becomes a one-line CLI error.
"""
from __future__ import annotations

import argparse
import dataclasses
from collections import Counter
from dataclasses import dataclass, field, fields
from typing import Any, Optional, Sequence, Tuple

from charrnn.errors import UserError

CELLS = ("rnn", "gru", "lstm")
IMPLS = ("naive", "scratch", "library", "tf", "keras")
TF_IMPLS = ("tf", "keras")           # TensorFlow: optional (pip extra "tensorflow"), imported only by these
TORCH_IMPLS = ("library", "scratch")  # PyTorch: what bf16, --compile, torchrun, auto and a tied head train on
OPTIMIZERS = ("adagrad", "adam", "adamw")
DEVICES = ("auto", "cpu", "cuda", "mps")
SCHEDULES = ("epoch", "cosine")
WEIGHT_AVERAGES = ("none", "ema")  # what is validated and saved: the last step's weights, or their moving average
WHICH = ("latest", "best")          # model.safetensors or best.safetensors
QUANTIZE_MODES = ("int8",)
GATES = {"rnn": 1, "gru": 3, "lstm": 4}
LABEL_BY = ("folder", "file", "path")
HEAD_BIASES = ("unigram", "random")  # a new model's output bias: the text's log character frequencies, or drawn
MAX_LABELS = 4096                   # label.weight is (N, G*H): beyond this a per-label row is no longer small


def option(default: Any, help: str, choices: Optional[tuple] = None, **kw) -> Any:
    return field(default=default, metadata={"help": help, "choices": choices, **kw})


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _check(cond: bool, name: str, message: str) -> None:
    if not cond:
        raise UserError(f"{_flag(name)} {message}")


def check_choice(name: str, value: Any, choices: tuple, cli: bool = True) -> None:
    """One clear line for a value outside `choices`: `--name X` on the command line, `name=X` in Python."""
    if not isinstance(value, str) or value not in choices:
        where = _flag(name) if cli else f"{name}="
        raise UserError(f"{where} {value!r} is not one of {', '.join(choices)}")


def _check_choices(cfg: Any) -> None:
    for f in fields(cfg):
        choices = f.metadata.get("choices")
        value = getattr(cfg, f.name)
        if choices and value is not None and value not in choices:
            raise UserError(f"{_flag(f.name)} {value!r} is not one of {', '.join(choices)}")


@dataclass(frozen=True)
class ModelConfig:
    """The network: embedding (V->E; none with embed 0), `layers` recurrent cells of width H, linear head (H->V)."""

    vocab_size: int = option(0, "number of distinct characters (V); set from the corpus", cli=False)
    cell: str = option("lstm", "recurrent cell", CELLS)
    layers: int = option(2, "number of stacked recurrent layers (L)", metavar="N")
    hidden: int = option(256, "hidden units per layer (H)", metavar="H")
    embed: int = option(64, "character embedding size (E); 0: no embedding, one-hot characters straight into the "
                            "first layer (the seed's sections III-IV, Karpathy's char-rnn)", metavar="E")
    dropout: float = option(0.0, "dropout after each recurrent layer, training only", metavar="P")
    tied: bool = option(False, "the head's weights are the embedding table (Press & Wolf, 2017): a character's "
                               "output row is its input vector, so what the model learns of a character it reads "
                               "holds when it writes it (copying one seen a line before); needs --embed equal to "
                               "--hidden: either one given sets the other, neither sets --embed to --hidden; the "
                               "PyTorch engines train it",
                        omit_when_empty=True)
    labels: Tuple[str, ...] = option((), "the label names, in index order, of a run conditioned on a label per "
                                         "document (N); set from the data; () for an unlabelled run, whose "
                                         "config.json then has no labels key", cli=False, omit_when_empty=True)

    def __post_init__(self):
        _check_choices(self)
        _check_labels(self)
        _check(self.layers >= 1, "layers", f"{self.layers} must be at least 1")
        _check(self.hidden >= 1, "hidden", f"{self.hidden} must be at least 1")
        _check(self.embed >= 0, "embed", f"{self.embed} must be 0 (one-hot inputs) or more")
        _check(0.0 <= self.dropout < 1.0, "dropout", f"{self.dropout} must be in [0, 1)")
        _check(not self.tied or self.embed == self.hidden, "tied",
               f"needs --embed equal to --hidden (the head's rows are the embedding's), not {self.embed} and "
               f"{self.hidden}; drop --embed, or give both the same")
        _check(self.vocab_size >= 0, "vocab_size", "must be non-negative")

    @property
    def gates(self) -> int:
        return GATES[self.cell]


def _check_labels(cfg: ModelConfig) -> None:
    """Labels come from the data (folder or file names) or config.json (a JSON list): make a tuple and check it."""
    labels = cfg.labels
    if isinstance(labels, str) or not isinstance(labels, (list, tuple)):
        raise UserError(f"labels must be a list of label names, not {labels!r}")
    labels = tuple(labels)
    bad = [name for name in labels if not isinstance(name, str) or not name]
    if bad:
        raise UserError(f"labels must be non-empty strings, not {bad[0]!r}")
    repeated = sorted(name for name, count in Counter(labels).items() if count > 1)
    if repeated:
        raise UserError(f"labels must be distinct; {', '.join(repeated[:5])} appear more than once")
    if len(labels) > MAX_LABELS:
        raise UserError(f"{len(labels)} labels is more than the {MAX_LABELS} a run can hold; label by a coarser "
                        f"grouping (e.g. folder instead of file)")
    object.__setattr__(cfg, "labels", labels)


@dataclass(frozen=True)
class TrainConfig:
    """How to train. `max_iters` and `max_time` count the whole run, across resumes."""

    data: Tuple[str, ...] = option(
        ("tinyshakespeare",), "one or more UTF-8 text files or folders (a folder: every text file below it), "
        "or a corpus name: tinyshakespeare, pystdlib", nargs="+", default_text="tinyshakespeare", metavar="DATA")
    val_data: Optional[Tuple[str, ...]] = option(
        None, "files or folders to validate on, instead of holding out part of --data (--val-frac is then unused)",
        nargs="+", default_text="none", metavar="DATA")
    include: Tuple[str, ...] = option(
        (), "in folders, read only files matching this glob, e.g. '*.py' (repeatable); without '/' it matches a "
        "file or folder name at any depth, with '/' the path inside the folder", action="append",
        default_text="every file", metavar="GLOB")
    exclude: Tuple[str, ...] = option(
        (), "in folders, skip files and folders matching this glob, e.g. 'tests' (repeatable)", action="append",
        default_text="none", metavar="GLOB")
    doc_sep: str = option("\x1e", "character joining the documents of a collection, which the model learns as "
                          "their boundary: one character, an escape (\\f, \\x1e, U+241E) or none",
                          default_text="\\x1e, the ASCII record separator", metavar="C")
    max_vocab: Optional[int] = option(None, "keep the N-1 most frequent characters and map the others to U+FFFD, "
                                      "which sampling never emits (for texts with thousands of distinct characters)",
                                      default_text="no limit", metavar="N")
    label_by: Optional[str] = option(None, "condition the model on a label per document: folder (the first folder "
                                     "under the path given), file (each file), path (each path given); "
                                     "`sample --label` then writes in one label's style", LABEL_BY,
                                     default_text="no labels", omit_when_empty=True)
    out: str = option("runs/latest", "run directory for checkpoints, metrics.jsonl and loss.png", metavar="RUN_DIR")
    impl: str = option("library", "engine: naive (NumPy), scratch (PyTorch, own cells), library (torch.nn), "
                       "tf (TensorFlow, own cells: the seed's section IV), keras (Keras layers: its section V)", IMPLS)
    batch_size: int = option(32, "parallel streams per batch (B); the global batch under torchrun", metavar="B")
    seq_len: int = option(100, "characters per window (T): the truncated-BPTT length", metavar="T")
    optimizer: Optional[str] = option(None, "adagrad is the seed's", OPTIMIZERS,
                                      default_text="adagrad for --impl naive, adamw otherwise")
    lr: Optional[float] = option(None, "learning rate", default_text="0.1 for adagrad, 2e-3 for adam and adamw",
                                 metavar="LR")
    lr_decay: float = option(0.97, "--schedule epoch: lr = lr0 * lr_decay ** epoch (the seed's schedule)", metavar="D")
    schedule: str = option("epoch", "epoch: per-epoch decay; cosine: down to lr/10 at the end of the run's budget "
                                    "(a --resume with another budget continues the decay from where it is)", SCHEDULES)
    warmup_iters: int = option(0, "linear warm-up from lr/N to --lr over the first N iterations (either schedule); "
                                  "a cosine starts where it ends", metavar="N")
    weight_decay: float = option(0.0, "decoupled weight decay (adamw)", metavar="W")
    weight_average: str = option("none", "ema validates and saves a moving average of the weights over about one "
                                 "validation interval of steps instead of the last step's (steadier where a small "
                                 "text is read many times; --preset auto uses it there); training goes on from the "
                                 "last step's", WEIGHT_AVERAGES)
    grad_clip: float = option(5.0, "clip the global gradient norm to this; 0 turns clipping off", metavar="C")
    epochs: Optional[float] = option(None, "stop after this many epochs (whole run)", metavar="E",
                                     default_text="10 when neither --max-iters nor --max-time is given")
    max_iters: Optional[int] = option(None, "stop at this iteration, counted over the whole run (across --resume)",
                                      metavar="N", default_text="no limit")
    max_time: Optional[float] = option(None, "stop after this many seconds of training, counted over the whole run "
                                       "(across --resume)", metavar="SECONDS", default_text="no limit")
    eval_every: int = option(200, "validate and checkpoint every N iterations (and at the end)", metavar="N")
    patience: Optional[int] = option(None, "early stopping: stop when the validation loss has not improved for N "
                                           "evaluations in a row (best.safetensors keeps the best)", metavar="N",
                                     default_text="never")
    checkpoint_every: Optional[int] = option(None, "checkpoint every N iterations without validating", metavar="N",
                                             default_text="at each evaluation")
    val_frac: float = option(0.1, "fraction held out for validation: whole documents of a collection (by a hash of "
                                  "their path), or the end of a single text", metavar="F")
    val_chars: Optional[int] = option(None, "validate during training on the first N characters of the validation "
                                            "split only, so that a large one costs little of the budget "
                                            "(`charrnn eval` still reads all of it)", metavar="N",
                                      default_text="all of it")
    seed: int = option(1337, "random seed for initialisation, dropout and sampling", metavar="S")
    device: str = option("auto", "auto picks cuda, then mps, then cpu (tf, keras: a GPU TensorFlow sees, else cpu)",
                         DEVICES)
    bf16: bool = option(False, "bfloat16 autocast while training (torch engines on CUDA or a CPU; fast only where the "
                                  "hardware has bfloat16 units); validation and the saved weights stay float32")
    compile: bool = option(False, "compile the model: TorchScript for scratch's time loop, torch.compile for library "
                                  "(tf and keras always run a compiled tf.function)")
    log_every: int = option(10, "write a metrics row / log line every N iterations", metavar="N")
    sample_every: int = option(0, "print a short sample every N iterations (0: never)", metavar="N")
    head_bias: Optional[str] = option(
        "unigram", "a new model's output bias: unigram starts it at the training text's log character frequencies, "
        "so the first steps already predict how common each character is (a large alphabet spends much of a short "
        "run learning that otherwise); random draws it like every other weight (torch.nn's scheme)", HEAD_BIASES)
    init_from: Optional[str] = option(None, "start from the weights of another run directory (fine-tuning)",
                                      metavar="RUN_DIR", default_text="none: a new model")
    resume: bool = option(False, "continue the run in --out from its latest checkpoint")
    auto: Optional[dict] = option(None, "what --preset auto chose and why (config.json only)", cli=False)

    def __post_init__(self):
        _check_choices(self)
        from charrnn.data.documents import parse_separator  # lazily: the data layer imports numpy

        for name in ("data", "val_data", "include", "exclude"):  # a str (an older run's config.json) or a list
            value = getattr(self, name)
            if value is not None:
                value = (value,) if isinstance(value, str) else tuple(value)
                _check(all(isinstance(v, str) and v for v in value), name, f"{list(value)} must be non-empty strings")
                object.__setattr__(self, name, value)
        _check(len(self.data) >= 1, "data", "needs at least one path")
        _check(self.val_data is None or len(self.val_data) >= 1, "val_data", "needs at least one path")
        _check(not (self.label_by and self.val_data), "label_by",
               "holds out documents of every label itself; drop --val-data")
        object.__setattr__(self, "doc_sep", parse_separator(self.doc_sep))
        _check(self.max_vocab is None or self.max_vocab >= 3, "max_vocab", f"{self.max_vocab} must be at least 3")
        for name in ("batch_size", "seq_len", "eval_every", "log_every"):
            _check(getattr(self, name) >= 1, name, f"{getattr(self, name)} must be at least 1")
        _check(self.lr is None or self.lr > 0, "lr", f"{self.lr} must be positive")
        _check(0 < self.lr_decay <= 1, "lr_decay", f"{self.lr_decay} must be in (0, 1]")
        _check(self.grad_clip >= 0, "grad_clip", f"{self.grad_clip} must be non-negative")
        _check(self.weight_decay >= 0, "weight_decay", "must be non-negative")
        _check(self.warmup_iters >= 0, "warmup_iters", "must be non-negative")
        _check(self.epochs is None or self.epochs > 0, "epochs", f"{self.epochs} must be positive")
        _check(self.max_iters is None or self.max_iters >= 0, "max_iters", "must be non-negative")
        _check(self.max_time is None or self.max_time > 0, "max_time", "must be positive")
        _check(self.checkpoint_every is None or self.checkpoint_every >= 1, "checkpoint_every", "must be at least 1")
        _check(self.patience is None or self.patience >= 1, "patience", f"{self.patience} must be at least 1")
        _check(self.val_chars is None or self.val_chars >= 2, "val_chars", f"{self.val_chars} must be at least 2")
        _check(0 <= self.val_frac < 1, "val_frac", f"{self.val_frac} must be in [0, 1)")
        _check(self.sample_every >= 0, "sample_every", "must be non-negative")

    @property
    def resolved_optimizer(self) -> str:
        return self.optimizer or ("adagrad" if self.impl == "naive" else "adamw")

    @property
    def resolved_lr(self) -> float:
        return self.lr if self.lr is not None else (0.1 if self.resolved_optimizer == "adagrad" else 2e-3)

    @property
    def resolved_epochs(self) -> Optional[float]:
        if self.epochs is None and self.max_iters is None and self.max_time is None:
            return 10.0
        return self.epochs


def to_dict(cfg: Any) -> dict:
    """The config as JSON-ready values. A field marked `omit_when_empty` is left out while empty, so files of
    runs that do not use it (an unlabelled run's config.json) stay byte for byte what they were before it."""
    out = dataclasses.asdict(cfg)
    for f in fields(cfg):
        if f.metadata.get("omit_when_empty") and not out[f.name]:
            del out[f.name]
    return out


def from_dict(cls, data: dict, where: str):
    """Build a config from JSON; unknown keys are errors (a typo must not be silently ignored)."""
    if not isinstance(data, dict):
        raise UserError(f"{where}: expected a JSON object")
    known = {f.name for f in fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise UserError(f"{where}: unknown settings {', '.join(unknown)}; the file is damaged or from a newer charrnn")
    try:
        return cls(**data)
    except TypeError as e:
        raise UserError(f"{where}: {e}") from None


# ---- command-line flags, derived from the fields above ------------------------------------------

def add_config_flags(parser, cls, skip: Sequence[str] = ()) -> None:
    """One flag per dataclass field; defaults are SUPPRESSed so we can tell which flags were given.

    The help ends with the field's real default (or `default_text`, what a default of None means);
    a field with choices lists them, e.g. `--impl {naive,scratch,library}`.
    """
    hints = {f.name: f.type for f in dataclasses.fields(cls)}
    for f in dataclasses.fields(cls):
        if f.name in skip or f.metadata.get("cli") is False:
            continue
        flag = "--" + f.name.replace("_", "-")
        hint = str(hints[f.name])
        default = f.metadata.get("default_text") or f.default
        help_text = f.metadata["help"] if "bool" in hint else f"{f.metadata['help']} (default: {default})"
        kwargs = dict(dest=f.name, default=argparse.SUPPRESS, help=help_text)
        if "bool" in hint:
            parser.add_argument(flag, action="store_true", **kwargs)
            continue
        if f.metadata.get("choices"):
            kwargs["choices"] = f.metadata["choices"]  # shown as {a,b,c} in place of a metavar
        else:
            kwargs["metavar"] = f.metadata.get("metavar") or f.name.upper()
        for key in ("nargs", "action"):  # several values (--data A B) or a repeatable flag (--include P)
            if f.metadata.get(key):
                kwargs[key] = f.metadata[key]
        kind = int if "int" in hint else float if "float" in hint else str
        parser.add_argument(flag, type=kind, **kwargs)


def add_collection_flags(parser: argparse.ArgumentParser) -> None:
    """--include and --exclude for the commands that read DATA (train gets them from TrainConfig)."""
    for f in dataclasses.fields(TrainConfig):
        if f.name in ("include", "exclude"):
            parser.add_argument("--" + f.name, action="append", default=[], metavar="GLOB",
                                help=f"{f.metadata['help']} (default: {f.metadata['default_text']})")

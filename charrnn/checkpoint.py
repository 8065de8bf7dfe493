"""The run directory: one format shared by every engine.

    config.json        {"format": ..., "model": ModelConfig, "train": TrainConfig}
    vocab.json         JSON array of the characters in index order
    model.safetensors  latest weights (canonical names, see models/base.py)
    best.safetensors   weights with the lowest validation loss so far
    resume.safetensors everything --resume needs: weights, optimizer, carried
                       state and RNG, with the trainer's counters as JSON metadata
    data.json          what was read: files, sha256, separator, split (data/dataset.py)
    metrics.jsonl, loss.png

Weights are safetensors and metadata is JSON: loading a checkpoint never runs
code (no pickle). Every file is written atomically (atomic.py), and
resume.safetensors is self-contained, so a kill between two writes can never
pair the weights of one iteration with the optimizer of another.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np

from charrnn.config import ModelConfig, TrainConfig, from_dict, to_dict
from charrnn.data.vocab import Vocab
from charrnn.errors import UserError
from charrnn.models.base import check_parameters, state_size
from charrnn.storage import write_bytes_atomic, write_text_atomic

FORMAT = "charrnn-run/1"
PROGRESS_COUNTS = ("iteration", "epoch", "window")       # non-negative integers
OPTIONAL_COUNTS = ("evals_since_best",)                   # the same, absent from older checkpoints
PLAN_COUNTS = ("plan_iters", "plan_eval_every",          # null, or positive integers (train/replan.py's plan)
               "plan_best_at", "plan_annealed_at")
PROGRESS_VALUES = ("elapsed", "best_val", "last_val", "lr", "lr0",  # numbers (all but elapsed may be null)
                   "plan_chars_per_s", "plan_eval_seconds")
PROGRESS_LISTS = {"budget": 3, "cosine_from": 2}          # null, or lists of numbers (or nulls)
PROGRESS_SERIES = ("plan_recent_vals",)                    # null, or lists of finite numbers of any length
WEIGHTS = {"latest": "model.safetensors", "best": "best.safetensors"}
RESUME = "resume.safetensors"


def _st():
    import safetensors.numpy  # imported lazily: keeps `charrnn info` fast

    return safetensors.numpy


def save_run_config(run_dir: Path, model: ModelConfig, train: Optional[TrainConfig]) -> None:
    payload = {"format": FORMAT, "model": to_dict(model), "train": to_dict(train) if train else None}
    write_text_atomic(Path(run_dir) / "config.json", json.dumps(payload, indent=2))


def load_run_config(run_dir: Path) -> Tuple[ModelConfig, Optional[dict]]:
    """The model config and the raw training settings (a dict, so old keys can be reconciled)."""
    path = Path(run_dir) / "config.json"
    if not Path(run_dir).is_dir():
        raise UserError(f"{run_dir} is not a directory; give a run directory made by 'charrnn train'")
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise UserError(f"{path} is missing; is {run_dir} a charrnn run directory?") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise UserError(f"{path} is not valid JSON ({e}); the run directory is damaged") from None
    if not isinstance(data, dict):
        raise UserError(f"{path} must hold a JSON object; the run directory is damaged")
    if data.get("format") != FORMAT or not isinstance(data.get("model"), dict):
        raise UserError(f"{path} is not a {FORMAT} run configuration (format {data.get('format')!r}); "
                        "the run directory is damaged or from another program")
    model = from_dict(ModelConfig, data["model"], str(path))
    if model.vocab_size < 1:
        raise UserError(f"{path}: vocab_size must be positive; the run directory is damaged")
    train = data.get("train")
    return model, train if isinstance(train, dict) else None


def load_vocab(run_dir: Path, model: ModelConfig) -> Vocab:
    vocab = Vocab.load(Path(run_dir) / "vocab.json")
    if len(vocab) != model.vocab_size:
        raise UserError(f"{run_dir}/vocab.json has {len(vocab)} characters but config.json says {model.vocab_size}; "
                        f"the run directory is mixed up")
    return vocab


def encode_safetensors(arrays: Dict[str, np.ndarray], metadata: Optional[dict] = None) -> bytes:
    arrays = {k: np.ascontiguousarray(v) for k, v in arrays.items()}
    meta = {k: json.dumps(v) for k, v in (metadata or {}).items()}
    return _st().save(arrays, metadata=meta)


def write_safetensors(path: Path, arrays: Dict[str, np.ndarray], metadata: Optional[dict] = None) -> None:
    write_bytes_atomic(Path(path), encode_safetensors(arrays, metadata))


def read_safetensors(path: Path) -> Tuple[Dict[str, np.ndarray], dict]:
    """Tensors and JSON metadata; any damage becomes a one-line UserError."""
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise UserError(f"{path} is missing; train first, or pick another checkpoint") from None
    except OSError as e:
        raise UserError(f"cannot read {path} ({e.strerror})") from None
    try:
        arrays = _st().load(data)
        meta = {k: json.loads(v) for k, v in (_metadata(path) or {}).items()}
    except Exception as e:  # safetensors raises several types for damaged files
        raise UserError(f"{path} is not a readable safetensors file ({type(e).__name__}); it is damaged or not a "
                        f"charrnn checkpoint") from None
    return arrays, meta


def _metadata(path: Path) -> Optional[dict]:
    from safetensors import safe_open

    with safe_open(str(path), framework="numpy") as f:
        return f.metadata()


def save_weights(path: Path, params: Dict[str, np.ndarray], info: Optional[dict] = None) -> None:
    write_safetensors(path, {k: np.asarray(v, dtype=np.float32) for k, v in params.items()}, {"charrnn": info or {}})


def load_weights(path: Path, model: ModelConfig) -> Dict[str, np.ndarray]:
    arrays, _ = read_safetensors(path)
    check_parameters(model, arrays, str(path))
    return arrays


def weights_path(run_dir: Path, which: str) -> Path:
    if which not in WEIGHTS:
        raise UserError(f"--which {which!r} is not one of {', '.join(WEIGHTS)}")
    return Path(run_dir) / WEIGHTS[which]


def load_run(run_dir: Path, which: str = "latest") -> Tuple[ModelConfig, Vocab, Dict[str, np.ndarray]]:
    """Everything needed to run a trained model: config, vocabulary, weights (validated together)."""
    model, _ = load_run_config(run_dir)
    vocab = load_vocab(run_dir, model)
    return model, vocab, load_weights(weights_path(run_dir, which), model)


@dataclass
class ResumePoint:
    """Everything --resume needs, as resume.safetensors holds it: one self-contained file, so a
    kill between two writes can never pair the weights of one iteration with the optimizer of another."""

    params: Dict[str, np.ndarray]
    optimizer: Tuple[Dict[str, np.ndarray], dict]   # engine-specific arrays and JSON metadata
    rng: Tuple[Dict[str, np.ndarray], dict]
    state: List[np.ndarray]                          # the carried state of every stream, (L, B, H) each
    progress: dict                                   # the trainer's counters (train.loop.Progress)
    optimizer_name: str
    average: Optional[Tuple[Dict[str, np.ndarray], dict]] = None   # --weight-average ema: the average and its
    #                                                                 counters (train/averaging.py)


_SECTIONS = ("param/", "optim/", "rng/", "state/", "average/")

# Which engines can continue which runs (--resume --impl X): those that keep the optimizer's slots in one format.
# Tried pair by pair (tests/test_seams.py): within a group the resumed weights equal the writer's own resume to
# float32 rounding (naive <-> tf: the naive engine's slots under canonical names; scratch <-> library: torch.optim's
# state of the same parameters); across groups the slots cannot be carried (torch.optim's per-tensor state, Keras'
# summed bias), so the resume is refused.
RESUME_GROUPS = (("naive", "tf"), ("scratch", "library"), ("keras",))


def check_engine_can_resume(written_by: str, impl: str, run_dir: Path) -> None:
    """Refuse, in one line, to continue a run written by `written_by` with `--impl impl` (RESUME_GROUPS)."""
    group = next((g for g in RESUME_GROUPS if written_by in g), (written_by,))
    if impl in group:
        return
    described = "; ".join(" and ".join(g) + (" continue each other's runs" if len(g) > 1 else " only its own")
                          for g in RESUME_GROUPS)
    raise UserError(f"--impl {impl} cannot continue the {written_by} run in {run_dir}: its optimizer state is in "
                    f"another engine's format ({described}); resume with --impl {' or '.join(group)}, or start a new "
                    f"run from its weights with --init-from {run_dir}")


def write_resume(run_dir: Path, point: ResumePoint) -> None:
    arrays = {f"param/{k}": v for k, v in point.params.items()}
    arrays.update({f"optim/{k}": v for k, v in point.optimizer[0].items()})
    arrays.update({f"rng/{k}": v for k, v in point.rng[0].items()})
    arrays.update({f"state/{i}": s for i, s in enumerate(point.state)})
    meta = {"progress": point.progress, "optimizer": point.optimizer[1], "rng": point.rng[1],
            "optimizer_name": point.optimizer_name}
    if point.average is not None:
        arrays.update({f"average/{k}": v for k, v in point.average[0].items()})
        meta["average"] = point.average[1]
    write_safetensors(Path(run_dir) / RESUME, arrays, meta)


def read_resume(run_dir: Path, model: ModelConfig) -> ResumePoint:
    """resume.safetensors, checked against `model` (check_resume) before any of it is used."""
    path = Path(run_dir) / RESUME
    arrays, meta = read_safetensors(path)
    check_resume(arrays, meta, model, path)
    part = {section: {k[len(section):]: v for k, v in arrays.items() if k.startswith(section)} for section in _SECTIONS}
    return ResumePoint(params=part["param/"], optimizer=(part["optim/"], meta.get("optimizer")),
                       rng=(part["rng/"], meta.get("rng")),
                       state=[part["state/"][str(i)] for i in range(len(part["state/"]))],
                       progress=meta["progress"], optimizer_name=meta.get("optimizer_name"),
                       average=(part["average/"], meta["average"]) if part["average/"] else None)


def check_resume(arrays: Dict[str, np.ndarray], meta: dict, model: ModelConfig, path: Path) -> None:
    """Raise UserError unless resume.safetensors fits `model` before any of it is used.

    Checks the weights (names, shapes, float, finite), that the optimizer and carried
    state are finite floats, the states' (L, B, H) shapes, and the counters' types.
    The engine-specific layout of the optimizer and RNG is left to the learner.
    """
    where = str(path)
    check_parameters(model, {k[len("param/"):]: v for k, v in arrays.items() if k.startswith("param/")}, where)
    for key, value in arrays.items():
        if key.startswith(("optim/", "state/")) and (value.dtype.kind != "f" or not np.all(np.isfinite(value))):
            raise UserError(f"{where}: {key} is not finite floating point; the checkpoint is damaged")
    states = sorted(k for k in arrays if k.startswith("state/"))
    if states != [f"state/{i}" for i in range(state_size(model.cell))]:
        raise UserError(f"{where} carries states {states or 'none'}, not those of a {model.cell}; the checkpoint is "
                        f"damaged")
    for key in states:
        shape = arrays[key].shape
        if len(shape) != 3 or shape[0] != model.layers or shape[2] != model.hidden or shape[1] < 1:
            raise UserError(f"{where}: {key} has shape {list(shape)}, expected [{model.layers}, B, {model.hidden}]; "
                            "the checkpoint is damaged or from another run")
    _check_progress(meta.get("progress"), where)
    _check_average({k[len("average/"):]: v for k, v in arrays.items() if k.startswith("average/")},
                   meta.get("average"), model, meta["progress"]["iteration"], where)


def _check_average(average: Dict[str, np.ndarray], counters, model: ModelConfig, iteration: int, where: str) -> None:
    """--weight-average ema's average: weights like the model's and its counters (train/averaging.py), both or
    neither (a file that has lost either is damaged, not a run without an average), its last sample not after
    the checkpoint's iteration."""
    if not average and counters is None:
        return
    if not average:
        raise UserError(f"{where}: its weight average is missing (its counters are there); the checkpoint is damaged")
    check_parameters(model, average, f"{where} (its weight average)")
    at, mass = (counters.get("at"), counters.get("mass")) if isinstance(counters, dict) else (None, None)
    if (isinstance(at, bool) or not isinstance(at, int) or not 0 <= at <= iteration or not _is_number(mass)
            or not 0 < mass <= 1 or set(counters) != {"at", "mass"}):
        raise UserError(f"{where}: its weight average's counters are {counters!r}, not an iteration and a mass in "
                        "(0, 1]; the checkpoint is damaged")


def _check_progress(progress, where: str) -> None:
    """The counters Trainer.Progress is built from (unknown keys are left to it to refuse)."""
    if not isinstance(progress, dict) or not set(PROGRESS_COUNTS) <= set(progress):
        raise UserError(f"{where} lacks the trainer's counters; it is damaged or from another program")
    for key in (*PROGRESS_COUNTS, *(k for k in OPTIONAL_COUNTS if k in progress)):
        value = progress[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise UserError(f"{where}: progress {key} is {value!r}, not a count; the checkpoint is damaged")
    for key in (k for k in PLAN_COUNTS if progress.get(k) is not None):
        value = progress[key]
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise UserError(f"{where}: progress {key} is {value!r}, not a positive count; the checkpoint is damaged")
    for key in (k for k in PROGRESS_VALUES if k in progress):
        value = progress[key]
        number = isinstance(value, (int, float)) and not isinstance(value, bool) and not math.isnan(value)
        if not (number or (value is None and key != "elapsed")) or (key == "elapsed" and not 0 <= value < math.inf):
            raise UserError(f"{where}: progress {key} is {value!r}, not a number; the checkpoint is damaged")
    for key, size in PROGRESS_LISTS.items():
        value = progress.get(key)
        if value is not None and not (isinstance(value, list) and len(value) == size
                                      and all(v is None or _is_number(v) for v in value)):
            raise UserError(f"{where}: progress {key} is {value!r}, not a list of {size} numbers; the checkpoint is "
                            f"damaged")
    for key in PROGRESS_SERIES:
        value = progress.get(key)
        if value is not None and not (isinstance(value, list) and all(_is_number(v) for v in value)):
            raise UserError(f"{where}: progress {key} is {value!r}, not a list of numbers; the checkpoint is damaged")


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)

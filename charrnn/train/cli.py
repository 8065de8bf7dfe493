"""`charrnn train`: turn flags into configs, build the pieces, run the Trainer.

Flag precedence: explicit flags > --preset > defaults. With --resume the run's
saved settings replace the defaults; its model shape cannot change.

Under torchrun (RANK, WORLD_SIZE, LOCAL_RANK in the environment) every process
runs this same command: --batch-size is the global batch, each process trains
its contiguous share of the streams through DistributedDataParallel, and only
rank 0 prints progress and writes the run directory.
"""
from __future__ import annotations

import dataclasses
import itertools
import math
import os
import signal
import sys
from pathlib import Path

import numpy as np

from charrnn.checkpoint import RESUME, check_engine_can_resume, load_run, load_run_config, save_run_config
from charrnn.config import GATES, TF_IMPLS, TORCH_IMPLS, ModelConfig, TrainConfig, from_dict
from charrnn.data.batching import first_of_each_label, make_streams, validation_streams
from charrnn.devices import resolve_device
from charrnn.errors import UserError, checkpoint_write_error
from charrnn.train.auto import check_usable as check_auto_usable
from charrnn.train.distributed import world_from_env
from charrnn.train.presets import AUTO_PRESETS, preset_values

MODEL_KEYS = {f.name for f in dataclasses.fields(ModelConfig)}
TRAIN_KEYS = {f.name for f in dataclasses.fields(TrainConfig)}


class Announcements:
    """What `train` says before it trains, held until every check has passed: a refused command prints its
    one error line and nothing else, as it writes nothing (check, then act). Under torchrun rank 0 speaks."""

    def __init__(self, speak: bool = True):
        self.speak, self.lines = speak, []

    def say(self, text: str, warning: bool = False) -> None:
        self.lines.append((text, warning))

    def flush(self) -> None:
        for text, warning in self.lines if self.speak else ():
            print(text, file=sys.stderr if warning else sys.stdout, flush=True)
        self.lines = []


def build_configs(given: dict, notes: Announcements | None = None) -> tuple[TrainConfig, dict]:
    """Resolve TrainConfig and the model flags (a dict; vocab_size comes from the data)."""
    values = preset_values(given.pop("preset", None))
    values.update(given)
    out = Path(values.get("out", TrainConfig.out))
    if values.get("resume"):
        return _resume_configs(out, given, notes)
    if values.get("init_from"):
        if given.get("head_bias") is not None:
            raise UserError(f"--head-bias sets a new model's first weights, but --init-from starts from "
                            f"{values['init_from']}'s; drop one of them")
        values["head_bias"] = None   # config.json: the weights came from the other run
    elif values.get("tied") and "embed" not in given:
        values["embed"] = values.get("hidden", ModelConfig.hidden)   # --tied alone: the default width embeds
    train = from_dict(TrainConfig, {k: v for k, v in values.items() if k in TRAIN_KEYS}, "settings")
    model = {k: v for k, v in values.items() if k in MODEL_KEYS}
    _check_engine_trains(train.impl, model)
    return train, model


def _tied_width(given: dict) -> None:
    """--tied with one of --embed and --hidden gives the other: a tied model is as wide as its embedding, so one of
    them is the width the user chose (and `--preset auto` then keeps it, as it keeps a given --hidden)."""
    width = given.get("hidden", given.get("embed"))
    if given.get("tied") and ("embed" in given) != ("hidden" in given) and width:   # --embed 0: no table, no width
        given.setdefault("hidden", width)
        given.setdefault("embed", width)


def _check_engine_trains(impl: str, model_flags: dict) -> None:
    """A tied head is trained by the PyTorch engines, which hold one weight for both; the others would train two.
    Every engine runs a tied run's checkpoint (it holds the head as a copy of the embedding)."""
    if model_flags.get("tied") and impl not in TORCH_IMPLS:
        raise UserError(f"--impl {impl} cannot train a tied head (--tied, or a run trained with it); "
                        "train it with --impl library or scratch")


def _resume_configs(out: Path, given: dict, notes: Announcements | None) -> tuple[TrainConfig, dict]:
    """--resume: the run's saved settings, with the flags given on top (checked against what can change)."""
    saved_model, saved_train = load_run_config(out)
    for key in sorted(MODEL_KEYS - {"vocab_size"}):   # a set: sorted, so the same flag is named each run
        if key in given and given[key] != getattr(saved_model, key):
            raise UserError(f"--{key.replace('_', '-')} {given[key]} differs from the run being resumed "
                            f"({getattr(saved_model, key)}); drop the flag or start a new run")
    base = {k: v for k, v in (saved_train or {}).items() if k in TRAIN_KEYS}
    if given.get("init_from") is not None and given["init_from"] != base.get("init_from"):
        raise UserError(f"--init-from starts a new run from another run's weights, but --resume continues the run "
                        f"in {out} from its own; drop one of them")
    began_with = base.get("head_bias", None if base.get("init_from") else "random")   # a run from before the flag
    if given.get("head_bias") is not None and given["head_bias"] != began_with:
        began = (f"--head-bias {began_with}" if began_with else f"--init-from {base.get('init_from')}")
        raise UserError(f"--head-bias sets a new model's first weights; the run in {out} keeps its own on --resume "
                        f"(it began with {began}); drop the flag")
    if given.get("max_time") is not None and given["max_time"] == (base.get("auto") or {}).get("max_time_given"):
        given["max_time"] = base["max_time"]  # auto's run, resumed with its --max-time: less the probe, as saved
    if base:  # the run keeps its optimizer whichever engine continues it (the default depends on --impl)
        saved = from_dict(TrainConfig, base, str(out / "config.json"))
        base["optimizer"] = saved.resolved_optimizer
        if "impl" in given:
            check_engine_can_resume(saved.impl, given["impl"], out)
        if given.get("optimizer", saved.resolved_optimizer) != saved.resolved_optimizer:
            raise UserError(f"the run in {out} was trained with --optimizer {saved.resolved_optimizer}, not "
                            f"{given['optimizer']} (its optimizer state is {saved.resolved_optimizer}'s); resume it "
                            "without --optimizer, or start a new run from its weights with --init-from")
    _check_resume_changes(base, {k: v for k, v in given.items() if k in TRAIN_KEYS}, notes)
    base["head_bias"] = began_with
    base.update({k: v for k, v in given.items() if k in TRAIN_KEYS})
    train = from_dict(TrainConfig, base, "settings")   # an engine that cannot tie cannot continue a tied run:
    return train, dataclasses.asdict(saved_model)      # check_engine_can_resume refuses it (other engine's format)


# Settings that place the carried state and the window counter in the text: changing one on --resume would
# continue from a state that belongs to other columns of other streams.
LAYOUT_KEYS = ("batch_size", "seq_len", "val_frac")
QUIET_KEYS = ("resume", "out", "log_every", "eval_every", "checkpoint_every", "sample_every")


def _check_resume_changes(saved: dict, given: dict, notes: Announcements | None) -> None:
    """Refuse a changed data layout; say which other settings now differ from the run's (they are in force)."""
    changed = {k: (saved[k], v) for k, v in given.items() if k in saved and saved[k] != v and k not in QUIET_KEYS}
    for key in LAYOUT_KEYS:
        if key in changed:
            old, new = changed[key]
            flag = "--" + key.replace("_", "-")
            raise UserError(f"{flag} {new} differs from the run being resumed ({old}): its carried state and position "
                            f"belong to that layout; resume with {flag} {old}, or start a new run with --init-from")
    if changed and notes is not None:
        shown = lambda v: round(v, 4) if isinstance(v, float) else v   # noqa: E731  (a budget less auto's probe)
        described = ", ".join(f"--{k.replace('_', '-')} {shown(new)} (was {shown(old)})"
                              for k, (old, new) in sorted(changed.items()))
        notes.say(f"resume: these settings differ from the run's and are in force from now on: {described}")


def _say_what_fine_tuning_adds(parent_vocab, vocab, parent_labels, labels, notes: Announcements) -> None:
    """A fine-tune onto characters or labels the --init-from model lacks grows it (train/finetune.py): say how."""
    from charrnn.data.vocab import format_chars

    added = vocab.chars[len(parent_vocab):]
    if added:
        start = ("its U+FFFD rows" if "\ufffd" in parent_vocab
                 else "a new model's, each output bias at the character's frequency in this text")
        notes.say(f"fine-tune: {len(added)} character{'s' if len(added) != 1 else ''} the --init-from model never "
                  f"saw added to its vocabulary ({len(parent_vocab)} -> {len(vocab)}): {format_chars(added)}; their "
                  f"weights start as {start}")
    new_labels = labels[len(parent_labels):]
    if new_labels and parent_labels:
        notes.say(f"fine-tune: new label{'s' if len(new_labels) != 1 else ''} {', '.join(new_labels)} added to the "
                  f"--init-from model's {', '.join(parent_labels)}")


def run_train(args: dict) -> int:
    given = {k: v for k, v in args.items() if k not in ("command", "handler", "overwrite")}
    world = world_from_env()
    auto = given.get("preset") in AUTO_PRESETS
    if auto:
        check_auto_usable({**preset_values(given["preset"]), **given}, world.distributed)
    _tied_width(given)
    explicit = set(given)
    notes = Announcements(speak=world.is_main)   # said once every check has passed (_train)
    train_cfg, model_flags = build_configs(given, notes)
    out = Path(train_cfg.out)
    _check_flags(train_cfg, world, out, bool(args.get("overwrite")))
    device = resolve_device(train_cfg.device, train_cfg.impl, world.local_rank if world.distributed else None)
    train_cfg = _check_bf16(train_cfg, model_flags.get("cell", ModelConfig.cell), device, "bf16" in explicit, notes)
    model_cfg, init_params, data = _load_text(train_cfg, model_flags, out, notes)
    vocab, train_data, val_data = data.vocab, data.train, data.val
    train_segments, val_segments = data.segments or (None, None)
    if auto and not train_cfg.resume:  # on --resume the run keeps what auto chose for it (config.json)
        _check_auto_layout(train_cfg, explicit, train_data)
        notes.flush()  # what was read comes before the probe, which takes seconds
        train_cfg, model_cfg = _apply_auto(train_cfg, model_cfg, explicit, len(train_data),
                                           len(val_data) if val_data is not None else 0, device, world)

    if init_params is None and not train_cfg.resume:   # a new model; every process draws the same one
        init_params = _new_model_parameters(train_cfg, model_cfg, train_data)
    train_streams = make_streams(train_data, train_cfg.batch_size, train_cfg.seq_len, what="training split",
                                 segments=train_segments)
    val_streams = _validation_streams(train_cfg, val_data, world, notes, val_segments)

    if not world.distributed:
        return _train(train_cfg, model_cfg, vocab, init_params, train_streams, val_streams, device, world, data, notes)
    world.join(device)
    finished = False
    try:  # each process trains on its own contiguous share of the streams
        code = _train(train_cfg, model_cfg, vocab, init_params, train_streams.shard(world.rank, world.size),
                      val_streams.shard(world.rank, world.size) if val_streams else None, device, world, data, notes)
        finished = True
    finally:
        world.leave(finished)
    # Leave without interpreter teardown: about one run in three, a process whose run had
    # finished and left the process group still aborted while exiting ("terminate called
    # without an active exception", from threads the gloo backend leaves behind), which
    # torchrun reports as a failure. Everything is written and synced by now.
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)


def _new_model_parameters(cfg: TrainConfig, model_cfg: ModelConfig, train_data) -> dict:
    """A new model's first weights, for every engine alike: from the seed, and with --head-bias unigram the
    output bias from the training split's character counts (models/base.init_parameters)."""
    from charrnn.data.dataset import character_counts
    from charrnn.models.base import init_parameters

    counts = character_counts(train_data, model_cfg.vocab_size) if cfg.head_bias == "unigram" else None
    return init_parameters(model_cfg, cfg.seed, char_counts=counts)


def _auto_layout(cfg: TrainConfig, explicit: set) -> tuple[int, int]:
    """The batch and window length auto's run will train with: its own, or the explicit flags'."""
    from charrnn.train import auto

    return (cfg.batch_size if "batch_size" in explicit else auto.BATCH,
            cfg.seq_len if "seq_len" in explicit else auto.SEQ_LEN)


def _check_auto_layout(cfg: TrainConfig, explicit: set, train_data) -> None:
    """The windows auto will train on must fit the training split: refused in one line before the probe and
    before anything is said, not after both."""
    make_streams(train_data, *_auto_layout(cfg, explicit), what="training split")


def _apply_auto(cfg: TrainConfig, model_cfg: ModelConfig, explicit: set, train_chars: int, val_chars: int, device,
                world) -> tuple[TrainConfig, ModelConfig]:
    """--preset auto: probe this machine (for a time budget), choose, print why; explicit flags win."""
    from charrnn.train import auto

    batch, seq_len = _auto_layout(cfg, explicit)
    work = auto.Workload(train_chars, model_cfg.vocab_size, cfg.max_time, cfg.epochs, cfg.max_iters,
                         validates=bool(cfg.val_frac > 0 or cfg.val_data), seq_len=seq_len,
                         batch=batch if "batch_size" in explicit else None,
                         val_chars=val_chars, cosine="schedule" not in explicit or cfg.schedule == "cosine")
    speed = _auto_speed(cfg, model_cfg, device, world) if cfg.max_time else None
    choice = auto.choose(work, speed)
    budget = {"max_time"}  # the budget the user gave, less the probe's seconds: always auto's
    chosen = {k: v for k, v in choice.values.items() if k not in explicit or k in budget}
    overridden = sorted(k for k in choice.values if k in explicit and k not in budget)
    record = {"reason": choice.reason, "overridden_by_flags": overridden, "max_time_given": cfg.max_time,
              "probe_chars_per_s": speed.measured if speed else None,
              "probe_seconds": round(speed.probe_seconds, 2) if speed else None,
              "speed_measured_ago_s": round(speed.measured_ago) if speed and speed.measured_ago is not None else None}
    if choice.plan is not None and chosen.get("schedule", cfg.schedule) == "cosine":
        record["plan"] = {**choice.plan, "evals": None if "eval_every" in explicit else choice.plan["evals"]}
    model, untied = _auto_shape(model_cfg, {k: v for k, v in chosen.items() if k in MODEL_KEYS}, explicit)
    if untied:
        overridden = record["overridden_by_flags"] = sorted({*overridden, "tied"})
    train = dataclasses.replace(cfg, **{k: v for k, v in chosen.items() if k in TRAIN_KEYS}, auto=record)
    if world.is_main:
        kept = ", ".join("--" + k.replace("_", "-") for k in overridden)
        print(choice.reason + (f"\n  your flags replace auto's {kept}" if kept else "")
              + _shape_followed(model, choice.values, explicit), flush=True)
    return train, model


def _shape_followed(model: ModelConfig, values: dict, explicit: set) -> str:
    """What auto's embedding and tying became at the width your flags gave (_auto_shape), where they moved."""
    embedding = model.embed != values["embed"] and "embed" not in explicit
    tying = model.tied and not values["tied"] and "tied" not in explicit
    if embedding:
        return f"; at that width the embedding is {model.embed}" + (", tied to the head" if model.tied else "")
    return "; at that width the head is tied to the embedding" if tying else ""


def _auto_shape(model_cfg: ModelConfig, chosen: dict, explicit: set) -> tuple[ModelConfig, bool]:
    """auto's embedding and tied head for the width and depth the run has, yours or auto's (train/auto.py: tied
    where the head holds more weights than the recurrent layers); (the model, whether your --embed untied a head
    auto would have tied)."""
    from charrnn.train import auto

    shape = {**dataclasses.asdict(model_cfg), **chosen}
    vocab, hidden, layers, gates = shape["vocab_size"], shape["hidden"], shape["layers"], GATES[shape["cell"]]
    wanted = auto.tied_for(vocab, hidden, layers, gates)
    if "tied" not in explicit:
        shape["tied"] = wanted and ("embed" not in explicit or shape["embed"] == hidden)
    if "embed" not in explicit:
        shape["embed"] = hidden if shape["tied"] else auto.embed_for(vocab, hidden, layers, gates)
    return ModelConfig(**shape), wanted and not shape["tied"] and "tied" not in explicit


def _auto_speed(cfg: TrainConfig, model_cfg: ModelConfig, device, world):
    """How fast this machine trains each width: the probe's answer, or, for a budget too short to probe well, the
    speed measured here before (train/speed_cache.py), said in the auto line. A probe's answer is kept."""
    from charrnn import capabilities
    from charrnn.train import auto, speed_cache

    bf16 = capabilities.bf16_training(device, cfg.impl, "lstm")  # cfg.impl: library or scratch (check_usable)
    name = speed_cache.entry_name(device, cfg.impl, bf16)
    if cfg.max_time < speed_cache.SHORT_BUDGET:
        cached = speed_cache.load(name)
        if cached is not None:
            return cached
    precisions = "float32 and bfloat16" if bf16 else f"float32 only: {capabilities.bf16_missing(device)}"
    print(f"auto: probing how fast {cfg.impl} trains on {device.type}, in {precisions}; a few seconds, counted "
          "in --max-time", flush=True)
    import torch

    speed = auto.probe(lambda hidden, bf16: _probe_step(cfg, model_cfg, hidden, bf16, device, world),
                       bf16, model_cfg.vocab_size, seconds=auto.PROBE_SHARE * cfg.max_time, load=_load_meter(device),
                       threads=torch.get_num_threads())
    speed_cache.store(name, speed)
    return speed


def _load_meter(device):
    """What other processes take of the cores the steps run on; none on a GPU, whose steps are the device's, not the
    cores' to share. `device` as resolve_device gives it: a torch.device, None (NumPy) or a TensorFlow name."""
    from charrnn.train.machine_load import ProcStatLoad

    if device is None:
        on_cpu = True
    elif isinstance(device, str):
        on_cpu = "GPU" not in device.upper()
    else:
        on_cpu = device.type == "cpu"
    return ProcStatLoad() if on_cpu else None


def _training_threads(cfg: TrainConfig, load) -> int:
    """The threads a step runs on: torch's for its engines; the others' (NumPy's BLAS, TensorFlow's) are taken as
    every core the process may use."""
    if load is None:
        return 1
    if cfg.impl in TORCH_IMPLS:
        import torch

        return torch.get_num_threads()
    return max(1, load.cores)


def _remember_speed(cfg: TrainConfig, model_cfg: ModelConfig, device, trainer) -> None:
    """After an auto run of auto's own shape: keep the speed it really trained at for the next short budget."""
    from charrnn import capabilities
    from charrnn.train import auto, speed_cache

    measured = trainer.measured_chars_per_second()
    own_shape = ((model_cfg.cell, model_cfg.layers, model_cfg.embed, model_cfg.tied, cfg.batch_size, cfg.seq_len)
                 == ("lstm", auto.LAYERS, auto.embed_for(model_cfg.vocab_size, model_cfg.hidden),
                     auto.tied_for(model_cfg.vocab_size, model_cfg.hidden), auto.BATCH, auto.SEQ_LEN))
    if measured is None or not own_shape or cfg.impl not in TORCH_IMPLS:
        return
    name = speed_cache.entry_name(device, cfg.impl, capabilities.bf16_training(device, cfg.impl, "lstm"))
    speed_cache.calibrate(name, model_cfg.hidden, model_cfg.vocab_size, cfg.bf16, measured)


def _check_bf16(cfg: TrainConfig, cell: str, device, explicit: bool, notes: Announcements) -> TrainConfig:
    """--bf16 only where this engine can train this cell in bfloat16 here (capabilities: found by trying),
    refused before anything is read or written. A preset's bf16 (gpu), or a resumed run's, is dropped with a
    note instead."""
    if not cfg.bf16 or cfg.impl == "naive" or cfg.impl in TF_IMPLS:
        return cfg  # _check_flags has refused --bf16 for those engines
    from charrnn import capabilities

    if device.type not in ("cuda", "cpu"):  # autocast to bfloat16 exists for these two
        raise UserError(f"--bf16 needs CUDA or a CPU but training would run on {device.type}; drop --bf16")
    if capabilities.bf16_training(device, cfg.impl, cell):
        if device.type == "cpu" and not capabilities.bf16_units():
            notes.say("warning: this CPU has no bfloat16 units (AVX-512 BF16/AMX): --bf16 is emulated here and "
                      "likely slower than float32", warning=True)
        return cfg
    if explicit:
        raise UserError(f"{capabilities.bf16_missing(device)}; drop --bf16")
    asked = " from now on: the run trained in bfloat16" if cfg.resume else ": the preset asks for bfloat16"
    notes.say(f"note: training in float32{asked}, but {capabilities.bf16_missing(device)}", warning=True)
    return dataclasses.replace(cfg, bf16=False)


def _probe_step(cfg: TrainConfig, model_cfg: ModelConfig, hidden: int, bf16: bool, device, world):
    """One training step of a model of width `hidden` (auto's shape) on random characters, as a function."""
    from charrnn.train import auto

    shape = dict(cell="lstm", layers=auto.LAYERS, hidden=hidden, embed=auto.embed_for(model_cfg.vocab_size, hidden),
                 tied=auto.tied_for(model_cfg.vocab_size, hidden), dropout=0.0)
    learner = _make_learner(dataclasses.replace(cfg, bf16=bf16), dataclasses.replace(model_cfg, **shape),
                            device, world, None)
    rng = np.random.default_rng(0)
    x, y = (rng.integers(0, model_cfg.vocab_size, (auto.BATCH, auto.PROBE_SEQ_LEN)) for _ in range(2))
    labels = rng.integers(0, len(model_cfg.labels), x.shape) if model_cfg.labels else None  # as training steps it
    state = learner.zero_state(auto.BATCH)
    return lambda: learner.train_step(x, y, state, labels=labels)


def _check_flags(cfg: TrainConfig, world, out: Path, overwrite: bool) -> None:
    """Refuse what cannot work before any work is done, so under torchrun every process fails alike."""
    if not cfg.resume and (out / RESUME).exists() and not overwrite:
        raise UserError(f"{out} already holds a run; pass --resume to continue it, --overwrite to replace it, or "
                        f"choose another --out")
    if cfg.impl == "naive" or cfg.impl in TF_IMPLS:
        for flag, on in (("--bf16", cfg.bf16), ("--compile", cfg.compile)):
            if on:
                raise UserError(f"--impl {cfg.impl} does not support {flag}; use --impl library or scratch")
        if world.distributed:  # multi-process training is PyTorch's (DistributedDataParallel)
            raise UserError(f"--impl {cfg.impl} cannot train under torchrun ({world.size} processes); "
                            "use --impl library or scratch, or run one process")
    if cfg.impl in TF_IMPLS:  # a missing TensorFlow is one line now, before the corpus is read
        from charrnn.models.tf_common import require_tensorflow

        require_tensorflow(cfg.impl)
    world.shard_rows(cfg.batch_size)  # the global batch must divide among the processes


def _validation_streams(cfg: TrainConfig, val_data, world, notes: Announcements, segments=None):
    """The validation streams, or None. --val-chars shorter than one window is raised to one window (said), and
    --patience without a validation window to count is refused: early stopping must not silently never happen."""
    one_window = world.size * cfg.seq_len + 1   # one stream per process (validation_streams' smallest layout)
    if cfg.val_chars is not None:
        chars = cfg.val_chars
        if chars < one_window <= len(val_data):
            notes.say(f"warning: --val-chars {chars} is shorter than one validation window (--seq-len "
                      f"{cfg.seq_len} needs {one_window} characters); validating on the first {one_window}", True)
            chars = one_window
        if segments is not None:  # every label keeps its share
            val_data, segments = first_of_each_label(val_data, segments, chars)
        else:
            val_data = val_data[:chars]
    streams = (validation_streams(val_data, cfg.batch_size, cfg.seq_len, multiple_of=world.size, segments=segments)
               if len(val_data) else None)
    if streams is None and cfg.patience is not None:
        raise UserError(f"--patience {cfg.patience} needs validation, but the validation split has {len(val_data)} "
                        f"characters, fewer than one window of --seq-len {cfg.seq_len} ({one_window}); raise "
                        "--val-frac, give --val-data, lower --seq-len, or drop --patience")
    if cfg.val_frac > 0 and streams is None:
        notes.say("warning: the validation split is too short for one window; training without validation", True)
    return streams


def _load_text(cfg: TrainConfig, model_flags: dict, out: Path, notes: Announcements):
    """(the model config, --init-from's weights grown to the text or None, the data: data.dataset.TrainingData,
    its texts encoded in the run's vocabulary (its own; --init-from's, grown by what the text adds; or
    --resume's), a labelled run's segments in the model's label order)."""
    from charrnn.data.dataset import Base, training_data

    base, parent = None, None
    if cfg.init_from and not cfg.resume:
        parent, parent_vocab, parent_params = load_run(Path(cfg.init_from), "latest")
        _check_engine_trains(cfg.impl, dataclasses.asdict(parent))
        if parent.labels and not cfg.label_by:
            raise UserError(f"--init-from {cfg.init_from} was trained with labels ({', '.join(parent.labels)}); "
                            "fine-tune it with --label-by")
        for key in sorted(MODEL_KEYS - {"vocab_size", "dropout", "labels"}):
            if key in model_flags and model_flags[key] != getattr(parent, key):
                raise UserError(f"--{key} differs from the --init-from model ({getattr(parent, key)}); drop it")
        base = Base(Path(cfg.init_from), parent_vocab, parent.labels, resume=False)
    elif cfg.resume:
        from charrnn.checkpoint import load_vocab

        base = Base(out, load_vocab(out, ModelConfig(**model_flags)), tuple(model_flags.get("labels") or ()), True)
    data = training_data(cfg, base)
    notes.say("\n".join(data.lines))
    for warning in data.warnings:
        notes.say(f"warning: {warning}", True)
    init_params = None
    if parent is not None:
        from charrnn.train import finetune

        _say_what_fine_tuning_adds(parent_vocab, data.vocab, parent.labels, data.labels, notes)
        model = finetune.child_config(parent, data.vocab, data.labels, model_flags.get("dropout", parent.dropout))
        from charrnn.data.dataset import character_counts

        init_params = finetune.grow_parameters(parent_params, parent, model, parent_vocab, cfg.seed,
                                               character_counts(data.train, len(data.vocab)))
        model_flags = dataclasses.asdict(model)
    model_cfg = ModelConfig(**{**model_flags, "vocab_size": len(data.vocab), "labels": data.labels})
    return model_cfg, init_params, data


def _train(cfg: TrainConfig, model_cfg: ModelConfig, vocab, init_params, train_streams, val_streams,
           device, world, data=None, notes: Announcements | None = None) -> int:
    """Build the learner and the Trainer, restore on --resume (its last checks), then speak, write and train.
    Only rank 0 writes files; every rank takes part in the collectives inside the Trainer."""
    out = Path(cfg.out)
    learner = _make_learner(cfg, model_cfg, device, world, init_params)
    from charrnn.train.loop import Trainer

    load = _load_meter(device) if world.size == 1 and cfg.max_time else None   # every rank must plan alike
    trainer = Trainer(cfg, learner, train_streams, val_streams, out, world=world,
                      sampler=_make_sampler(learner, vocab, cfg, data), load=load,
                      threads=_training_threads(cfg, load))
    if cfg.resume:
        trainer.restore()   # reads and checks resume.safetensors; nothing is written before it fits
    if notes is not None:
        notes.flush()
    if world.is_main:
        _write_run_files(out, cfg, model_cfg, vocab, data)
    if cfg.resume:
        trainer.say_what_resume_changed()
        if world.rank > 0:  # the checkpoint holds rank 0's RNG; the others need dropout masks of their own
            import torch

            torch.manual_seed(cfg.seed + world.rank + 7919 * trainer.progress.iteration)
        if world.is_main:
            p = trainer.progress
            print(f"resuming {out} at iteration {p.iteration} (epoch {p.epoch}, window {p.window})", flush=True)
    previous = _install_signal_handlers(trainer)
    try:
        progress = trainer.run()
    finally:  # a Python caller of main() gets its own handlers back
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    if cfg.auto and cfg.max_time and world.is_main:
        _remember_speed(cfg, model_cfg, device, trainer)
    if world.is_main:
        best = (f"best validation loss {progress.best_val:.4f} nats/char" if math.isfinite(progress.best_val)
                else "no validation")
        print(f"done: iteration {progress.iteration}, epoch {progress.epoch}, {best}; checkpoints in {out}", flush=True)
    return 0


def _write_run_files(out: Path, cfg: TrainConfig, model_cfg: ModelConfig, vocab, data) -> None:
    """The run directory's description: vocab.json (a new run), data.json, config.json."""
    from charrnn.storage import remove_stale_temporaries

    try:
        out.mkdir(parents=True, exist_ok=True)
        remove_stale_temporaries(out)
        if not cfg.resume:
            vocab.save(out / "vocab.json")
        if data is not None and (not cfg.resume or not (out / "data.json").exists()):
            from charrnn.data.dataset import write_record

            write_record(out, data.record)  # what was read: --resume and eval check and name it
        save_run_config(out, model_cfg, cfg)
    except OSError as e:
        raise checkpoint_write_error(out, e, resumable=cfg.resume) from None


def _make_learner(cfg: TrainConfig, model_cfg: ModelConfig, device, world, init_params):
    from charrnn.models import build_model

    if cfg.impl == "naive":
        from charrnn.train.learners import NumpyLearner

        model = build_model("naive", model_cfg, seed=cfg.seed, params=init_params)
        return NumpyLearner(model, cfg.resolved_optimizer, cfg.resolved_lr, cfg.weight_decay, cfg.grad_clip, cfg.seed)
    if cfg.impl in TF_IMPLS:
        from charrnn.train.tf_step import TFLearner

        model = build_model(cfg.impl, model_cfg, seed=cfg.seed, params=init_params, device=device)
        return TFLearner(model, cfg.resolved_optimizer, cfg.resolved_lr, cfg.weight_decay, cfg.grad_clip)
    import torch

    from charrnn.train.learners import TorchLearner

    # --compile: the scratch engine's time loop is TorchScripted (faster than eager; torch.compile unrolls
    # that loop, compiles for minutes and ran slower: docs/performance.md).
    script = cfg.compile and cfg.impl == "scratch"
    model = build_model(cfg.impl, model_cfg, seed=cfg.seed, params=init_params, device=device, script=script)
    torch.manual_seed(cfg.seed + world.rank)
    return TorchLearner(model, cfg.resolved_optimizer, cfg.resolved_lr, cfg.weight_decay, cfg.grad_clip, device,
                        bf16=cfg.bf16, compile=cfg.compile and not script, distributed=world.distributed)


def _make_sampler(learner, vocab, cfg: TrainConfig, data=None):
    """A short sample now and then (--sample-every). It must never stop training: a model has no fixed
    start character (the text may hold no newline: prime_indices picks one the vocabulary has)."""
    if not cfg.sample_every:
        return None
    from charrnn.infer.predictor import Predictor
    from charrnn.infer.sampling import generate, sampling_options

    rng = np.random.default_rng(cfg.seed + 1)  # its own RNG: sampling must not change training's randomness
    options = sampling_options(temperature=0.8)
    marks = {"start": data.separator, "banned": data.unknown} if data is not None else {}
    labels, turn = learner.model.config.labels, itertools.count()

    def sample() -> str:  # a labelled run samples under each label in turn, and says which
        index = next(turn) % len(labels) if labels else None
        # a new Predictor each time: the naive engine's step snapshots the weights, which training changes
        text = generate(Predictor(learner.model, label=index), vocab, "", 200, options, rng, **marks)[0]
        return f"[{labels[index]}] {text}" if labels else text
    return sample


def _install_signal_handlers(trainer) -> dict:
    """First Ctrl-C or SIGTERM: finish the step, save, exit 0. A second Ctrl-C stops at once."""

    def handler(signum, frame):
        name = signal.Signals(signum).name
        if trainer.stop_requested and signum == signal.SIGINT:
            raise KeyboardInterrupt
        trainer.stop_requested = f"received {name}"

    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    signal.signal(signal.SIGINT, handler)
    signal.signal(signal.SIGTERM, handler)
    return previous
